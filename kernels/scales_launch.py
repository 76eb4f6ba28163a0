"""Launcher of the dynamic activation scale kernel."""

from __future__ import annotations

import torch
import triton

from . import _interpreter
from . import scales as scales_module
from .launch import CachedLaunch, alignment_key
from .workspace import scratch

_launch = CachedLaunch(scales_module.dynamic_scale_kernel)


def dynamic_scales(x: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """fp32 [2] = (gs, alpha) of x (M >= 1 rows, unit column stride) on the device, the bits a
    static input_scale = amax(x) / 2688 would give. The tensor is per-stream scratch: read it
    before the next dynamic-scale call on this stream (the Linear's next kernel does)."""
    m, k = x.shape
    s = scratch(x.device)
    block_r = 1 if m <= 256 else 8
    grid = (triton.cdiv(m, block_r),)
    args = (x, weight_scale_2, s.scales, s.scale_words, m, k, x.stride(0))
    meta = dict(BLOCK_R=block_r, BLOCK_K=min(2048, triton.next_power_of_2(k)))
    if x.device.type == "cpu":
        _interpreter.interpreted(scales_module).dynamic_scale_kernel[grid](*args, **meta)
    else:
        _launch((x.device.index, x.dtype, *alignment_key(x), k, block_r), grid, args, meta, dict(num_warps=4))
    return s.scales
