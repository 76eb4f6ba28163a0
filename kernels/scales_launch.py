"""Launcher of the dynamic activation scale kernel."""

from __future__ import annotations

import numpy as np
import torch
import triton

from . import _interpreter
from . import scales as scales_module
from .act_quantize_launch import ACTS, act_width
from .launch import CachedLaunch, cdiv, compile_tracing
from .workspace import scratch_of

_launch = CachedLaunch(scales_module.dynamic_scale_kernel)
# no FMA contraction: act(x) gets the bits the activation kernels give it (no arithmetic without an act)
_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)


def dynamic_scales(x: torch.Tensor, weight_scale_2: torch.Tensor, act: str | None = None) -> torch.Tensor:
    """fp32 [2] = (gs, alpha) of x (M >= 1 rows, unit column stride) on the device, the bits a
    static input_scale = amax(x) / 2688 would give; with `act` (an ACTS name) of act(x) instead,
    computed as the activation kernels do (x = [gate, up] for gated acts), without writing it. The
    tensor is per-stream scratch: read it before the next dynamic-scale call on this stream (the
    Linear's next kernel does)."""
    return _dynamic_scales(x, weight_scale_2, act).scales


def dynamic_gs_alpha(x: torch.Tensor, weight_scale_2: torch.Tensor,
                     act: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`dynamic_scales` as the two fp32 [1] tensors (gs, alpha) the Linear's kernels read: views of
    the per-stream scratch made once, not sliced on every call."""
    s = _dynamic_scales(x, weight_scale_2, act)
    return s.gs, s.alpha


_metas: dict = {}  # (width, BLOCK_R, split over K, act, CPU) -> (K, columns per program, constexprs)


def _dynamic_scales(x, weight_scale_2, act=None):
    m, width = x.shape
    index = x.get_device()  # CUDA device index, -1 on the CPU
    s = scratch_of(x)
    block_r = 1 if m <= 256 else 8
    # decode: one program per 1024 columns (a serial loop over K is latency-bound there); bool(): under
    # torch.compile a guard on M, not a symbolic value in the plan key
    split = bool(m <= 16)
    key = (width, block_r, split, act, index < 0)
    plan = _metas.get(key)
    if plan is None:
        code, gated = ACTS[act] if act is not None else (-1, False)
        k = act_width(act, width) if act is not None else width
        block_k = min(1024 if split else 2048, triton.next_power_of_2(k))
        per_program = block_k if split else cdiv(k, block_k) * block_k
        plan = _metas[key] = (k, per_program, dict(BLOCK_R=block_r, BLOCK_K=block_k, ACT=code, GATED=gated,
                                                   BF16_BITS=index < 0))
    k, per_program, meta = plan
    grid = ((m + block_r - 1) // block_r, cdiv(k, per_program), 1)
    sx = x.stride(0)
    args = (x, weight_scale_2, s.scales, s.scale_words, m, k, sx, per_program)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf and NaN are values of an act
            _interpreter.interpreted(scales_module).dynamic_scale_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch(None, grid, args, meta, _OPTIONS)
    else:  # K and x's alignment and row stride: what Triton specializes on besides dtypes
        _launch((index, x.dtype, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1, k, block_r, split, meta["ACT"]), grid,
                args, meta, _OPTIONS)
    return s
