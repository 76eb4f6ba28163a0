"""The dynamic activation scale in one launch: max |x| over the whole input, then gs and alpha.

Every program reduces its tile (BLOCK_R rows x K_PER_PROGRAM columns: few rows at decode are
split over K so that the reads run in parallel, not as one program's serial loop) to max |x| (as
int32 bits: order-preserving for non-negative floats, NaN above +inf) and folds it into one word
with an atomic max; the last program to take a
ticket reads the maximum, writes (gs, alpha) exactly as the static path would compute them from
input_scale = amax / 2688 (`dynamic_scales`), and zeroes both words for the next call.
Consumers read gs and alpha through pointers, like a static layer's buffers.

With ACT set (a code of kernels/act_quantize.py) the maximum is of |act(x)| as the activation
kernels compute it (x = [gate, up] for gated acts, K = I): the dynamic input scale of a down
projection whose input is act(x) (`fp4linear.GatedMLP`), the bits the same Linear would derive
from the activation's output.

With MAXIMA the launch ends earlier: each program stores its own max |x| bits (words[program],
program = i * grid[1] + j) and the pass that quantizes x next reduces them itself
(`numerics.encode_scale`), writing (gs, alpha) for the GEMM. No atomic, ticket or reset on the
launch's tail: those serialized L2 round trips were ~1.5-2 us of every dynamic call past decode
(H100, benchmarks/NOTES.md session 21).
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_numerics = sibling(__name__, "numerics")
max_combine = _numerics.max_combine
dynamic_scales = _numerics.dynamic_scales
store_scales = _numerics.store_scales
max_abs_bits = _numerics.max_abs_bits
aligned = _numerics.aligned
_act_tile = sibling(__name__, "act_quantize")._act_tile


@triton.jit(do_not_specialize=["M"], do_not_specialize_on_alignment=["weight_scale_2_ptr"])
def dynamic_scale_kernel(x_ptr, weight_scale_2_ptr, scales_ptr, words_ptr, M, K, stride_xm, k_per_program,
                         BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr,
                         BF16_BITS: tl.constexpr, MAXIMA: tl.constexpr, X_ALIGN: tl.constexpr = 1):
    """scales[0] = gs, scales[1] = alpha; words: int32 [2] (running max, ticket), zero on entry and exit.
    MAXIMA: words int32 [grid[0] * grid[1]] instead, each program's max |x| bits; scales not written.
    ACT < 0: max |x| over x [M, K]; else max |act(x)| over its [M, K] outputs (NaN kept, as for x).
    Program (i, j) reads rows i * BLOCK_R.. and columns j * k_per_program.. (a multiple of BLOCK_K)."""
    K = aligned(K, X_ALIGN)
    stride_xm = aligned(stride_xm, X_ALIGN)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    acc = tl.full([BLOCK_R], 0, tl.int32)
    k_begin = tl.program_id(1) * k_per_program
    for k0 in range(k_begin, tl.minimum(k_begin + k_per_program, K), BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        if ACT >= 0:
            x = _act_tile(x_ptr, rows[:, None], cols[None, :], M, K, stride_xm, ACT, GATED, BF16_BITS)
        else:
            x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :],
                        mask=(rows < M)[:, None] & (cols < K)[None, :], other=0.0)
        acc = tl.maximum(acc, max_abs_bits(x))
    if MAXIMA:
        tl.store(words_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), tl.reduce(acc, 0, max_combine))
    else:
        tl.atomic_max(words_ptr, tl.reduce(acc, 0, max_combine), sem="relaxed", scope="gpu")
        tl.debug_barrier()
        ticket = tl.atomic_add(words_ptr + 1, 1, sem="acq_rel", scope="gpu")
        if ticket == tl.num_programs(0) * tl.num_programs(1) - 1:
            # the ticket's acquire orders every program's max before this read: a load and a store suffice, one
            # fenced atomic fewer on the launch's tail than an exchange (H100, RESULTS.md's Linear table: dynamic
            # 2048 x 1288 x 2688 40.5 -> 39.6 us, 2048 x 2688 x 464 19.5 -> 18.9)
            amax_bits = tl.load(words_ptr, volatile=True)
            tl.store(words_ptr, 0)
            gs, alpha = dynamic_scales(amax_bits, tl.load(weight_scale_2_ptr))
            store_scales(scales_ptr, gs, alpha)
            tl.atomic_xchg(words_ptr + 1, 0, sem="relaxed", scope="gpu")
