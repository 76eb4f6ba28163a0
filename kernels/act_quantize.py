"""Activation (+ gate multiply) fused with NVFP4 quantization, and the same activation unfused.

act_quantize: x [M, W] (W = 2I gated: gate = x[:, :I], up = x[:, I:]; W = I plain) -> packed E2M1
[M, Ip/2] + swizzled E4M3 scales, Ip = I padded, in one launch (static global scale) or two
(dynamic: `act_amax_kernel` writes per-program maxima of |act(x)|, then every quantize program
reduces them to the encode scale itself). The activation is computed in fp32 and rounded to x's
dtype before quantization, exactly as `activation_kernel` stores it, so act_quantize(x) has the
bits of quantize(activation(x)) on the same device. Quantization and stores are the quantize
kernel's own `quantize.quantize_store` (numerics.block_scales / e2m1_code, layout.scale_offset).

act_fake_quantize: the same activation, quantized, written as the values its NVFP4 holds (the
quantize-dequantize pass `quant_dequant.fake_quantize_tile`), for the GEMMs that take a dequantized
activation: what `fp4linear.GatedMLP` feeds its down projection (fp4linear/ops.py, `triton_act_linear`);
act_cublas_operands the same with the down weight's first cuBLAS chunk in the same launch.
It is traced by torch.compile (inside that op), so the helpers it calls are plain globals named as
their functions (`_act_tile` and its callees live here; `fake_quantize_tile` is bound below).
"""

import triton
import triton.language as tl
from triton.language.extra import libdevice

from ._interpreter import sibling

numerics = sibling(__name__, "numerics")
quantize = sibling(__name__, "quantize")
fake_quantize_tile = sibling(__name__, "quant_dequant").fake_quantize_tile
_dequantize_rows_program = sibling(__name__, "quant_dequant")._dequantize_rows_program
activation_offset = sibling(__name__, "layout").activation_offset
encode_scale = numerics.encode_scale
# (small_act_input_scales runs inside the GEMM, whose source torch.compile re-emits: its helpers by their own names)
amax_chunk_cols = numerics.amax_chunk_cols
fold_abs_bits = numerics.fold_abs_bits
dynamic_scales = numerics.dynamic_scales
max_combine = numerics.max_combine

# ACT codes (the launcher maps names): gated ones multiply act(gate) by up.
SILU_MUL = tl.constexpr(0)
GELU_TANH_MUL = tl.constexpr(1)
RELU2 = tl.constexpr(2)
GELU = tl.constexpr(3)
SILU = tl.constexpr(4)
E4M3_E2M1_MAX = tl.constexpr(2688.0)  # 448 * 6: encode scale = 2688 / amax


@triton.jit
def _exp(x, FAST: tl.constexpr):
    if FAST:  # GPUs: ex2.approx.ftz, two instructions instead of five (Triton's exp handles denormals)
        return libdevice.fast_expf(x)
    else:  # the interpreter has no libdevice
        return tl.exp(x)


@triton.jit
def _div(a, b, FAST: tl.constexpr):
    if FAST:  # rcp.approx * a: 0 for |b| >= 2^126 (silu below -87.3: ~1e-37 -> 0)
        return libdevice.fast_dividef(a, b)
    else:
        return tl.math.fdiv(a, b, ieee_rounding=False)


@triton.jit
def _silu(g, FAST: tl.constexpr):
    return _div(g, 1.0 + _exp(-g, FAST), FAST)  # torch's x / (1 + exp(-x))


@triton.jit
def _gelu_tanh(g, FAST: tl.constexpr):
    # torch's order: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), tanh(z) = 1 - 2 / (1 + e^2z)
    # (no tanh in Triton's interpreter, and tanh.approx is 11 bits); its absolute error ~1 ulp of 1
    # is what 1 + tanh needs.
    inner = 0.7978845608028654 * (g + 0.044715 * (g * g * g))
    t = 1.0 - _div(2.0, 1.0 + _exp(2.0 * inner, FAST), FAST)
    return 0.5 * g * (1.0 + t)


@triton.jit
def activation_f32(g, u, ACT: tl.constexpr, FAST: tl.constexpr):
    """act in fp32 on fp32 operands (u: the up half, unused for plain acts). NaN propagates as in
    torch; act(0) = +0 for every act, so masked (padding) elements stay 0. FAST (GPUs): approximate
    exp and division, ~2 ulp of fp32, far below the dtype's rounding; the interpreter's numpy
    ones differ from them by those ulps, so bits are compared on one device."""
    if ACT == SILU_MUL:
        return _silu(g, FAST) * u
    elif ACT == GELU_TANH_MUL:
        return _gelu_tanh(g, FAST) * u
    elif ACT == RELU2:
        r = tl.where(g < 0.0, 0.0, g)  # relu keeping NaN (torch's clamp_min)
        return r * r
    elif ACT == GELU:
        return g * 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
    else:
        return _silu(g, FAST)


@triton.jit
def _round_to(h, dtype: tl.constexpr, BF16_BITS: tl.constexpr):
    """fp32 h rounded to nearest even in `dtype`, as fp32. Triton's interpreter truncates fp32 ->
    bf16 casts, so there (BF16_BITS, set for CPU tensors) the rounding is done on the bits; GPUs
    round in cvt.rn."""
    if (dtype == tl.bfloat16) and BF16_BITS:
        bits = h.to(tl.int32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # carries into the exponent: inf past the max
        return tl.where((bits & 0x7FFFFFFF) > 0x7F800000, bits, rounded).to(tl.float32, bitcast=True)
    else:
        return h.to(dtype).to(tl.float32)


@triton.jit
def _act_tile(x_ptr, rows, cols, M, I, stride_xm, ACT: tl.constexpr, GATED: tl.constexpr, BF16_BITS: tl.constexpr):
    """act(x) of rows x cols (output columns < I), rounded to x's dtype, as fp32; 0 outside [M, I)."""
    mask = (rows < M) & (cols < I)
    ptr = x_ptr + rows.to(tl.int64) * stride_xm + cols
    g = tl.load(ptr, mask=mask, other=0.0)
    if GATED:
        u = tl.load(ptr + I, mask=mask, other=0.0).to(tl.float32)
    else:
        u = g.to(tl.float32)
    # the interpreter (BF16_BITS) has no fast math either
    return _round_to(activation_f32(g.to(tl.float32), u, ACT, not BF16_BITS), x_ptr.dtype.element_ty, BF16_BITS)


@triton.jit
def small_act_input_scales(x_ptr, M, I, stride_xm, weight_scale_2, ACT: tl.constexpr, GATED: tl.constexpr,
                           BF16_BITS: tl.constexpr, ROWS: tl.constexpr, AMAX_BLOCK: tl.constexpr,
                           AMAX_CHUNKS: tl.constexpr, rotation):
    """`numerics.small_input_scales` of act(x) (its [M <= ROWS, I] outputs as `_act_tile` rounds them,
    I <= AMAX_BLOCK * AMAX_CHUNKS): the (gs, alpha) bits the scale launch with that ACT gives, read
    by the calling program alone (the GEMM quantizing act(x) under a dynamic scale, one launch)."""
    amax = tl.full([AMAX_BLOCK], 0, tl.int32)
    for r in tl.static_range(ROWS):
        for c in tl.static_range(AMAX_CHUNKS):
            cols = amax_chunk_cols(c, rotation, AMAX_CHUNKS, AMAX_BLOCK)
            amax = fold_abs_bits(amax, _act_tile(x_ptr, cols * 0 + r, cols, M, I, stride_xm, ACT, GATED, BF16_BITS))
    return dynamic_scales(tl.reduce(amax, 0, max_combine), weight_scale_2)


@triton.jit
def activation_kernel(x_ptr, y_ptr, M, I_div, stride_xm_div, stride_ym,
                      I_MULT: tl.constexpr, XM_MULT: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr,
                      BF16_BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y [M, I] = act(x) in x's dtype (the unfused path the fused kernel is held to)."""
    I = I_div * I_MULT
    rows = (tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N))[None, :]
    h = _act_tile(x_ptr, rows, cols, M, I, stride_xm_div * XM_MULT, ACT, GATED, BF16_BITS)
    tl.store(y_ptr + rows.to(tl.int64) * stride_ym + cols, h.to(y_ptr.dtype.element_ty), mask=(rows < M) & (cols < I))


@triton.jit
def _finite_abs_bits(h):
    """|h| as int32 float bits, 0 where h is NaN or +-inf (they only poison their own block)."""
    bits = h.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return tl.where(bits < 0x7F800000, bits, 0)


@triton.jit
def act_amax_kernel(x_ptr, partial_ptr, M, I_div, stride_xm_div,
                    I_MULT: tl.constexpr, XM_MULT: tl.constexpr, ACT: tl.constexpr, GATED: tl.constexpr,
                    BF16_BITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """partial[pid_k * num_programs(1) + pid] = max finite |act(x)| over this program's tiles:
    k tile pid_k, m tiles program_id(1), + num_programs(1), ... (every slot written: no zero fill)."""
    I = I_div * I_MULT
    pid_k = tl.program_id(0)
    cols = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
    n_m = (M + BLOCK_M - 1) // BLOCK_M
    acc = tl.full([BLOCK_M, BLOCK_K], 0, tl.int32)
    for pid_m in tl.range(tl.program_id(1), n_m, tl.num_programs(1)):
        rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
        h = _act_tile(x_ptr, rows, cols, M, I, stride_xm_div * XM_MULT, ACT, GATED, BF16_BITS)
        acc = tl.maximum(acc, _finite_abs_bits(h))
    amax = tl.reduce(tl.reduce(acc, 1, numerics.max_combine), 0, numerics.max_combine)
    tl.store(partial_ptr + pid_k * tl.num_programs(1) + tl.program_id(1), amax.to(tl.float32, bitcast=True))


@triton.jit
def act_quantize_kernel(
    x_ptr,
    global_scale_ptr,  # static: the encode scale; dynamic: where the computed one is written
    partial_ptr,  # dynamic: act_amax_kernel's maxima
    data_ptr,
    scale_ptr,
    M,
    I_div,  # I // I_MULT
    stride_xm_div,  # row stride of x // XM_MULT
    Ip_div16,  # Ip // 16
    n_partials,
    I_MULT: tl.constexpr,  # multiples, as in the quantize kernel: aligned vector loads of gate and up
    XM_MULT: tl.constexpr,
    SF_ROW_TILE: tl.constexpr,
    ACT: tl.constexpr,
    GATED: tl.constexpr,
    BF16_BITS: tl.constexpr,  # round to bf16 on the bits (the interpreter)
    DYNAMIC: tl.constexpr,
    PARTIALS: tl.constexpr,  # power of two >= n_partials
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,  # multiple of 64
    ONE_PAD_TILE: tl.constexpr,  # one program per k column zeroes the scale-padding rows
    HALVES: tl.constexpr,  # whole blocks per thread (QuantConfig.halves)
):
    """Grid (k tiles, m tiles incl. the tiles of scale-padding rows); no integer division."""
    NB: tl.constexpr = BLOCK_K // 16
    I = I_div * I_MULT
    Ip = Ip_div16 * 16
    S4 = (Ip_div16 + 3) // 4 * 4
    scale_rows = (M + SF_ROW_TILE - 1) // SF_ROW_TILE * SF_ROW_TILE
    pid_k = tl.program_id(0)
    pid_m = tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    blocks = pid_k * NB + tl.arange(0, NB)

    if DYNAMIC:
        p = tl.arange(0, PARTIALS)
        amax_bits = tl.reduce(tl.load(partial_ptr + p, mask=p < n_partials, other=0.0).to(tl.int32, bitcast=True),
                              0, numerics.max_combine)
        # 2688 / amax correctly rounded, amax >= 1e-30 (format.decode_scale's clamp, inverted)
        gs = tl.math.div_rn(E4M3_E2M1_MAX, tl.maximum(amax_bits.to(tl.float32, bitcast=True), 1e-30))
        if (pid_k == 0) & (pid_m == 0):
            tl.store(global_scale_ptr, gs)
    else:
        gs = tl.load(global_scale_ptr)

    if pid_m * BLOCK_M < M:
        if HALVES:  # [half, row, block, 8]: whole blocks per thread (kernels/quantize.py's HALVES)
            cols = blocks[None, None, :, None] * 16 + tl.arange(0, 2)[:, None, None, None] * 8 + \
                tl.arange(0, 8)[None, None, None, :]
            h = _act_tile(x_ptr, rows[None, :, None, None], cols, M, I, stride_xm_div * XM_MULT, ACT, GATED, BF16_BITS)
        else:
            cols = blocks[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]
            h = _act_tile(x_ptr, rows[:, None, None], cols, M, I, stride_xm_div * XM_MULT, ACT, GATED, BF16_BITS)
        quantize.quantize_store(h, gs, data_ptr, scale_ptr, rows, blocks, M, Ip, S4, scale_rows, SF_ROW_TILE,
                                0, 2, HALVES)
    elif ONE_PAD_TILE:
        # All scale-padding rows of this k column in one program (the quantize kernel's rule)
        if pid_m * BLOCK_M < M + BLOCK_M:
            quantize.store_zero_scales(scale_ptr, (M + BLOCK_M - 1) // BLOCK_M * BLOCK_M + tl.arange(0, SF_ROW_TILE),
                                       blocks, S4, scale_rows, SF_ROW_TILE)
    elif pid_m * BLOCK_M < scale_rows:
        # A tile of scale-padding rows only (M up to the layout's row tile): zeros, no math.
        quantize.store_zero_scales(scale_ptr, rows, blocks, S4, scale_rows, SF_ROW_TILE)


@triton.jit(do_not_specialize=["M", "n_maxima"], do_not_specialize_on_alignment=["maxima_ptr", "scales_ptr"])
def act_fake_quantize_kernel(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, out_ptr, M, I_div,
                             stride_xm_div, Kp, I_MULT: tl.constexpr, XM_MULT: tl.constexpr, ACT: tl.constexpr,
                             GATED: tl.constexpr, BF16_BITS: tl.constexpr, UNITS: tl.constexpr, BLOCK_M: tl.constexpr,
                             BLOCK_K: tl.constexpr, A_ORDER: tl.constexpr, MAXIMA_BLOCK: tl.constexpr):
    """out [M, Kp] = the NVFP4 values of act(x) (x [M, W], W = 2I gated), e2m1 * e4m3 without the
    global scale, zeros beyond I: fp16 units in the weight decode's K order (UNITS) or true values
    in out's dtype; the codes and scales `act_quantize_kernel` stores for the same x and scale.
    A_ORDER 1-3 (UNITS): out in that `layout.activation_offset` order instead of row-major.
    gs as `numerics.encode_scale` gives it (MAXIMA_BLOCK > 0: program (0, 0) writes (gs, alpha))."""
    _act_fake_quantize_program(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, out_ptr, M,
                               I_div * I_MULT, stride_xm_div * XM_MULT, Kp, tl.program_id(0), tl.program_id(1),
                               ACT, GATED, BF16_BITS, UNITS, BLOCK_M, BLOCK_K, A_ORDER, MAXIMA_BLOCK)


@triton.jit
def _act_fake_quantize_program(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, out_ptr, M, I, stride_xm,
                               Kp, pid_m, pid_k, ACT: tl.constexpr, GATED: tl.constexpr, BF16_BITS: tl.constexpr,
                               UNITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                               A_ORDER: tl.constexpr, MAXIMA_BLOCK: tl.constexpr):
    """Tile (pid_m, pid_k) of `act_fake_quantize_kernel` (out's row stride Kp); program (0, 0) writes a
    dynamic scale's (gs, alpha)."""
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    cols = (pid_k * BLOCK_K + tl.arange(0, BLOCK_K))[None, :]
    h = _act_tile(x_ptr, rows, cols, M, I, stride_xm, ACT, GATED, BF16_BITS)
    gs = encode_scale(global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, (pid_m == 0) & (pid_k == 0), MAXIMA_BLOCK)
    v = fake_quantize_tile(h, gs, UNITS, BLOCK_M, BLOCK_K)
    offsets = activation_offset(rows.to(tl.int64), cols, Kp, A_ORDER)
    tl.store(out_ptr + offsets, v.to(out_ptr.dtype.element_ty), mask=(rows < M) & (cols < Kp))


@triton.jit(do_not_specialize=["M", "n_maxima"], do_not_specialize_on_alignment=["maxima_ptr", "scales_ptr"])
def act_cublas_operands_kernel(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, out_ptr, M, I_div,
                               stride_xm_div, Ka, w_ptr, w_scale_ptr, w_out_ptr, N, Kp, stride_wo, a_programs,
                               a_k_tiles, w_k_tiles, I_MULT: tl.constexpr, XM_MULT: tl.constexpr, ACT: tl.constexpr,
                               GATED: tl.constexpr, BF16_BITS: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, W_BLOCK_K: tl.constexpr,
                               MAXIMA_BLOCK: tl.constexpr):
    """Both operands of the down projection's cuBLAS call in one launch (GatedMLP's cuBLAS path):
    programs [0, a_programs) write act(x)'s NVFP4 values in out's dtype, natural order, row stride Ka
    (`act_fake_quantize_kernel`'s tiles, true values), the rest weight rows [0, N) of the first chunk
    (`quant_dequant.dequantize_rows_kernel`'s [BLOCK_N, W_BLOCK_K] tiles): the weight's pass then pays no
    launch of its own. gs as `numerics.encode_scale` gives it (MAXIMA_BLOCK > 0: program 0 writes (gs, alpha))."""
    pid = tl.program_id(0)
    if pid < a_programs:
        _act_fake_quantize_program(x_ptr, global_scale_ptr, maxima_ptr, n_maxima, scales_ptr, out_ptr, M,
                                   I_div * I_MULT, stride_xm_div * XM_MULT, Ka, pid // a_k_tiles, pid % a_k_tiles,
                                   ACT, GATED, BF16_BITS, False, BLOCK_M, BLOCK_K, 0, MAXIMA_BLOCK)
    else:
        w_pid = pid - a_programs
        _dequantize_rows_program(w_ptr, w_scale_ptr, w_out_ptr, 0, N, Kp, stride_wo, w_pid // w_k_tiles,
                                 w_pid % w_k_tiles, BLOCK_N, W_BLOCK_K)
