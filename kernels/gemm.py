"""NVFP4 x NVFP4 GEMM for GPUs without FP4 tensor cores (Hopper), and CPU via the interpreter.

out[M, N] = alpha * (A @ W^T) (+ bias), A = the quantize kernel's output as is (packed E2M1
[M, Kp/2] + 128x4-swizzled E4M3 scales), W = a weight prepared once at load (packed E2M1
[N, Kp/2] + row-major E4M3 scale bytes [N, Kp/16]). A may also come as fp16 units already
dequantized (PREDEQUANT_A: `fake_quantize(units=True)`'s output), or as the Linear's input x
itself (QUANTIZE_X): every program then quantizes the x rows it multiplies in registers (the same
values, `quant_dequant.fake_quantize_tile`), so the whole Linear is one launch; with ACT, x is an
activation's input and the program takes act(x) first (`act_quantize._act_tile`, rounded to x's
dtype), so a GatedMLP's down projection is one launch too.

Every E2M1 x E4M3 value is exact in fp16 (`numerics`: decoded in units of 2^-14, one multiply per
element), so each operand is dequantized in registers with integer bit operations and an fp16
tensor-core dot with fp32 accumulation computes the same products that Blackwell's FP4 tensor
cores do. fp16, not bf16: Triton's interpreter computes bf16 dots wrongly.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_layout = sibling(__name__, "layout")
col_part_128x4 = _layout.col_part_128x4
row_part_128x4 = _layout.row_part_128x4
load_mma16_tile = _layout.load_mma16_tile
to_rs_order = _layout.to_rs_order
activation_offset = _layout.activation_offset
_numerics = sibling(__name__, "numerics")
DECODE_UNIT_SCALE = _numerics.DECODE_UNIT_SCALE
dequant_bytes = _numerics.dequant_bytes
dequant_words = _numerics.dequant_words
small_input_scales = _numerics.small_input_scales
aligned = _numerics.aligned
fake_quantize_tile = sibling(__name__, "quant_dequant").fake_quantize_tile
_act_tile = sibling(__name__, "act_quantize")._act_tile
small_act_input_scales = sibling(__name__, "act_quantize").small_act_input_scales


@triton.jit
def _epilogue(acc, alpha, bias_ptr, out_ptr, rm64, rn, m_ok, n_ok, stride_om, HAS_BIAS: tl.constexpr,
              FMA: tl.constexpr = 0):
    """acc [BLOCK_N, BLOCK_M] fp32 (a dot of operands in units of 2^-14) -> out[m, n] = alpha * acc
    (+ bias[n]), cast to out's dtype. FMA: the multiply-add written out, for a kernel compiled without
    FMA contraction to round it as the contracting ones do (one FFMA)."""
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
        if FMA:
            out = tl.fma(acc, alpha * DECODE_UNIT_SCALE, bias)
        else:
            out = acc * (alpha * DECODE_UNIT_SCALE) + bias
    else:
        out = acc * (alpha * DECODE_UNIT_SCALE)
    tl.store(out_ptr + rm64[None, :] * stride_om + rn[:, None], out.to(out_ptr.dtype.element_ty),
             mask=m_ok[None, :] & n_ok[:, None])


@triton.jit
def _rows_units(a_ptr, row0, rk, M, Kp, ROWS: tl.constexpr):
    """Rows row0 .. row0 + ROWS of a row-major fp16 A [M, Kp] at columns rk (zeros past M)."""
    r = row0 + tl.arange(0, ROWS)
    return tl.load(a_ptr.to(tl.pointer_type(tl.float16)) + r.to(tl.int64)[:, None] * Kp + rk[None, :],
                   mask=(r < M)[:, None] & (rk < Kp)[None, :], other=0.0)


@triton.jit
def _row_halves(a, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS] -> (rows 0 .. ROWS / 2, rows ROWS / 2 .. ROWS)."""
    return tl.split(tl.permute(tl.reshape(a, [2, ROWS // 2, COLS]), [1, 2, 0]))


@triton.jit
def _row_concat(top, bottom, ROWS: tl.constexpr, COLS: tl.constexpr):
    """Two [ROWS, COLS] -> [2 * ROWS, COLS], top's rows first (`_row_halves` undone)."""
    return tl.reshape(tl.permute(tl.join(top, bottom), [2, 0, 1]), [2 * ROWS, COLS])


@triton.jit(do_not_specialize=["M", "stride_om"])
def nvfp4_gemm_kernel(
    a_ptr,  # uint8 [M, Kp/2]; PREDEQUANT_A: fp16 units [M, Kp]; QUANTIZE_X: x [M, K] (row stride stride_xm)
    a_scale_ptr,  # uint8, 128x4 swizzled [round_up(M, 128), S4]; QUANTIZE_X: x's encode scale gs (fp32 [1]),
    #   or with DYNAMIC the weight's decode scale weight_scale_2 (gs and alpha then come from max |x|)
    w_ptr,  # uint8 [N, Kp/2] (rows beyond N may exist; never read)
    w_scale_ptr,  # uint8 row-major [N, Kp/16]
    alpha_ptr,  # fp32 [1]: 1 / (gs_a * gs_w)
    bias_ptr,  # [N] or unused
    out_ptr,  # [M, N] with row stride stride_om
    part_ptr,  # SPLIT_K > 1: fp32 partials [SPLIT_K, M, N]
    ticket_ptr,  # SPLIT_K > 1: int32 [tiles], zero between calls
    M,
    N,
    Kp_div64,  # Kp // 64
    k_tiles_per_split,
    stride_om,
    K,  # QUANTIZE_X: x's columns (zeros from K to Kp); unused otherwise
    stride_xm,  # QUANTIZE_X: x's row stride; unused otherwise
    HAS_BIAS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # every split covers whole BLOCK_K tiles of Kp: no K masks
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # 64 or 128
    GROUP_M: tl.constexpr,
    WORD_DECODE: tl.constexpr,  # GemmConfig.word_decode: 32-bit words of 8 codes -> half2 pairs
    PREDEQUANT_A: tl.constexpr,  # GemmConfig.predequant_a: a_ptr holds A already dequantized, fp16 [M, Kp]
    QUANTIZE_X: tl.constexpr,  # a_ptr holds x itself: every program quantizes the rows it reads
    DYNAMIC: tl.constexpr,  # QUANTIZE_X, small x: every program derives gs and alpha from max |x| (|act(x)|)
    AMAX_ROWS: tl.constexpr,  # DYNAMIC: rows (>= M) and column chunks of the max |x| reads
    AMAX_BLOCK: tl.constexpr,
    AMAX_CHUNKS: tl.constexpr,
    W_OPERAND_B: tl.constexpr,  # GemmConfig.w_operand_b: out = A @ W^T, the decoded weight the right operand
    A_ORDER: tl.constexpr,  # GemmConfig.a_order: 1, 2: PREDEQUANT_A's A in that `layout.mma16_offset` order; 3: `layout.rs_col`
    RS_ORDER: tl.constexpr,  # GemmConfig.w_registers: K in `layout.rs_col` order on both sides (that kernel's sums)
    ACT: tl.constexpr = -1,  # QUANTIZE_X: >= 0, x is an activation's input (`act_quantize` codes; K = act's width)
    GATED: tl.constexpr = 0,  # ACT: x = [gate, up], up K columns to the right of gate
    BF16_BITS: tl.constexpr = 0,  # ACT: bf16 rounding on the bits (the interpreter truncates its casts)
    FMA_EPILOGUE: tl.constexpr = 0,  # compiled without FMA contraction (ACT): the epilogue's FFMA written out
    DOT_M: tl.constexpr = 0,  # GemmConfig.dot_m (W_OPERAND_B): the rows as BLOCK_M / DOT_M dots (2 or 4) sharing each decoded weight tile
    X_ALIGN: tl.constexpr = 1,  # QUANTIZE_X: K and stride_xm are multiples of it (`launch.x_align`; 1: no more known)
):
    Kp = Kp_div64 * 64
    S4 = Kp // 16  # Kp is a multiple of 64, so the scale columns are already a multiple of 4
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    pid = tl.program_id(0)
    pid_k = pid % SPLIT_K
    pid = pid // SPLIT_K
    n_m = (M + BLOCK_M - 1) // BLOCK_M
    n_n = (N + BLOCK_N - 1) // BLOCK_N
    # Grouped order: GROUP_M row tiles share each weight tile while it is in L2.
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    group_rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % group_rows
    pid_n = (pid % (GROUP_M * n_n)) // group_rows

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.arange(0, BLOCK_K // 2)  # byte columns of a K tile
    rs = tl.arange(0, BLOCK_K // 16)  # scale columns of a K tile
    m_ok = rm < M
    n_ok = rn < N
    rm64 = rm.to(tl.int64)
    rn64 = rn.to(tl.int64)
    a_sf_row = row_part_128x4(rm64, S4)
    a_rows = a_ptr + rm64[:, None] * (Kp // 2)
    w_rows = w_ptr + rn64[:, None] * (Kp // 2)
    w_sf_rows = w_scale_ptr + rn64[:, None] * S4

    if DYNAMIC and ACT >= 0:  # act(x)'s maximum: every element's activation computed by every program
        gs, alpha = small_act_input_scales(a_ptr, M, K, stride_xm, tl.load(a_scale_ptr), ACT, GATED, BF16_BITS,
                                           AMAX_ROWS, AMAX_BLOCK, AMAX_CHUNKS, tl.program_id(0))
    elif DYNAMIC:  # x is small (the launcher checks): read whole from L2 by every program
        gs, alpha = small_input_scales(a_ptr, M, K, stride_xm, tl.load(a_scale_ptr), AMAX_ROWS, AMAX_BLOCK,
                                       AMAX_CHUNKS, tl.program_id(0))
    else:
        alpha = tl.load(alpha_ptr)
        if QUANTIZE_X:
            gs = tl.load(a_scale_ptr)
    if QUANTIZE_X:
        x_rows = a_ptr + rm64[:, None] * stride_xm
    SUBTILES: tl.constexpr = BLOCK_M // DOT_M if DOT_M > 0 else 1
    if W_OPERAND_B:
        if SUBTILES == 1:
            acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
        else:  # one accumulator per DOT_M-row sub-tile (acc: the first)
            acc = tl.full([DOT_M, BLOCK_N], 0.0, tl.float32)
            acc1 = tl.full([DOT_M, BLOCK_N], 0.0, tl.float32)
            if SUBTILES == 4:
                acc2 = tl.full([DOT_M, BLOCK_N], 0.0, tl.float32)
                acc3 = tl.full([DOT_M, BLOCK_N], 0.0, tl.float32)
    else:
        acc = tl.full([BLOCK_N, BLOCK_M], 0.0, tl.float32)
    k_begin = pid_k * k_tiles_per_split * BLOCK_K
    k_end = tl.minimum(k_begin + k_tiles_per_split * BLOCK_K, Kp)
    if WORD_DECODE:
        rb = tl.arange(0, BLOCK_K // 8)  # 32-bit words (8 codes) of a K tile
        a_rows = a_rows.to(tl.pointer_type(tl.int32))  # rows start at multiples of 32 bytes
        w_rows = w_rows.to(tl.pointer_type(tl.int32))
        unit = 8
    else:
        unit = 2
    for k0 in range(k_begin, k_end, BLOCK_K):
        s = k0 // 16 + rs
        k_ok_b = (k0 // unit + rb) < Kp // unit
        k_ok_s = s < S4
        if EVEN_K:  # every split covers whole K tiles: no K masks
            k_ok_b = k_ok_b | True
            k_ok_s = k_ok_s | True
        w_packed = tl.load(w_rows + k0 // unit + rb[None, :], mask=n_ok[:, None] & k_ok_b[None, :], other=0)
        w_sf = tl.load(w_sf_rows + s[None, :], mask=n_ok[:, None] & k_ok_s[None, :], other=0)
        if QUANTIZE_X:  # the values `fake_quantize(units=True)` writes, here in registers (word order)
            rk = k0 + tl.arange(0, BLOCK_K)
            if ACT >= 0:  # act(x) rounded to x's dtype, as `act_fake_quantize` takes it
                x = _act_tile(a_ptr, rm[:, None], rk[None, :], M, K, stride_xm, ACT, GATED, BF16_BITS)
            else:
                x = tl.load(x_rows + rk[None, :], mask=m_ok[:, None] & (rk < K)[None, :], other=0.0).to(tl.float32)
            a = fake_quantize_tile(x, gs, True, BLOCK_M, BLOCK_K)
        elif ((A_ORDER == 1) | (A_ORDER == 2)) and SUBTILES > 1:
            pass  # 16-row sub-tiles in mma16 order, loaded below
        elif (A_ORDER == 1) | (A_ORDER == 2):  # a `layout.mma16_offset` order: one 16-byte run per MMA fragment (no register moves)
            a = load_mma16_tile(a_ptr.to(tl.pointer_type(tl.float16)), pid_m, k0, Kp, BLOCK_K, A_ORDER, EVEN_K)
        elif PREDEQUANT_A:  # row-major (A_ORDER 3: columns in `layout.rs_col` order)
            rk = k0 + tl.arange(0, BLOCK_K)
            if SUBTILES == 1:  # (else loaded per sub-tile below: each load feeds its own dot)
                a = _rows_units(a_ptr, pid_m * BLOCK_M, rk, M, Kp, BLOCK_M)
        else:
            a_packed = tl.load(a_rows + k0 // unit + rb[None, :], mask=m_ok[:, None] & k_ok_b[None, :], other=0)
            a_sf = tl.load(a_scale_ptr + a_sf_row[:, None] + col_part_128x4(s)[None, :],
                           mask=m_ok[:, None] & k_ok_s[None, :], other=0)
            if WORD_DECODE:
                a = dequant_words(a_packed, a_sf, BLOCK_M, BLOCK_K, True)
            else:
                a = dequant_bytes(a_packed, a_sf, BLOCK_M, BLOCK_K, True)
        # weight scales are validated at load (no E4M3 NaN): no NaN check
        if WORD_DECODE:
            w = dequant_words(w_packed, w_sf, BLOCK_N, BLOCK_K, False)
        else:
            w = dequant_bytes(w_packed, w_sf, BLOCK_N, BLOCK_K, False)
        if RS_ORDER:  # the K order of `gemm_wgmma.nvfp4_gemm_wgmma_rs_kernel`'s register operand, on both sides
            w = to_rs_order(w, BLOCK_N, BLOCK_K)
            if A_ORDER != 3:  # (A_ORDER 3: A stored in that order)
                a = to_rs_order(a, BLOCK_M, BLOCK_K)
        if W_OPERAND_B and SUBTILES > 1:
            # one decode of the weight tile serves every sub-tile's dot (mma.sync, the decoded weight fed from
            # registers, where one 64+-row dot would take wgmma and store the tile to shared memory first)
            if (A_ORDER == 1) | (A_ORDER == 2):  # (DOT_M 16) 16-row tiles; those past M repeat the last (rows not stored)
                a16 = a_ptr.to(tl.pointer_type(tl.float16))
                last = (M - 1) // 16
                a0 = load_mma16_tile(a16, tl.minimum(pid_m * SUBTILES, last), k0, Kp, BLOCK_K, A_ORDER, EVEN_K)
                a1 = load_mma16_tile(a16, tl.minimum(pid_m * SUBTILES + 1, last), k0, Kp, BLOCK_K, A_ORDER, EVEN_K)
                if SUBTILES == 4:
                    a2 = load_mma16_tile(a16, tl.minimum(pid_m * SUBTILES + 2, last), k0, Kp, BLOCK_K, A_ORDER, EVEN_K)
                    a3 = load_mma16_tile(a16, tl.minimum(pid_m * SUBTILES + 3, last), k0, Kp, BLOCK_K, A_ORDER, EVEN_K)
            elif PREDEQUANT_A and A_ORDER == 0:
                a0 = _rows_units(a_ptr, pid_m * BLOCK_M, rk, M, Kp, DOT_M)
                a1 = _rows_units(a_ptr, pid_m * BLOCK_M + DOT_M, rk, M, Kp, DOT_M)
                if SUBTILES == 4:
                    a2 = _rows_units(a_ptr, pid_m * BLOCK_M + 2 * DOT_M, rk, M, Kp, DOT_M)
                    a3 = _rows_units(a_ptr, pid_m * BLOCK_M + 3 * DOT_M, rk, M, Kp, DOT_M)
            elif SUBTILES == 2:
                a0, a1 = _row_halves(a, BLOCK_M, BLOCK_K)
            else:
                a01, a23 = _row_halves(a, BLOCK_M, BLOCK_K)
                a0, a1 = _row_halves(a01, BLOCK_M // 2, BLOCK_K)
                a2, a3 = _row_halves(a23, BLOCK_M // 2, BLOCK_K)
            wt = tl.trans(w)
            acc = tl.dot(a0, wt, acc, out_dtype=tl.float32)
            acc1 = tl.dot(a1, wt, acc1, out_dtype=tl.float32)
            if SUBTILES == 4:
                acc2 = tl.dot(a2, wt, acc2, out_dtype=tl.float32)
                acc3 = tl.dot(a3, wt, acc3, out_dtype=tl.float32)
        elif W_OPERAND_B:
            # out = A @ W^T, the decoded weight the right operand: with 16-token tiles (mma.sync) Triton
            # decodes the weight words straight into the operand's registers; with 64+ (wgmma) it stores
            # the tile to shared memory once and the K tile's MMAs issue back to back.
            acc = tl.dot(a, tl.trans(w), acc, out_dtype=tl.float32)
        else:
            # out^T = W @ A^T: the weight tile, decoded in registers, is the MMA's left operand (the
            # 64-row side of wgmma: Triton moves it into the operand layout through shared memory and
            # waits on every MMA), and a handful of tokens fits the right operand's small N.
            acc = tl.dot(w, tl.trans(a), acc, out_dtype=tl.float32)
    if W_OPERAND_B:
        if SUBTILES == 2:
            acc = _row_concat(acc, acc1, DOT_M, BLOCK_N)
        elif SUBTILES == 4:
            acc = _row_concat(_row_concat(acc, acc1, DOT_M, BLOCK_N), _row_concat(acc2, acc3, DOT_M, BLOCK_N),
                              2 * DOT_M, BLOCK_N)
        acc = tl.trans(acc)  # the epilogue and the split-K partials take [BLOCK_N, BLOCK_M]

    if SPLIT_K == 1:
        _epilogue(acc, alpha, bias_ptr, out_ptr, rm64, rn, m_ok, n_ok, stride_om, HAS_BIAS, FMA_EPILOGUE)
    else:
        # fp32 partial of this K split; the last split of the tile to finish (an atomic ticket) sums
        # them in split order (deterministic) and resets the ticket for the next call.
        tile = part_ptr + rm64[None, :] * N + rn[:, None]
        mask = m_ok[None, :] & n_ok[:, None]
        tl.store(tile + pid_k.to(tl.int64) * M * N, acc, mask=mask)
        tl.debug_barrier()  # every thread's partial is written before the ticket releases it
        ticket = tl.atomic_add(ticket_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:
            total = tl.load(tile, mask=mask, other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT_K):
                total += tl.load(tile + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            _epilogue(total, alpha, bias_ptr, out_ptr, rm64, rn, m_ok, n_ok, stride_om, HAS_BIAS, FMA_EPILOGUE)
            # ready for the next call; relaxed (no fence before it on the tail of the launch): nothing in this
            # launch reads the ticket again, and the next launch starts after this one ends
            tl.atomic_xchg(ticket_ptr + pid, 0, sem="relaxed", scope="gpu")


@triton.jit
def dequantize_activation_kernel(a_ptr, a_scale_ptr, out_ptr, M, Kp_div64, WORD_DECODE: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, A_ORDER: tl.constexpr):
    """A (packed + 128x4 scales) -> fp16 [M, Kp] in units of 2^-14 (exact), in the K order the GEMM's
    weight decode uses (WORD_DECODE permutes K within each 8-code word, the same way for both operands;
    A_ORDER 3, WORD_DECODE only: columns moved as `layout.rs_col` says)."""
    Kp = Kp_div64 * 64
    S4 = Kp // 16
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k0 = tl.program_id(1) * BLOCK_K
    m_ok = rm < M
    rm64 = rm.to(tl.int64)
    s = k0 // 16 + tl.arange(0, BLOCK_K // 16)
    sf = tl.load(a_scale_ptr + row_part_128x4(rm64, S4)[:, None] + col_part_128x4(s)[None, :],
                 mask=m_ok[:, None], other=0)
    if WORD_DECODE:
        rw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        words = tl.load(a_ptr.to(tl.pointer_type(tl.int32)) + rm64[:, None] * (Kp // 8) + rw[None, :],
                        mask=m_ok[:, None], other=0)
        a = dequant_words(words, sf, BLOCK_M, BLOCK_K, True)
    else:
        rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        a = dequant_bytes(tl.load(a_ptr + rm64[:, None] * (Kp // 2) + rb[None, :], mask=m_ok[:, None], other=0),
                                   sf, BLOCK_M, BLOCK_K, True)
    rk = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + activation_offset(rm64[:, None], rk[None, :], Kp, A_ORDER), a, mask=m_ok[:, None])
