"""Launcher of the dynamic activation scale kernel."""

from __future__ import annotations

import torch
import triton

from . import _interpreter
from . import scales as scales_module
from .launch import CachedLaunch, compile_tracing
from .workspace import scratch, scratch_for

_launch = CachedLaunch(scales_module.dynamic_scale_kernel)
_OPTIONS = dict(num_warps=4)


def dynamic_scales(x: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """fp32 [2] = (gs, alpha) of x (M >= 1 rows, unit column stride) on the device, the bits a
    static input_scale = amax(x) / 2688 would give. The tensor is per-stream scratch: read it
    before the next dynamic-scale call on this stream (the Linear's next kernel does)."""
    return _dynamic_scales(x, weight_scale_2).scales


def dynamic_gs_alpha(x: torch.Tensor, weight_scale_2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`dynamic_scales` as the two fp32 [1] tensors (gs, alpha) the Linear's kernels read: views of
    the per-stream scratch made once, not sliced on every call."""
    s = _dynamic_scales(x, weight_scale_2)
    return s.gs, s.alpha


_metas: dict = {}  # (K, BLOCK_R) -> constexprs


def _dynamic_scales(x, weight_scale_2):
    m, k = x.shape
    index = x.get_device()  # CUDA device index, -1 on the CPU
    s = scratch_for(index) if index >= 0 else scratch(x.device)
    block_r = 1 if m <= 256 else 8
    meta = _metas.get((k, block_r))
    if meta is None:
        meta = _metas[(k, block_r)] = dict(BLOCK_R=block_r, BLOCK_K=min(2048, triton.next_power_of_2(k)))
    grid = ((m + block_r - 1) // block_r, 1, 1)
    sx = x.stride(0)
    args = (x, weight_scale_2, s.scales, s.scale_words, m, k, sx)
    if index < 0:
        _interpreter.interpreted(scales_module).dynamic_scale_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch(None, grid, args, meta, _OPTIONS)
    else:  # K and x's alignment and row stride: what Triton specializes on besides dtypes
        _launch((index, x.dtype, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1, k, block_r), grid, args, meta,
                _OPTIONS)
    return s
