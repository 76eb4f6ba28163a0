"""Quantize and dequantize in one pass, for GEMMs whose operands are already dequantized.

`fake_quantize_kernel`: x [M, K] -> the values its NVFP4 quantization holds, e2m1 * e4m3 without
the global scale, written as [M, Kp] (zeros beyond K): in units of 2^-14 and the weight decode's
permuted K order for the Triton GEMM (UNITS), or as true values in x's dtype and natural order
for cuBLAS. Same codes and scales as `fp4linear.quantize` (`quantize_blocks`); a
non-finite block is NaN.

`dequantize_rows_kernel`: rows of a prepared weight (packed codes [N, Kp/2], row-major scale bytes
[N, Kp/16]) -> true values e2m1 * e4m3 in bf16/fp16 (exact in both), natural order.
"""

import triton
import triton.language as tl

from ._interpreter import sibling

# The helpers as plain globals (torch.compile rebuilds user kernels from their source and globals);
# `sibling` gives the interpreted twins their interpreted helpers.

_numerics = sibling(__name__, "numerics")
dequant_bytes = _numerics.dequant_bytes
e2m1_to_fp16_units = _numerics.e2m1_to_fp16_units
quantize_blocks = _numerics.quantize_blocks
to_word_order = _numerics.to_word_order


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


@triton.jit(do_not_specialize=["M"])
def fake_quantize_kernel(x_ptr, global_scale_ptr, out_ptr, M, K, Kp, stride_xm, UNITS: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ok = (rows < M)[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xm + cols[None, :], mask=ok, other=0.0)
    v = fake_quantize_tile(x.to(tl.float32), tl.load(global_scale_ptr), UNITS, BLOCK_M, BLOCK_K)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * Kp + cols[None, :], v.to(out_ptr.dtype.element_ty),
             mask=(rows < M)[:, None] & (cols < Kp)[None, :])


@triton.jit
def dequantize_rows_kernel(w_ptr, w_scale_ptr, out_ptr, row_begin, N, Kp, stride_o, BLOCK_N: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    """out[r - row_begin, :] = values of weight row r for r in [row_begin, N)."""
    rows = row_begin + tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k0 = tl.program_id(1) * BLOCK_K
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
