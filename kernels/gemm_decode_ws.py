"""The decode GEMM tile with its loads warp-specialized (Gluon; GPU only).

out[M, N] = alpha * A @ dequant(W)^T (+ bias) for M <= 16: the operands, products, K order, K
tiles, split-K partials and epilogue of `gemm.nvfp4_gemm_kernel`'s decode tile (16 tokens, the
decoded weight mma.sync's right operand, A pre-dequantized in the mma16 order 1 of
kernels/layout.py), so the same bits (a cuda test compares the two). What differs is who waits.

Triton's schedule of that tile double-buffers its cp.async copies and every warp waits for them
and then meets the others at a CTA barrier each K tile; under ncu (H100, 4x8192^2, session 19 of
benchmarks/NOTES.md) a third of the warps' stall samples sat on that wait and another quarter on
barriers. Here one producer warp keeps a ring of STAGES K tiles in flight (A, the weight words and
their scale bytes by cp.async, each slot's arrival counted on its own mbarrier), and the four
consumer warps (the default partition) take slots as they land and hand each back through a
second mbarrier once its words are in registers: no CTA barrier in the K loop, and the copies are
never on the consumers' instruction stream.

The consumers' layouts are those Triton chose for the same tile (its TTGIR, Triton 3.6): the words
load as `_words_layout` so that each thread decodes whole words straight into mma.sync's right
operand (k_width 8), A loads as one 16-byte run per fragment (`_a_layout`), and every conversion to
an operand layout is register-trivial (checked at compile time).
"""

import inspect

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import mbarrier

try:  # Gluon's mma.sync and this form of warp_specialize: Triton >= 3.6 (3.5 has neither)
    from triton.experimental.gluon.language.nvidia.ampere import mma_v2
except ImportError:
    mma_v2 = None
# cp.async into shared memory: `async_load` from Triton 3.7 on (the old name raises there)
_async_load = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
AVAILABLE = mma_v2 is not None and "functions_and_args" in inspect.signature(gl.warp_specialize).parameters

from .gemm_wgmma import _finish, _tile_ids

# The four consumer warps and the producer's warpgroup (setmaxnreg works on whole warpgroups: the producer
# warp brings three idle ones) make 8 warps; at 80 registers a thread three CTAs fit on an SM (ptxas
# maxnreg), the producer keeping 56 and the consumers the rest (136; offline sm_90: no spills).
MAX_REGISTERS = 80
PRODUCER_REGISTERS = 56


@gluon.jit
def _decode_pairs(words):
    """`numerics.decode_pairs_ptx` split into halves: codes 0..3 (a) and 4..7 (b) of each word as
    fp16 times 2^-14 (11 integer instructions a word)."""
    return gl.inline_asm_elementwise(
        "{ .reg .b32 t, e, o, p0, p1, p2, p3; "
        "shl.b32 t, $8, 1; and.b32 e, t, 0x0E0E0E0E; shl.b32 t, $8, 4; and.b32 t, t, 0x80808080; or.b32 e, e, t; "
        "shr.u32 t, $8, 3; and.b32 o, t, 0x0E0E0E0E; and.b32 t, $8, 0x80808080; or.b32 o, o, t; "
        "prmt.b32 p0, e, 0, 0x2404; prmt.b32 p1, o, 0, 0x2404; prmt.b32 p2, e, 0, 0x3414; prmt.b32 p3, o, 0, 0x3414; "
        "mov.b32 {$0, $4}, p0; mov.b32 {$1, $5}, p1; mov.b32 {$2, $6}, p2; mov.b32 {$3, $7}, p3; }",
        "=h,=h,=h,=h,=h,=h,=h,=h,r", [words], dtype=(gl.float16, ) * 8, is_pure=True, pack=1)


@gluon.constexpr_function
def _words_layout(block_n, words):
    """[block_n, words] int32 weight words over 4 warps (Triton's choice for this tile): lane 4 g + c
    holds rows g (+ 8, 16 by warp, + 32 by register) and words c (+ 4, 8, ... by register)."""
    regs = [[0, 4 << i] for i in range((words // 4).bit_length() - 1)] + [[32, 0]]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=[[8, 0], [16, 0]], block_bases=[], shape=[block_n, words])


@gluon.constexpr_function
def _scales_parent(block_n, blocks):
    """The [block_n, blocks, 16] layout of the decoded values before the scale multiply (the scale
    bytes load as its slice along the last dim)."""
    regs = [[0, 0, 1], [0, 0, 2], [0, 0, 4]] + [[0, 2 << i, 0] for i in range((blocks // 2).bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=regs + [[32, 0, 0]],
                                      lane_bases=[[0, 0, 8], [0, 1, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
                                      warp_bases=[[8, 0, 0], [16, 0, 0]], block_bases=[], shape=[block_n, blocks, 16])


@gluon.constexpr_function
def _a_layout(block_k):
    """The flat [16 * block_k] A tile in mma16 order 1, every warp holding all of it: 8 halves (one
    16-byte run) a register group, lanes on consecutive runs."""
    regs = [[1], [256], [512], [2], [4]] + [[1024 << i] for i in range((block_k // 64).bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=[[8], [16], [32], [64], [128]],
                                      warp_bases=[[0], [0]], block_bases=[], shape=[16 * block_k])


@gluon.jit
def _producer(a_ring, w_ring, s_ring, full, empty, a_ptr, w_ptr, w_scale_ptr, N, Kp, pid_m, pid_n, k_begin, n_k,
              BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr):
    """One warp: K tile i into slot i % STAGES once the consumers have handed the slot back; the
    slot's `full` barrier completes when this warp's copies of it have landed (32 arrivals)."""
    A_LOAD: gl.constexpr = gl.BlockedLayout([8], [32], [1], [0])
    W_LOAD: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BLOCK_K // 32), BLOCK_K // 32], [1, 1], [1, 0])
    S_LOAD: gl.constexpr = gl.BlockedLayout([1, BLOCK_K // 16], [32, 1], [1, 1], [1, 0])
    run = gl.arange(0, 16 * BLOCK_K, layout=A_LOAD)
    a_tile = a_ptr + pid_m.to(gl.int64) * 16 * Kp + run
    rn_w = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, W_LOAD))
    w_rows = w_ptr + rn_w.to(gl.int64)[:, None] * (Kp // 8) + gl.arange(0, BLOCK_K // 8,
                                                                        layout=gl.SliceLayout(0, W_LOAD))[None, :]
    w_ok = (rn_w < N)[:, None]
    rn_s = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, S_LOAD))
    s_rows = w_scale_ptr + rn_s.to(gl.int64)[:, None] * (Kp // 16) + gl.arange(0, BLOCK_K // 16,
                                                                              layout=gl.SliceLayout(0, S_LOAD))[None, :]
    s_ok = (rn_s < N)[:, None]
    for i in range(n_k):
        slot = i % STAGES
        mbarrier.wait(empty.index(slot), ((i // STAGES) & 1) ^ 1)  # (a fresh barrier passes parity 1)
        k0 = k_begin + i * BLOCK_K
        _async_load(a_ring.index(slot), a_tile + k0 * 16, cache_modifier=".cg")
        _async_load(w_ring.index(slot), w_rows + k0 // 8, mask=w_ok, cache_modifier=".cg")
        _async_load(s_ring.index(slot), s_rows + k0 // 16, mask=s_ok)
        async_copy.mbarrier_arrive(full.index(slot), increment_count=False)


@gluon.jit
def _consumer(a_ring, w_ring, s_ring, full, empty, n_k, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr,
              STAGES: gl.constexpr):
    """Four warps: for each landed slot, its words, scale bytes and A into registers, the slot handed
    back, then decode and MMA: acc [16, BLOCK_N] fp32 (the dot of `gemm.nvfp4_gemm_kernel`'s tile)."""
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 4], instr_shape=[16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=8)
    W_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=8)
    W_DEC: gl.constexpr = _words_layout(BLOCK_N, BLOCK_K // 8)
    V_LAYOUT: gl.constexpr = _scales_parent(BLOCK_N, BLOCK_K // 16)
    A_LIN: gl.constexpr = _a_layout(BLOCK_K)
    acc = gl.zeros([16, BLOCK_N], gl.float32, layout=MMA)
    for i in range(n_k):
        slot = i % STAGES
        mbarrier.wait(full.index(slot), (i // STAGES) & 1)
        words = w_ring.index(slot).load(W_DEC)
        sf = s_ring.index(slot).load(gl.SliceLayout(2, V_LAYOUT))
        a_run = a_ring.index(slot).load(A_LIN)
        mbarrier.arrive(empty.index(slot), count=1)
        # A: [cc, s, jj, g, cl, h, r8, j2] -> rows (r8, g), K (cc, h, cl, s, jj, j2) (`layout.load_mma16_tile`)
        a8 = gl.reshape(a_run, [BLOCK_K // 64, 2, 2, 8, 4, 2, 2, 2])
        a = gl.convert_layout(gl.reshape(gl.permute(a8, [6, 3, 0, 5, 4, 1, 2, 7]), [16, BLOCK_K]), A_OP,
                              assert_trivial=True)
        a0, a1, a2, a3, b0, b1, b2, b3 = _decode_pairs(words)
        v = gl.join(gl.join(gl.join(a0, a2), gl.join(a1, a3)), gl.join(gl.join(b0, b2), gl.join(b1, b3)))
        v = gl.convert_layout(gl.reshape(v, [BLOCK_N, BLOCK_K // 16, 16]), V_LAYOUT, assert_trivial=True)
        scale = sf.to(gl.float8e4nv, bitcast=True).to(gl.float16)  # weight scales: validated at load
        w = gl.reshape(v * gl.expand_dims(scale, 2), [BLOCK_N, BLOCK_K])
        acc = mma_v2(a, gl.convert_layout(gl.permute(w, [1, 0]), W_OP, assert_trivial=True), acc)
    return (acc, )  # (a partition's results as a tuple)


@gluon.jit(do_not_specialize=["M", "stride_om"])
def nvfp4_gemm_decode_ws_kernel(
    a_ptr,  # fp16 [round_up(M, 16), Kp]: A dequantized (units of 2^-14) in mma16 order 1
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
    BLOCK_N: gl.constexpr,  # 64 weight rows (16 a consumer warp)
    BLOCK_K: gl.constexpr,  # 128 or 256, dividing Kp
    GROUP_M: gl.constexpr,
    STAGES: gl.constexpr,  # ring depth
    PRODUCER_REGS: gl.constexpr,  # registers a producer thread keeps (setmaxnreg)
):
    Kp = Kp_div64 * 64
    pid, pid_m, pid_n, pid_k = _tile_ids(M, N, 16, BLOCK_N, GROUP_M, SPLIT_K)
    k_begin = pid_k * k_tiles_per_split * BLOCK_K
    n_k = (gl.minimum(k_begin + k_tiles_per_split * BLOCK_K, Kp) - k_begin) // BLOCK_K

    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    W_SMEM: gl.constexpr = gl.SwizzledSharedLayout(4, 1, 8, [1, 0])  # (Triton's, for the words' loads)
    a_ring = gl.allocate_shared_memory(gl.float16, [STAGES, 16 * BLOCK_K], PLAIN)
    w_ring = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, BLOCK_K // 8], W_SMEM)
    s_ring = gl.allocate_shared_memory(gl.uint8, [STAGES, BLOCK_N, BLOCK_K // 16],
                                       gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    full = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(full.index(s), count=32)  # the producer warp's lanes (cp.async arrivals)
        mbarrier.init(empty.index(s), count=1)  # the consumers (one arrival after their warps meet)

    acc, = gl.warp_specialize([
        (_consumer, (a_ring, w_ring, s_ring, full, empty, n_k, BLOCK_N, BLOCK_K, STAGES)),
        (_producer, (a_ring, w_ring, s_ring, full, empty, a_ptr, w_ptr, w_scale_ptr, N, Kp, pid_m, pid_n, k_begin,
                     n_k, BLOCK_N, BLOCK_K, STAGES)),
    ], [1], [PRODUCER_REGS])
    OUT: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    _finish(gl.convert_layout(acc, OUT), pid, pid_m, pid_n, pid_k, alpha_ptr, bias_ptr, out_ptr, part_ptr, ticket_ptr,
            M, N, stride_om, HAS_BIAS, SPLIT_K, 16, BLOCK_N, OUT)
