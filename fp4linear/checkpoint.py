"""What a packed NVFP4 checkpoint layer holds, in the two formats fp4linear reads, and the checks
every such layer passes. One home: `Linear.from_modelopt` / `Linear.from_compressed_tensors` and the
loader (`fp4linear.load`) all validate through `check_packed` and `check_scalar`.

Both formats store the same codes (E2M1, two per byte, element 2i in the low nibble) and the same
row-major E4M3 block scales; they differ in tensor names and in which way the two fp32 scalars point
(docs/checkpoints.md):

- ModelOpt: `weight`, `weight_scale`, `weight_scale_2`, `input_scale`; the scalars are decode scales
  (amax / 2688).
- compressed-tensors `nvfp4-pack-quantized`: `weight_packed`, `weight_scale`, `weight_global_scale`,
  `input_global_scale`; the scalars are encode scales (2688 / amax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .format import BLOCK_SIZE


@dataclass(frozen=True)
class Format:
    """Tensor names of one quantized Linear in a checkpoint format, and its `Linear` constructor."""

    name: str
    weight: str  # packed E2M1 codes, uint8 [N, K/2]
    weight_scale: str  # E4M3 block scales, [N, K/16]
    weight_global: str  # fp32 scalar
    input_global: str  # fp32 scalar
    global_is_encode: bool  # the scalars are 2688 / amax (else amax / 2688)
    constructor: str  # the `fp4linear.Linear` classmethod taking these tensors by name

    @property
    def tensors(self) -> tuple[str, str, str, str]:
        return self.weight, self.weight_scale, self.weight_global, self.input_global


MODELOPT = Format("modelopt", "weight", "weight_scale", "weight_scale_2", "input_scale",
                  global_is_encode=False, constructor="from_modelopt")
COMPRESSED_TENSORS = Format("compressed-tensors", "weight_packed", "weight_scale", "weight_global_scale",
                            "input_global_scale", global_is_encode=True, constructor="from_compressed_tensors")


def check_scalar(name: str, t) -> torch.Tensor:
    """A finite positive fp32 scalar as a float32 [1] tensor on t's device."""
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


def check_packed(weight, weight_scale, bias=None, *, fmt: Format = MODELOPT) -> tuple[int, int]:
    """Validate a packed layer (names in messages as `fmt` calls the tensors); returns (N, K).

    K = 2 * weight.shape[1] must be a multiple of 16 (exporters pad K to the block) and weight_scale
    must be [N, K/16], one scale for every block: a K that ends mid-block would leave codes without
    a scale.
    """
    w_name, s_name = fmt.weight, fmt.weight_scale
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"{w_name} must be a 2-D packed NVFP4 tensor [N, K/2], got {getattr(weight, 'shape', weight)}")
    if weight.dtype not in (torch.uint8, getattr(torch, "float4_e2m1fn_x2", torch.uint8)):
        raise TypeError(f"{w_name} must be uint8 (two E2M1 codes per byte), got {weight.dtype}")
    n, k = weight.shape[0], weight.shape[1] * 2
    got = tuple(weight_scale.shape) if isinstance(weight_scale, torch.Tensor) else type(weight_scale).__name__
    if k % BLOCK_SIZE:
        raise ValueError(f"{w_name} {tuple(weight.shape)} holds K = {k} codes per row, not a multiple of the "
                         f"{BLOCK_SIZE}-element block ({w_name} must be padded to it; {s_name} is {got})")
    if not isinstance(weight_scale, torch.Tensor) or tuple(weight_scale.shape) != (n, k // BLOCK_SIZE):
        raise ValueError(f"{s_name} must have shape {(n, k // BLOCK_SIZE)} for {w_name} {tuple(weight.shape)} "
                         f"(one scale per {BLOCK_SIZE} codes), got {got}")
    if weight_scale.dtype not in (torch.float8_e4m3fn, torch.uint8):
        raise TypeError(f"{s_name} must be float8_e4m3fn (or its uint8 bytes), got {weight_scale.dtype}")
    if weight_scale.device != weight.device:
        raise ValueError(f"{s_name} is on {weight_scale.device} but {w_name} is on {weight.device}")
    sb = weight_scale.view(torch.uint8)
    if bool(((sb & 0x7F) == 0x7F).any()):
        raise ValueError(f"{s_name} holds E4M3 NaN bytes (0x7F/0xFF): the checkpoint is corrupt")
    if bool((sb & 0x80).any()):
        raise ValueError(f"{s_name} holds negative block scales")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (n,)):
        raise ValueError(f"bias must have shape ({n},), got {getattr(bias, 'shape', bias)}")
    return n, k


def linear_scales(fmt: Format, weight_global, input_global, device) -> dict[str, torch.Tensor | None]:
    """The fp32 [1] scalars `fp4linear.Linear` keeps, from a format's two stored scalars.

    weight_scale_2 and input_scale are decode scales (ModelOpt's convention), input_global_scale the
    encode scale the activation quantizer multiplies by, alpha the GEMM's output factor. A stored
    scalar the Linear uses as is keeps its bits; a derived one is the exact expression rounded once
    to fp32 (computed in fp64, where x * w is exact and the second rounding to fp32 never changes
    the result). input_global=None (a per-call activation scale): the activation entries are None.
    """
    w = check_scalar(fmt.weight_global, weight_global).double().cpu()  # load time: on the host
    x = None if input_global is None else check_scalar(fmt.input_global, input_global).double().cpu()
    if fmt.global_is_encode:  # 2688 / amax: the Linear's decode scales are the inverses
        out = dict(weight_scale_2=1 / w, input_scale=None if x is None else 1 / x, input_global_scale=x,
                   alpha=None if x is None else 1 / (x * w))
    else:
        out = dict(weight_scale_2=w, input_scale=x, input_global_scale=None if x is None else 1 / x,
                   alpha=None if x is None else x * w)
    return {name: None if v is None else v.float().to(device) for name, v in out.items()}


__all__ = ["COMPRESSED_TENSORS", "MODELOPT", "Format", "check_packed", "check_scalar", "linear_scales"]
