"""Launchers of the quantize-dequantize pass and of the weight-row dequantization."""

from __future__ import annotations

import functools

import numpy as np
import torch
import triton

from . import _interpreter
from . import quant_dequant as qd_module
from .launch import CachedLaunch, alignment_key, compile_tracing

_launch_fake = CachedLaunch(qd_module.fake_quantize_kernel)
_launch_rows = CachedLaunch(qd_module.dequantize_rows_kernel)


def fake_quantize(x, global_scale, out, *, units: bool):
    """out [M, Kp] = the NVFP4 values of x (e2m1 * e4m3, no global scale; zeros beyond K).
    units=True: fp16 in units of 2^-14 in the weight decode's K order (Triton GEMM operand);
    False: true values in out's dtype (bf16/fp16), natural order (cuBLAS operand)."""
    m, k = x.shape
    kp = out.shape[1]
    if m == 0:
        return out
    index = x.get_device()  # CUDA device index, -1 on the CPU
    plan = _fake_plan.__wrapped__ if compile_tracing() else _fake_plan  # M may be symbolic (unhashable) there
    grid, meta, launch_id = plan(index, m, k, kp, units, x.dtype, out.dtype)
    sx = x.stride(0)
    args = (x, global_scale, out, m, k, kp, sx)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            _interpreter.interpreted(qd_module).fake_quantize_kernel[grid](*args, **meta)
    elif compile_tracing():
        _launch_fake(None, grid, args, meta, _OPTIONS)
    else:  # the launch key: the plan's, and what Triton specializes x on (alignment_key)
        _launch_fake((launch_id, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1), grid, args, meta, _OPTIONS)
    return out


_OPTIONS = dict(num_warps=4)


@functools.lru_cache(maxsize=4096)
def _fake_plan(index, m, k, kp, units, x_dtype, out_dtype):
    """Grid, constexprs and launch key of one shape (device index -1: the CPU): worked out once
    (host time per call matters)."""
    block_m, block_k = (32, 128) if index >= 0 else (min(64, triton.next_power_of_2(m)), 128)
    grid = (triton.cdiv(m, block_m), triton.cdiv(kp, block_k), 1)
    tail = (index, x_dtype, out_dtype, k, kp, units)  # with x's alignment: the launch key
    return grid, dict(UNITS=units, BLOCK_M=block_m, BLOCK_K=block_k), _launch_ids.setdefault(tail, len(_launch_ids))


_launch_ids: dict = {}


def dequantize_rows(w_data, w_scale, row_begin: int, out):
    """out [rows, Kp] (bf16/fp16) = true values of weight rows row_begin .. row_begin + rows."""
    rows, kp = out.shape
    n = row_begin + rows
    block_n, block_k = 32, 128
    grid = (triton.cdiv(rows, block_n), triton.cdiv(kp, block_k))
    args = (w_data, w_scale.view(torch.uint8), out, row_begin, n, kp, out.stride(0))
    meta = dict(BLOCK_N=block_n, BLOCK_K=block_k)
    if out.device.type == "cpu":
        _interpreter.interpreted(qd_module).dequantize_rows_kernel[grid](*args, **meta)
    else:
        _launch_rows((out.device.index, out.dtype, row_begin, n, kp, *alignment_key(out)), grid, args, meta,
                     dict(num_warps=4))
    return out


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
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n), 1)
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
