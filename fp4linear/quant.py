"""`fp4linear.quantize`: argument checking, output allocation, one kernel launch."""

from __future__ import annotations

import torch

from . import kernels, ops
from .format import QUANTIZABLE_DTYPES, NVFP4Tensor, pad_k, scale_layout


def _check_x(x, last_dim: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in QUANTIZABLE_DTYPES:
        raise TypeError(f"x must be bfloat16, float16 or float32, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have shape (..., {last_dim}) with {last_dim} >= 1, got {tuple(x.shape)}")


def _check_global_scale(global_scale, x: torch.Tensor) -> None:
    if not isinstance(global_scale, torch.Tensor):
        raise TypeError(
            f"global_scale must be a float32 torch.Tensor with one element on {x.device} "
            f"(read on the device, never on the host), got {type(global_scale).__name__}"
        )
    if global_scale.dtype != torch.float32:
        raise TypeError(f"global_scale must be float32, got {global_scale.dtype}")
    if global_scale.numel() != 1:
        raise ValueError(f"global_scale must have exactly one element, got shape {tuple(global_scale.shape)}")
    if global_scale.device != x.device:
        raise ValueError(f"global_scale is on {global_scale.device} but x is on {x.device}")


def _check_out(out, m: int, kp: int, layout, x: torch.Tensor) -> None:
    if not isinstance(out, NVFP4Tensor):
        raise TypeError(f"out must be an NVFP4Tensor, got {type(out).__name__}")
    want_scale = layout.padded_shape(m, kp)
    for name, t, shape, dtypes in (
        ("out.data", out.data, (m, kp // 2), (torch.uint8,)),
        ("out.scale", out.scale, want_scale, (torch.float8_e4m3fn, torch.uint8)),
    ):
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape} for this x, k_align and sf_layout")
        if t.dtype not in dtypes:
            raise TypeError(f"{name} has dtype {t.dtype}, expected one of {dtypes}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")


@ops.on_device_of(0)
def quantize(x: torch.Tensor, global_scale: torch.Tensor, *, k_align: int = 32, sf_layout="128x4", out=None) -> NVFP4Tensor:
    """Quantize x (..., K) to NVFP4 padded to Kp = round_up(K, k_align), in one kernel launch.

    global_scale: float32 tensor with one element on x's device, the encode scale
    gs = 448 * 6 / amax. Returns an NVFP4Tensor whose data is uint8 [M, Kp/2] and whose scales
    are float8_e4m3fn in `sf_layout` ("128x4" or "8x4"); every byte, padding included, is
    written by the kernel. `out=` takes preallocated buffers (`NVFP4Tensor.empty`), e.g. for CUDA
    graphs. No host synchronisation.
    """
    _check_x(x, "K")
    _check_global_scale(global_scale, x)
    layout = scale_layout(sf_layout)
    k = x.shape[-1]
    kp = pad_k(k, k_align)
    if x.stride(-1) != 1:
        x = x.contiguous()  # the kernel reads rows of unit stride; any row stride is fine
    x2 = x.reshape(-1, k)
    m = x2.shape[0]

    if out is None:
        data, scale = ops.quantize(x2, global_scale, k_align, layout.row_tile)
    else:
        _check_out(out, m, kp, layout, x)
        data, scale = out.data, out.scale
        kernels.pad_quantize(x2, global_scale, data, scale, sf_row_tile=layout.row_tile)
    return NVFP4Tensor(data, scale, global_scale.reshape(1), x.shape, k_align, layout)
