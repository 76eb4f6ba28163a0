"""Launchers of the activation kernels: act_quantize (fused, 1 launch static / 2 dynamic),
act_fake_quantize (fused, dequantized values for the down GEMM; act_cublas_operands: with the down weight's
first cuBLAS chunk) and activation (unfused)."""

import functools
from dataclasses import dataclass

import numpy as np
import torch
import triton

from . import _interpreter
from . import act_quantize as act_module
from .maxima import scale_args
from .launch import CachedLaunch, cdiv, compile_tracing, int_key, next_pow2, x_multiples
from .layout import check_mma16
from .quant_dequant_launch import DEQUANTIZE_ROWS_TILE
from .quantize_launch import MEASURED_VARIANTS, QuantConfig, kernel_meta, quant_config

# name -> (ACT code in kernels/act_quantize.py, gated)
ACTS = {"silu_mul": (0, True), "gelu_tanh_mul": (1, True), "relu2": (2, False), "gelu": (3, False), "silu": (4, False)}


def act_width(act: str, width: int) -> int:
    """Columns of act(x) for x of `width` columns (a gated act halves them: x = [gate, up]); a clear
    error for an unknown act or a gated act's odd width."""
    if act not in ACTS:
        raise ValueError(f"act must be one of {tuple(ACTS)}, got {act!r}")
    if not ACTS[act][1]:
        return width
    if width % 2:
        raise ValueError(f"x's last dimension must be even for the gated act {act!r} (an even number of columns: "
                         f"[gate, up]), got {width}")
    return width // 2


@dataclass(frozen=True)
class AmaxConfig:
    block_m: int
    block_k: int
    num_warps: int
    max_partials: int  # per-program maxima the quantize programs each reduce (every one reads all)


def amax_config(device_type: str) -> AmaxConfig:
    if device_type == "cpu":
        return AmaxConfig(64, 1024, 4, 16)
    # 256 programs of 16 x 512 tiles keep ~2 CTAs per SM streaming at M >= 4096, and cost each
    # quantize program a 1 KB read of the maxima (L2)
    return AmaxConfig(16, 512, 8, 256)


def act_quant_config(m: int, ip: int, gated: bool, device_type: str) -> QuantConfig:
    """Tiles of `act_pad_quantize`: the quantize kernel's, except for gated acts past decode, which
    read 4 bytes per output element (gate and up) where quantize reads 2. H100 (act_quant_bench.py
    --configs, silu_mul, every tile checked bit for bit): 4 x 512, 4 warps, 16384x3696 100.3 us vs
    108.3 with quantize's 16 x 128, 2 warps; 4096x3696 28.6 vs 32.2; 16384x1368 41.2 vs 44.4; 4096x1368
    10.5 vs 11.3; narrow I 8 x 128, 4 warps: 4096x232 3.25 vs 3.63. (Plain acts at 4096x3696 lost with
    4 x 512: relu2 22.8 us vs 19.8, silu 23.5 vs 20.5: quantize's tiles for them.)"""
    if device_type == "cpu" or m <= 16 or not gated:
        return quant_config(m, ip, device_type)
    if ip >= 512:
        return QuantConfig(4, 512, 4, **MEASURED_VARIANTS)
    return QuantConfig(8, 128, 4, **MEASURED_VARIANTS)


def _multiples(x, width):
    return x_multiples(width, x.stride(0), x.shape[0])


def _run(launch, args, meta, device):
    if device.type == "cpu":
        # 1 / 0 -> inf is part of the recipe (a block whose scale rounds to 0): numpy must not warn.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            launch(*args, **meta)
    else:
        launch(*args, **meta)


def act_pad_quantize(x, act: str, global_scale, data, scale, *, sf_row_tile: int, dynamic: bool,
                     config: QuantConfig | None = None, amax: AmaxConfig | None = None):
    """x [M, W] (unit column stride; W = 2I gated, I plain) -> data [M, Ip/2] and swizzled scale
    [rows, S4] of act(x); Ip is read off `data`. Static: `global_scale` is read. Dynamic: the encode
    scale 2688 / max(finite |act(x)|, 1e-30) is computed on the device and written to
    `global_scale` (fp32, one element). Writes every byte of both outputs."""
    code, gated = ACTS[act]
    m, width = x.shape
    i = act_width(act, width)
    ip = data.shape[1] * 2
    scale_rows, s4 = scale.shape
    if config is None:
        config = act_quant_config(m, ip, gated, x.device.type)
    i_mult, xm_mult = _multiples(x, i)
    n_k = cdiv(s4 * 16, config.block_k)
    n_m = cdiv(scale_rows, config.block_m)
    mod = _interpreter.for_device(act_module, x.device)
    partials, n_partials = global_scale, 1  # unused unless dynamic
    if dynamic:
        amax = amax or amax_config(x.device.type)
        ak = max(1, cdiv(i, amax.block_k))
        am = max(1, min(cdiv(m, amax.block_m), amax.max_partials // ak))
        n_partials = ak * am
        partials = torch.empty(n_partials, dtype=torch.float32, device=x.device)
        _run(mod.act_amax_kernel[(ak, am)],
             (x, partials, m, i // i_mult, x.stride(0) // xm_mult),
             dict(I_MULT=i_mult, XM_MULT=xm_mult, ACT=code, GATED=gated, BF16_BITS=x.device.type == "cpu", BLOCK_M=amax.block_m,
                  BLOCK_K=amax.block_k, num_warps=amax.num_warps), x.device)
    if n_k == 0 or n_m == 0:
        if dynamic:  # no programs to write the scale: the same division on the device
            amax_t = partials.max().clamp(min=1e-30).reshape(1)
            global_scale.copy_(torch.full_like(amax_t, 2688.0) / amax_t)
        return
    meta = kernel_meta(config, k=i, stride=x.stride(0), m=m, sf_row_tile=sf_row_tile)
    if meta["ONE_PAD_TILE"]:
        real = cdiv(m, config.block_m)
        n_m = real + (scale_rows > real * config.block_m)
    grid = (n_k, min(n_m, 65535), cdiv(n_m, 65535))
    args = (x, global_scale, partials, data, scale.view(dtype=data.dtype), m, i // i_mult, x.stride(0) // xm_mult,
            ip // 16, n_partials)
    meta = dict(I_MULT=i_mult, XM_MULT=xm_mult, SF_ROW_TILE=sf_row_tile, ACT=code, GATED=gated,
                BF16_BITS=x.device.type == "cpu", DYNAMIC=dynamic,
                PARTIALS=next_pow2(n_partials), BLOCK_M=config.block_m, BLOCK_K=config.block_k,
                ONE_PAD_TILE=meta["ONE_PAD_TILE"], HALVES=meta["HALVES"], num_warps=config.num_warps,
                enable_fp_fusion=False)  # IEEE ops in torch's order: no FMA contraction
    _run(mod.act_quantize_kernel[grid], args, meta, x.device)


def activation(x, act: str, out):
    """out [M, I] = act(x [M, W]) in x's dtype (fp32 math, one rounding): the unfused path."""
    code, gated = ACTS[act]
    m, width = x.shape
    i = out.shape[1]
    if m == 0 or i == 0:
        return
    if x.device.type == "cpu":
        bm, bn, warps = min(64, triton.next_power_of_2(m)), min(2048, triton.next_power_of_2(i)), 4
    else:
        bm, bn, warps = 4, 1024, 4
    i_mult, xm_mult = _multiples(x, i)
    grid = (cdiv(i, bn), cdiv(m, bm))
    _run(_interpreter.for_device(act_module, x.device).activation_kernel[grid],
         (x, out, m, i // i_mult, x.stride(0) // xm_mult, out.stride(0)),
         dict(I_MULT=i_mult, XM_MULT=xm_mult, ACT=code, GATED=gated, BF16_BITS=x.device.type == "cpu", BLOCK_M=bm,
              BLOCK_N=bn, num_warps=warps,
              enable_fp_fusion=False), x.device)


_launch_fake = CachedLaunch(act_module.act_fake_quantize_kernel)


def act_fake_quantize(x, act: str, global_scale, out, *, units: bool, a_order: int = 0, tiles: tuple | None = None):
    """out [M, Kp] = the NVFP4 values of act(x [M, W]) under the encode scale `global_scale` (fp32
    [1], read on the device, or a `DynamicScale` of act(x): reduced here, (gs, alpha) written to its
    scales): e2m1 * e4m3 without the global scale, zeros beyond I. units=True:
    fp16 in units of 2^-14 in the weight decode's K order (the Triton GEMM's dequantized A); False:
    true values in out's dtype (bf16/fp16), natural order (cuBLAS). `kernels.fake_quantize` of
    `activation(x)`, in one pass that never writes the activation. a_order 1, 2 (units only): out
    [round_up(M, 16), Kp] in that MMA fragment order, as `fake_quantize`'s. tiles: (block_m, block_k,
    num_warps) other than `fake_tiles`' (tuning: act_quant_bench.py --fake-configs)."""
    m, width = x.shape
    kp = out.shape[1]
    check_mma16(a_order, out.shape[0], m, "out")
    if a_order and not units:
        raise ValueError(f"a_order {a_order} needs units=True (the Triton GEMM's operand)")
    if m == 0:
        return out
    index = x.get_device()  # CUDA device index, -1 on the CPU
    sx = x.stride(0)
    plan = _fake_plan.__wrapped__ if compile_tracing() else _fake_plan  # M may be symbolic (unhashable) there
    scale, maxima_block = scale_args(global_scale)
    grid, meta, (i_div, xm_div), options, launch_id = plan(index, m, act, width, sx, kp, units, x.dtype, out.dtype,
                                                           a_order, maxima_block, tiles)
    args = (x, *scale, out, m, i_div, xm_div, kp)
    if index < 0:
        _run(_interpreter.interpreted(act_module).act_fake_quantize_kernel[grid], args, meta, x.device)
    elif compile_tracing():
        _launch_fake(None, grid, args, meta, options)
    else:  # the plan's launch key and x's alignment (its row stride is in the plan)
        _launch_fake((launch_id, x.data_ptr() % 16 == 0), grid, args, meta, options)
    return out


_FAKE_OPTIONS = dict(num_warps=4, enable_fp_fusion=False)  # the activation's IEEE ops in torch's order, as
# `activation` computes them (no FMA contraction; under torch.compile Inductor uses its own options)


def fake_tiles(m: int, kp: int, units: bool) -> tuple[int, int, int]:
    """(block_m, block_k, num_warps) of `act_fake_quantize` on a GPU. True values for cuBLAS (units False):
    8 x 128, 2 warps. H100, silu_mul, static scale, bf16 values (act_quant_bench.py --fake-configs, 14 tiles,
    results/act_fake_tiles_h100.csv): the best or within 1% of it on every shape measured, against 32 x 128,
    4 warps (`fake_quantize`'s, the tile before): 4096x1368 12.7 us vs 16.1 (88% of copy), 16384x1368 53.3 vs
    67.9, 2048x1368 7.07 vs 8.75, 4096x232 3.98 vs 4.63, 4096x3696 36.4 vs 37.8, 16384x3696 138 vs 140.
    The Triton GEMM's operand (units, the decode and mid-M rows) keeps `fake_quantize`'s tiles (not measured)."""
    return (32, 128, 4) if units else (8, 128, 2)


def _act_pass(index, m, act, width, stride, kp, units, tiles):
    """What both activation-pass plans take: (ACT code, gated, I, I's and the row stride's multiples, (block_m,
    block_k, num_warps)); the CPU's tiles on device index -1."""
    code, gated = ACTS[act]
    i = act_width(act, width)
    i_mult, xm_mult = x_multiples(i, stride, m)
    cpu_tiles = (min(64, triton.next_power_of_2(m)), 128, 4)
    return code, gated, i, i_mult, xm_mult, cpu_tiles if index < 0 else tiles or fake_tiles(m, kp, units)


_launch_operands = CachedLaunch(act_module.act_cublas_operands_kernel)


def act_cublas_operands(x, act: str, global_scale, a, w_data, w_scale, w_out, *, tiles: tuple | None = None):
    """`act_fake_quantize(x, act, global_scale, a, units=False)` and `dequantize_rows(w_data, w_scale, 0, w_out)`
    in one launch (GatedMLP's down projection on the cuBLAS path): a [M, Ka] (Ka >= I, zeros beyond I), w_out
    [rows, Kp] (unit column strides). global_scale: fp32 [1] or a `DynamicScale` of act(x). tiles: the
    activation's (block_m, block_k, num_warps), as `act_fake_quantize` takes them."""
    m, width = x.shape
    if m == 0:
        return
    index = x.get_device()  # CUDA device index, -1 on the CPU
    plan = _operands_plan.__wrapped__ if compile_tracing() else _operands_plan  # M may be symbolic there
    scale, maxima_block = scale_args(global_scale)
    grid, meta, ints, options, launch_id = plan(index, m, act, width, x.stride(0), a.shape[1], *w_out.shape,
                                                w_out.stride(0), x.dtype, a.dtype, maxima_block, tiles)
    args = (x, *scale, a, m, *ints[:3], w_data, w_scale, w_out, *ints[3:])
    if index < 0:
        _run(_interpreter.interpreted(act_module).act_cublas_operands_kernel[grid], args, meta, x.device)
    elif compile_tracing():
        _launch_operands(None, grid, args, meta, options)
    else:  # the plan's key and the alignment of the tensors not allocated here
        _launch_operands((launch_id, x.data_ptr() % 16 == 0, w_data.data_ptr() % 16 == 0,
                          w_scale.data_ptr() % 16 == 0), grid, args, meta, options)


@functools.lru_cache(maxsize=4096)
def _operands_plan(index, m, act, width, stride, ka, rows, kp, stride_wo, x_dtype, a_dtype, maxima_block=0,
                   tiles=None):
    """Grid, constexprs, integer arguments, launch options and launch key of `act_cublas_operands`."""
    code, gated, i, i_mult, xm_mult, (block_m, block_k, warps) = _act_pass(index, m, act, width, stride, ka, False,
                                                                           tiles)
    block_n, w_block_k = DEQUANTIZE_ROWS_TILE  # (the weight's tile: `dequantize_rows`')
    a_k_tiles, w_k_tiles = cdiv(ka, block_k), cdiv(kp, w_block_k)
    a_programs = cdiv(m, block_m) * a_k_tiles
    grid = (a_programs + cdiv(rows, block_n) * w_k_tiles, 1, 1)
    ints = (i // i_mult, stride // xm_mult, ka, rows, kp, stride_wo, a_programs, a_k_tiles, w_k_tiles)
    meta = dict(I_MULT=i_mult, XM_MULT=xm_mult, ACT=code, GATED=gated, BF16_BITS=index < 0, BLOCK_M=block_m,
                BLOCK_K=block_k, BLOCK_N=block_n, W_BLOCK_K=w_block_k, MAXIMA_BLOCK=maxima_block)
    options = dict(_FAKE_OPTIONS, num_warps=warps)
    if compile_tracing():
        return grid, meta, ints, options, None
    tail = ("operands", index, x_dtype, a_dtype, *(int_key(v) for v in ints), *meta.values(), warps)
    return grid, meta, ints, options, _launch_ids.setdefault(tail, len(_launch_ids))


@functools.lru_cache(maxsize=4096)
def _fake_plan(index, m, act, width, stride, kp, units, x_dtype, out_dtype, a_order=0, maxima_block=0, tiles=None):
    """Grid, constexprs, integer arguments, launch options and launch key of one shape (device index -1: the
    CPU): worked out once (host time per call matters)."""
    code, gated, i, i_mult, xm_mult, (block_m, block_k, warps) = _act_pass(index, m, act, width, stride, kp, units,
                                                                           tiles)
    grid = (cdiv(m, block_m), cdiv(kp, block_k), 1)
    meta = dict(I_MULT=i_mult, XM_MULT=xm_mult, ACT=code, GATED=gated, BF16_BITS=index < 0, UNITS=units,
                BLOCK_M=block_m, BLOCK_K=block_k, A_ORDER=a_order, MAXIMA_BLOCK=maxima_block)
    ints = (i // i_mult, stride // xm_mult)
    options = dict(_FAKE_OPTIONS, num_warps=warps)
    tail = (index, x_dtype, out_dtype, *(int_key(v) for v in (*ints, kp)), *meta.values(), warps)  # with x's alignment
    return grid, meta, ints, options, _launch_ids.setdefault(tail, len(_launch_ids))


_launch_ids: dict = {}
