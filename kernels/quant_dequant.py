"""Quantize and dequantize in one pass, for GEMMs whose operands are already dequantized.

`fake_quantize_kernel`: x [M, K] -> the values its NVFP4 quantization holds, e2m1 * e4m3 without
the global scale, written as [M, Kp] (zeros beyond K): in units of 2^-14 and the weight decode's
permuted K order for the Triton GEMM (UNITS), or as true values in x's dtype and natural order
for cuBLAS. Same codes and scales as `fp4linear.quantize` (`quantize_blocks`); a
non-finite block is NaN.

`dequantize_rows_kernel`: rows of a prepared weight (packed codes [N, Kp/2], row-major scale bytes
[N, Kp/16]) -> true values e2m1 * e4m3 in bf16/fp16 (exact in both), natural order.

`cublas_operands_kernel`: the two in one launch (x's values and the first weight rows for cuBLAS).
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_numerics = sibling(__name__, "numerics")
activation_offset = sibling(__name__, "layout").activation_offset
dequant_bytes = _numerics.dequant_bytes
e2m1_to_fp16_units = _numerics.e2m1_to_fp16_units
quantize_blocks = _numerics.quantize_blocks
small_input_scales = _numerics.small_input_scales
encode_scale = _numerics.encode_scale
dynamic_scales = _numerics.dynamic_scales
store_scales = _numerics.store_scales
max_abs_bits = _numerics.max_abs_bits
max_combine = _numerics.max_combine
to_word_order = _numerics.to_word_order
aligned = _numerics.aligned


@triton.jit
def fake_quantize_tile(x, gs, UNITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """x fp32 [BLOCK_M, BLOCK_K] (zeros beyond K), gs the fp32 encode scale -> the values its NVFP4
    quantization holds, e2m1 * e4m3 (NaN for a non-finite block): fp16 in units of 2^-14 in the
    weight decode's K order (UNITS), else fp32 true values in natural order. Also the tail of
    `act_quantize.act_fake_quantize_kernel` (the activation's values for the down GEMM)."""
    codes, _, scale, finite = quantize_blocks(tl.reshape(x, [BLOCK_M, BLOCK_K // 16, 16]), gs)
    scale = tl.where(finite, scale, float("nan"))
    if UNITS:
        v = e2m1_to_fp16_units(codes) * scale.to(tl.float16)[:, :, None]
        v = to_word_order(v, BLOCK_M, BLOCK_K)
    else:
        v = (e2m1_to_fp16_units(codes).to(tl.float32) * 16384.0) * scale[:, :, None]  # exact
        v = tl.reshape(v, [BLOCK_M, BLOCK_K])
    return v


@triton.jit(do_not_specialize=["M", "n_maxima"],
            do_not_specialize_on_alignment=["global_scale_ptr", "scales_ptr", "words_ptr", "maxima_ptr"])
def fake_quantize_kernel(x_ptr, global_scale_ptr, out_ptr, scales_ptr, words_ptr, maxima_ptr, n_maxima, M, K, Kp,
                         stride_xm, UNITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                         DYNAMIC: tl.constexpr, AMAX_ROWS: tl.constexpr, AMAX_BLOCK: tl.constexpr,
                         AMAX_CHUNKS: tl.constexpr, A_ORDER: tl.constexpr, BARRIER: tl.constexpr,
                         MAXIMA_BLOCK: tl.constexpr, X_ALIGN: tl.constexpr = 1, BARRIER_SLOTS: tl.constexpr = 1):
    """MAXIMA_BLOCK > 0: gs from a scale launch's per-program maxima (`numerics.encode_scale`;
    global_scale_ptr is then the weight's decode scale), program (0, 0) writing (gs, alpha) to
    scales_ptr. DYNAMIC (small x only): global_scale_ptr is the weight's decode scale, and program (0, 0)
    writes (gs, alpha) to scales_ptr (fp32 [2]) for the GEMM that follows. Without BARRIER every
    program derives them from max |x| over all of x (`small_input_scales`: x is a few hundred KB at
    most, read from L2). BARRIER (GPU only, every program resident at once: the launcher keeps the
    grid within the SM count): each program reads only its own tile and writes its max |x| to a
    word of its own (words_ptr[program], the top bit set to mark it written), and all read the
    BARRIER_SLOTS words until every one is marked, then take the maximum of what they read; the last
    to leave (words_ptr[BARRIER_SLOTS] counts departures) zeroes them for the next call. The same
    maximum, so the same bits."""
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    if DYNAMIC and BARRIER:
        rows, cols, x = _load_tile(x_ptr, M, K, stride_xm, tl.program_id(0), tl.program_id(1), BLOCK_M, BLOCK_K)
        n = tl.num_programs(0) * tl.num_programs(1)
        weight_scale_2 = tl.load(global_scale_ptr)  # (in flight during the wait)
        # max |x| bits never have the top bit (NaN sorts below it), so it marks a word as written. No
        # fence or acquire: the words themselves are all that passes between programs, and they
        # are read from L2 (volatile) until every one is marked.
        written = -2147483648  # (the top bit of an int32)
        tl.atomic_xchg(words_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1),
                       tl.reduce(max_abs_bits(x), 0, max_combine) | written, sem="relaxed", scope="gpu")
        slots = tl.arange(0, BARRIER_SLOTS)
        seen = tl.load(words_ptr + slots, mask=slots < n, other=written, volatile=True)
        while tl.max(seen, 0) >= 0:  # a word not yet written
            seen = tl.load(words_ptr + slots, mask=slots < n, other=written, volatile=True)
        gs, alpha = dynamic_scales(tl.reduce(seen & 0x7FFFFFFF, 0, max_combine), weight_scale_2)
        if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
            store_scales(scales_ptr, gs, alpha)
        _store_fake_quantized(x, gs, out_ptr, rows, cols, M, Kp, UNITS, BLOCK_M, BLOCK_K, A_ORDER)
        # departures after the stores (the last one out zeroes the words for the next call): a program
        # departs once its reads have returned, so none can still need a word the last one zeroes
        if tl.atomic_add(words_ptr + BARRIER_SLOTS, 1, sem="relaxed", scope="gpu") == n - 1:
            tl.store(words_ptr + slots, tl.zeros_like(slots), mask=slots < n)
            tl.store(words_ptr + BARRIER_SLOTS, 0)
    else:
        if DYNAMIC:
            gs, alpha = small_input_scales(x_ptr, M, K, stride_xm, tl.load(global_scale_ptr), AMAX_ROWS,
                                           AMAX_BLOCK, AMAX_CHUNKS, tl.program_id(1))
            if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
                store_scales(scales_ptr, gs, alpha)
            _fake_quantize_program(x_ptr, gs, out_ptr, M, K, Kp, stride_xm, tl.program_id(0), tl.program_id(1),
                                   UNITS, BLOCK_M, BLOCK_K, A_ORDER)
        else:  # x's tile first: its load is in flight while gs is loaded or reduced
            rows, cols, x = _load_tile(x_ptr, M, K, stride_xm, tl.program_id(0), tl.program_id(1), BLOCK_M, BLOCK_K)
            gs = encode_scale(global_scale_ptr, maxima_ptr, n_maxima, scales_ptr,
                              (tl.program_id(0) == 0) & (tl.program_id(1) == 0), MAXIMA_BLOCK)
            _store_fake_quantized(x, gs, out_ptr, rows, cols, M, Kp, UNITS, BLOCK_M, BLOCK_K, A_ORDER)


@triton.jit
def _load_tile(x_ptr, M, K, stride_xm, pid_m, pid_k, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """(rows, cols, x): the [BLOCK_M, BLOCK_K] tile (pid_m, pid_k) of x, zeros outside [M, K]."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rows < M)[:, None] & (cols < K)[None, :]
    return rows, cols, tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :], mask=ok, other=0.0)


@triton.jit
def _store_fake_quantized(x, gs, out_ptr, rows, cols, M, Kp, UNITS: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_K: tl.constexpr, A_ORDER: tl.constexpr):
    """The pass's values of tile x (rows, cols) into out (row stride Kp; A_ORDER 1-3: out in that
    `layout.activation_offset` order instead, UNITS only)."""
    v = fake_quantize_tile(x.to(tl.float32), gs, UNITS, BLOCK_M, BLOCK_K)
    offsets = activation_offset(rows.to(tl.int64)[:, None], cols[None, :], Kp, A_ORDER)
    tl.store(out_ptr + offsets, v.to(out_ptr.dtype.element_ty), mask=(rows < M)[:, None] & (cols < Kp)[None, :])


@triton.jit
def _fake_quantize_program(x_ptr, gs, out_ptr, M, K, Kp, stride_xm, pid_m, pid_k, UNITS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, A_ORDER: tl.constexpr):
    """One [BLOCK_M, BLOCK_K] tile of the quantize-dequantize pass."""
    rows, cols, x = _load_tile(x_ptr, M, K, stride_xm, pid_m, pid_k, BLOCK_M, BLOCK_K)
    _store_fake_quantized(x, gs, out_ptr, rows, cols, M, Kp, UNITS, BLOCK_M, BLOCK_K, A_ORDER)


@triton.jit
def dequantize_rows_kernel(w_ptr, w_scale_ptr, out_ptr, row_begin, N, Kp, stride_o, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    """out[r - row_begin, :] = values of weight rows r in [row_begin, N)."""
    _dequantize_rows_program(w_ptr, w_scale_ptr, out_ptr, row_begin, N, Kp, stride_o, tl.program_id(0),
                             tl.program_id(1), BLOCK_N, BLOCK_K)


@triton.jit
def _dequantize_rows_program(w_ptr, w_scale_ptr, out_ptr, row_begin, N, Kp, stride_o, pid_n, pid_k,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = row_begin + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = pid_k * BLOCK_K
    ok = rows < N
    rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    packed = tl.load(w_ptr + rows.to(tl.int64)[:, None] * (Kp // 2) + rb[None, :],
                     mask=ok[:, None] & (rb < Kp // 2)[None, :], other=0)
    sb = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    sf = tl.load(w_scale_ptr + rows.to(tl.int64)[:, None] * (Kp // 16) + sb[None, :],
                 mask=ok[:, None] & (sb < Kp // 16)[None, :], other=0)
    v = dequant_bytes(packed, sf, BLOCK_N, BLOCK_K, False).to(tl.float32) * 16384.0  # exact
    rk = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + (rows - row_begin).to(tl.int64)[:, None] * stride_o + rk[None, :], v.to(out_ptr.dtype.element_ty),
             mask=ok[:, None] & (rk < Kp)[None, :])


@triton.jit(do_not_specialize=["M", "n_maxima"],
            do_not_specialize_on_alignment=["global_scale_ptr", "maxima_ptr", "scales_ptr"])
def cublas_operands_kernel(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, a_ptr, M, K, Ka, stride_xm,
                           w_ptr, w_scale_ptr, w_out_ptr, N, Kp, stride_wo, a_programs, a_k_tiles, w_k_tiles,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                           MAXIMA_BLOCK: tl.constexpr, X_ALIGN: tl.constexpr = 1):
    """Both operands of a cuBLAS call in one launch: programs [0, a_programs) write x's values
    (`fake_quantize_kernel`, true values, natural order, row stride Ka), the rest weight rows
    [0, N) (`dequantize_rows_kernel`). Two memory-bound passes that would otherwise each pay a
    launch and a tail: for narrow per-rank weights they are a fifth of cuBLAS's own time.
    gs as `numerics.encode_scale` gives it (MAXIMA_BLOCK > 0: program 0 writes (gs, alpha) to
    scales_ptr, the alpha cuBLAS reads next)."""
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    pid = tl.program_id(0)
    if pid < a_programs:
        # x's tile first: its load is in flight while gs is loaded or reduced
        rows, cols, x = _load_tile(x_ptr, M, K, stride_xm, pid // a_k_tiles, pid % a_k_tiles, BLOCK_M, BLOCK_K)
        gs = encode_scale(global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, pid == 0, MAXIMA_BLOCK)
        _store_fake_quantized(x, gs, a_ptr, rows, cols, M, Ka, False, BLOCK_M, BLOCK_K, 0)
    else:
        w_pid = pid - a_programs
        _dequantize_rows_program(w_ptr, w_scale_ptr, w_out_ptr, 0, N, Kp, stride_wo, w_pid // w_k_tiles,
                                 w_pid % w_k_tiles, BLOCK_N, BLOCK_K)


@triton.jit(do_not_specialize=["M"], do_not_specialize_on_alignment=["alpha_ptr"])
def alpha_epilogue_kernel(acc_ptr, alpha_ptr, bias_ptr, out_ptr, M, N, stride_acc, stride_out, HAS_BIAS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """out[m, n] = alpha * acc[m, n] (+ bias[n]) in fp32, rounded once to out's dtype: the epilogue of
    a GEMM accumulated in fp32 whose alpha lives on the device (a dynamic activation scale)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rows < M)[:, None] & (cols < N)[None, :]
    acc = tl.load(acc_ptr + rows.to(tl.int64)[:, None] * stride_acc + cols[None, :], mask=ok, other=0.0)
    v = acc * tl.load(alpha_ptr)
    if HAS_BIAS:
        v += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=ok)
