"""`fp4linear.Linear`: an NVFP4 linear layer whose weight is padded once, at load, for its backend.

Forward: one fused pad+quantize launch (activation padded to the backend's K, 128x4 scales), one
GEMM, output exactly [..., N] in the input's dtype. No host synchronisation.
"""

from __future__ import annotations

import logging
import operator

import torch
from torch import nn

from . import kernels, ops
from .backends import Backend, plan, resolve
from .checkpoint import COMPRESSED_TENSORS, MODELOPT, Format, check_packed, linear_scales
from .format import BLOCK_SIZE, QUANTIZABLE_DTYPES, SWIZZLE_128x4, NVFP4Tensor, abs_amax, decode_scale

log = logging.getLogger(__name__)


@ops.on_device_of(0)
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


_X_DTYPES = frozenset(QUANTIZABLE_DTYPES)
# What forward reads from the buffer dict, in one C call.
_FORWARD_BUFFERS = operator.itemgetter("weight", "weight_scale", "input_global_scale", "alpha", "weight_scale_2",
                                       "bias")


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
        return cls._from_checkpoint(MODELOPT, weight, weight_scale, weight_scale_2, input_scale, bias,
                                    backend=backend, in_features=in_features)

    @classmethod
    def from_compressed_tensors(cls, weight_packed, weight_scale, weight_global_scale, input_global_scale,
                                bias=None, *, backend="auto", in_features: int | None = None) -> "Linear":
        """From compressed-tensors `nvfp4-pack-quantized` tensors as stored: weight_packed uint8
        [N, K/2] (same codes and nibble order as ModelOpt), weight_scale e4m3 [N, K/16],
        weight_global_scale and input_global_scale fp32 encode scales (2688 / amax, the inverses of
        ModelOpt's). input_global_scale is used as stored to quantize activations;
        input_global_scale=None quantizes them with a per-call (dynamic) global scale.
        """
        return cls._from_checkpoint(COMPRESSED_TENSORS, weight_packed, weight_scale, weight_global_scale,
                                    input_global_scale, bias, backend=backend, in_features=in_features)

    @classmethod
    def _from_checkpoint(cls, fmt: Format, weight, weight_scale, weight_global, input_global, bias, *, backend,
                         in_features) -> "Linear":
        n, k = check_packed(weight, weight_scale, bias, fmt=fmt)
        scales = linear_scales(fmt, weight_global, input_global, weight.device)
        dynamic = input_global is None
        in_features = k if in_features is None else in_features
        if not (k - BLOCK_SIZE < in_features <= k):
            raise ValueError(f"in_features={in_features} does not fit {fmt.weight} with K={k}")
        layer = cls(in_features, n, bias=bias is not None, backend=backend, device=weight.device,
                    bias_dtype=bias.dtype if bias is not None else torch.bfloat16, dynamic_input_scale=dynamic)
        np_, kp = layer.n_padded, layer.k_padded
        data = torch.zeros(np_, kp // 2, dtype=torch.uint8, device=weight.device)
        data[:n, : k // 2] = weight.view(torch.uint8)
        scale = torch.zeros(np_, kp // BLOCK_SIZE, dtype=torch.uint8, device=weight.device)
        scale[:n, : k // BLOCK_SIZE] = weight_scale.view(torch.uint8)
        layer.weight, layer.weight_scale = layer.backend.prepare_weight(data, scale)
        for name, value in scales.items():
            if value is not None:  # dynamic: the activation scalars stay 1 (forward derives its own)
                getattr(layer, name).copy_(value)
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
    # Host time matters here: a decode-sized call's kernels run in microseconds, so the checks are
    # cheap ones (a frozenset, device indices), the buffers come from the live buffer dict in one C
    # call (nn.Module.__getattr__ costs about 0.5 us a buffer; reading `_buffers` itself, never a
    # copy, stays right after .to(), load_state_dict, reassignment or functional_call), and a
    # 2-D input with unit column stride is used as it is (no reshapes).
    def _forward_buffers(self, compiling: bool) -> tuple:
        """(weight, weight_scale, input_global_scale, alpha, weight_scale_2, bias) for a forward."""
        if compiling:  # plain attributes, as torch.compile traces them
            return (self.weight, self.weight_scale, self.input_global_scale, self.alpha, self.weight_scale_2,
                    self.bias)
        return _FORWARD_BUFFERS(self._buffers)

    @ops.on_device_of(1)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _X_DTYPES:
            raise TypeError(f"x must be bf16, fp16 or fp32, got {x.dtype}")
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"x must have shape (..., {self.in_features}), got {tuple(shape)}")
        compiling = torch.compiler.is_compiling()
        weight, weight_scale, gs, alpha, weight_scale_2, bias = self._forward_buffers(compiling)
        index = x.get_device()  # -1 off CUDA: then the devices themselves are compared
        if index != weight.get_device() or (index < 0 and x.device != weight.device):
            raise ValueError(f"x is on {x.device} but the layer's weights are on {weight.device}")
        if len(shape) == 2 and x.stride(1) == 1:
            x2 = x
        else:
            x2 = x.reshape(-1, self.in_features)
            if x2.stride(-1) != 1:
                x2 = x2.contiguous()
        n = self.out_features
        if self._triton:
            out = (ops.linear if compiling else ops.triton_linear)(
                x2, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, self.dynamic_input_scale,
                self._alpha_host)
        else:
            self.backend.check_available(x.device)
            if self.dynamic_input_scale:
                gs, alpha = kernels.dynamic_gs_alpha(x2, weight_scale_2)
            a_data, a_scale = ops.quantize(x2, gs, self.k_padded, SWIZZLE_128x4.row_tile)
            out = self.backend.gemm(a_data, a_scale, weight, weight_scale, alpha, bias, n, x.dtype)
        return out if len(shape) == 2 else out.reshape(*shape[:-1], n)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"padded=({self.n_padded}, {self.k_padded}), backend={self.backend.name}, bias={self.bias is not None}"
                + (", dynamic_input_scale=True" if self.dynamic_input_scale else ""))


__all__ = ["Linear", "quantize_weight"]
