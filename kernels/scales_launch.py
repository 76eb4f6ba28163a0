"""Launcher of the dynamic activation scale kernel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton

from . import _interpreter
from . import maxima as _maxima
from . import scales as scales_module
from .act_quantize_launch import ACTS, act_width
from .launch import CachedLaunch, cdiv, compile_tracing, x_align
from .maxima import DynamicScale
from .workspace import scratch_of

_launch = CachedLaunch(scales_module.dynamic_scale_kernel)
# no FMA contraction: act(x) gets the bits the activation kernels give it (no arithmetic without an act)
_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)


@dataclass(frozen=True)
class ScaleConfig:
    """Tiles of the scale kernel: BLOCK_R rows x BLOCK_K columns a load, k_blocks of them along K per
    program (0: all of K, a loop in one program)."""
    block_r: int
    block_k: int
    k_blocks: int
    num_warps: int = 4


def scale_config(m: int, k: int, act: str | None = None) -> ScaleConfig:
    """Decode (M <= 16): one program per 1024 columns (a serial loop over K is latency-bound there).
    Past decode one 4 x 1024 tile per program, or 8 x 2048 past 256 rows without an activation.
    H100 (linear_bench.py --tune-scale, results/scale_tune_h100.csv; bf16, device time), against the
    earlier 1 or 8 rows x all of K per program: 2048x8192 8.6 us vs 10.9, 8192x2688 16.1 vs 19.4,
    256x8192 4.1 vs 4.5; silu_mul of 8192 x 2 * 1368 26.8 vs 40.4, 4096 x 2 * 3696 27.1 vs 30.1 (but
    8192x3696 25.8 vs 24.9, 2048 x 2 * 3696 silu_mul 11.7 vs 10.6). Depends on M only through M <= 16
    and M <= 256 (the classes `_dynamic_scales` caches plans by)."""
    if m <= 16:
        return ScaleConfig(1, min(1024, triton.next_power_of_2(k)), 1)
    if m <= 256 or act is not None:
        return ScaleConfig(4, min(1024, triton.next_power_of_2(k)), 1)
    return ScaleConfig(8, min(2048, triton.next_power_of_2(k)), 1)


def dynamic_scales(x: torch.Tensor, weight_scale_2: torch.Tensor, act: str | None = None, *,
                   config: ScaleConfig | None = None) -> torch.Tensor:
    """fp32 [2] = (gs, alpha) of x (M >= 1 rows, unit column stride) on the device, the bits a
    static input_scale = amax(x) / 2688 would give; with `act` (an ACTS name) of act(x) instead,
    computed as the activation kernels do (x = [gate, up] for gated acts), without writing it. The
    tensor is per-stream scratch: read it before the next dynamic-scale call on this stream (the
    Linear's next kernel does). config: tiles other than `scale_config`'s (tuning)."""
    return _dynamic_scales(x, weight_scale_2, act, config, maxima=False)[0].scales


def dynamic_gs_alpha(x: torch.Tensor, weight_scale_2: torch.Tensor,
                     act: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`dynamic_scales` as the two fp32 [1] tensors (gs, alpha) the Linear's kernels read: views of
    the per-stream scratch made once, not sliced on every call."""
    s = _dynamic_scales(x, weight_scale_2, act, maxima=False)[0]
    return s.gs, s.alpha


def dynamic_maxima(x: torch.Tensor, weight_scale_2: torch.Tensor, act: str | None = None) -> DynamicScale:
    """x's dynamic scale (of act(x) with `act`, as `dynamic_scales`) as per-program maxima, for a pass
    that reduces them (`DynamicScale`): one launch with no atomics on its tail. Eager calls and CUDA
    graphs (under torch.compile M may be symbolic, and the count must be a plain int:
    `dynamic_encode_scale` takes `dynamic_gs_alpha` there)."""
    s, count, _ = _dynamic_scales(x, weight_scale_2, act, maxima=True)
    return _maxima_scale(s, count, weight_scale_2)


def dynamic_encode_scale(x: torch.Tensor, weight_scale_2: torch.Tensor,
                         act: str | None = None) -> tuple[DynamicScale | torch.Tensor, torch.Tensor]:
    """(encode scale, alpha) of x's dynamic scale for a pass that quantizes x and the GEMM after it:
    `dynamic_maxima` where its launch has at most MAX_MAXIMA programs (the pass then writes alpha),
    else `dynamic_gs_alpha` (its own last program writes both). Under torch.compile always the
    latter: M may be symbolic there, and the maxima's count must be a plain int."""
    s, count, maxima = _dynamic_scales(x, weight_scale_2, act, maxima=None)
    return (_maxima_scale(s, count, weight_scale_2) if maxima else s.gs), s.alpha


def _maxima_scale(s, count: int, weight_scale_2) -> DynamicScale:
    """The `DynamicScale` of a maxima launch that used scratch `s` with `count` programs."""
    return DynamicScale(s.maxima(count), count, weight_scale_2, s.scales, s.alpha)


def scale_programs(m: int, width: int, act: str | None = None) -> int:
    """Programs of the scale launch for x [m, width] (the routed tiles)."""
    k, cfg, per_program, _ = _plan(m, width, act, False, None)
    grid = _grid(m, k, cfg, per_program)
    return grid[0] * grid[1]


def _grid(m, k, cfg: ScaleConfig, per_program):
    """A program per BLOCK_R rows and per `per_program` columns."""
    return (m + cfg.block_r - 1) // cfg.block_r, cdiv(k, per_program), 1


_metas: dict = {}  # (width, M class, act, CPU, config) -> (K, config, columns per program, constexprs
#   by (MAXIMA, X_ALIGN))


def _plan(m, width, act, cpu: bool, config):
    # bool(): under torch.compile a guard on M's class, not a symbolic value in the plan key
    key = (width, bool(m <= 16), bool(m <= 256), act, cpu, config)
    plan = _metas.get(key)
    if plan is None:
        code, gated = ACTS[act] if act is not None else (-1, False)
        k = act_width(act, width) if act is not None else width
        cfg = config or scale_config(m, k, act)
        per_program = (cfg.k_blocks or cdiv(k, cfg.block_k)) * cfg.block_k
        meta = dict(BLOCK_R=cfg.block_r, BLOCK_K=cfg.block_k, ACT=code, GATED=gated, BF16_BITS=cpu)
        plan = _metas[key] = (k, cfg, per_program, {(maxima, x_al): dict(meta, MAXIMA=maxima, X_ALIGN=x_al)
                                                    for maxima in (False, True) for x_al in (1, 2, 4, 8, 16)})
    return plan


def _dynamic_scales(x, weight_scale_2, act=None, config: ScaleConfig | None = None, maxima: bool | None = False):
    """(scratch, programs, maxima) of one scale launch. maxima None: per-program maxima where the launch
    has at most MAX_MAXIMA programs and torch.compile is not tracing (`dynamic_encode_scale`), else the
    ticket's (gs, alpha) in the scratch."""
    m, width = x.shape
    index = x.get_device()  # CUDA device index, -1 on the CPU
    s = scratch_of(x)
    if maxima is None and compile_tracing():
        maxima = False
    k, cfg, per_program, metas = _plan(m, width, act, index < 0, config)
    grid = _grid(m, k, cfg, per_program)
    count = grid[0] * grid[1]
    if maxima is None:  # (the tiles, hence the count, are the same either way)
        maxima = count <= _maxima.MAX_MAXIMA
    sx = x.stride(0)
    xa = x_align(k, sx)
    meta = metas[maxima, xa]
    args = (x, weight_scale_2, s.scales, s.maxima(count) if maxima else s.scale_words, m, k, sx, per_program)
    options = dict(_OPTIONS, num_warps=cfg.num_warps)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # inf and NaN are values of an act
            _interpreter.interpreted(scales_module).dynamic_scale_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch(None, grid, args, meta, options)
    else:  # K and x's alignment and row stride: what Triton specializes on besides dtypes
        _launch((index, x.dtype, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1, k, per_program, cfg, meta["ACT"],
                 maxima, xa), grid, args, meta, options)
    return s, count, maxima
