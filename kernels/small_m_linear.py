"""The whole NVFP4 Linear for a few rows (decode) in one launch: quantize, GEMM, split-K reduce.

out[M, N] = alpha * (quantize(x) @ W^T) (+ bias) for M <= 16. Each program quantizes the slice of
x it multiplies (x is tiny at decode and stays in L2; `quantize_blocks`, so the codes and
scales are bit-identical to `fp4linear.quantize`'s), decodes its weight tile to fp16 in registers,
and runs an fp16 tensor-core dot with fp32 accumulation (the weight is wgmma's register operand).
K is split over programs so the grid fills the GPU; the last program to finish an N tile (an
atomic ticket) sums the tile's fp32 partials in split order, so results are deterministic, and
resets the ticket for the next call.

With a dynamic activation scale, `scales.dynamic_scale_kernel` runs first and this kernel reads
its gs and alpha as it reads a static layer's.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_numerics = sibling(__name__, "numerics")
DECODE_UNIT_SCALE = _numerics.DECODE_UNIT_SCALE
dequant_words = _numerics.dequant_words
e2m1_to_fp16_units = _numerics.e2m1_to_fp16_units
quantize_blocks = _numerics.quantize_blocks
to_word_order = _numerics.to_word_order
word_order = _numerics.word_order
aligned = _numerics.aligned

BLOCK_M = tl.constexpr(16)  # tokens per MMA (the dot's N side); M <= 16


@triton.jit(do_not_specialize=["M", "stride_om"], do_not_specialize_on_alignment=["scale_ptr", "alpha_ptr"])
def nvfp4_linear_small_m_kernel(
    x_ptr,  # [M, K] bf16/fp16/fp32, unit column stride
    scale_ptr,  # gs, the activation's encode scale (fp32)
    alpha_ptr,  # alpha = 1 / (gs * gs_w) (fp32)
    w_ptr,  # int32 words [Np, Kp/8] (packed E2M1, 8 codes per word)
    w_scale_ptr,  # uint8 row-major [Np, Kp/16]
    bias_ptr,  # [N] or unused
    out_ptr,  # [M, N] (row stride stride_om)
    part_ptr,  # fp32 [SPLIT_K, BLOCK_M, N] workspace (SPLIT_K > 1)
    ticket_ptr,  # int32 [cdiv(N, BLOCK_N)], zero between calls (SPLIT_K > 1)
    M,
    stride_xm,
    stride_om,
    N,
    K,
    Kp_div64,
    k_tiles_per_split,
    X_ROWS: tl.constexpr,  # rows of x quantized per tile: next power of two >= M, <= 16
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # Kp % BLOCK_K == 0
    NATURAL_X: tl.constexpr,  # SmallMConfig.natural_x
    X_ALIGN: tl.constexpr = 1,  # K and stride_xm are multiples of it (`launch.x_align`; 1: no more known)
):
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    Kp = Kp_div64 * 64
    pid_n = tl.program_id(0) // SPLIT_K
    pid_k = tl.program_id(0) % SPLIT_K
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N

    gs = tl.load(scale_ptr)
    alpha = tl.load(alpha_ptr)

    # x is read in the weight decode's permuted K order, so that its blocks of 16 stay whole and
    # the dot pairs the same K indices on both sides.
    xr = tl.arange(0, X_ROWS)
    if NATURAL_X:  # 16-byte loads; the quantized values are permuted in registers instead
        xk = tl.arange(0, BLOCK_K)
    else:
        xk = word_order(tl.arange(0, BLOCK_K))
    x_rows = x_ptr + xr.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * (Kp // 8)
    ws_rows = w_scale_ptr + rn.to(tl.int64)[:, None] * (Kp // 16)
    wc = tl.arange(0, BLOCK_K // 8)
    sc = tl.arange(0, BLOCK_K // 16)

    acc = tl.full([BLOCK_N, BLOCK_M], 0.0, tl.float32)
    k_begin = pid_k * k_tiles_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + k_tiles_per_split * BLOCK_K, Kp)
    for k0 in range(k_begin, k_end, BLOCK_K):
        cols = k0 + xk
        x = tl.load(x_rows + cols[None, :], mask=(xr < M)[:, None] & (cols < K)[None, :], other=0.0)
        codes, _, scale, finite = quantize_blocks(tl.reshape(x.to(tl.float32), [X_ROWS, BLOCK_K // 16, 16]), gs)
        scale = tl.where(finite, scale, float("nan")).to(tl.float16)  # exact: an E4M3 value
        a = tl.reshape(e2m1_to_fp16_units(codes) * scale[:, :, None], [X_ROWS, BLOCK_K])
        if NATURAL_X:
            a = to_word_order(a, X_ROWS, BLOCK_K)
        if X_ROWS < BLOCK_M:  # rows >= X_ROWS repeat earlier rows; their outputs are never stored
            a = tl.reshape(tl.broadcast_to(a[None, :, :], [BLOCK_M // X_ROWS, X_ROWS, BLOCK_K]), [BLOCK_M, BLOCK_K])
        if EVEN_K:
            words = tl.load(w_rows + (k0 // 8 + wc)[None, :], mask=n_ok[:, None], other=0)
            w_sf = tl.load(ws_rows + (k0 // 16 + sc)[None, :], mask=n_ok[:, None], other=0)
        else:
            words = tl.load(w_rows + (k0 // 8 + wc)[None, :], mask=n_ok[:, None] & (k0 + wc * 8 < Kp)[None, :], other=0)
            w_sf = tl.load(ws_rows + (k0 // 16 + sc)[None, :], mask=n_ok[:, None] & (k0 + sc * 16 < Kp)[None, :],
                           other=0)
        w = dequant_words(words, w_sf, BLOCK_N, BLOCK_K, False)  # weight scales: validated at load
        acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.float32)

    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    alpha = alpha * DECODE_UNIT_SCALE  # both operands are in units of 2^-14 (exact)
    if SPLIT_K == 1:
        _store_out(acc * alpha, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)
    else:
        tile = part_ptr + rm[None, :] * N + rn[:, None]
        tl.store(tile + pid_k * (BLOCK_M * N), acc, mask=m_ok[None, :] & n_ok[:, None])
        tl.debug_barrier()  # every thread's partial is written before the ticket releases it
        ticket = tl.atomic_add(ticket_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:  # the last split of this N tile: sum the partials in split order
            total = tl.load(tile, mask=m_ok[None, :] & n_ok[:, None], other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT_K):
                total += tl.load(tile + s * (BLOCK_M * N), mask=m_ok[None, :] & n_ok[:, None], other=0.0,
                                 cache_modifier=".cg")
            _store_out(total * alpha, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS)
            tl.atomic_xchg(ticket_ptr + pid_n, 0, sem="relaxed", scope="gpu")  # for the next call (as in gemm.py)


@triton.jit
def _store_out(acc, bias_ptr, out_ptr, rm, rn, m_ok, n_ok, stride_om, HAS_BIAS: tl.constexpr):
    """acc [BLOCK_N, BLOCK_M] (already times alpha) (+ bias[n]) -> out[m, n] in out's dtype."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(out_ptr + rm.to(tl.int64)[None, :] * stride_om + rn[:, None], acc.to(out_ptr.dtype.element_ty),
             mask=m_ok[None, :] & n_ok[:, None])
