"""The NVFP4 format: constants, the padding rule, scale layouts and the tensor container.

SPEC sections 1 and 3. Everything here is plain metadata; the bits are produced by the Triton
kernel (`fp4linear.kernels`) and defined by the pure-torch reference (`fp4linear.reference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK_SIZE = 16  # elements along K that share one E4M3 scale
E2M1_MAX = 6.0
E4M3_MAX = 448.0
# E2M1 magnitudes by code (code = sign << 3 | index into this table).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
SCALE_NAN_BYTE = 0x7F  # E4M3 NaN: the scale of a block holding NaN or +-Inf
QUANTIZABLE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # what the quantize kernel reads


def abs_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 0-d tensor, on x's device: one read of x and no |x| temporary
    (max(-min, max) equals max |x| exactly; NaN propagates)."""
    lo, hi = torch.aminmax(x)
    return torch.maximum(-lo, hi).float()


def decode_scale(amax: torch.Tensor, divisor: torch.Tensor | None = None) -> torch.Tensor:
    """ModelOpt's decode scale amax / (448 * 6) (`input_scale`, `weight_scale_2`) as fp32 [1],
    correctly rounded on every device: CUDA divides by a Python scalar as a multiply by its rounded
    reciprocal, one ulp off, so the divisor is a tensor on amax's device (`divisor` lets a forward
    path pass a cached one). amax >= 1e-30 keeps 1 / scale finite for all-zero data."""
    amax = amax.float().clamp(min=1e-30).reshape(1)
    if divisor is None:
        divisor = torch.full_like(amax, E4M3_MAX * E2M1_MAX)
    return amax / divisor


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def check_k_align(k_align) -> int:
    if isinstance(k_align, bool) or not isinstance(k_align, int) or k_align <= 0 or k_align % BLOCK_SIZE:
        raise ValueError(f"k_align must be a positive multiple of {BLOCK_SIZE}, got {k_align!r}")
    return k_align


def pad_k(k: int, k_align: int) -> int:
    """Padded K: the logical K rounded up to `k_align` (itself a multiple of the 16-element block)."""
    return round_up(k, check_k_align(k_align))


@dataclass(frozen=True)
class ScaleLayout:
    """A swizzled layout of the per-block scales: `row_tile` rows x 4 scale columns per atom.

    An atom of `row_tile` rows and 4 scale columns (64 elements of K) is one contiguous chunk of
    `row_tile * 4` bytes. 128x4 is what cuBLASLt / CUTLASS / FlashInfer read; 8x4 is TRT-LLM's
    layout for small-M activations. The byte order inside an atom is defined by
    `fp4linear.reference.swizzle` (torch reshape/permute) and by index arithmetic in the kernel.
    """

    name: str
    row_tile: int

    def padded_shape(self, m: int, kp: int) -> tuple[int, int]:
        """Shape of the scale tensor for `m` rows and padded K `kp`: [round_up(m, row_tile), S4]."""
        return round_up(m, self.row_tile), round_up(kp // BLOCK_SIZE, 4)


SWIZZLE_128x4 = ScaleLayout("128x4", 128)
SWIZZLE_8x4 = ScaleLayout("8x4", 8)
SCALE_LAYOUTS = {layout.name: layout for layout in (SWIZZLE_128x4, SWIZZLE_8x4)}


def scale_layout(sf_layout) -> ScaleLayout:
    if isinstance(sf_layout, ScaleLayout):
        return sf_layout
    try:
        return SCALE_LAYOUTS[sf_layout]
    except (KeyError, TypeError):
        raise ValueError(f"sf_layout must be one of {sorted(SCALE_LAYOUTS)}, got {sf_layout!r}") from None


@dataclass
class NVFP4Tensor:
    """An NVFP4-quantized 2-D view of a tensor of logical shape `shape` = (..., K).

    data:         uint8 [M, Kp/2], two E2M1 codes per byte (even element in the low nibble);
                  bytes of the K..Kp padding are 0.
    scale:        float8_e4m3fn [round_up(M, row_tile), round_up(Kp/16, 4)] in `sf_layout`
                  (swizzled; padded rows and columns are 0).
    global_scale: float32 [1], the encode scale gs; value = e2m1 * scale / gs.
    """

    data: torch.Tensor
    scale: torch.Tensor
    global_scale: torch.Tensor
    shape: torch.Size
    k_align: int = 32
    sf_layout: ScaleLayout = SWIZZLE_128x4

    @property
    def m(self) -> int:
        return self.data.shape[0]

    @property
    def k(self) -> int:
        return self.shape[-1]

    @property
    def kp(self) -> int:
        return self.data.shape[1] * 2

    @property
    def device(self) -> torch.device:
        return self.data.device

    @classmethod
    def empty(cls, shape, *, k_align: int = 32, sf_layout="128x4", device=None, global_scale=None) -> "NVFP4Tensor":
        """Uninitialised buffers for a tensor of logical `shape` (for `quantize(..., out=)`)."""
        shape = torch.Size(shape)
        layout = scale_layout(sf_layout)
        k = shape[-1]
        m = shape.numel() // k if k else 0
        kp = pad_k(k, k_align)
        data = torch.empty((m, kp // 2), dtype=torch.uint8, device=device)
        scale = torch.empty(layout.padded_shape(m, kp), dtype=torch.float8_e4m3fn, device=device)
        if global_scale is None:
            global_scale = torch.ones(1, dtype=torch.float32, device=device)
        return cls(data, scale, global_scale, shape, k_align, layout)

    def dequantize(self) -> torch.Tensor:
        from . import reference

        return reference.dequantize(self)

    def __repr__(self) -> str:
        return (
            f"NVFP4Tensor(shape={tuple(self.shape)}, kp={self.kp}, k_align={self.k_align}, "
            f"sf_layout={self.sf_layout.name}, device={self.device})"
        )
