"""Pure-torch reference of NVFP4 quantization: docs/nvfp4.md (sections 1-3) in code.

Written to be read, not to be fast, and independently of the Triton kernel: E4M3 rounding is
torch's own float8 cast, E2M1 rounding is a nearest-value search with ties to the even code, and
the swizzles are reshape/permute. Tests hold the kernel to these bits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .format import (
    BLOCK_SIZE,
    E2M1_MAX,
    E2M1_VALUES,
    E4M3_MAX,
    SCALE_NAN_BYTE,
    NVFP4Tensor,
    ScaleLayout,
    pad_k,
    scale_layout,
)

FLT_MAX = torch.finfo(torch.float32).max


def e2m1_encode(y: torch.Tensor) -> torch.Tensor:
    """fp32 -> 4-bit E2M1 code (uint8), round to nearest, ties to even, |y| > 6 saturates to 6.

    The sign is the IEEE sign bit of y, so -0.0 and small negatives encode as 0x8.
    """
    magnitude = y.abs().clamp(max=E2M1_MAX).double()  # exact; distances below are exact too
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float64, device=y.device)
    distance = (magnitude.unsqueeze(-1) - grid).abs()
    nearest = distance == distance.amin(-1, keepdim=True)
    # One nearest value, or a tie between two adjacent codes: then the even code wins.
    odd = torch.arange(len(E2M1_VALUES), device=y.device) % 2
    index = torch.where(nearest, odd, 2).argmin(-1)
    return (index | (torch.signbit(y).to(torch.int64) << 3)).to(torch.uint8)


def e2m1_decode(code: torch.Tensor) -> torch.Tensor:
    grid = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=code.device)
    magnitude = grid[(code & 7).long()]
    return torch.where((code & 8) != 0, -magnitude, magnitude)


def swizzle(scales: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
    """Row-major [rows, S4] scales (already padded to the layout's shape) -> swizzled bytes, same shape."""
    rows, s4 = scales.shape
    t = layout.row_tile
    if t == 128:
        # (m // 128, (m % 128) // 32, m % 32, s // 4, s % 4) -> (m // 128, s // 4, m % 32, (m % 128) // 32, s % 4)
        out = scales.reshape(rows // 128, 4, 32, s4 // 4, 4).permute(0, 3, 2, 1, 4)
    elif t == 8:
        # (m // 8, m % 8, s // 4, s % 4) -> (m // 8, s // 4, m % 8, s % 4)
        out = scales.reshape(rows // 8, 8, s4 // 4, 4).permute(0, 2, 1, 3)
    else:
        raise ValueError(f"no reference swizzle for {layout}")
    return out.reshape(rows, s4)


def unswizzle(swizzled: torch.Tensor, layout: ScaleLayout) -> torch.Tensor:
    """Inverse of `swizzle`: swizzled [rows, S4] -> row-major [rows, S4]."""
    rows, s4 = swizzled.shape
    t = layout.row_tile
    if t == 128:
        out = swizzled.reshape(rows // 128, s4 // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    elif t == 8:
        out = swizzled.reshape(rows // 8, s4 // 4, 8, 4).permute(0, 2, 1, 3)
    else:
        raise ValueError(f"no reference unswizzle for {layout}")
    return out.reshape(rows, s4)


def quantize_blocks(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (K a multiple of 16) -> (codes uint8 [M, K], scale bytes uint8 [M, K/16]), row-major."""
    m, k = x.shape
    blocks = x.float().reshape(m, k // BLOCK_SIZE, BLOCK_SIZE)
    gs = global_scale.float().reshape(())
    gs_ok = torch.isfinite(gs) & (gs > 0)
    gs = torch.where(gs_ok, gs, 1.0)  # a bad gs: all-zero blocks stay 0, every other block is bad
    vmax = blocks.abs().amax(-1)  # NaN propagates: such blocks are overwritten below
    inv_six = torch.tensor(1 / 6, dtype=torch.float32, device=x.device)
    scale = torch.clamp(vmax * (gs * inv_six), max=E4M3_MAX).to(torch.float8_e4m3fn)
    scale_f32 = scale.float()
    out_scale = torch.clamp(1 / (scale_f32 * (1 / gs)), max=FLT_MAX)
    out_scale = torch.where(vmax == 0, torch.zeros_like(out_scale), out_scale)
    codes = e2m1_encode(blocks * out_scale.unsqueeze(-1))

    bad = ~torch.isfinite(blocks).all(-1) | (~gs_ok & (vmax != 0))
    scale_bytes = torch.where(bad, SCALE_NAN_BYTE, scale.view(torch.uint8).int()).to(torch.uint8)
    codes = torch.where(bad.unsqueeze(-1), 0, codes.int()).to(torch.uint8)
    return codes.reshape(m, k), scale_bytes


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """[M, K] 4-bit codes -> uint8 [M, K/2], element 2i in the low nibble."""
    pairs = codes.reshape(codes.shape[0], codes.shape[1] // 2, 2).to(torch.uint8)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_nibbles(data: torch.Tensor) -> torch.Tensor:
    low, high = data & 0xF, data >> 4
    return torch.stack([low, high], dim=-1).reshape(data.shape[0], data.shape[1] * 2)


def quantize(x: torch.Tensor, global_scale: torch.Tensor, *, k_align: int = 32, sf_layout="128x4") -> NVFP4Tensor:
    """Reference NVFP4 quantization of x (..., K) padded to Kp = round_up(K, k_align)."""
    layout = scale_layout(sf_layout)
    shape = x.shape
    k = shape[-1]
    kp = pad_k(k, k_align)
    x2 = F.pad(x.reshape(-1, k).float(), (0, kp - k))
    m = x2.shape[0]
    codes, scale_bytes = quantize_blocks(x2, global_scale)

    rows, s4 = layout.padded_shape(m, kp)
    padded_scales = torch.zeros(rows, s4, dtype=torch.uint8, device=x.device)
    padded_scales[:m, : kp // BLOCK_SIZE] = scale_bytes
    scale = swizzle(padded_scales, layout).view(torch.float8_e4m3fn)
    gs = global_scale.reshape(1).to(torch.float32)
    return NVFP4Tensor(pack_nibbles(codes), scale, gs, shape, k_align, layout)


def block_scales(q: NVFP4Tensor) -> torch.Tensor:
    """The row-major fp32 block scales [M, Kp/16] of q (its swizzle undone, padding dropped)."""
    scales = unswizzle(q.scale.view(torch.uint8), q.sf_layout)
    return scales[: q.m, : q.kp // BLOCK_SIZE].view(torch.float8_e4m3fn).float()


def dequantize(q: NVFP4Tensor) -> torch.Tensor:
    """NVFP4Tensor -> float32 of its logical shape: e2m1 * scale / gs (padding dropped)."""
    values = e2m1_decode(unpack_nibbles(q.data))
    values = values.reshape(q.m, q.kp // BLOCK_SIZE, BLOCK_SIZE) * block_scales(q).unsqueeze(-1)
    out = values.reshape(q.m, q.kp)[:, : q.k] / q.global_scale.float()
    return out.reshape(q.shape)


__all__ = [
    "block_scales",
    "dequantize",
    "e2m1_decode",
    "e2m1_encode",
    "pack_nibbles",
    "quantize",
    "quantize_blocks",
    "swizzle",
    "unpack_nibbles",
    "unswizzle",
]
