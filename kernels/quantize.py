"""Fused pad + NVFP4 quantize: BF16/FP16/FP32 x [M, K] -> packed E2M1 [M, Kp/2] + swizzled E4M3 scales.

One launch writes every output byte: the K..Kp data padding, and the scale rows and columns that
the swizzled layout pads, come out as zeros because the masked load reads them as zeros and an
all-zero block quantizes to scale 0 and codes 0. The recipe itself is `quantize_blocks`;
the scale offsets are `scale_offset`.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_layout = sibling(__name__, "layout")
scale_offset = _layout.scale_offset
_numerics = sibling(__name__, "numerics")
pack_codes = _numerics.pack_codes
quantize_blocks = _numerics.quantize_blocks


@triton.jit
def nvfp4_pad_quantize_kernel(
    x_ptr,
    global_scale_ptr,
    data_ptr,
    scale_ptr,
    M,
    K_div,  # K // K_MULT
    stride_xm_div,  # row stride of x // XM_MULT
    Kp_div16,  # Kp // 16
    K_MULT: tl.constexpr,  # passing K and the row stride as multiples tells the compiler that
    XM_MULT: tl.constexpr,  # 16-byte vector loads stay aligned and masks constant per vector
    SF_ROW_TILE: tl.constexpr,  # 128 for the 128x4 layout, 8 for 8x4
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,  # multiple of 64: whole 4-scale groups per tile
):
    NB: tl.constexpr = BLOCK_K // 16
    K = K_div * K_MULT
    Kp = Kp_div16 * 16
    S4 = (Kp_div16 + 3) // 4 * 4  # scale columns
    scale_rows = (M + SF_ROW_TILE - 1) // SF_ROW_TILE * SF_ROW_TILE
    n_k_tiles = (S4 * 16 + BLOCK_K - 1) // BLOCK_K
    pid = tl.program_id(0)
    pid_m = pid // n_k_tiles
    pid_k = pid % n_k_tiles

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    blocks = pid_k * NB + tl.arange(0, NB)  # scale column index

    # rows >= M and blocks >= Kp/16 of the swizzled scales hold zeros.
    r = rows.to(tl.int64)[:, None]
    s = blocks[None, :]
    sf_off = scale_offset(r, s, S4, SF_ROW_TILE)
    sf_mask = (r < scale_rows) & (s < S4)

    if pid_m * BLOCK_M >= M:
        # A tile of scale-padding rows only (M up to the layout's row tile): zeros, no math.
        tl.store(scale_ptr + sf_off, tl.full([BLOCK_M, NB], 0, tl.uint8), mask=sf_mask)
    else:
        cols = blocks[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]  # [1, NB, 16]
        row_off = rows.to(tl.int64)[:, None, None] * (stride_xm_div * XM_MULT)
        x = tl.load(x_ptr + row_off + cols, mask=(rows[:, None, None] < M) & (cols < K), other=0.0)
        codes, scale_byte, _, finite = quantize_blocks(x.to(tl.float32), tl.load(global_scale_ptr))
        packed = pack_codes(codes, finite)  # [BLOCK_M, NB, 8]

        # Each thread holds 4 consecutive bytes and a warp covers whole row spans: capping the
        # contiguity the compiler sees at 4 keeps this layout for the store instead of a
        # shared-memory round trip to build 8-byte vectors.
        byte_cols = tl.max_contiguous(blocks[None, :, None] * 8 + tl.arange(0, 8)[None, None, :], [1, 1, 4])
        tl.store(
            data_ptr + rows.to(tl.int64)[:, None, None] * (Kp // 2) + byte_cols,
            packed,
            mask=(rows[:, None, None] < M) & (byte_cols < Kp // 2),
        )
        tl.store(scale_ptr + sf_off, scale_byte.to(tl.uint8), mask=sf_mask)
