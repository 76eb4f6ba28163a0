"""Launchers of the quantize-dequantize pass and of the weight-row dequantization."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import triton

from . import _interpreter
from . import quant_dequant as qd_module
from .launch import CachedLaunch, alignment_key, cdiv, compile_tracing, int_key, x_align
from .launch import sm_count as _sm_count
from .layout import check_mma16
from .maxima import scale_args
from .workspace import BARRIER_WORDS, scratch_of

_launch_fake = CachedLaunch(qd_module.fake_quantize_kernel)
_launch_rows = CachedLaunch(qd_module.dequantize_rows_kernel)


# A dynamic scale inside the pass (`fake_quantize_dynamic`): every program reads all of x, in
# unrolled loads of 1024 columns of a row, so only for small inputs past the CUDA-core kernel.
# H100, device time, M = 16 (linear_bench.py): 4096x4096 20.7 us vs 21.9 with the separate scale
# launch, 2688x464 9.34 vs 11.8, 8192x3696 26.6 vs 27.2; M = 8 8192x8192 36.6 vs 36.7. But past 64
# loads per program it collapses (16x8192x8192 92.2 us vs 36.9, 4x8192x28672 166 vs 86.5; not yet
# analysed, register spills are the likely cause).
DYNAMIC_IN_PASS_ROWS = 16
DYNAMIC_IN_PASS_MAX = 64 * 1024  # elements of x (64 loads of 1024)
AMAX_BLOCK = 1024  # columns per load of the max |x| reads that the small-input kernels unroll
# On the GPU, from this many elements of x (up to DYNAMIC_PASS_BARRIER_ROWS rows) and where the pass's programs
# all fit on the SMs at once, they share max |x| through a grid-wide barrier (`fake_quantize_kernel`'s BARRIER: a
# word per program, polled until all are written) instead of each reading all of x (or, past
# `fuses_dynamic_scale_in_pass`, a scale launch first). H100, CUDA graphs, weights cold
# (linear_bench.py --ab-pass-barrier, results/barrier_words_ab_h100.csv): the barrier pass ~3.0-3.3 us whatever
# the size (4.0-4.2 with the atomics and acquire/release round trips it had before, session 31), against
# every program reading x: 2.3-2.5 us at 7K-15K elements, 2.9-3.1 at 22K-32K, 4.8-5.1 past 48K. Whole layers:
# 4 x 4096^2 (16K) 11.0 us reading x vs 11.6 behind the barrier, 6 x 4096^2 (24K) 11.8 vs 11.6, 8 x 4096^2
# 11.8 vs 11.5, 4 x 8192^2 (32K) 23.2 vs 23.0, 6 x 8192 x 3696 (22K) 14.6 vs 14.6, 8 x 8192 x 3696 14.9 vs
# 14.7: the crossing lies near 20K elements (36K with the atomics).
DYNAMIC_PASS_BARRIER_ELEMENTS = 20 * 1024
# ... up to this many rows: the batched-decode rows (17-64, where the pass then feeds the 32/64-row tiles) take it
# too where the pass's 16-row tiles fit on the SMs (linear_bench.py --ab-dynamic --m 32 64: see RESULTS.md).
DYNAMIC_PASS_BARRIER_ROWS = 64


def dynamic_pass_barrier(m: int, kp: int, device: torch.device) -> bool:
    """Whether `fake_quantize_dynamic` of m rows into Kp columns takes the barrier (any x size)."""
    return _barrier_block_k(m, kp, device) is not None


def _barrier_block_k(m: int, kp: int, device: torch.device) -> int | None:
    """The barrier pass's K tile (16-row tiles of the narrowest of 64 (up to 16 rows), 128 and 256 columns that
    keeps the programs within `_barrier_programs`: 4 x 28672 in 112 programs of 256), or None where it does not apply. H100,
    the pass alone (linear_bench.py --tune-dynamic-pass-tiles, bits and alpha checked): 64 columns 1.09-1.11x
    faster than 128 at 8-16 rows (16 x 4096 4.21 us vs 4.64, 8 x 8192 4.29 vs 4.78); past 16 rows not measured."""
    if device.type != "cuda" or not (m <= DYNAMIC_PASS_BARRIER_ROWS and m * kp > DYNAMIC_PASS_BARRIER_ELEMENTS):
        return None
    widths = (64, 128, 256) if m <= 16 else (128, 256)
    return next((bk for bk in widths if cdiv(m, 16) * cdiv(kp, bk) <= _barrier_programs(device)), None)


def _barrier_programs(device: torch.device) -> int:
    """The most programs the barrier pass may launch: every one resident (one an SM), and a word for each."""
    return min(_sm_count(device), BARRIER_WORDS - 1)


def amax_reads(k: int, dynamic: bool = True) -> dict:
    """The constexprs of `numerics.small_input_scales`' unrolled reads of a row of K columns
    (AMAX_BLOCK, AMAX_CHUNKS); ones where the kernel takes no dynamic scale."""
    if not dynamic:
        return dict(AMAX_BLOCK=1, AMAX_CHUNKS=1)
    block = min(AMAX_BLOCK, triton.next_power_of_2(k))
    return dict(AMAX_BLOCK=block, AMAX_CHUNKS=cdiv(k, block))


def fuses_dynamic_scale_in_pass(m: int, k: int, row_stride: int) -> bool:
    """Whether every program of a kernel can read all of x [m, k] for max |x|: `fake_quantize_dynamic`
    (unless it takes the barrier: `dynamic_pass_barrier`) and the GEMM quantizing x (its max |x|
    pass indexes rows with 32-bit offsets, hence the bound on m * row_stride)."""
    return m <= DYNAMIC_IN_PASS_ROWS and m * k <= DYNAMIC_IN_PASS_MAX and m * row_stride < 2**31


def fake_quantize(x, global_scale, out, *, units: bool, a_order: int = 0, tiles: tuple | None = None):
    """out [M, Kp] = the NVFP4 values of x (e2m1 * e4m3, no global scale; zeros beyond K) under the
    encode scale global_scale: fp32 [1] on the device, or a `DynamicScale` (reduced here, (gs, alpha)
    written to its scales).
    units=True: fp16 in units of 2^-14 in the weight decode's K order (Triton GEMM operand);
    False: true values in out's dtype (bf16/fp16), natural order (cuBLAS operand).
    a_order 1, 2 (units only; `GemmConfig.a_order` of the GEMM that reads out): out [round_up(M, 16),
    Kp] in that 16-row MMA fragment order (`layout.mma16_offset`); rows M.. of the last tile are left
    as they are. a_order 3 (units only): [M, Kp] with the columns of each 64 moved for the weight as
    wgmma's register operand (`layout.rs_col`). tiles: (block_m, block_k, num_warps) of a static scale's
    pass on a GPU other than `pass_tiles`' (tuning: linear_bench.py --tune-pass-tiles)."""
    _fake_quantize(x, global_scale, out, units, None, a_order, tiles=tiles)
    return out


def fake_quantize_dynamic(x, weight_scale_2, out, *, units: bool, a_order: int = 0, tiles: tuple | None = None):
    """`fake_quantize` under x's dynamic scale, derived from max |x| in the same launch (the bits of
    `dynamic_gs_alpha`; x as `fuses_dynamic_scale_in_pass` allows). Returns alpha, fp32 [1] on the
    device (per-stream scratch, as `dynamic_gs_alpha`'s: read it before the next dynamic-scale call
    on this stream; the Linear's GEMM does). x: `fuses_dynamic_scale_in_pass` or `dynamic_pass_barrier`.
    tiles: (block_m, block_k, num_warps) on a GPU other than the routed ones (tuning; with the barrier, a grid
    beyond the SMs is refused: its programs could not all be resident; linear_bench.py --tune-dynamic-pass-tiles)."""
    s = scratch_of(x)
    _fake_quantize(x, weight_scale_2, out, units, s.scales, a_order, s, tiles=tiles)
    return s.alpha


def _fake_quantize(x, scale, out, units, scales, a_order=0, scratch=None, tiles=None):
    m, k = x.shape
    kp = out.shape[1]
    check_mma16(a_order, out.shape[0], m, "out")
    if a_order and not units:
        raise ValueError(f"a_order {a_order} needs units=True (the Triton GEMM's operand)")
    if m == 0:
        return
    index = x.get_device()  # CUDA device index, -1 on the CPU
    dynamic = scales is not None
    if dynamic and compile_tracing():
        m = int(m)  # torch.compile: the max |x| pass unrolls over rows (the graph specializes on M)
    plan = _fake_plan.__wrapped__ if compile_tracing() else _fake_plan  # M may be symbolic (unhashable) there
    if dynamic:
        (scale, maxima, count, scales), maxima_block = (scale, out, 0, scales), 0
    else:
        (scale, maxima, count, scales), maxima_block = scale_args(scale)
    sx = x.stride(0)
    grid, meta, options, launch_id = plan(index, m, k, kp, units, x.dtype, out.dtype, dynamic, a_order, maxima_block,
                                          x_align(k, sx), tiles)
    words = scratch.barrier_words if meta["BARRIER"] else out
    args = (x, scale, out, scales, words, maxima, count, m, k, kp, sx)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            _interpreter.interpreted(qd_module).fake_quantize_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch_fake(None, grid, args, meta, options)
    else:  # the launch key: the plan's, and what Triton specializes x on (alignment_key)
        _launch_fake((launch_id, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1), grid, args, meta, options)


_OPTIONS = dict(num_warps=4)


def pass_tiles(m: int, kp: int) -> tuple[int, int, int]:
    """(block_m, block_k, num_warps) of a static scale's pass on a GPU: up to 64 rows 16 x 64, 4 warps (each
    thread 8 elements, many short programs), else 32 x 128, 4 warps. H100, the pass alone in the layouts the
    GEMM after it reads (linear_bench.py --tune-pass-tiles, 12 tiles, results/pass_tiles_h100.csv): at M = 2-16
    (K = 3696-28672) the best on 18 of 20 rows, 1.53x faster than 32 x 128 on average (16 x 4096: 1.60 us vs
    2.62, 8 x 28672 2.19 vs 3.86); at M = 24-64 (K = 2688-8192) on 19 of 20, 1.16-2.39x faster (64 x 8192 in
    the mma16 order 2.21 vs 5.29, 32 x 2688 1.52 vs 1.86). Past 64 rows not measured."""
    return (16, 64, 4) if m <= 64 else (32, 128, 4)


@functools.lru_cache(maxsize=4096)
def _fake_plan(index, m, k, kp, units, x_dtype, out_dtype, dynamic=False, a_order=0, maxima_block=0, x_al=1,
               tiles=None):
    """Grid, constexprs, launch options and launch key of one shape (device index -1: the CPU): worked out
    once (host time per call matters). With a dynamic scale every program also reads all of x (M <= 16, x small:
    `fuses_dynamic_scale_in_pass`) or, behind the barrier, only its own tile."""
    barrier = False
    warps = _OPTIONS["num_warps"]
    if index < 0:
        block_m, block_k = min(64, triton.next_power_of_2(m)), 128
    elif dynamic and dynamic_pass_barrier(m, kp, torch.device("cuda", index)):
        # every program resident: each reads only its own tile
        block_m, block_k, barrier = 16, _barrier_block_k(m, kp, torch.device("cuda", index)), True
        if tiles is not None:
            block_m, block_k, warps = tiles
            if cdiv(m, block_m) * cdiv(kp, block_k) > _barrier_programs(torch.device("cuda", index)):
                raise ValueError(f"tiles {tiles}: the barrier pass's grid must fit the SMs")
    elif dynamic:  # every program reads all of x (M <= 16): 16 x 64 tiles, 1.09-1.44x faster than 16 x 256 on the
        # H100 (--tune-dynamic-pass-tiles: 8 x 4096 3.19 us vs 4.61, 4 x 8192 3.18 vs 4.22, 2 x 8192 2.94 vs 3.21)
        block_m, block_k, warps = tiles or (16, 64, warps)
    else:
        block_m, block_k, warps = tiles or pass_tiles(m, kp)
    grid = (cdiv(m, block_m), cdiv(kp, block_k), 1)
    meta = dict(UNITS=units, BLOCK_M=block_m, BLOCK_K=block_k, DYNAMIC=dynamic,
                AMAX_ROWS=triton.next_power_of_2(m) if dynamic and not barrier else 1,
                **amax_reads(k, dynamic and not barrier), A_ORDER=a_order, BARRIER=barrier,
                MAXIMA_BLOCK=maxima_block, X_ALIGN=x_al,
                BARRIER_SLOTS=triton.next_power_of_2(grid[0] * grid[1]) if barrier else 1)
    tail = (index, x_dtype, out_dtype, k, kp, *meta.values(), warps)  # with x's alignment: the launch key
    return grid, meta, dict(num_warps=warps), _launch_ids.setdefault(tail, len(_launch_ids))


_launch_ids: dict = {}


DEQUANTIZE_ROWS_TILE = (32, 128)  # (weight rows, columns) a program of `dequantize_rows` (and of act_cublas_operands')


def dequantize_rows(w_data, w_scale, row_begin: int, out):
    """out [rows, Kp] (bf16/fp16) = true values of weight rows row_begin .. row_begin + rows."""
    rows, kp = out.shape
    n = row_begin + rows
    block_n, block_k = DEQUANTIZE_ROWS_TILE
    grid = (cdiv(rows, block_n), cdiv(kp, block_k))
    args = (w_data, w_scale.view(torch.uint8), out, row_begin, n, kp, out.stride(0))
    meta = dict(BLOCK_N=block_n, BLOCK_K=block_k)
    if out.device.type == "cpu":
        _interpreter.interpreted(qd_module).dequantize_rows_kernel[grid](*args, **meta)
    else:
        _launch_rows((out.device.index, out.dtype, row_begin, n, kp, *alignment_key(out)), grid, args, meta,
                     dict(num_warps=4))
    return out


_launch_operands = CachedLaunch(qd_module.cublas_operands_kernel)


@dataclasses.dataclass(frozen=True)
class OperandsConfig:
    """Tiles of `cublas_operands`: x's programs [block_m, block_k], the weight's [block_n, block_k]."""
    block_m: int = 32
    block_k: int = 128
    block_n: int = 32
    num_warps: int = 4


def cublas_operands(x, global_scale, a, w_data, w_scale, w_out, *, config: OperandsConfig | None = None):
    """`fake_quantize(x, global_scale, a, units=False)` and `dequantize_rows(w_data, w_scale, 0, w_out)`
    in one launch: a [M, Ka] (Ka >= K, zeros beyond K), w_out [rows, Kp] (unit column strides).
    global_scale: fp32 [1] or a `DynamicScale` (reduced here; its alpha written for cuBLAS).
    config: the tiles (None: `operands_config`'s)."""
    m, k = x.shape
    index = x.get_device()  # CUDA device index, -1 on the CPU
    plan = _operands_plan.__wrapped__ if compile_tracing() else _operands_plan  # M may be symbolic there
    if config is None:
        config = operands_config(m, a.shape[1])
    (scale, maxima, count, scales), maxima_block = scale_args(global_scale)
    grid, ints, meta, options, launch_id = plan(index, m, k, a.shape[1], x.stride(0), *w_out.shape, w_out.stride(0),
                                                x.dtype, a.dtype, config, maxima_block, x_align(k, x.stride(0)))
    if grid[0] == 0:
        return
    args = (x, scale, maxima, count, scales, a, m, *ints[:3], w_data, w_scale, w_out, *ints[3:])
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            _interpreter.interpreted(qd_module).cublas_operands_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch_operands(None, grid, args, meta, options)
    else:  # the plan's key (dtypes, the integers' int_key, tiles) and the alignment of the tensors not allocated here
        _launch_operands((launch_id, x.data_ptr() % 16 == 0, w_data.data_ptr() % 16 == 0,
                          w_scale.data_ptr() % 16 == 0), grid, args, meta, options)


_DEFAULT_OPERANDS = OperandsConfig()
_NARROW_K_OPERANDS = OperandsConfig(32, 64, 64, 8)


def operands_config(m: int, ka: int) -> OperandsConfig:
    """The operands kernel's tiles for x [m, .] written ka wide. H100, whole layer on the cuBLAS path,
    device time (linear_bench.py --tune-operands, 36 tiles, M = 2048 / 4096 / 8192, static and dynamic;
    results/operands_tune_h100.csv): the 32x128 / 32-row, 4-warp tile is within 0.6% of the best on
    average; at K = 464 (2688x464) 64-wide K tiles (ka = 7.25 of them instead of 3.6, less of the last
    one masked off) with 64 weight rows and 8 warps are 2.6% faster on average (4096 rows: 26.6 us vs 27.3,
    no row slower by more than 0.2%)."""
    return _NARROW_K_OPERANDS if ka < 1024 and m >= 1024 else _DEFAULT_OPERANDS


@functools.lru_cache(maxsize=4096)
def _operands_plan(index, m, k, ka, sx, rows, kp, stride_wo, x_dtype, a_dtype, config, maxima_block=0, x_al=1):
    """Grid, integer arguments, constexprs, launch options and launch key of `cublas_operands` for one
    shape and config: worked out once (a and w_out are fresh allocations, 16-byte aligned)."""
    block_m, block_k, block_n = config.block_m, config.block_k, config.block_n
    a_k_tiles, w_k_tiles = cdiv(ka, block_k), cdiv(kp, block_k)
    a_programs = cdiv(m, block_m) * a_k_tiles
    grid = (a_programs + cdiv(rows, block_n) * w_k_tiles, 1, 1)
    ints = (k, ka, sx, rows, kp, stride_wo, a_programs, a_k_tiles, w_k_tiles)
    meta = dict(BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_N=block_n, MAXIMA_BLOCK=maxima_block, X_ALIGN=x_al)
    options = dict(num_warps=config.num_warps)
    if compile_tracing():
        return grid, ints, meta, options, None
    tail = (index, x_dtype, a_dtype, *(int_key(v) for v in ints), config, maxima_block, x_al)
    return grid, ints, meta, options, _launch_ids.setdefault(tail, len(_launch_ids))


_launch_epilogue = CachedLaunch(qd_module.alpha_epilogue_kernel)


def alpha_epilogue(acc, alpha, bias, out):
    """out [M, N] = alpha * acc (+ bias) rounded once to out's dtype; acc fp32 [M, N], alpha an fp32
    [1] tensor read on the device, bias [N] or None; acc and out may be column slices (unit column
    stride)."""
    m, n = out.shape
    if m == 0 or n == 0:
        return out
    index = out.get_device()  # CUDA device index, -1 on the CPU
    block_m, block_n = (16, 256) if index >= 0 else (64, 64)
    grid = (cdiv(m, block_m), cdiv(n, block_n), 1)
    args = (acc, alpha, bias if bias is not None else out, out, m, n, acc.stride(0), out.stride(0))
    meta = dict(HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n)
    if index < 0:
        _interpreter.interpreted(qd_module).alpha_epilogue_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch_epilogue(None, grid, args, meta, _OPTIONS)
    else:
        _launch_epilogue((index, out.dtype, None if bias is None else (bias.dtype, bias.data_ptr() % 16 == 0),
                          n, *alignment_key(acc), *alignment_key(out)), grid, args, meta, _OPTIONS)
    return out
