"""`fp4linear.Linear`: an NVFP4 linear layer whose weight is padded once, at load, for its backend.

Forward: one fused pad+quantize launch (activation padded to the backend's K, 128x4 scales), one
GEMM, output exactly [..., N] in the input's dtype. No host synchronisation.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import kernels, ops
from .backends import Backend, plan, resolve
from .format import (BLOCK_SIZE, E2M1_MAX, E4M3_MAX, QUANTIZABLE_DTYPES, SWIZZLE_128x4, NVFP4Tensor, abs_amax,
                     decode_scale)

log = logging.getLogger(__name__)



def _check_scalar(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(float(t))
    if t.numel() != 1:
        raise ValueError(f"{name} must be a scalar (one element), got shape {tuple(t.shape)}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    value = float(t.float().reshape(()))  # load time: reading it on the host is fine here
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name} must be finite and positive, got {value}")
    return t.detach().float().reshape(1)


def _check_checkpoint(weight, weight_scale, bias) -> tuple[int, int]:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be a 2-D packed NVFP4 tensor [N, K/2], got {getattr(weight, 'shape', weight)}")
    if weight.dtype not in (torch.uint8, getattr(torch, "float4_e2m1fn_x2", torch.uint8)):
        raise TypeError(f"weight must be uint8 (two E2M1 codes per byte), got {weight.dtype}")
    n, k = weight.shape[0], weight.shape[1] * 2
    if not isinstance(weight_scale, torch.Tensor) or tuple(weight_scale.shape) != (n, k // BLOCK_SIZE):
        got = tuple(weight_scale.shape) if isinstance(weight_scale, torch.Tensor) else type(weight_scale).__name__
        raise ValueError(f"weight_scale must have shape {(n, k // BLOCK_SIZE)} for weight {tuple(weight.shape)}, got {got}")
    if weight_scale.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise TypeError(f"weight_scale must be float8_e4m3fn (or its uint8 bytes), got {weight_scale.dtype}")
    if weight_scale.device != weight.device:
        raise ValueError(f"weight_scale is on {weight_scale.device} but weight is on {weight.device}")
    sb = weight_scale.view(torch.uint8)
    if bool(((sb & 0x7F) == 0x7F).any()):
        raise ValueError("weight_scale holds E4M3 NaN bytes (0x7F/0xFF): the checkpoint is corrupt")
    if bool((sb & 0x80).any()):
        raise ValueError("weight_scale holds negative block scales")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
        raise ValueError(f"bias must have shape ({n},), got {getattr(bias, 'shape', bias)}")
    return n, k


def quantize_weight(w: torch.Tensor) -> dict:
    """A BF16/FP16/FP32 weight [N, K] -> ModelOpt NVFP4 tensors, with the fused quantize kernel:
    weight uint8 [N, K16/2], weight_scale e4m3 [N, K16/16] (row-major), weight_scale_2 fp32 scalar
    (= amax / 2688, the decode scale). K16 = K rounded up to the 16-element block."""
    if w.dtype not in QUANTIZABLE_DTYPES or w.dim() != 2:
        raise TypeError(f"weight must be a 2-D bf16, fp16 or fp32 tensor, got {w.dtype} {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"weight must not be empty, got shape {tuple(w.shape)}")
    amax = abs_amax(w)
    if not bool(torch.isfinite(amax)):  # load time: one host read is fine here
        raise ValueError("weight holds NaN or Inf values: it cannot be quantized")
    weight_scale_2 = decode_scale(amax)
    gs_w = 1.0 / weight_scale_2  # the encode scale a checkpoint's weight_scale_2 implies
    q = NVFP4Tensor.empty(w.shape, k_align=BLOCK_SIZE, device=w.device)
    kernels.pad_quantize(w, gs_w, q.data, q.scale, sf_row_tile=SWIZZLE_128x4.row_tile)
    rows = SWIZZLE_128x4.unswizzle(q.scale.view(torch.uint8), w.shape[0], q.kp // BLOCK_SIZE)
    return dict(weight=q.data, weight_scale=rows.view(torch.float8_e4m3fn),
                weight_scale_2=weight_scale_2.reshape(()))


def _refresh_after_load(module, incompatible_keys) -> None:
    module._refresh_alpha_host()


class Linear(nn.Module):
    """NVFP4 W4A4 linear layer. Build with `from_modelopt` or `from_linear`.

    Buffers (all in `state_dict`): `weight` and `weight_scale` in the backend's prepared layout
    (padded to its N and K multiples), `weight_scale_2` and `input_scale` (ModelOpt's fp32 decode
    scales), `alpha` = input_scale * weight_scale_2, `input_global_scale` = 1 / input_scale, and
    `bias` when present.

    Without a static input_scale (`dynamic_input_scale=True`, what `from_linear` and `swap` do when
    none is given) each forward derives the activation's global scale from its amax on the device:
    one extra reduction over x, no host sync.
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = False, backend="auto", device=None,
                 bias_dtype=torch.bfloat16, dynamic_input_scale: bool = False):
        super().__init__()
        p = plan(out_features, in_features, backend=backend, device=device)  # validates both sizes
        self.in_features, self.out_features = in_features, out_features
        self.dynamic_input_scale = dynamic_input_scale
        self.backend: Backend = resolve(backend, device)
        b = self.backend
        self.n_padded, self.k_padded = p.n_padded, p.k_padded
        data, scale = b.prepare_weight(
            torch.zeros(self.n_padded, self.k_padded // 2, dtype=torch.uint8, device=device),
            torch.zeros(self.n_padded, self.k_padded // BLOCK_SIZE, dtype=torch.uint8, device=device),
        )
        self.register_buffer("weight", data)
        self.register_buffer("weight_scale", scale)
        for name in ("weight_scale_2", "input_scale", "alpha", "input_global_scale"):
            self.register_buffer(name, torch.ones(1, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=bias_dtype, device=device) if bias else None)
        self._triton = b.name == "triton"
        self._alpha_host = 1.0  # alpha as a Python float, for GEMMs that take it on the host (cuBLAS)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _refresh_alpha_host(self) -> None:
        self._alpha_host = float(self.alpha)  # load time: one host read
    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_modelopt(cls, weight, weight_scale, weight_scale_2, input_scale, bias=None, *, backend="auto",
                      in_features: int | None = None) -> "Linear":
        """From ModelOpt NVFP4 tensors as stored: weight uint8 [N, K/2], weight_scale e4m3 [N, K/16],
        weight_scale_2 and input_scale fp32 scalars (decode scales: 1 / global encode scale);
        input_scale=None quantizes activations with a per-call (dynamic) global scale.

        `in_features` < K when the checkpoint's K was itself padded to the 16-element block.
        Validates every tensor (clear errors naming it), pads N and K for the backend, prepares the
        backend's layout. Done once; nothing of this runs in forward.
        """
        n, k = _check_checkpoint(weight, weight_scale, bias)
        ws2 = _check_scalar("weight_scale_2", weight_scale_2).to(weight.device)
        dynamic = input_scale is None
        in_scale = torch.ones(1, device=weight.device) if dynamic else _check_scalar("input_scale", input_scale).to(weight.device)
        in_features = k if in_features is None else in_features
        if not (k - BLOCK_SIZE < in_features <= k):
            raise ValueError(f"in_features={in_features} does not fit weight with K={k}")
        layer = cls(in_features, n, bias=bias is not None, backend=backend, device=weight.device,
                    bias_dtype=bias.dtype if bias is not None else torch.bfloat16, dynamic_input_scale=dynamic)
        np_, kp = layer.n_padded, layer.k_padded
        data = torch.zeros(np_, kp // 2, dtype=torch.uint8, device=weight.device)
        data[:n, : k // 2] = weight.view(torch.uint8)
        scale = torch.zeros(np_, kp // BLOCK_SIZE, dtype=torch.uint8, device=weight.device)
        scale[:n, : k // BLOCK_SIZE] = weight_scale.view(torch.uint8)
        layer.weight, layer.weight_scale = layer.backend.prepare_weight(data, scale)
        layer.weight_scale_2.copy_(ws2)
        layer.input_scale.copy_(in_scale)
        layer.alpha.copy_(in_scale * ws2)
        layer.input_global_scale.copy_(1.0 / in_scale)
        layer._refresh_alpha_host()
        if bias is not None:
            layer.bias.copy_(bias)
        log.debug("fp4linear.Linear %s", layer.extra_repr())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, input_scale=None, backend="auto") -> "Linear":
        """Quantize an nn.Linear's weight with the same fused kernel (weight global scale from its
        amax, ModelOpt's recipe); `input_scale` is the static activation decode scale (amax / 2688),
        or None for a dynamic per-call activation scale."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        w = linear.weight.detach()
        return cls.from_modelopt(**quantize_weight(w), input_scale=input_scale,
                                 bias=linear.bias.detach() if linear.bias is not None else None,
                                 backend=backend, in_features=w.shape[1])

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in QUANTIZABLE_DTYPES:
            raise TypeError(f"x must be bf16, fp16 or fp32, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"x is on {x.device} but the layer's weights are on {self.weight.device}")
        x2 = x.reshape(-1, self.in_features)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        if self._triton:
            out = ops.linear(x2, self.weight, self.weight_scale, self.input_global_scale, self.alpha, self.weight_scale_2,
                             self.bias, self.out_features, self.dynamic_input_scale, self._alpha_host)
        else:
            self.backend.check_available(x.device)
            global_scale, alpha = self.input_global_scale, self.alpha
            if self.dynamic_input_scale:
                scales = kernels.dynamic_scales(x2, self.weight_scale_2)
                global_scale, alpha = scales[0:1], scales[1:2]
            a_data, a_scale = ops.quantize(x2, global_scale, self.k_padded, SWIZZLE_128x4.row_tile)
            out = self.backend.gemm(a_data, a_scale, self.weight, self.weight_scale, alpha, self.bias,
                                    self.out_features, x.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"padded=({self.n_padded}, {self.k_padded}), backend={self.backend.name}, bias={self.bias is not None}"
                + (", dynamic_input_scale=True" if self.dynamic_input_scale else ""))


__all__ = ["Linear", "quantize_weight"]
