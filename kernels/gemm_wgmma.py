"""The NVFP4 GEMM with A pre-dequantized, software-pipelined for Hopper's wgmma (Gluon; GPU only):
`nvfp4_gemm_wgmma_kernel` stores each decoded weight tile for wgmma's shared-memory operand;
`nvfp4_gemm_wgmma_rs_kernel` (further below) keeps it in wgmma's register operand.

out[M, N] = alpha * A @ dequant(W)^T (+ bias): the same operands, products, K order, K tiles,
split-K partials and epilogue as `gemm.nvfp4_gemm_kernel` with PREDEQUANT_A and W_OPERAND_B (A:
fp16 units [M, Kp] in the word decode's K order, `fake_quantize(..., units=True)`), so the same bits
(a cuda test compares the two). What differs is the schedule. Triton, given a weight tile decoded in
registers, stores it to shared memory and waits for each MMA before the next decode, so the tensor
cores idle while the CUDA cores decode (benchmarks/NOTES.md, session 14). Here the decoded tile is
double-buffered: the warps decode K tile i while the tensor cores run the MMA of tile i - 1, and
A, the weight's words and its scale bytes arrive S - 1 tiles ahead through cp.async.

Per K tile (one or two warpgroups; warpgroup g owns A rows [64 g, 64 g + 64) and copies only
those, so its own MMA wait guards their slot):
    wait for tile i's copies; barrier
    decode W words + scales (ring slot i % S) -> w_smem[i % 2]; fence; barrier
    issue MMA i (A slot, w_smem[i % 2]); wait until MMA i - 1 is done
    copy tile i + S - 1 into slot (i - 1) % S
w_smem[i % 2] was read by MMA i - 2, which every warpgroup waited for in step i - 1, before the
barrier that opens step i.

No CPU interpreter runs Gluon: the portable kernel is `gemm.nvfp4_gemm_kernel`, which the CPU (and
a config with `wgmma_stages` 0) runs; `kernels.gemm_launch` picks these only on CUDA devices of
compute capability 9.x and with a Triton these kernels are written for (`SUPPORTED`).
"""

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

DECODE_UNIT_SCALE = gl.constexpr(2.0**28)  # numerics.DECODE_UNIT_SCALE: a dot of two operands in units of 2^-14


def supported(version: str) -> bool:
    """Whether these kernels compile under Triton `version`. Gluon is experimental and its calls move
    between releases: they are written for 3.5-3.6 (compiled for sm_90 on 3.5.1 and 3.6.0, run on 3.6.0);
    3.7+ renamed `async_copy_global_to_shared` and dropped `thread_barrier`."""
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    return (3, 5) <= major_minor < (3, 7)


SUPPORTED = supported(triton.__version__)  # elsewhere the launcher keeps Triton's portable kernel (same bits)


@gluon.jit
def _decode_scaled_words(words, scale2):
    """int32 words of 8 E2M1 codes and the block's E4M3 scale as an fp16 pair (int32, both halves)
    -> 8 fp16 (code value * 2^-14 * scale) in `numerics.word_order`: codes 0, 4, 1, 5, 2, 6, 3, 7.
    The decode of `numerics._decode_words_ptx` (11 integer instructions), then one mul.f16x2 per pair
    (exact: an E2M1 value times an E4M3 scale fits fp16's 11 bits)."""
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t, e, o, p; "
        "shl.b32 t, $8, 1; and.b32 e, t, 0x0E0E0E0E; shl.b32 t, $8, 4; and.b32 t, t, 0x80808080; or.b32 e, e, t; "
        "shr.u32 t, $8, 3; and.b32 o, t, 0x0E0E0E0E; and.b32 t, $8, 0x80808080; or.b32 o, o, t; "
        "prmt.b32 t, e, 0, 0x2404; mul.rn.f16x2 p, t, $9; mov.b32 {$0, $4}, p; "
        "prmt.b32 t, o, 0, 0x2404; mul.rn.f16x2 p, t, $9; mov.b32 {$1, $5}, p; "
        "prmt.b32 t, e, 0, 0x3414; mul.rn.f16x2 p, t, $9; mov.b32 {$2, $6}, p; "
        "prmt.b32 t, o, 0, 0x3414; mul.rn.f16x2 p, t, $9; mov.b32 {$3, $7}, p; }",
        "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [words, scale2], dtype=(gl.float16, ) * 8, is_pure=True, pack=1)


@gluon.jit
def _issue_tile(a_ring, w_ring, s_ring, slot, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok, k0, valid,
                BLOCK_K: gl.constexpr, A_COLS: gl.constexpr, W_COLS: gl.constexpr, S_COLS: gl.constexpr):
    """cp.async of K tile k0 into ring slot `slot`: A [BM, BK] fp16, W words [BN, BK/8], scale bytes
    [BN, BK/16] (nothing read where `valid` is false: the group is still committed, so every step
    waits for the same count)."""
    ka = gl.arange(0, BLOCK_K, layout=A_COLS)
    async_copy.async_copy_global_to_shared(a_ring.index(slot), a_rows + (k0 + ka)[None, :],
                                           mask=a_row_ok & valid)
    kw = gl.arange(0, BLOCK_K // 8, layout=W_COLS)
    async_copy.async_copy_global_to_shared(w_ring.index(slot), w_rows + (k0 // 8 + kw)[None, :],
                                           mask=w_row_ok & valid)
    ks = gl.arange(0, BLOCK_K // 16, layout=S_COLS)
    async_copy.async_copy_global_to_shared(s_ring.index(slot), s_rows + (k0 // 16 + ks)[None, :],
                                           mask=s_row_ok & valid)
    async_copy.commit_group()


@gluon.jit
def _tile_ids(M, N, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr, SPLIT_K: gl.constexpr):
    """(output tile, its row tile, its column tile, K split) of this program, in the grouped order
    of `gemm.nvfp4_gemm_kernel` (M: A's rows, N: the weight's)."""
    pid = gl.program_id(0)
    pid_k = pid % SPLIT_K
    pid = pid // SPLIT_K
    n_m = (M + BLOCK_M - 1) // BLOCK_M
    n_n = (N + BLOCK_N - 1) // BLOCK_N
    group = pid // (GROUP_M * n_n)
    first_m = group * GROUP_M
    group_rows = gl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_n)) % group_rows
    pid_n = (pid % (GROUP_M * n_n)) // group_rows
    return pid, pid_m, pid_n, pid_k


@gluon.jit
def _copy_sources(a_ptr, w_ptr, w_scale_ptr, M, N, Kp, pid_m, pid_n, pid_k, k_tiles_per_split, BLOCK_M: gl.constexpr,
                  BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, A_LOAD: gl.constexpr, W_LOAD: gl.constexpr,
                  S_LOAD: gl.constexpr):
    """Row pointers and row masks of the tile's A rows, weight words and scale bytes in the copies'
    layouts, and this split's first K column and K tile count (Kp % BLOCK_K == 0: the launcher's
    condition)."""
    rm = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, A_LOAD))
    rn_w = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, W_LOAD))
    rn_s = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, S_LOAD))
    k_begin = pid_k * k_tiles_per_split * BLOCK_K
    k_end = gl.minimum(k_begin + k_tiles_per_split * BLOCK_K, Kp)
    return (a_ptr + rm.to(gl.int64)[:, None] * Kp, (rm < M)[:, None],
            w_ptr + rn_w.to(gl.int64)[:, None] * (Kp // 8), (rn_w < N)[:, None],
            w_scale_ptr + rn_s.to(gl.int64)[:, None] * (Kp // 16), (rn_s < N)[:, None],
            k_begin, (k_end - k_begin) // BLOCK_K)


@gluon.jit(do_not_specialize=["M", "stride_om"])
def nvfp4_gemm_wgmma_kernel(
    a_ptr,  # fp16 [M, Kp]: A dequantized (units of 2^-14, word K order), row-major
    w_ptr,  # int32 words [>= N, Kp/8] (rows beyond N never read)
    w_scale_ptr,  # uint8 row-major [>= N, Kp/16]
    alpha_ptr,  # fp32 [1]: 1 / (gs_a * gs_w)
    bias_ptr,  # [N] or unused
    out_ptr,  # [M, N] with row stride stride_om
    part_ptr,  # SPLIT_K > 1: fp32 partials [SPLIT_K, M, N]
    ticket_ptr,  # SPLIT_K > 1: int32 [tiles], zero between calls
    M,
    N,
    Kp_div64,
    k_tiles_per_split,
    stride_om,
    HAS_BIAS: gl.constexpr,
    SPLIT_K: gl.constexpr,
    BLOCK_M: gl.constexpr,  # 64 per warpgroup: num_warps = BLOCK_M / 16
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,  # 64 or 128
    GROUP_M: gl.constexpr,
    STAGES: gl.constexpr,  # cp.async ring depth
):
    num_warps: gl.constexpr = BLOCK_M // 16  # one warpgroup per 64 rows of A (the launch's num_warps)
    Kp = Kp_div64 * 64
    pid, pid_m, pid_n, pid_k = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M, SPLIT_K)

    # Register layouts. A copies: 16 bytes a thread, warp w on rows [16 w, 16 w + 16) (its warpgroup's).
    A_TPW_K: gl.constexpr = BLOCK_K // 8
    A_TPW_M: gl.constexpr = 32 // A_TPW_K
    A_LOAD: gl.constexpr = gl.BlockedLayout([16 // A_TPW_M, 8], [A_TPW_M, A_TPW_K], [num_warps, 1], [1, 0])
    # Weight words: 16 bytes a thread for the copies; the decode takes 2 words (16 halves) a thread.
    W_LOAD: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BLOCK_K // 32), BLOCK_K // 32], [num_warps, 1], [1, 0])
    S_LOAD: gl.constexpr = gl.BlockedLayout([1, BLOCK_K // 16], [32, 1], [num_warps, 1], [1, 0])
    W_DEC: gl.constexpr = gl.BlockedLayout([1, 2], [32 // (BLOCK_K // 16), BLOCK_K // 16], [num_warps, 1], [1, 0])
    S_DEC: gl.constexpr = gl.BlockedLayout([1, 1], [32 // (BLOCK_K // 16), BLOCK_K // 16], [num_warps, 1], [1, 0])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    OUT: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [num_warps, 1], [1, 0])

    A_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float16)
    W_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.float16)
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    a_ring = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], A_SMEM)
    w_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, BLOCK_K // 8], PLAIN)
    s_ring = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, BLOCK_K // 16], PLAIN)
    w_smem = gl.allocate_shared_memory(gl.float16, [2, BLOCK_N, BLOCK_K], W_SMEM)

    a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok, k_begin, n_k = _copy_sources(
        a_ptr, w_ptr, w_scale_ptr, M, N, Kp, pid_m, pid_n, pid_k, k_tiles_per_split, BLOCK_M, BLOCK_N, BLOCK_K, A_LOAD,
        W_LOAD, S_LOAD)
    A_COLS: gl.constexpr = gl.SliceLayout(0, A_LOAD)
    W_COLS: gl.constexpr = gl.SliceLayout(0, W_LOAD)
    S_COLS: gl.constexpr = gl.SliceLayout(0, S_LOAD)

    for j in gl.static_range(STAGES - 1):
        _issue_tile(a_ring, w_ring, s_ring, j, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
                    k_begin + j * BLOCK_K, j < n_k, BLOCK_K, A_COLS, W_COLS, S_COLS)

    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=MMA)
    for i in range(n_k):
        slot = i % STAGES
        async_copy.wait_group(STAGES - 2)
        gl.thread_barrier()  # every thread's copies of tile i have landed
        words = w_ring.index(slot).load(W_DEC)
        sf = s_ring.index(slot).load(S_DEC)
        # the block scale of each word (blocks of 16 = 2 words) as an fp16 pair in one int32
        s16 = sf.to(gl.float8e4nv, bitcast=True).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
        s2 = s16 | (s16 << 16)
        s2 = gl.convert_layout(gl.reshape(gl.join(s2, s2), [BLOCK_N, BLOCK_K // 8]), W_DEC, assert_trivial=True)
        a0, a1, a2, a3, b0, b1, b2, b3 = _decode_scaled_words(words, s2)
        v = gl.join(gl.join(gl.join(a0, a2), gl.join(a1, a3)), gl.join(gl.join(b0, b2), gl.join(b1, b3)))
        w_buf = w_smem.index(i % 2)
        w_buf.store(gl.reshape(v, [BLOCK_N, BLOCK_K]))
        fence_async_shared()
        gl.thread_barrier()  # the whole decoded tile is in shared memory before the MMA reads it
        acc = warpgroup_mma(a_ring.index(slot), w_buf.permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc, ))
        nxt = i + STAGES - 1
        _issue_tile(a_ring, w_ring, s_ring, nxt % STAGES, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
                    k_begin + nxt * BLOCK_K, nxt < n_k, BLOCK_K, A_COLS, W_COLS, S_COLS)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    async_copy.wait_group(0)

    _finish(gl.convert_layout(acc, OUT), pid, pid_m, pid_n, pid_k, alpha_ptr, bias_ptr, out_ptr, part_ptr,
            ticket_ptr, M, N, stride_om, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N, OUT)


@gluon.jit
def _finish(acc, pid, pid_m, pid_n, pid_k, alpha_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr, M, N, stride_om,
            HAS_BIAS: gl.constexpr, SPLIT_K: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
            OUT: gl.constexpr):
    """acc fp32 [BLOCK_M, BLOCK_N] in layout OUT, output tile (pid_m, pid_n), K split pid_k of tile
    pid: `_epilogue` (SPLIT_K 1), or the split-K partials of `gemm.nvfp4_gemm_kernel`: fp32 partials,
    the last split of the tile (an atomic ticket) sums them in split order (deterministic) and resets
    the ticket."""
    rm_o = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, OUT))
    rn_o = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, OUT))
    mask = (rm_o < M)[:, None] & (rn_o < N)[None, :]
    alpha = gl.load(alpha_ptr)
    if SPLIT_K == 1:
        _epilogue(acc, alpha, bias_ptr, out_ptr, rm_o, rn_o, N, mask, stride_om, HAS_BIAS)
    else:
        tile = part_ptr + rm_o.to(gl.int64)[:, None] * N + rn_o[None, :]
        gl.store(tile + pid_k.to(gl.int64) * M * N, acc, mask=mask)
        gl.thread_barrier()  # every thread's partial is written before the ticket releases it
        ticket = gl.atomic_add(ticket_ptr + pid, 1, sem="acq_rel", scope="gpu")
        if ticket == SPLIT_K - 1:
            total = gl.load(tile, mask=mask, other=0.0, cache_modifier=".cg")
            for s in range(1, SPLIT_K):
                total += gl.load(tile + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            _epilogue(total, alpha, bias_ptr, out_ptr, rm_o, rn_o, N, mask, stride_om, HAS_BIAS)
            gl.atomic_xchg(ticket_ptr + pid, 0, sem="relaxed", scope="gpu")  # (as in kernels/gemm.py)


@gluon.jit
def _epilogue(acc, alpha, bias_ptr, out_ptr, rm, rn, N, mask, stride_om, HAS_BIAS: gl.constexpr):
    """The epilogue of `gemm._epilogue` ([BLOCK_M, BLOCK_N] here): alpha * 2^28 * acc (+ bias[n])."""
    out = acc * (alpha * DECODE_UNIT_SCALE)
    if HAS_BIAS:
        out += gl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(gl.float32)[None, :]
    gl.store(out_ptr + rm.to(gl.int64)[:, None] * stride_om + rn[None, :], out.to(out_ptr.dtype.element_ty),
             mask=mask)



# ---- the decoded weight in registers: wgmma's left operand (RS) ---------------------------------
# The kernel above stores each decoded weight tile to shared memory, where both warpgroups read it
# again as wgmma's B: past ~420 TFLOP/s those stores and reads, with the cp.async writes, fill the
# SM's shared-memory bandwidth (benchmarks/NOTES.md, session 14). Here the tile is transposed (out^T
# = W @ A^T): each warpgroup decodes 64 weight rows straight into wgmma's register operand, and the
# activation is the shared-memory operand. No decoded tile is stored, and no shared memory is read
# twice but the activation's (once per warpgroup).
#
# A thread of the register operand (k_width 2) holds, for rows g and g + 8 of its warp's 16, the K
# pairs 2c, 2c + 1 and 2c + 8, 2c + 9 of every 16 (lane 4 g + c). One 32-bit weight word (8 codes of
# one scale block) decodes into 4 such pairs, so a thread takes whole words: words 2c and 2c + 1 of
# every 64 columns, and the MMA's K index k' of word h in {0, 1}, code pair (r, r + 4) (r = 2 r1 + r0),
# half p is 64 t + 32 h + 16 r1 + 8 r0 + 2 c + p. The activation is written in that order
# (`layout.rs_offset`, a_order 3), so each product still pairs the same weight and activation element.


@gluon.constexpr_function
def _rs_layout(rows, cols, per_thread):
    """Layout of the register operand's words (per_thread 2, cols = BLOCK_K / 8) or scale bytes (1,
    cols = BLOCK_K / 16) of a [rows, cols] tile: lane 4 g + c holds rows g and g + 8 of its warp's
    16, and in each 64 K columns words 2c, 2c + 1 (block c); warps take 16 rows each."""
    per_64 = 4 * per_thread  # columns per 64 K
    regs = [[0, 1]] if per_thread == 2 else []
    regs = regs + [[8, 0]] + [[0, per_64 << i] for i in range((cols // per_64).bit_length() - 1)]
    lanes = [[0, per_thread], [0, 2 * per_thread], [1, 0], [2, 0], [4, 0]]
    warps = [[16 << i, 0] for i in range((rows // 16).bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                      shape=[rows, cols])


@gluon.jit
def _rs_tile(i, n_k, k_begin, a_ring, w_ring, s_ring, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
             BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr, A_COLS: gl.constexpr,
             W_COLS: gl.constexpr, S_COLS: gl.constexpr, W_RS: gl.constexpr, S_RS: gl.constexpr,
             W_REG: gl.constexpr):
    """K tile i of the register-operand kernel up to its MMA: wait for its copies, refill the slot of
    tile i - 2 with tile i + STAGES - 2, decode its weight words into wgmma's register operand."""
    slot = i % STAGES
    async_copy.wait_group(STAGES - 3)
    # every thread's copies of tile i have landed, and every warpgroup has retired MMA i - 2 (step i -
    # 1), the last reader of the slot refilled next
    gl.thread_barrier()
    nxt = i + STAGES - 2
    _issue_tile(a_ring, w_ring, s_ring, nxt % STAGES, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
                k_begin + nxt * BLOCK_K, nxt < n_k, BLOCK_K, A_COLS, W_COLS, S_COLS)
    words = w_ring.index(slot).load(W_RS)
    sf = s_ring.index(slot).load(S_RS)
    s16 = sf.to(gl.float8e4nv, bitcast=True).to(gl.float16).to(gl.int16, bitcast=True).to(gl.int32) & 0xFFFF
    s2 = s16 | (s16 << 16)
    s2 = gl.convert_layout(gl.reshape(gl.join(s2, s2), [BLOCK_N, BLOCK_K // 8]), W_RS, assert_trivial=True)
    a0, a1, a2, a3, b0, b1, b2, b3 = _decode_scaled_words(words, s2)
    # [rows, words (t, c, h), r1, r0, p] -> K order (t, h, r1, r0, c, p)
    v = gl.join(gl.join(gl.join(a0, a2), gl.join(a1, a3)), gl.join(gl.join(b0, b2), gl.join(b1, b3)))
    v = gl.permute(gl.reshape(v, [BLOCK_N, BLOCK_K // 64, 4, 2, 2, 2, 2]), (0, 1, 3, 4, 5, 2, 6))
    return gl.convert_layout(gl.reshape(v, [BLOCK_N, BLOCK_K]), W_REG)


@gluon.jit(do_not_specialize=["M", "stride_om"])
def nvfp4_gemm_wgmma_rs_kernel(
    a_ptr,  # fp16 [M, Kp]: A dequantized (units of 2^-14), K in the register operand's order (a_order 3)
    w_ptr,  # int32 words [>= N, Kp/8] (rows beyond N never read)
    w_scale_ptr,  # uint8 row-major [>= N, Kp/16]
    alpha_ptr,  # fp32 [1]: 1 / (gs_a * gs_w)
    bias_ptr,  # [N] or unused
    out_ptr,  # [M, N] with row stride stride_om
    part_ptr,  # SPLIT_K > 1: fp32 partials [SPLIT_K, M, N]
    ticket_ptr,  # SPLIT_K > 1: int32 [tiles], zero between calls
    M,
    N,
    Kp_div64,
    k_tiles_per_split,
    stride_om,
    HAS_BIAS: gl.constexpr,
    SPLIT_K: gl.constexpr,
    BLOCK_M: gl.constexpr,  # A rows: wgmma's N (a power of two, 16..256)
    BLOCK_N: gl.constexpr,  # weight rows: 64 per warpgroup, num_warps = BLOCK_N / 16
    BLOCK_K: gl.constexpr,  # 64 or 128
    GROUP_M: gl.constexpr,
    STAGES: gl.constexpr,  # cp.async ring depth (>= 3: a slot is refilled two K tiles after its MMA)
):
    num_warps: gl.constexpr = BLOCK_N // 16
    Kp = Kp_div64 * 64
    pid, pid_m, pid_n, pid_k = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M, SPLIT_K)

    # Copies (16 bytes a thread where the tile allows)
    A_TPW_K: gl.constexpr = BLOCK_K // 8
    A_LOAD: gl.constexpr = gl.BlockedLayout([1, 8], [32 // A_TPW_K, A_TPW_K], [num_warps, 1], [1, 0])
    W_LOAD: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BLOCK_K // 32), BLOCK_K // 32], [num_warps, 1], [1, 0])
    S_LOAD: gl.constexpr = gl.BlockedLayout([1, BLOCK_K // 16], [32, 1], [num_warps, 1], [1, 0])
    # The register operand's words (see above): lane 4 g + c holds rows g, g + 8 and words 2c, 2c + 1
    # of each 64 columns; the scale bytes likewise (block c of each 64 columns).
    W_RS: gl.constexpr = _rs_layout(BLOCK_N, BLOCK_K // 8, 2)
    S_RS: gl.constexpr = _rs_layout(BLOCK_N, BLOCK_K // 16, 1)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, BLOCK_M, 16])
    W_REG: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    OUT: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [num_warps, 1], [1, 0])

    A_SMEM: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.float16)
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    a_ring = gl.allocate_shared_memory(gl.float16, [STAGES, BLOCK_M, BLOCK_K], A_SMEM)
    w_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, BLOCK_K // 8], PLAIN)
    s_ring = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, BLOCK_K // 16], PLAIN)

    a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok, k_begin, n_k = _copy_sources(
        a_ptr, w_ptr, w_scale_ptr, M, N, Kp, pid_m, pid_n, pid_k, k_tiles_per_split, BLOCK_M, BLOCK_N, BLOCK_K, A_LOAD,
        W_LOAD, S_LOAD)
    A_COLS: gl.constexpr = gl.SliceLayout(0, A_LOAD)
    W_COLS: gl.constexpr = gl.SliceLayout(0, W_LOAD)
    S_COLS: gl.constexpr = gl.SliceLayout(0, S_LOAD)

    for j in gl.static_range(STAGES - 2):
        _issue_tile(a_ring, w_ring, s_ring, j, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
                    k_begin + j * BLOCK_K, j < n_k, BLOCK_K, A_COLS, W_COLS, S_COLS)

    # The register operand of an MMA in flight must not be overwritten, but the registers of a value
    # carried around a loop are reused by the next iteration's decode (a copy keeps the value, not
    # the registers the MMA reads). So two K tiles a step, each tile's operand its own value, kept
    # live until the wait that retires its MMA: no register of an MMA in flight is written.
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, layout=MMA)
    w_b = gl.zeros([BLOCK_N, BLOCK_K], gl.float16, layout=W_REG)
    for j in range(n_k // 2):
        i = 2 * j
        w_a = _rs_tile(i, n_k, k_begin, a_ring, w_ring, s_ring, a_rows, a_row_ok, w_rows, w_row_ok, s_rows, s_row_ok,
                       BLOCK_N, BLOCK_K, STAGES, A_COLS, W_COLS, S_COLS, W_RS, S_RS, W_REG)
        acc = warpgroup_mma(w_a, a_ring.index(i % STAGES).permute((1, 0)), acc, is_async=True)
        acc, w_b = warpgroup_mma_wait(num_outstanding=1, deps=(acc, w_b))  # tile i - 1's MMA retired
        w_b = _rs_tile(i + 1, n_k, k_begin, a_ring, w_ring, s_ring, a_rows, a_row_ok, w_rows, w_row_ok, s_rows,
                       s_row_ok, BLOCK_N, BLOCK_K, STAGES, A_COLS, W_COLS, S_COLS, W_RS, S_RS, W_REG)
        acc = warpgroup_mma(w_b, a_ring.index((i + 1) % STAGES).permute((1, 0)), acc, is_async=True)
        acc, w_a = warpgroup_mma_wait(num_outstanding=1, deps=(acc, w_a))  # tile i's MMA retired
    acc, w_b = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w_b))
    if n_k % 2:  # the last tile of an odd count
        w_a = _rs_tile(n_k - 1, n_k, k_begin, a_ring, w_ring, s_ring, a_rows, a_row_ok, w_rows, w_row_ok, s_rows,
                       s_row_ok, BLOCK_N, BLOCK_K, STAGES, A_COLS, W_COLS, S_COLS, W_RS, S_RS, W_REG)
        acc = warpgroup_mma(w_a, a_ring.index((n_k - 1) % STAGES).permute((1, 0)), acc, is_async=True)
        acc, w_a = warpgroup_mma_wait(num_outstanding=0, deps=(acc, w_a))
    async_copy.wait_group(0)
    _finish(gl.convert_layout(gl.permute(acc, (1, 0)), OUT), pid, pid_m, pid_n, pid_k, alpha_ptr, bias_ptr, out_ptr,
            part_ptr, ticket_ptr, M, N, stride_om, HAS_BIAS, SPLIT_K, BLOCK_M, BLOCK_N, OUT)
