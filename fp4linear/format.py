"""The NVFP4 format: constants, the global-scale rules, the padding rule, scale layouts and the
tensor container (docs/nvfp4.md).

The bits are produced by the Triton kernels (`fp4linear.kernels`) and defined independently by the
pure-torch reference (`fp4linear.reference`), which library code never calls.
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
# fp32 value of each 4-bit code (sign bit 3): the decode table of `NVFP4Tensor.dequantize`
_E2M1_TABLE = torch.tensor(E2M1_VALUES + tuple(-v for v in E2M1_VALUES), dtype=torch.float32)


def abs_amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as an fp32 0-d tensor, on x's device: one read of x and no |x| temporary
    (max(-min, max) equals max |x| exactly; NaN propagates)."""
    lo, hi = torch.aminmax(x)
    return torch.maximum(-lo, hi).float()


def decode_scale(amax: torch.Tensor) -> torch.Tensor:
    """ModelOpt's decode scale amax / (448 * 6) (`input_scale`, `weight_scale_2`) as fp32 [1],
    correctly rounded on every device: CUDA divides by a Python scalar as a multiply by its rounded
    reciprocal, one ulp off, so the divisor is a tensor on amax's device. amax >= 1e-30 keeps
    1 / scale finite for all-zero data."""
    if not isinstance(amax, torch.Tensor) or amax.numel() != 1:
        raise TypeError(f"amax must be a one-element tensor, got {amax!r}")
    amax = amax.float().clamp(min=1e-30).reshape(1)
    return amax / torch.full_like(amax, E4M3_MAX * E2M1_MAX)


def encode_scale(amax: torch.Tensor) -> torch.Tensor:
    """The global encode scale gs = 448 * 6 / amax (what `quantize` takes) as fp32 [1], correctly
    rounded on every device (a tensor numerator: see `decode_scale`); amax >= 1e-30 as there."""
    if not isinstance(amax, torch.Tensor) or amax.numel() != 1:
        raise TypeError(f"amax must be a one-element tensor, got {amax!r}")
    amax = amax.float().clamp(min=1e-30).reshape(1)
    return torch.full_like(amax, E4M3_MAX * E2M1_MAX) / amax


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
    """A swizzled layout of the per-block scales: atoms of `row_tile` rows x 4 scale columns.

    An atom (`row_tile` rows x 64 elements of K) is one contiguous run of `row_tile * 4` bytes.
    128x4 is what cuBLASLt / CUTLASS / FlashInfer read; 8x4 is TRT-LLM's layout for small-M
    activations. The offsets come from `fp4linear.kernels.layout`, the very functions the kernels
    compile, run here on torch index tensors.
    """

    name: str
    row_tile: int

    def padded_shape(self, m: int, kp: int) -> tuple[int, int]:
        """Shape of the scale tensor for `m` rows and padded K `kp`: [round_up(m, row_tile), S4]."""
        return round_up(m, self.row_tile), round_up(kp // BLOCK_SIZE, 4)

    def offsets(self, rows: int, s4: int, device=None) -> torch.Tensor:
        """int64 [rows, s4]: the flat byte offset of scale (row, column) in this layout."""
        from .kernels import layout

        row_part, col_part = {128: (layout.row_part_128x4, layout.col_part_128x4),
                              8: (layout.row_part_8x4, layout.col_part_8x4)}[self.row_tile]
        r = torch.arange(rows, device=device)[:, None]
        c = torch.arange(s4, device=device)[None, :]
        return row_part.fn(r, s4) + col_part.fn(c)

    def swizzle(self, scales: torch.Tensor) -> torch.Tensor:
        """Row-major scale bytes [rows, cols] -> this layout, zero-padded to padded_shape(rows, 16 * cols)."""
        rows, cols = scales.shape
        shape = self.padded_shape(rows, cols * BLOCK_SIZE)
        out = scales.new_zeros(shape[0] * shape[1])
        out[self.offsets(rows, shape[1], scales.device)[:, :cols].reshape(-1)] = scales.reshape(-1)
        return out.view(shape)

    def unswizzle(self, swizzled: torch.Tensor, rows: int | None = None, cols: int | None = None) -> torch.Tensor:
        """Inverse of `swizzle`: [padded rows, S4] in this layout -> row-major [rows, cols] (default: all)."""
        padded_rows, s4 = swizzled.shape
        rows = padded_rows if rows is None else rows
        cols = s4 if cols is None else cols
        flat = swizzled.reshape(-1)
        return flat[self.offsets(rows, s4, swizzled.device)[:, :cols]]


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

    def block_scales(self) -> torch.Tensor:
        """The fp32 block scales [M, Kp/16], row-major (swizzle undone, padding dropped)."""
        rows = self.sf_layout.unswizzle(self.scale.view(torch.uint8), self.m, self.kp // BLOCK_SIZE)
        return rows.view(torch.float8_e4m3fn).float()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values e2m1 * scale / gs in the logical shape (padding dropped); NaN for a non-finite block."""
        data = self.data
        codes = torch.stack([data & 0xF, data >> 4], dim=-1).reshape(self.m, self.kp).long()
        values = _E2M1_TABLE.to(data.device)[codes].reshape(self.m, self.kp // BLOCK_SIZE, BLOCK_SIZE)
        values = (values * self.block_scales()[..., None]).reshape(self.m, self.kp)[:, : self.k]
        return (values / self.global_scale.float()).to(dtype).reshape(self.shape)

    def __repr__(self) -> str:
        return (
            f"NVFP4Tensor(shape={tuple(self.shape)}, kp={self.kp}, k_align={self.k_align}, "
            f"sf_layout={self.sf_layout.name}, device={self.device})"
        )


def dequantize(q: NVFP4Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """`q.dequantize(dtype)`: e2m1 * scale / gs in q's logical shape."""
    if not isinstance(q, NVFP4Tensor):
        raise TypeError(f"q must be an NVFP4Tensor, got {type(q).__name__}")
    return q.dequantize(dtype)
