"""`fp4linear.act_quantize` (activation fused with NVFP4 quantization) and `fp4linear.activation`
(the same activation, unfused): argument checking, output allocation, the launches.

The activation is computed in fp32 and rounded once to x's dtype, then quantized; for gated acts
(x = [gate, up] along the last dimension, the vLLM/FlashInfer layout) act(gate.float()) *
up.float() is rounded once, as FlashInfer's silu_and_mul does (vLLM's CUDA op also rounds
silu(gate) to the dtype before the multiply, one more rounding). The torch expressions with the
same numerics (fp32 transcendentals may differ by an ulp):

    silu_mul       (F.silu(g.float()) * u.float()).to(x.dtype)
    gelu_tanh_mul  (F.gelu(g.float(), approximate="tanh") * u.float()).to(x.dtype)
    relu2          (F.relu(x.float()) ** 2).to(x.dtype)
    gelu           F.gelu(x.float()).to(x.dtype)            (exact erf GELU)
    silu           F.silu(x.float()).to(x.dtype)
"""

from __future__ import annotations

import torch

from . import kernels, ops
from .format import NVFP4Tensor, pad_k, scale_layout
from .quant import _check_global_scale, _check_out, _check_x

ACTS = tuple(kernels.ACTS)
GATED_ACTS = tuple(name for name, (_, gated) in kernels.ACTS.items() if gated)


def _check_x_act(x, act: str) -> int:
    """-> I, the activation's width."""
    _check_x(x, "width")
    return kernels.act_width(act, x.shape[-1])


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()  # the kernels read rows of unit stride; any row stride is fine
    return x.reshape(-1, x.shape[-1])


@ops.on_device_of(0)
def activation(x: torch.Tensor, act: str) -> torch.Tensor:
    """act(x) in x's dtype, [..., I] (gated: x = [..., 2I]): the unfused path, one Triton launch,
    the numerics `act_quantize` quantizes."""
    i = _check_x_act(x, act)
    x2 = _rows(x)
    out = torch.empty((x2.shape[0], i), dtype=x.dtype, device=x.device)
    kernels.activation(x2, act, out)
    return out.reshape(*x.shape[:-1], i)


@ops.on_device_of(0)
def act_quantize(x: torch.Tensor, global_scale: torch.Tensor | None, *, act: str, k_align: int = 32,
                 sf_layout="128x4", out: NVFP4Tensor | None = None) -> NVFP4Tensor:
    """NVFP4 of act(x), [..., I] padded to Ip = round_up(I, k_align): the bits of
    `quantize(activation(x, act), global_scale, ...)` without the activation's round trip to memory.

    act: "silu_mul", "gelu_tanh_mul" (gated: x is [..., 2I], gate = x[..., :I], up = x[..., I:]),
    "relu2", "gelu", "silu" (x is [..., I]). global_scale: the fp32 encode scale (one element on
    x's device), one launch; or None: the encode scale 2688 / amax is computed on the device (amax
    = max |act(x)| over finite values, >= 1e-30; NaN/Inf only poison their own blocks, as in
    `quantize`), two launches, no host sync, and returned as the result's global_scale (written
    into out.global_scale when `out` is given). Layouts, padding, NaN/Inf and `out=` as `quantize`.
    """
    i = _check_x_act(x, act)
    dynamic = global_scale is None
    if not dynamic:
        _check_global_scale(global_scale, x)
    layout = scale_layout(sf_layout)
    ip = pad_k(i, k_align)
    x2 = _rows(x)
    m = x2.shape[0]
    shape = torch.Size((*x.shape[:-1], i))
    if out is None:
        data = torch.empty((m, ip // 2), dtype=torch.uint8, device=x.device)
        scale = torch.empty(layout.padded_shape(m, ip), dtype=torch.float8_e4m3fn, device=x.device)
        gs = torch.empty(1, dtype=torch.float32, device=x.device) if dynamic else global_scale.reshape(1)
    else:
        _check_out(out, m, ip, layout, x)
        data, scale = out.data, out.scale
        if dynamic:
            gs = out.global_scale
            if gs.dtype != torch.float32 or gs.numel() != 1 or gs.device != x.device:
                raise ValueError("out.global_scale must be a float32 tensor with one element on x's device "
                                 "(the dynamic encode scale is written there)")
        else:
            gs = global_scale.reshape(1)
    kernels.act_pad_quantize(x2, act, gs, data, scale, sf_row_tile=layout.row_tile, dynamic=dynamic)
    return NVFP4Tensor(data, scale, gs.reshape(1), shape, k_align, layout)
