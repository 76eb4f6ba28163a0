"""Fused pad + NVFP4 quantize: BF16/FP16/FP32 x [M, K] -> packed E2M1 [M, Kp/2] + swizzled E4M3 scales.

One launch writes every output byte: the K..Kp data padding, and the scale rows and columns that
the swizzled layout pads, come out as zeros because the masked load reads them as zeros and an
all-zero block quantizes to scale 0 and codes 0. The recipe itself is `numerics.block_scales`
and `numerics.e2m1_code`; the scale offsets are `layout.scale_offset`.

Variants (constexpr flags, `QuantConfig` fields, A/B-able in `benchmarks/quant_bench.py
--configs`); all flags 0 is the kernel as first benchmarked:
- GRID_2D: a (k tiles, m tiles) grid, no integer division per program; with ONE_PAD_TILE (the
  launcher sets it where the zero tile is at most 8 bytes a thread), one program per k column stores all the
  scale-padding rows (decode, 16 x 8192 at 8 x 128 tiles: 192 programs instead of 1024).
- WORDS: bf16 read as 32-bit pairs: bits << 16 and bits & 0xFFFF0000 are the fp32 values, the
  high element's |x| is one mask, and the signs come from the word.
- RECIPE: 1 = e2m1_rne_magnitude plus a separate sign merge (as first benchmarked), 2 =
  numerics.e2m1_code (sign and magnitude from one magic add); with WORDS, 4 = the two magnitudes
  of a word from e2m1_code, then both signs placed in its byte at once (numerics.word_sign_bits, one
  multiply-high; 3, the same by two shifts, measured slower and removed); without WORDS 4 is 2.
- PERSISTENT (with GRID_2D): each program walks m tiles of one k column, loading the next tile
  before the current one's math.
- HALVES: a thread holds whole blocks (no shuffle for the block max, one scale computation per
  block instead of one per thread of a pair, 8-byte stores), loaded as two 16-byte halves with
  lanes along blocks, so each load instruction uses half of every 32-byte sector it touches.
  As first measured this layout lost 6% at 16384 x 8192 despite 4 fewer instructions per element.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

layout = sibling(__name__, "layout")
numerics = sibling(__name__, "numerics")


@triton.jit
def load_tile(x_ptr, rows, blocks, M, K_units, stride_units, WORDS: tl.constexpr, HALVES: tl.constexpr):
    """x[rows, 16*blocks ...] as fp32 [BM, NB, 16], or (WORDS) int32 words [BM, NB, 8] of bf16
    pairs, element 2i in the low half; padding (rows >= M, columns >= K) reads as 0. K_units and
    stride_units count elements, or words. HALVES: [2, BM, NB, 8 or 4], half h of each block at
    [h]: a 16-byte half block per load with lanes along blocks, so one thread holds whole blocks
    (the half outermost, so that warps split rows, not halves)."""
    E: tl.constexpr = 8 if WORDS else 16  # units per block
    if HALVES:
        row_off = rows.to(tl.int64)[None, :, None, None] * stride_units
        cols = blocks[None, None, :, None] * E + tl.arange(0, 2)[:, None, None, None] * (E // 2) + \
            tl.arange(0, E // 2)[None, None, None, :]
        mask = (rows[None, :, None, None] < M) & (cols < K_units)
    else:
        row_off = rows.to(tl.int64)[:, None, None] * stride_units
        cols = blocks[None, :, None] * E + tl.arange(0, E)[None, None, :]
        mask = (rows[:, None, None] < M) & (cols < K_units)
    if WORDS:
        return tl.load(x_ptr.to(tl.pointer_type(tl.int32), bitcast=True) + row_off + cols, mask=mask, other=0)
    else:
        return tl.load(x_ptr + row_off + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _block_max(bits, HALVES: tl.constexpr):
    """[BM, NB]: the max over each block's units (both halves)."""
    if HALVES:
        return tl.reduce(tl.reduce(bits, 3, numerics.max_combine), 0, numerics.max_combine)
    else:
        return tl.reduce(bits, 2, numerics.max_combine)


@triton.jit
def _per_unit(v, HALVES: tl.constexpr):
    """[BM, NB] broadcastable against the tile."""
    if HALVES:
        return v[None, :, :, None]
    else:
        return v[:, :, None]


@triton.jit
def quantize_store(tile, gs, data_ptr, scale_ptr, rows, blocks, M, Kp, S4, scale_rows,
                   SF_ROW_TILE: tl.constexpr, WORDS: tl.constexpr, RECIPE: tl.constexpr, HALVES: tl.constexpr):
    """Quantize a `load_tile` tile (rows x blocks, WORDS / HALVES as loaded) and store its codes
    and scales: the recipe is numerics.block_scales + numerics.e2m1_code (RECIPE 1: the first
    magnitude encoder); also the act_quantize kernel's tail."""
    BLOCK_M: tl.constexpr = rows.shape[0]
    NB: tl.constexpr = blocks.shape[0]
    if WORDS:
        low = tile << 16  # fp32 bits of the even elements
        high_abs = tile & 0x7FFF0000  # |x| of the odd elements, as fp32 bits
        vmax_bits = _block_max(tl.maximum(low & 0x7FFFFFFF, high_abs), HALVES)
        scale_byte, _, out_scale, finite = numerics.block_scales(vmax_bits, gs)
        out = _per_unit(out_scale, HALVES)
        if RECIPE == 4:  # magnitudes, then both signs of the word at once (bits 3 and 7 of its byte)
            c_low = numerics.e2m1_code(tl.abs(low.to(tl.float32, bitcast=True) * out), 0)
            c_high = numerics.e2m1_code(high_abs.to(tl.float32, bitcast=True) * out, 0)
            codes = (c_low & 15) | (c_high << 4) | numerics.word_sign_bits(tile)
        else:
            # y's sign is x's (out_scale >= 0, never NaN): bit 31 of low and of the word
            c_low = numerics.e2m1_code(tl.abs(low.to(tl.float32, bitcast=True) * out), low)
            c_high = numerics.e2m1_code(high_abs.to(tl.float32, bitcast=True) * out, tile)
            codes = (c_low & 15) | (c_high << 4)
        packed = tl.where(_per_unit(finite, HALVES), codes, 0).to(tl.uint8)  # a byte a word
    else:
        vmax_bits = _block_max(tile.to(tl.int32, bitcast=True) & 0x7FFFFFFF, HALVES)
        scale_byte, _, out_scale, finite = numerics.block_scales(vmax_bits, gs)
        if RECIPE == 1:
            out_scale = tl.where(vmax_bits == 0, 0.0, out_scale)
        y = tile * _per_unit(out_scale, HALVES)
        y_bits = y.to(tl.int32, bitcast=True)
        if RECIPE == 1:
            codes = numerics.e2m1_rne_magnitude(tl.abs(y)) | ((y_bits >> 28) & 8)  # (RECIPE 4: as 2 here)
        else:
            codes = numerics.e2m1_code(tl.abs(y), y_bits)
        if HALVES:
            low, high = tl.split(tl.reshape(codes, [2, BLOCK_M, NB, 4, 2]))
        else:
            low, high = tl.split(tl.reshape(codes, [BLOCK_M, NB, 8, 2]))
        if RECIPE == 1:
            packed = tl.where(_per_unit(finite, HALVES), low | (high << 4), 0).to(tl.uint8)
        else:  # numerics.pack_codes' packing: high's bits above its nibble drop in the cast
            packed = tl.where(_per_unit(finite, HALVES), (low & 15) | (high << 4), 0).to(tl.uint8)

    # Each thread holds 4 consecutive bytes (HALVES: twice) and a warp covers whole row spans:
    # capping the contiguity the compiler sees at 4 keeps this layout for the store instead of a
    # shared-memory round trip to build 8-byte vectors.
    if HALVES:
        byte_cols = tl.max_contiguous(blocks[None, None, :, None] * 8 + tl.arange(0, 2)[:, None, None, None] * 4 +
                                      tl.arange(0, 4)[None, None, None, :], [1, 1, 1, 4])
        row_off = rows.to(tl.int64)[None, :, None, None] * (Kp // 2)
        row_ok = rows[None, :, None, None] < M
    else:
        byte_cols = tl.max_contiguous(blocks[None, :, None] * 8 + tl.arange(0, 8)[None, None, :], [1, 1, 4])
        row_off = rows.to(tl.int64)[:, None, None] * (Kp // 2)
        row_ok = rows[:, None, None] < M
    tl.store(data_ptr + row_off + byte_cols, packed, mask=row_ok & (byte_cols < Kp // 2))
    r = rows.to(tl.int64)[:, None]
    s = blocks[None, :]
    tl.store(scale_ptr + layout.scale_offset(r, s, S4, SF_ROW_TILE), scale_byte.to(tl.uint8),
             mask=(r < scale_rows) & (s < S4))


@triton.jit
def store_zero_scales(scale_ptr, rows, blocks, S4, scale_rows, SF_ROW_TILE: tl.constexpr):
    r = rows.to(tl.int64)[:, None]
    s = blocks[None, :]
    tl.store(scale_ptr + layout.scale_offset(r, s, S4, SF_ROW_TILE), tl.full([rows.shape[0], blocks.shape[0]], 0, tl.uint8),
             mask=(r < scale_rows) & (s < S4))


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
    GRID_2D: tl.constexpr = 0,
    WORDS: tl.constexpr = 0,  # x is bf16, K and the row stride even, x 4-byte aligned
    HALVES: tl.constexpr = 0,
    RECIPE: tl.constexpr = 2,
    PERSISTENT: tl.constexpr = 0,
    ONE_PAD_TILE: tl.constexpr = 0,  # GRID_2D: one program per k column zeroes the padding rows
):
    NB: tl.constexpr = BLOCK_K // 16
    if WORDS:  # K_MULT and XM_MULT are even: the loads count words
        K_units = K_div * (K_MULT // 2)
        stride_units = stride_xm_div * (XM_MULT // 2)
    else:
        K_units = K_div * K_MULT
        stride_units = stride_xm_div * XM_MULT
    Kp = Kp_div16 * 16
    S4 = (Kp_div16 + 3) // 4 * 4  # scale columns
    scale_rows = (M + SF_ROW_TILE - 1) // SF_ROW_TILE * SF_ROW_TILE
    n_m_tiles = (M + BLOCK_M - 1) // BLOCK_M  # tiles holding real rows
    n_m_all = (scale_rows + BLOCK_M - 1) // BLOCK_M  # with the tiles of scale-padding rows only

    if GRID_2D:
        pid_k = tl.program_id(0)
        blocks = pid_k * NB + tl.arange(0, NB)  # scale column index
        if PERSISTENT:
            first = tl.program_id(1)
            step = tl.num_programs(1)
            gs = tl.load(global_scale_ptr)
            tile = load_tile(x_ptr, first * BLOCK_M + tl.arange(0, BLOCK_M), blocks, M, K_units, stride_units, WORDS, HALVES)
            for pid_m in tl.range(first, n_m_tiles, step, num_stages=1):
                # the next tile's load is in flight during this tile's math (rows >= M: no traffic)
                following = load_tile(x_ptr, (pid_m + step) * BLOCK_M + tl.arange(0, BLOCK_M), blocks, M, K_units,
                                       stride_units, WORDS, HALVES)
                quantize_store(tile, gs, data_ptr, scale_ptr, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), blocks, M,
                                Kp, S4, scale_rows, SF_ROW_TILE, WORDS, RECIPE, HALVES)
                tile = following
            for pid_m in tl.range(n_m_tiles + first, n_m_all, step, num_stages=1):
                store_zero_scales(scale_ptr, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), blocks, S4, scale_rows,
                                   SF_ROW_TILE)
        else:
            # axis 2 only when the tiles exceed the 65535 a grid's second axis allows
            pid_m = tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
            rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            if pid_m < n_m_tiles:
                tile = load_tile(x_ptr, rows, blocks, M, K_units, stride_units, WORDS, HALVES)
                quantize_store(tile, tl.load(global_scale_ptr), data_ptr, scale_ptr, rows, blocks, M, Kp, S4,
                                scale_rows, SF_ROW_TILE, WORDS, RECIPE, HALVES)
            elif ONE_PAD_TILE:
                # All scale-padding rows of this k column (M up to the layout's row tile) in one
                # program, the launcher's last m index: decode-sized M launches 1 + 1 programs per
                # k column instead of 1 + 15.
                if pid_m == n_m_tiles:
                    store_zero_scales(scale_ptr, n_m_tiles * BLOCK_M + tl.arange(0, SF_ROW_TILE), blocks, S4,
                                       scale_rows, SF_ROW_TILE)
            elif pid_m < n_m_all:
                # A tile of scale-padding rows only (M up to the layout's row tile): zeros, no math.
                store_zero_scales(scale_ptr, rows, blocks, S4, scale_rows, SF_ROW_TILE)
    else:
        n_k_tiles = (S4 * 16 + BLOCK_K - 1) // BLOCK_K
        pid = tl.program_id(0)
        pid_m = pid // n_k_tiles
        pid_k = pid % n_k_tiles
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        blocks = pid_k * NB + tl.arange(0, NB)
        if pid_m * BLOCK_M >= M:
            # A tile of scale-padding rows only (M up to the layout's row tile): zeros, no math.
            store_zero_scales(scale_ptr, rows, blocks, S4, scale_rows, SF_ROW_TILE)
        else:
            tile = load_tile(x_ptr, rows, blocks, M, K_units, stride_units, WORDS, HALVES)
            quantize_store(tile, tl.load(global_scale_ptr), data_ptr, scale_ptr, rows, blocks, M, Kp, S4,
                            scale_rows, SF_ROW_TILE, WORDS, RECIPE, HALVES)
