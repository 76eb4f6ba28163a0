"""NVFP4 numerics as Triton functions: encoding (the quantization recipe) and exact decoding.

The one home of the recipe in kernel code (docs/nvfp4.md, "Quantization recipe"): every kernel
that quantizes calls `quantize_blocks`, every kernel that reads NVFP4 calls the decoders. E4M3 and
E2M1 are encoded with integer bit operations plus one IEEE add (no float8 casts, no inline asm), so
the same code is exact on GPUs and under Triton's interpreter on CPU.
"""

import os

import triton
import triton.language as tl
from triton import knobs

FLT_MAX = tl.constexpr(3.4028234663852886e38)
# The word decode (`dequant_words`) as inline PTX on GPUs; FP4LINEAR_PORTABLE_DECODE=1 keeps the portable
# form there too (the same bits; an escape hatch, and the baseline of benchmarks/linear_bench.py --ab-decode).
PTX_DECODE = tl.constexpr(not knobs.runtime.interpret and os.environ.get("FP4LINEAR_PORTABLE_DECODE", "0") != "1")


@triton.jit
def max_combine(a, b):
    return tl.maximum(a, b)


if knobs.runtime.interpret:
    # This module is an interpreted twin (kernels/_interpreter.py): triton's own max combiner lets
    # the interpreter run `tl.reduce` as one numpy max instead of a Python loop. (Compiled kernels
    # keep the function above under its own name: torch.compile rebuilds kernels from their source,
    # where a global must carry its function's name.)
    max_combine = tl.standard._elementwise_max


# ---- encoding ---------------------------------------------------------------------------------


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
def e2m1_code(a, sign_bits):
    """a = |y| fp32 (finite, +inf or NaN), sign_bits int32 whose bit 31 is y's sign bit -> int32
    whose low 4 bits are y's E2M1 code, sign << 3 | magnitude (ties to even, saturating at 6);
    the bits above them are not part of the result (mask with 15, or let a packer drop them).

    `e2m1_rne_magnitude`'s magic add with the code assembled by the add itself: the magic
    2^(e+22) carries 2 + 8 * sign in its mantissa (an even number of steps, so ties still round
    to the even step count k) and the binade's 2 * biased exponent is added after, so the low bits
    read 256 + 8 * sign + k + 2e = the code, modulo 16. 9 SASS ops with the sign, against 7 + 2.
    """
    a = tl.minimum(a, 6.0)
    binade = tl.maximum(a.to(tl.int32, bitcast=True) & 0x7F800000, 127 << 23)
    sign8 = (sign_bits >> 28) & 8
    rounded = a + (binade + sign8 + ((22 << 23) + 2)).to(tl.float32, bitcast=True)
    return rounded.to(tl.int32, bitcast=True) + (binade >> 22)


@triton.jit
def word_sign_bits(words):
    """int32 words of two bf16 (element 2i in the low half) -> int32 whose bits 3 and 7 are the low and
    the high element's sign bits (15 and 31), where the packed byte of their two E2M1 codes keeps them,
    by one multiply-high (bit 15 times 2^20 and bit 31 times 2^8 land 32 bits up at 3 and 7); bit 19
    (bit 31 times 2^20) is set too, which the byte cast drops."""
    return tl.umulhi((words & -0x7FFF8000).to(tl.uint32, bitcast=True), 0x00100100).to(tl.int32, bitcast=True)


@triton.jit
def block_scales(vmax_bits, gs):
    """The scale half of the recipe: vmax_bits int32 [R, NB] (max |x| of each block as float bits,
    NaN above +inf), gs the fp32 encode scale -> (scale byte int32 [R, NB], 0x7F (E4M3 NaN) for a
    non-finite block (NaN/Inf inside, or a nonzero block under a global scale that is not finite and
    positive); its fp32 value; out_scale, the fp32 multiplier that takes x to E2M1 range;
    finite [R, NB]).

    "TE-exact" order: sf = e4m3(min(vmax * (gs * (1/6)), 448)); out = min(1 / (sf * (1 / gs)),
    FLT_MAX) with IEEE divisions. An all-zero block (sf 0, out FLT_MAX) still gives y = x * out
    = +-0, the reference's codes, so it needs no special case.
    """
    # A global scale that is not finite and positive (read on the device, never checked on the
    # host) marks every block holding a nonzero value non-finite: NaN downstream rather than
    # plausible garbage; all-zero blocks (the padding among them) stay 0.
    gs_bits = gs.to(tl.int32, bitcast=True)  # in (0, 0x7F800000) exactly when gs is finite and > 0
    gs_ok = (gs_bits > 0) & (gs_bits < 0x7F800000)
    finite = vmax_bits < tl.where(gs_ok, 0x7F800000, 1)
    gs = tl.where(gs_ok, gs, 1.0)  # keeps the all-zero blocks' arithmetic finite (scale 0, codes 0)
    vmax = vmax_bits.to(tl.float32, bitcast=True)
    scale_code, scale_value = e4m3_rne(tl.minimum(vmax * (gs * (1.0 / 6.0)), 448.0))
    inv_gs = tl.math.div_rn(tl.full([1, 1], 1.0, tl.float32), gs)
    out_scale = tl.math.div_rn(tl.full(vmax.shape, 1.0, tl.float32), scale_value * inv_gs)
    return tl.where(finite, scale_code, 0x7F), scale_value, tl.minimum(out_scale, FLT_MAX), finite


@triton.jit
def quantize_blocks(x, gs):
    """The recipe on blocks of 16: x fp32 [R, NB, 16], gs the fp32 encode scale (scalar) ->
    (codes int32 [R, NB, 16] = sign << 3 | magnitude, scale byte int32 [R, NB], the scale's fp32
    value [R, NB], finite [R, NB]). A non-finite block (NaN or +-Inf inside, or a nonzero value under
    a global scale that is not finite and positive) gets scale byte 0x7F (E4M3 NaN); its codes are meaningless
    (`pack_codes` zeroes them).

    Scales as `block_scales`; codes = e2m1(x * out), sign from y's sign bit (-0.0 encodes as 0x8).
    """
    # max |x| as an integer max of the sign-cleared bits: same order as the floats, and NaN (above
    # +inf) cannot be dropped.
    vmax_bits = tl.reduce(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, 2, max_combine)
    scale_byte, scale_value, out_scale, finite = block_scales(vmax_bits, gs)
    y = x * out_scale[:, :, None]
    codes = e2m1_code(tl.abs(y), y.to(tl.int32, bitcast=True)) & 15
    return codes, scale_byte, scale_value, finite


@triton.jit
def pack_codes(codes, finite):
    """codes int32 [R, NB, 16] (low 4 bits; higher bits are ignored) -> uint8 [R, NB, 8], element
    2i in the low nibble; the bytes of a non-finite block are 0."""
    R: tl.constexpr = codes.shape[0]
    NB: tl.constexpr = codes.shape[1]
    low, high = tl.split(tl.reshape(codes, [R, NB, 8, 2]))
    # the uint8 cast drops high's bits above its nibble
    return tl.where(finite[:, :, None], (low & 15) | (high << 4), 0).to(tl.uint8)


# ---- decoding (exact in fp16, in units of 2^-14) ----------------------------------------------
# Every E2M1 x E4M3 value v (a multiple of 2^-10 with at most 6 significant bits, |v| <= 2688) is
# exact in fp16 even scaled by 2^-14: v * 2^-14 is a multiple of 2^-24 (fp16's subnormal step) and
# has at most 6 significant bits. The decoders return v * 2^-14, which costs one fp16 multiply per
# element (E2M1 bits placed in an fp16 read as e2m1 * 2^-14; times the E4M3 scale as fp16). A dot
# of two such operands is the exact dot times 2^-28: every product, and every fp32 partial sum,
# scaled by a power of two, so the epilogue's alpha * 2^28 gives the same bits as unscaled values.
DECODE_UNIT_SCALE = tl.constexpr(2.0**28)  # what a dot of two decoded operands is multiplied by


@triton.jit
def e2m1_to_fp16_units(codes):
    """4-bit E2M1 codes (int32, sign at bit 3) -> fp16 equal to the E2M1 value times 2^-14."""
    bits = ((codes & 7) << 9) | ((codes & 8) << 12)
    return bits.to(tl.int16).to(tl.float16, bitcast=True)


@triton.jit
def e4m3_to_fp16(scale_bytes, CHECK_NAN: tl.constexpr):
    """E4M3 bytes -> exact fp16 values (one hardware conversion per two bytes on GPUs). CHECK_NAN:
    0x7F/0xFF (E4M3 NaN, a non-finite block) -> NaN also under the CPU interpreter, whose float8
    conversion reads them as +-480; weight scales are validated at load and skip it."""
    value = scale_bytes.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float16)
    if CHECK_NAN:
        value = tl.where((scale_bytes & 0x7F) == 0x7F, float("nan"), value)
    return value


@triton.jit
def half2_pair_bits(words, shift: tl.constexpr):  # shift in (9, 5, 1, -3)
    """Codes i and i + 4 of each 32-bit word of 8 codes (i = (9 - shift) / 4) -> int32 holding two
    fp16 (low: code i, high: code i + 4), each the E2M1 value times 2^-14: the portable decode
    (the interpreter's; `decode_pairs_ptx` gives the same bits on GPUs).

    -0x7FFF8000 is the int32 of 0x80008000 (the two sign bits)."""
    if shift >= 0:
        mag = (words << shift) & 0x0E000E00
    else:
        mag = (words >> -shift) & 0x0E000E00
    sign = (words << (shift + 3)) & -0x7FFF8000  # every caller's shift is >= -3
    return mag | sign


@triton.jit
def half2_lanes(h):
    """int32 holding two fp16 -> (low, high) fp16 (portable: integer shifts and bitcasts)."""
    low = h.to(tl.int16).to(tl.float16, bitcast=True)
    high = (h >> 16).to(tl.int16).to(tl.float16, bitcast=True)
    return low, high


@triton.jit
def _half2_pair(words, shift: tl.constexpr):
    """`half2_pair_bits` as its (low, high) fp16 halves."""
    return half2_lanes(half2_pair_bits(words, shift))


# The same pairs in 11 integer instructions a word instead of ~15-20 (GPUs, inline PTX): spread the even
# codes (0, 2, 4, 6) and the odd ones into one byte each, laid out as an fp16's high byte wants them
# (sign at bit 7, magnitude at bits 3..1; 0x80808080 is the four sign bits), then one PRMT per pair
# moves bytes 0 and 2 up, or keeps bytes 1 and 3, zeroing the rest. Checked bit-equal to
# `_half2_pair` on the GPU (tests/test_numerics.py); the portable form stays the interpreter's.
@triton.jit
def decode_pairs_ptx(words):
    """words int32 -> 4 int32, register i holding codes i (low half) and i + 4 (high half) of each
    word as fp16 times 2^-14: what an fp16x2 instruction takes (kernels/gemv.py)."""
    # (one-line string pieces: torch.compile re-emits this function's source as it is written)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t, e, o; "
        "shl.b32 t, $4, 1; and.b32 e, t, 0x0E0E0E0E; shl.b32 t, $4, 4; and.b32 t, t, 0x80808080; or.b32 e, e, t; "
        "shr.u32 t, $4, 3; and.b32 o, t, 0x0E0E0E0E; and.b32 t, $4, 0x80808080; or.b32 o, o, t; "
        "prmt.b32 $0, e, 0, 0x2404; prmt.b32 $1, o, 0, 0x2404; prmt.b32 $2, e, 0, 0x3414; prmt.b32 $3, o, 0, 0x3414; }",
        "=r,=r,=r,=r,r", [words], dtype=(tl.int32,) * 4, is_pure=True, pack=1)


@triton.jit
def _split_half2(h):
    """int32 of two fp16 -> (low, high) fp16 (register halves: no instruction)."""
    return tl.inline_asm_elementwise("mov.b32 {$0, $1}, $2;", "=h,=h,r", [h], dtype=(tl.float16, tl.float16),
                                     is_pure=True, pack=1)


@triton.jit
def _decode_words_ptx(words):
    """`decode_pairs_ptx` as fp16 halves: (a0, a1, a2, a3, b0, b1, b2, b3), aj code j, bj code j + 4."""
    r0, r1, r2, r3 = decode_pairs_ptx(words)
    a0, b0 = _split_half2(r0)
    a1, b1 = _split_half2(r1)
    a2, b2 = _split_half2(r2)
    a3, b3 = _split_half2(r3)
    return a0, a1, a2, a3, b0, b1, b2, b3


@triton.jit
def word_order(j):
    """Logical K index of position j in `dequant_words`' order: within each 8-code word, positions
    0..7 hold codes 0, 4, 1, 5, 2, 6, 3, 7 (each half2 register holds codes i and i + 4)."""
    return (j // 8) * 8 + (j % 2) * 4 + (j % 8) // 2


@triton.jit
def to_word_order(v, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """values [ROWS, BLOCK_K] in natural K order -> `word_order` (within each 8-element word the
    halves h and positions i swap: natural 4h + i -> 2i + h)."""
    return tl.reshape(tl.permute(tl.reshape(v, [ROWS, BLOCK_K // 8, 2, 4]), [0, 1, 3, 2]), [ROWS, BLOCK_K])


@triton.jit
def dequant_words(words, scale_bytes, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, CHECK_NAN: tl.constexpr):
    """int32 words [ROWS, BLOCK_K/8] of packed codes + scale bytes [ROWS, BLOCK_K/16] -> fp16
    [ROWS, BLOCK_K] in units of 2^-14, K in `word_order` (the same permutation for every operand
    leaves dot products unchanged; the joins keep each half2 pair of one 32-bit register together)."""
    # codes i and i + 4 of a word share a 32-bit register (aj, bj): 11 integer ops a word as PTX, ~15 portable
    if PTX_DECODE:
        a0, a1, a2, a3, b0, b1, b2, b3 = _decode_words_ptx(words)
    else:
        a0, b0 = _half2_pair(words, 9)
        a1, b1 = _half2_pair(words, 5)
        a2, b2 = _half2_pair(words, 1)
        a3, b3 = _half2_pair(words, -3)
    v = tl.join(tl.join(tl.join(a0, a2), tl.join(a1, a3)), tl.join(tl.join(b0, b2), tl.join(b1, b3)))
    v = tl.reshape(v, [ROWS, BLOCK_K // 16, 16]) * e4m3_to_fp16(scale_bytes, CHECK_NAN)[:, :, None]
    return tl.reshape(v, [ROWS, BLOCK_K])


@triton.jit
def dequant_bytes(packed, scale_bytes, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, CHECK_NAN: tl.constexpr):
    """packed uint8 [ROWS, BLOCK_K/2] + scale bytes [ROWS, BLOCK_K/16] -> fp16 [ROWS, BLOCK_K] in
    units of 2^-14, K in order."""
    p = packed.to(tl.int32)
    codes = tl.reshape(tl.join(p & 0xF, p >> 4), [ROWS, BLOCK_K // 16, 16])  # even element low nibble
    values = e2m1_to_fp16_units(codes) * e4m3_to_fp16(scale_bytes, CHECK_NAN)[:, :, None]
    return tl.reshape(values, [ROWS, BLOCK_K])


@triton.jit
def aligned(v, MULT: tl.constexpr):
    """v, which the launcher found to be a multiple of MULT (`launch.x_align`), written so that the
    compiler knows it too: loads of x then stay 16 bytes wide where K % 16 != 0 (a shift pair a program)."""
    return v // MULT * MULT


@triton.jit
def max_abs_bits(x):
    """max |x| over the last axis as int32 bits of the fp32 value (NaN bits sort above +inf)."""
    return tl.reduce(x.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF, len(x.shape) - 1, max_combine)


@triton.jit
def small_input_scales(x_ptr, M, K, stride_xm, weight_scale_2, ROWS: tl.constexpr, AMAX_BLOCK: tl.constexpr,
                       AMAX_CHUNKS: tl.constexpr, rotation):
    """(gs, alpha) of a whole small input x [M <= ROWS, K] (K <= AMAX_BLOCK * AMAX_CHUNKS), read by
    the calling program alone: the bits `scales.dynamic_scale_kernel` gives, for kernels in which
    every program needs the dynamic scale before it can quantize (one launch instead of two). The
    loads are unrolled so that all of them are in flight at once (a loop would wait on each).
    rotation (the caller's program id): the column chunk each program reads first, so that the
    programs, all reading the same bytes, do not all ask the same L2 slices at once."""
    amax = tl.full([AMAX_BLOCK], 0, tl.int32)
    for r in tl.static_range(ROWS):
        for c in tl.static_range(AMAX_CHUNKS):
            cols = amax_chunk_cols(c, rotation, AMAX_CHUNKS, AMAX_BLOCK)
            row_ok = cols * 0 + r < M  # a tensor mask (r is a compile-time int)
            amax = fold_abs_bits(amax, tl.load(x_ptr + r * stride_xm + cols, mask=(cols < K) & row_ok, other=0.0))
    return dynamic_scales(tl.reduce(amax, 0, max_combine), weight_scale_2)


@triton.jit
def amax_chunk_cols(c, rotation, AMAX_CHUNKS: tl.constexpr, AMAX_BLOCK: tl.constexpr):
    """The columns of the unrolled max |x| reads' chunk c (of a row), rotated by the reading program's
    id so that programs reading the same bytes do not all ask the same L2 slices at once."""
    return ((c + rotation) % AMAX_CHUNKS) * AMAX_BLOCK + tl.arange(0, AMAX_BLOCK)


@triton.jit
def fold_abs_bits(amax, v):
    """amax (int32 float bits) folded elementwise with |v| as fp32 bits (NaN sorts above +inf, so kept)."""
    return tl.maximum(amax, v.to(tl.float32).to(tl.int32, bitcast=True) & 0x7FFFFFFF)


@triton.jit
def encode_scale(global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, is_first, MAXIMA_BLOCK: tl.constexpr):
    """The encode scale gs of a pass that quantizes x. MAXIMA_BLOCK == 0: gs = *global_scale_ptr (a
    static scale, or one a scale launch wrote). Else global_scale_ptr is the weight's decode scale
    and maxima_ptr[:n_maxima] (n_maxima <= MAXIMA_BLOCK) the int32 max |x| bits each program of
    `scales.dynamic_scale_kernel` stored (MAXIMA): their max gives (gs, alpha), the bits that
    launch would have written, and the program with is_first writes them to scales_ptr (fp32 [2])
    for the GEMM that follows. Every program of the pass reduces them itself: no atomics or tickets
    on the scale launch's tail, no words to reset."""
    if MAXIMA_BLOCK > 0:
        i = tl.arange(0, MAXIMA_BLOCK)
        bits = tl.load(maxima_ptr + i, mask=i < n_maxima, other=0)
        gs, alpha = dynamic_scales(tl.reduce(bits, 0, max_combine), tl.load(global_scale_ptr))
        if is_first:
            store_scales(scales_ptr, gs, alpha)
    else:
        gs = tl.load(global_scale_ptr)
    return gs


@triton.jit
def store_scales(scales_ptr, gs, alpha):
    """A dynamic scale's (gs, alpha) as fp32 [2] at scales_ptr, where the GEMM after the launch reads them
    (one program of the launch writes them)."""
    tl.store(scales_ptr, gs)
    tl.store(scales_ptr + 1, alpha)


@triton.jit
def dynamic_scales(amax_bits, weight_scale_2):
    """From max |x| (int32 bits, NaN kept) the dynamic activation scales, with the same bits as
    `fp4linear.format.decode_scale` and the Linear's static path: input_scale = max(amax, 1e-30) /
    2688, gs = 1 / input_scale, alpha = input_scale * weight_scale_2 (all IEEE fp32)."""
    amax = tl.where(amax_bits < 0x0DA24260, 1e-30, amax_bits.to(tl.float32, bitcast=True))  # 0x0DA24260: 1e-30
    input_scale = tl.math.div_rn(amax, 2688.0)
    gs = tl.math.div_rn(1.0, input_scale)
    return gs, input_scale * weight_scale_2
