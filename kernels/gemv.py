"""The whole NVFP4 Linear for one to four rows on CUDA cores: quantize, GEMV, split-K reduce.

out[M, N] = alpha * (quantize(x) @ W^T) (+ bias) for M <= 16 (routed: M <= 4), one launch. At decode a Linear is a
read of its weight; what limits the tensor-core kernel (kernels/small_m_linear.py) there is the
instruction count of turning codes into an MMA operand, not memory. This kernel never builds one:
it multiplies E2M1 codes against E2M1 codes in fp16 pairs and applies the two E4M3 scales once per
block of 16.

Exactness (docs/nvfp4.md, "Triton backend paths"): within a block, w * 2^-14 (the E2M1 value
placed in fp16 bits, `numerics.half2_pair_bits`) times a' = 2 * E2M1 of the activation (an integer <= 12) is a
multiple of 2^-15 below 72 * 2^-14; a sum of 8 such products stays below 2^-4, where fp16 holds
every multiple of 2^-15. So the two fp16 lanes of a half2 accumulator sum 8 products each without
rounding, their fp32 sum is exact, and times the scale product w_sf * a_sf (exact in fp32, 8
significant bits) is exact again: the first rounding is the fp32 accumulation over blocks, as in
the tensor-core kernels. On the GPU the pairs go through `fma.rn.f16x2` (inline PTX); the portable
path (the CPU interpreter, and a test on the GPU) forms the same exact lane sums in fp32, so both
give the same bits.

With a dynamic activation scale (DYNAMIC) every program first takes max |x| over the whole input
and derives gs and alpha as `scales.dynamic_scale_kernel` does, so a dynamic layer is one launch
too (the launcher does this for small inputs only, `fuses_dynamic_scale`).

Split K and the ticketed reduce as in kernels/small_m_linear.py: the last program of an N tile sums
the tile's fp32 partials in split order (deterministic) and resets its ticket.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

_numerics = sibling(__name__, "numerics")
small_input_scales = _numerics.small_input_scales
aligned = _numerics.aligned
e2m1_to_fp16_units = _numerics.e2m1_to_fp16_units
e4m3_to_fp16 = _numerics.e4m3_to_fp16
quantize_blocks = _numerics.quantize_blocks
decode_pairs_ptx = _numerics.decode_pairs_ptx  # (aliases keep their function's name: Inductor re-emits that)
half2_pair_bits = _numerics.half2_pair_bits
half2_lanes = _numerics.half2_lanes

# w is in units of 2^-14 and a' = 2 * E2M1: the accumulated sums are the exact ones times 2^-13.
GEMV_UNIT_SCALE = tl.constexpr(2.0**13)


@triton.jit
def _hfma2(w, a, acc):
    return tl.inline_asm_elementwise("fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r", [w, a, acc], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit
def _hmul2(w, a):
    return tl.inline_asm_elementwise("mul.rn.f16x2 $0, $1, $2;", "=r,r,r", [w, a], dtype=tl.int32, is_pure=True,
                                     pack=1)


@triton.jit
def _lane_sum(h):
    """fp32 low + high of a half2 (both exact, so is the sum)."""
    return tl.inline_asm_elementwise(
        "{ .reg .f16 l, h; .reg .f32 a, b; mov.b32 {l, h}, $1; cvt.f32.f16 a, l; cvt.f32.f16 b, h; "
        "add.rn.f32 $0, a, b; }", "=r,r", [h], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _block_dot(w0, w1, a0, a1, a2, a3, a4, a5, a6, a7, USE_ASM: tl.constexpr):
    """Exact dot of one block of 16 (times 2^-13) from its two weight words w0, w1 ([BLOCK_N, NB]
    int32, broadcast against the activation's rows) and the activation's half2 pairs a0..a7
    (word 0 pairs 0..3, word 1 pairs 0..3; each low: code p, high: code p + 4, as a'): fp32."""
    if USE_ASM:
        # the pairs by `numerics.decode_pairs_ptx` (the bits of `half2_pair_bits`, in 11 instructions a word
        # instead of 20: the loop's ~520 SASS a K tile of 64x256 held ~320 of decode, offline sm_90)
        p0, p1, p2, p3 = decode_pairs_ptx(w0)
        q0, q1, q2, q3 = decode_pairs_ptx(w1)
        h = _hmul2(p0, a0)
        h = _hfma2(p1, a1, h)
        h = _hfma2(p2, a2, h)
        h = _hfma2(p3, a3, h)
        h = _hfma2(q0, a4, h)
        h = _hfma2(q1, a5, h)
        h = _hfma2(q2, a6, h)
        h = _hfma2(q3, a7, h)
        return _lane_sum(h)
    else:
        # The same lane sums in fp32 (every product and partial sum exact either way).
        lo, hi = _pair_fp32(w0, 9, a0, 0.0, 0.0)
        lo, hi = _pair_fp32(w0, 5, a1, lo, hi)
        lo, hi = _pair_fp32(w0, 1, a2, lo, hi)
        lo, hi = _pair_fp32(w0, -3, a3, lo, hi)
        lo, hi = _pair_fp32(w1, 9, a4, lo, hi)
        lo, hi = _pair_fp32(w1, 5, a5, lo, hi)
        lo, hi = _pair_fp32(w1, 1, a6, lo, hi)
        lo, hi = _pair_fp32(w1, -3, a7, lo, hi)
        return lo + hi


@triton.jit
def _pair_fp32(words, shift: tl.constexpr, a, lo, hi):
    """Portable twin of one fma.rn.f16x2 step: lane products added to (lo, hi) in fp32."""
    wl, wh = half2_lanes(half2_pair_bits(words, shift))
    al, ah = half2_lanes(a)
    return lo + wl.to(tl.float32) * al.to(tl.float32), hi + wh.to(tl.float32) * ah.to(tl.float32)


@triton.jit
def _activation_pairs(x, gs, M_ROWS: tl.constexpr, NB: tl.constexpr):
    """x fp32 [M_ROWS, NB * 16] -> quantize (the recipe: codes and scales bit-identical to
    `fp4linear.quantize`'s) -> the eight half2 pairs of each block ([M_ROWS, 1, NB] int32 each:
    a' = 2 * E2M1 in fp16 bits; word 0 pairs 0..3, then word 1's) and the scale values
    [M_ROWS, 1, NB] (NaN for a non-finite block)."""
    codes, _, scale, finite = quantize_blocks(tl.reshape(x, [M_ROWS, NB, 16]), gs)
    scale = tl.where(finite, scale, float("nan"))
    a2 = e2m1_to_fp16_units(codes) * 32768.0  # 2 * E2M1, exact in fp16
    bits = a2.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    # element 8 * word + 4 * half + p: pair (word, p) = (half 0) | (half 1) << 16
    bits = tl.permute(tl.reshape(bits, [M_ROWS, NB, 2, 2, 4]), [0, 1, 2, 4, 3])  # [.., word, p, half]
    lo, hi = tl.split(bits)
    q0, q1 = tl.split(tl.permute(lo | (hi << 16), [0, 1, 3, 2]))  # [.., p, word] -> word 0, word 1
    # p = 2 * j + i: the first split separates i (even p, odd p), the second j
    q0_even, q0_odd = tl.split(tl.reshape(q0, [M_ROWS, NB, 2, 2]))
    p0, p2 = tl.split(q0_even)
    p1, p3 = tl.split(q0_odd)
    q1_even, q1_odd = tl.split(tl.reshape(q1, [M_ROWS, NB, 2, 2]))
    p4, p6 = tl.split(q1_even)
    p5, p7 = tl.split(q1_odd)
    return (p0[:, None, :], p1[:, None, :], p2[:, None, :], p3[:, None, :], p4[:, None, :], p5[:, None, :],
            p6[:, None, :], p7[:, None, :], scale[:, None, :])


@triton.jit(do_not_specialize=["M", "stride_om"], do_not_specialize_on_alignment=["scale_ptr", "alpha_ptr"])
def nvfp4_gemv_kernel(
    x_ptr,  # [M, K] bf16/fp16/fp32, unit column stride
    scale_ptr,  # gs, the activation's encode scale (fp32); unused with DYNAMIC
    alpha_ptr,  # alpha = 1 / (gs * gs_w) (fp32); with DYNAMIC the weight's decode scale weight_scale_2
    w_ptr,  # int32 words [Np, Kp/8] (packed E2M1, 8 codes per word)
    w_scale_ptr,  # uint8 row-major [Np, Kp/16]
    bias_ptr,  # [N] or unused
    out_ptr,  # [M, N] (row stride stride_om)
    part_ptr,  # fp32 [SPLIT_K, M_ROWS, N] workspace (SPLIT_K > 1)
    ticket_ptr,  # int32 [cdiv(N, BLOCK_N)], zero between calls (SPLIT_K > 1)
    M,
    stride_xm,
    stride_om,
    N,
    K,
    Kp_div64,
    k_tiles_per_split,
    M_ROWS: tl.constexpr,  # next power of two >= M, <= 16
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # Kp % BLOCK_K == 0
    USE_ASM: tl.constexpr,  # fp16x2 PTX (GPU); False: the portable path
    PREFETCH: tl.constexpr,  # load K tile i + 1 before the math of tile i
    DYNAMIC: tl.constexpr,  # gs and alpha from max |x|, computed by every program (x is tiny at decode)
    AMAX_BLOCK: tl.constexpr,  # DYNAMIC: columns per load of the max |x| pass
    AMAX_CHUNKS: tl.constexpr,  # DYNAMIC: cdiv(K, AMAX_BLOCK), unrolled so that every load is in flight at once
    X_ALIGN: tl.constexpr = 1,  # K and stride_xm are multiples of it (`launch.x_align`; 1: no more known)
):
    NB: tl.constexpr = BLOCK_K // 16
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    Kp = Kp_div64 * 64
    pid_n = tl.program_id(0) // SPLIT_K
    pid_k = tl.program_id(0) % SPLIT_K
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    xr = tl.arange(0, M_ROWS)
    xk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + xr.to(tl.int64)[:, None] * stride_xm
    # The weight is loaded as [1, BLOCK_N, .] tiles: the whole computation then stays in the
    # layout of that load (from a 2-D load, broadcasting over rows moved every word through
    # shared memory); only the small activation operands change layout.
    rn3 = rn.to(tl.int64)[None, :, None]
    n_ok3 = n_ok[None, :, None]
    w_rows = w_ptr + rn3 * (Kp // 8)
    ws_rows = w_scale_ptr + rn3 * (Kp // 16)
    wc = tl.arange(0, BLOCK_K // 8)[None, None, :]
    sc = tl.arange(0, NB)[None, None, :]

    acc = tl.full([M_ROWS, BLOCK_N, NB], 0.0, tl.float32)
    k_begin = pid_k * k_tiles_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + k_tiles_per_split * BLOCK_K, Kp)
    x_ok = (xr < M)[:, None]
    if PREFETCH:  # (before the scale: the first tile's loads are under way while a dynamic one is worked out)
        words, w_sf, x = _tile_loads(w_rows, ws_rows, x_rows, wc, sc, xk, n_ok3, x_ok, k_begin, k_end, K, Kp, EVEN_K)
    if DYNAMIC:
        # Every program takes max |x| over all of x itself (the same bits as `scales.dynamic_scale_kernel`,
        # NaN kept): a second launch and its dependency cost more than re-reading a few KB from L2.
        gs, alpha = small_input_scales(x_ptr, M, K, stride_xm, tl.load(alpha_ptr), M_ROWS, AMAX_BLOCK, AMAX_CHUNKS,
                                       tl.program_id(0))
    else:
        gs = tl.load(scale_ptr)
        alpha = tl.load(alpha_ptr)
    for k0 in range(k_begin, k_end, BLOCK_K):
        if PREFETCH:
            # Triton's pipeliner leaves this loop's loads (no dot) where they are, so a warp would wait out
            # a DRAM round trip every K tile: the next tile's loads go out before this tile's math
            # (masked off past the split)
            cur_words, cur_sf, cur_x = words, w_sf, x
            words, w_sf, x = _tile_loads(w_rows, ws_rows, x_rows, wc, sc, xk, n_ok3, x_ok, k0 + BLOCK_K, k_end, K, Kp,
                                         EVEN_K)
        else:
            cur_words, cur_sf, cur_x = _tile_loads(w_rows, ws_rows, x_rows, wc, sc, xk, n_ok3, x_ok, k0, k_end, K, Kp,
                                                   EVEN_K)
        w0, w1 = tl.split(tl.reshape(cur_words, [1, BLOCK_N, NB, 2]))
        cur_sf = e4m3_to_fp16(cur_sf, False).to(tl.float32)  # weight scales: validated at load
        a0, a1, a2, a3, a4, a5, a6, a7, a_sf = _activation_pairs(cur_x.to(tl.float32), gs, M_ROWS, NB)
        dot = _block_dot(w0, w1, a0, a1, a2, a3, a4, a5, a6, a7, USE_ASM)
        acc += dot * (cur_sf * a_sf)  # exact product; the add is the one rounding

    total = tl.reduce(acc, 2, _add)  # [M_ROWS, BLOCK_N]
    rm = tl.arange(0, M_ROWS)
    m_ok = rm < M
    alpha = alpha * GEMV_UNIT_SCALE
    if SPLIT_K == 1:
        _store_out(total * alpha, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)
    else:
        tile = part_ptr + rm[:, None] * N + rn[None, :]
        tl.store(tile + pid_k * (M_ROWS * N), total, mask=m_ok[:, None] & n_ok[None, :])
        tl.debug_barrier()  # every thread's partial is written before the ticket releases it
        ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:  # the last split of this N tile: sum the partials in split order
            s_total = tl.load(tile, mask=m_ok[:, None] & n_ok[None, :], other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT_K):
                s_total += tl.load(tile + s * (M_ROWS * N), mask=m_ok[:, None] & n_ok[None, :], other=0.0,
                                   cache_modifier=".cg")
            _store_out(s_total * alpha, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)
            tl.atomic_xchg(ticket_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # for the next call (as in gemm.py)


@triton.jit
def _tile_loads(w_rows, ws_rows, x_rows, wc, sc, xk, n_ok3, x_ok, k0, k_end, K, Kp, EVEN_K: tl.constexpr):
    """The weight words, weight scale bytes and x columns of the K tile at k0 (nothing at or past k_end)."""
    live = tl.full([1, 1, 1], 0, tl.int32) + k0 < k_end  # (a [1, 1, 1] tensor: the interpreter takes no scalar mask)
    if EVEN_K:
        words = tl.load(w_rows + (k0 // 8 + wc), mask=n_ok3 & live, other=0)
        w_sf = tl.load(ws_rows + (k0 // 16 + sc), mask=n_ok3 & live, other=0)
    else:
        words = tl.load(w_rows + (k0 // 8 + wc), mask=n_ok3 & live & (k0 + wc * 8 < Kp), other=0)
        w_sf = tl.load(ws_rows + (k0 // 16 + sc), mask=n_ok3 & live & (k0 + sc * 16 < Kp), other=0)
    cols = k0 + xk
    x = tl.load(x_rows + cols[None, :], mask=x_ok & (cols < K)[None, :] & tl.reshape(live, [1, 1]), other=0.0)
    return words, w_sf, x


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _store_out(acc, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS: tl.constexpr):
    """acc [M_ROWS, BLOCK_N] (already times alpha) (+ bias[n]) -> out[m, n] in out's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rm.to(tl.int64)[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])
