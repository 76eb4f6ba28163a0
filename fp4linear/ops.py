"""The kernels as torch.library custom ops, so `torch.compile(fullgraph=True)` can trace them.

Eager calls go straight to the launchers (a custom-op dispatch costs host time that decode-size
calls feel); traced calls go through the registered ops and their fake implementations.
"""

from __future__ import annotations

import torch

from . import kernels
from .format import SCALE_LAYOUTS, pad_k


def _scale_shape(m: int, kp: int, row_tile: int) -> tuple[int, int]:
    return _LAYOUT_BY_ROW_TILE[row_tile].padded_shape(m, kp)


_LAYOUT_BY_ROW_TILE = {layout.row_tile: layout for layout in SCALE_LAYOUTS.values()}


def _quantize_impl(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int):
    m, k = x.shape
    kp = pad_k(k, k_align)
    data = torch.empty((m, kp // 2), dtype=torch.uint8, device=x.device)
    scale = torch.empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn, device=x.device)
    kernels.pad_quantize(x, global_scale, data, scale, sf_row_tile=sf_row_tile)
    return data, scale


@torch.library.custom_op("fp4linear::quantize", mutates_args=())
def _quantize_op(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_impl(x, global_scale, k_align, sf_row_tile)


@_quantize_op.register_fake
def _(x, global_scale, k_align, sf_row_tile):
    m, k = x.shape
    kp = pad_k(k, k_align)
    return (x.new_empty((m, kp // 2), dtype=torch.uint8),
            x.new_empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn))


def quantize(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int = 128):
    """x [M, K] (unit column stride) -> (data uint8 [M, Kp/2], swizzled scale e4m3)."""
    if torch.compiler.is_compiling():
        return torch.ops.fp4linear.quantize(x, global_scale, k_align, sf_row_tile)
    return _quantize_impl(x, global_scale, k_align, sf_row_tile)


def _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
    out = torch.empty((a_data.shape[0], n), dtype=out_dtype, device=a_data.device)
    return kernels.nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, out)


@torch.library.custom_op("fp4linear::nvfp4_gemm", mutates_args=())
def _gemm_op(a_data: torch.Tensor, a_scale: torch.Tensor, w_data: torch.Tensor, w_scale: torch.Tensor,
             alpha: torch.Tensor, bias: torch.Tensor | None, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)


@_gemm_op.register_fake
def _(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
    return a_data.new_empty((a_data.shape[0], n), dtype=out_dtype)


def nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    """alpha * dequant(A) @ dequant(W)^T (+ bias) -> [M, n] of out_dtype."""
    if torch.compiler.is_compiling():
        return torch.ops.fp4linear.nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)
    return _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)
