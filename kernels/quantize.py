"""Fused pad + NVFP4 quantize: BF16/FP16 x [M, K] -> packed E2M1 [M, Kp/2] + swizzled E4M3 scales.

One launch writes every output byte: the K..Kp data padding, and the scale rows and columns that
the swizzled layout pads, come out as zeros because the masked load reads them as zeros and an
all-zero block quantizes to scale 0 and codes 0. E4M3 and E2M1 are encoded with integer bit
operations plus one IEEE add (no float8 casts, no inline asm), so the same code is exact on GPUs
and under Triton's interpreter on CPU (SPEC section 2).
"""

import triton
import triton.language as tl

FLT_MAX = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b)


# `tl.max` is itself a @triton.jit function, which the interpreted twin of this module
# (kernels/_interpreter.py) cannot call; `tl.reduce` with triton's own max combiner is the same
# reduction compiled, and the interpreter runs it as one numpy max instead of a Python loop.
_MAX_COMBINE = getattr(tl.standard, "_elementwise_max", _max_combine)


@triton.jit
def e4m3_rne(v):
    """v fp32 in [0, 448] -> (E4M3 code int32, its value fp32), round to nearest even.

    Adding 2^(e+20), e = max(binade of v, -6), rounds v to 3 mantissa bits in one IEEE add
    (the ulp of 2^(e+20) is E4M3's step in that binade; below 2^-6 the subnormal step 2^-9).
    """
    binade = tl.maximum(v.to(tl.int32, bitcast=True) & 0x7F800000, 121 << 23)
    magic_bits = binade + (20 << 23)
    magic = magic_bits.to(tl.float32, bitcast=True)
    rounded = v + magic
    steps = rounded.to(tl.int32, bitcast=True) - magic_bits  # 0..16 grid steps above the binade base
    code = ((binade >> 23) - 121) * 8 + steps
    return code, rounded - magic


@triton.jit
def e2m1_rne_magnitude(a):
    """a = |y| fp32 (finite or +inf) -> E2M1 magnitude code 0..7, ties to even, saturating at 6.

    Same trick as `e4m3_rne`: adding 2^(e+22), e = max(binade, 0), rounds to E2M1's step
    (0.5 below 2, 1 in [2, 4), 2 in [4, 8)); the code is the step count plus 2 per binade above 1.
    """
    a = tl.minimum(a, 6.0)
    binade = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, 127 << 23)
    magic_bits = binade + (22 << 23)
    rounded = a + magic_bits.to(tl.float32, bitcast=True)
    return rounded.to(tl.int32, bitcast=True) - magic_bits + ((binade >> 22) - 254)


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

    # Swizzled scale offsets (SPEC section 3); rows >= M and blocks >= Kp/16 hold zeros.
    r = rows.to(tl.int64)[:, None]
    s = blocks[None, :]
    if SF_ROW_TILE == 128:
        sf_off = (r // 128) * (S4 * 128) + (s // 4) * 512 + (r % 32) * 16 + ((r % 128) // 32) * 4 + s % 4
    else:
        sf_off = (r // 8) * (S4 * 8) + (s // 4) * 32 + (r % 8) * 4 + s % 4
    sf_mask = (r < scale_rows) & (s < S4)

    if pid_m * BLOCK_M >= M:
        # A tile of scale-padding rows only (M up to the layout's row tile): zeros, no math.
        tl.store(scale_ptr + sf_off, tl.full([BLOCK_M, NB], 0, tl.uint8), mask=sf_mask)
    else:
        cols = blocks[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]  # [1, NB, 16]
        row_off = rows.to(tl.int64)[:, None, None] * (stride_xm_div * XM_MULT)
        x = tl.load(x_ptr + row_off + cols, mask=(rows[:, None, None] < M) & (cols < K), other=0.0)
        x = x.to(tl.float32)

        # Per-block scale (SPEC section 2, "TE-exact" order). Max of |x| as an integer max of the
        # sign-cleared bits: same order as the floats, and NaN (above +inf) cannot be dropped.
        gs = tl.load(global_scale_ptr)
        vmax_bits = tl.reduce(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 2, _MAX_COMBINE)  # [BLOCK_M, NB]
        finite = vmax_bits < 0x7F800000
        vmax = vmax_bits.to(tl.float32, bitcast=True)
        scale_code, scale_value = e4m3_rne(tl.minimum(vmax * (gs * (1.0 / 6.0)), 448.0))
        inv_gs = tl.math.div_rn(tl.full([1, 1], 1.0, tl.float32), gs)
        out_scale = tl.math.div_rn(tl.full([BLOCK_M, NB], 1.0, tl.float32), scale_value * inv_gs)
        out_scale = tl.where(vmax_bits == 0, 0.0, tl.minimum(out_scale, FLT_MAX))

        # Elements: sign bit of y, magnitude code, two codes per byte (even element low).
        y = x * out_scale[:, :, None]
        sign = (y.to(tl.int32, bitcast=True) >> 28) & 8
        codes = e2m1_rne_magnitude(tl.abs(y)) | sign
        low, high = tl.split(tl.reshape(codes, [BLOCK_M, NB, 8, 2]))
        packed = tl.where(finite[:, :, None], low | (high << 4), 0).to(tl.uint8)  # [BLOCK_M, NB, 8]

        # Each thread holds 4 consecutive bytes and a warp covers whole row spans: capping the
        # contiguity the compiler sees at 4 keeps this layout for the store instead of a
        # shared-memory round trip to build 8-byte vectors.
        byte_cols = tl.max_contiguous(blocks[None, :, None] * 8 + tl.arange(0, 8)[None, None, :], [1, 1, 4])
        tl.store(
            data_ptr + rows.to(tl.int64)[:, None, None] * (Kp // 2) + byte_cols,
            packed,
            mask=(rows[:, None, None] < M) & (byte_cols < Kp // 2),
        )
        tl.store(scale_ptr + sf_off, tl.where(finite, scale_code, 0x7F).to(tl.uint8), mask=sf_mask)
