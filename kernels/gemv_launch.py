"""Launcher of the CUDA-core decode Linear (kernels/gemv.py): tiles, split-K, the per-stream workspace."""

from __future__ import annotations

from dataclasses import dataclass

import triton

from . import gemv as gemv_module
from .quant_dequant_launch import amax_reads
from .small_m_linear_launch import SingleLaunch, run_single_launch, single_launch_plan

MAX_M = 16  # rows the kernel takes (the router sends it up to 8: `ops.use_gemv`; more for tuning)
# A dynamic scale is computed inside the kernel (every program reads all of x) for small inputs;
# otherwise `kernels.dynamic_scales` runs first (one small launch). H100, weights cold, device time
# (linear_bench.py --ab-dynamic): in-kernel 1x8192x8192 22.6 us vs 26.6, 4x4096x4096 16.1 vs 19.9,
# 2x8192x3696 20.2 vs 23.7; but 2x8192x8192 33.8 vs 30.9. So: M * K <= 16384, K <= 4096 beyond M = 1.
DYNAMIC_IN_KERNEL_MAX = 16384


def fuses_dynamic_scale(m: int, k: int, row_stride: int) -> bool:
    """Whether `linear_gemv(..., weight_scale_2=)` takes a dynamic scale in its own launch for x
    [m, k] (its max |x| pass indexes rows with 32-bit offsets, hence the bound on m * row_stride)."""
    return m * k <= DYNAMIC_IN_KERNEL_MAX and (m == 1 or k <= DYNAMIC_IN_KERNEL_MAX // 4) and m * row_stride < 2**31


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int  # a multiple of 64
    num_warps: int
    num_stages: int
    split_k: int = 0  # 0: enough K splits for about `waves` programs per SM
    waves: int = 2
    use_asm: bool = True  # fp16x2 PTX on the GPU (the CPU always takes the portable path)
    prefetch: bool = False  # load K tile i + 1 before the math of tile i (registers; kernels/gemv.py)


def gemv_config(n: int, kp: int, m_rows: int, device_type: str) -> GemvConfig:
    if device_type == "cpu":
        # Interpreter: few, large programs; split K (and so the ticketed reduce) whenever there is room.
        return GemvConfig(min(64, max(16, triton.next_power_of_2(n))), 64, 4, 1, split_k=2 if kp >= 128 else 1,
                          use_asm=False)
    # H100, weights cold in L2 (benchmarks/results/gemv_tune_h100.csv, `linear_bench.py --tune-gemv`):
    # the tile that is best on average over the shapes of each class, per M. Most load the next K tile
    # before the math of this one (`prefetch`; session 17, same runs: M = 1 1288x2688 5.44 us vs 5.88
    # without, 8192x3696 11.57 vs 12.14, 28672x8192 53.5 vs >= 57, 8192x8192 18.33 vs 19.36).
    small = GemvConfig(32, 512, 4, 3, waves=4, prefetch=True)
    if m_rows >= 8:  # 5-8 rows: the router sends weights under 2M elements only (`ops.use_gemv`)
        # 8x2688x464 4.20 us vs 4.52 for `small` (half the K tile: each program quantizes half as much of
        # x; twice the programs a SM); at M = 4 it lost, 3.05 vs 2.97 (gemv_tune_h100_m8-16.csv, session 23)
        return GemvConfig(32, 256, 4, 4, waves=8, prefetch=True)
    if m_rows >= 4:  # 1x4096x4096-class and smaller (the router sends larger weights elsewhere)
        # M = 4: 1288x2688 6.76 us, 2576x2688 8.80, 2688x464 2.97
        return small if n * kp < 8 << 20 else GemvConfig(128, 128, 4, 3, waves=2)
    if n * kp < 8 << 20:  # M = 1 / 2: 2688x464 2.28 / 2.33 us, 1288x2688 5.44 / 5.70, 2576x2688 6.55 / 6.91
        return small
    if n * kp < 32 << 20:
        # 4096x4096 7.86 us (M = 1); 8192x3696 (Kp = 3712: 128-wide K tiles keep every load whole) 11.57
        # (M = 1). M = 2 (4096x4096): 8.92 us without prefetch, 10.24 with (twice the accumulators a thread)
        if m_rows > 1:
            return GemvConfig(64, 256, 4, 4, waves=4)
        if kp % 256:
            return GemvConfig(64, 128, 4, 3, waves=4, prefetch=True)
        return GemvConfig(64, 256, 4, 4, waves=4, prefetch=True)
    if kp >= 16384:  # 8192x28672: 54.0 us (M = 1; 54.8 with prefetch), 66.9 (M = 2)
        return GemvConfig(64, 512, 4, 2, waves=2)
    if n >= 16384:  # 28672x8192: 53.5 us (M = 1), 68.5 (M = 2)
        return small if m_rows == 1 else GemvConfig(32, 512, 4, 3, waves=4)
    # 8192x8192: 18.33 us (M = 1; 19.36 without prefetch, the previous 128x512 tile 19.2-19.5 before the
    # PTX pair decode and 24.1 after it), 26.6 (M = 2)
    return GemvConfig(64, 256, 4, 4, waves=3, prefetch=True) if m_rows == 1 else GemvConfig(64, 512, 4, 2, waves=2)


def linear_gemv(x, gs, alpha, w_data, w_scale, bias, out, *, config: GemvConfig | None = None,
                weight_scale_2=None):
    """out[M, N] = alpha * quantize(x, gs) @ dequant(W)^T (+ bias), M <= 16, in one launch on CUDA cores.

    Arguments as `linear_small_m`'s: x [M, K] with unit column stride; gs, alpha fp32 one-element
    tensors (read on the device); w_data uint8 [Np, Kp/2] (Kp % 64 == 0); w_scale uint8 row-major
    [Np, Kp/16]; N = out.shape[1]. weight_scale_2 (fp32 [1], the weight's decode scale) instead of
    gs and alpha (None): a dynamic scale, gs and alpha derived from max |x| inside the kernel, the
    bits `kernels.dynamic_gs_alpha` gives (any M * K; `fuses_dynamic_scale` says when it pays).
    """
    if weight_scale_2 is not None:
        return run_single_launch(_GEMV, x, weight_scale_2, weight_scale_2, w_data, w_scale, bias, out, config,
                                 dynamic=True)
    return run_single_launch(_GEMV, x, gs, alpha, w_data, w_scale, bias, out, config)


_launch_ids: dict = {}  # a plan's launch key (dtypes, shape, config, constexprs) -> a small int


def _plan(device, n, k, kp, m_rows, has_bias, config, dtypes, x_al, dynamic=False):
    if config is None:
        config = gemv_config(n, kp, m_rows, device.type)
    if config.block_k % 64:
        raise ValueError(f"block_k must be a multiple of 64, got {config.block_k}")
    return single_launch_plan(device, n, k, kp, config, dtypes, MAX_M, _launch_ids, M_ROWS=m_rows, HAS_BIAS=has_bias,
                              USE_ASM=config.use_asm and device.type == "cuda", PREFETCH=config.prefetch,
                              DYNAMIC=dynamic, **amax_reads(k, dynamic), X_ALIGN=x_al)


_GEMV = SingleLaunch(gemv_module, "nvfp4_gemv_kernel", _plan, MAX_M)
_launch_main = _GEMV.launch  # (tests and benchmarks look launchers up by this name)
