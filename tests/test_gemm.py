"""The NVFP4 GEMM kernel against an fp64 matmul of the dequantized operands."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp4linear
from fp4linear import kernels, reference

from .conftest import global_scale_of, rel_err


def operands(m, n, k, device, *, generator=None, k_align=64):
    x = torch.randn(m, k, generator=generator).to(torch.bfloat16).to(device)
    w = torch.randn(n, k, generator=generator).to(torch.bfloat16)
    gs_a = global_scale_of(x)
    gs_w = global_scale_of(w)
    qa = fp4linear.quantize(x, gs_a, k_align=k_align)
    qw = reference.quantize(w, gs_w, k_align=k_align)
    w_scale = reference.unswizzle(qw.scale.view(torch.uint8), qw.sf_layout)[:n].contiguous()
    alpha = (1 / (gs_a.cpu() * gs_w)).to(device)
    return qa, qw.data.to(device), w_scale.to(device), alpha, qw


def fp64_reference(qa, qw, bias=None):
    out = fp4linear.dequantize(qa).double().cpu() @ fp4linear.dequantize(qw).double().T
    return out + bias.double().cpu() if bias is not None else out


def assert_within_fp32_accumulation(out, qa, qw, bias=None):
    """|out - ref| <= Kp * 2^-22 * (|A| @ |W|^T) elementwise: fp32 accumulation in any order (tensor
    cores included), and nothing looser; catches a single wrong product anywhere."""
    a, w = fp4linear.dequantize(qa).double().cpu(), fp4linear.dequantize(qw).double()
    ref = fp64_reference(qa, qw, bias)
    bound = qa.kp * 2.0**-22 * (a.abs() @ w.abs().T) + 1e-30
    err = (out.double().cpu() - ref).abs()
    assert (err <= bound).all(), f"max err/bound {(err / bound).max().item():.3g}"


@pytest.mark.parametrize("m, n, k", [(1, 33, 48), (5, 200, 464), (130, 64, 1368), (17, 96, 2688), (3, 16, 16)])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_matches_fp64(device, m, n, k, out_dtype):
    qa, w, ws, alpha, qw = operands(m, n, k, device)
    out = torch.full((m, n), float("nan"), dtype=out_dtype, device=device)  # poisoned
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out)
    if out_dtype == torch.float32:
        assert_within_fp32_accumulation(out, qa, qw)
    else:  # bf16 output rounding (truncation under the interpreter)
        assert rel_err(out, fp64_reference(qa, qw)) < 8e-3


def test_bias_and_strided_output(device):
    m, n, k = 9, 40, 192
    qa, w, ws, alpha, qw = operands(m, n, k, device)
    bias = torch.randn(n, device=device)
    big = torch.full((m, n + 24), float("nan"), device=device)
    out = big[:, 8 : 8 + n]  # row stride n + 24
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, bias, out)
    assert_within_fp32_accumulation(out, qa, qw, bias)
    assert big[:, :8].isnan().all() and big[:, 8 + n :].isnan().all()  # nothing written outside [M, N]


def test_nan_activation_row_is_visible(device):
    m, n, k = 6, 32, 128
    x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    x[2, 70] = math.nan
    x[4, 3] = math.inf
    gs = torch.tensor([100.0], device=device)
    qa = fp4linear.quantize(x, gs, k_align=64)
    _, w, ws, alpha, _ = operands(1, n, k, device)
    out = torch.empty(m, n, device=device)
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out)
    assert out[[2, 4]].isnan().all()
    assert torch.isfinite(out[[0, 1, 3, 5]]).all()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 150), n=st.integers(1, 150), k=st.integers(1, 400), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes(device, m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    qa, w, ws, alpha, qw = operands(m, n, k, device, generator=g)
    out = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out)
    assert_within_fp32_accumulation(out, qa, qw)


@pytest.mark.parametrize("m, n, k", [(5, 40, 192), (17, 96, 2688), (130, 64, 1368)])
@pytest.mark.parametrize("word_decode, predequant_a", [(False, False), (True, False), (False, True), (True, True)])
def test_decode_variants(device, m, n, k, word_decode, predequant_a):
    # The half2-pair decode permutes K identically in both operands, and a pre-dequantized A is
    # exact in fp16: the products are the same, so the same fp32-accumulation bound holds.
    import dataclasses

    qa, w, ws, alpha, qw = operands(m, n, k, device)
    out = torch.full((m, n), float("nan"), device=device)
    config = dataclasses.replace(kernels.gemm_config(m, n, qa.kp, device.type), word_decode=word_decode,
                                 predequant_a=predequant_a)
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=config)
    assert_within_fp32_accumulation(out, qa, qw)


@pytest.mark.parametrize("config", [
    kernels.GemmConfig(256, 64, 64, 8, 2, split_k=2, predequant_a=True),  # 256 tokens per tile (the dot's N side)
    kernels.GemmConfig(128, 32, 128, 4, 2, split_k=0, predequant_a=True),
    kernels.GemmConfig(64, 128, 64, 4, 2, split_k=3),
    # the weight as the MMA's right operand: 16-token tiles (mma.sync), 64+ (wgmma), packed and pre-dequantized A
    kernels.GemmConfig(16, 64, 128, 4, 2, split_k=3, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(64, 64, 64, 4, 2, split_k=2, w_operand_b=True),
    kernels.GemmConfig(128, 32, 128, 4, 2, split_k=0, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(16, 32, 64, 4, 2, split_k=0, predequant_a=True, w_operand_b=True, programs_per_sm=64,
                       min_split_tiles=1),  # one split per K tile
    # the weight as the left operand on mma.sync (1-2 warps), K tiles wider than Kp's last one
    kernels.GemmConfig(16, 64, 256, 2, 3, split_k=0, predequant_a=True),
    kernels.GemmConfig(16, 32, 256, 1, 3, split_k=0, predequant_a=True, programs_per_sm=8),
    # batched decode (17-64 rows, `gemm_config`): 32 / 64-row tiles, the weight the right operand, K splits
    kernels.GemmConfig(32, 64, 256, 4, 3, split_k=0, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(32, 128, 128, 4, 4, split_k=0, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(64, 64, 128, 4, 3, split_k=0, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(64, 128, 128, 8, 3, split_k=0, predequant_a=True, w_operand_b=True),
], ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}s{c.split_k}{'b' if c.w_operand_b else ''}")
@pytest.mark.parametrize("m", [300, 7, 40])
def test_tile_shapes(device, config, m):
    """Tiles the tuning (`linear_bench.py --tune`, `--tune-operand`) tries, at ragged M and N, split K included."""
    n, k = 100, 1368
    qa, w, ws, alpha, qw = operands(m, n, k, device)
    out = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=config)
    assert_within_fp32_accumulation(out, qa, qw)


@pytest.mark.parametrize("block_m, dot_m, block_n, block_k, warps", [(64, 32, 64, 128, 4), (128, 32, 64, 64, 8),
                                                                     (64, 16, 32, 64, 4)])
@pytest.mark.parametrize("a_form", ["dequantized", "packed", "x", "act"])
@pytest.mark.parametrize("m", [37, 100])
def test_dot_m_sub_tiles_have_the_sub_tile_bits(device, block_m, dot_m, block_n, block_k, warps, a_form, m):
    """`GemmConfig.dot_m`: a tile of block_m rows multiplied as block_m / dot_m dots sharing each decoded
    weight tile gives every row the bits of a tile of dot_m rows (same K tiles and splits), whatever
    form A comes in (pre-dequantized row-major, packed, x or act(x) quantized inside); ragged M (partial and
    empty sub-tiles), K % 64 != 0, split K, NaN-poisoned output; and the fp64 bound."""
    import dataclasses

    n, k = 100, 1368
    g = torch.Generator().manual_seed(m + block_m)
    qa, w, ws, alpha, qw = operands(m, n, k, device, generator=g)
    base = kernels.GemmConfig(dot_m, block_n, block_k, warps, 3, split_k=3, predequant_a=a_form == "dequantized",
                              w_operand_b=True)
    tiled = dataclasses.replace(base, block_m=block_m, dot_m=dot_m)
    outs = []
    for config in (base, tiled):
        out = torch.full((m, n), float("nan"), device=device)
        if a_form in ("x", "act"):  # x quantized inside the GEMM (of act(x) = silu(gate) * up: x = [gate, up])
            x = fp4linear.dequantize(qa).to(torch.bfloat16)
            if a_form == "act":
                x = torch.cat([x, x.flip(0)], dim=1)
            gs = fp4linear.encode_scale(x.float().abs().amax()).to(device)
            kernels.nvfp4_gemm_quantize_x(x, gs, w, ws, alpha, None, out, config=config,
                                          act="silu_mul" if a_form == "act" else None)
        else:
            kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=config)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    if a_form not in ("x", "act"):
        assert_within_fp32_accumulation(outs[1], qa, qw)
    else:
        assert not outs[1].isnan().any()


@pytest.mark.parametrize("block_m, block_n, block_k, warps", [(32, 64, 256, 4), (64, 64, 128, 4), (64, 128, 64, 8)])
@pytest.mark.parametrize("m", [5, 20, 37, 100])
def test_dot_m_16_reads_a_in_mma16_order(device, block_m, block_n, block_k, warps, m):
    """dot_m 16 with `a_mma16`: each 16-row sub-tile read in the MMA fragment order (the pass writes
    round_up(M, 16) rows; sub-tiles past them repeat the last one, whose rows are not stored) gives the
    bits of the 16-row mma16 tile and of a row-major A; K % 256 != 0, split K, NaN-poisoned output."""
    import dataclasses

    n, k = 100, 1368
    g = torch.Generator().manual_seed(m + block_m)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16).to(device)
    _, w, ws, _, qw = operands(m, n, k, device, generator=g)
    gs = fp4linear.encode_scale(x.float().abs().amax()).to(device)
    alpha = (1 / (gs.cpu() * qw.global_scale)).to(device)
    base = kernels.GemmConfig(16, block_n, block_k, warps, 3, split_k=3, predequant_a=True, w_operand_b=True,
                              a_mma16=True)
    tiled = dataclasses.replace(base, block_m=block_m, dot_m=16)
    a16 = torch.full((kernels.mma16_rows(m, 1), qw.kp), float("nan"), dtype=torch.float16, device=device)
    kernels.fake_quantize(x, gs, a16, units=True, a_order=1)
    a = torch.empty((m, qw.kp), dtype=torch.float16, device=device)
    kernels.fake_quantize(x, gs, a, units=True)
    outs = []
    for config, a_units in ((base, a16), (tiled, a16), (dataclasses.replace(tiled, a_mma16=False), a)):
        out = torch.full((m, n), float("nan"), device=device)
        kernels.nvfp4_gemm_dequantized_a(a_units, w, ws, alpha, None, out, config=config)
        outs.append(out)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert_within_fp32_accumulation(outs[1], fp4linear.quantize(x, gs, k_align=64), qw)


def test_dot_m_needs_the_weight_as_the_right_operand_and_2_or_4_sub_tiles():
    with pytest.raises(ValueError, match="dot_m needs w_operand_b"):
        kernels.GemmConfig(64, 64, 128, 4, 3, predequant_a=True, dot_m=32)
    with pytest.raises(ValueError, match="dot_m needs block_m 2 or 4 times"):
        kernels.GemmConfig(96, 64, 128, 4, 3, predequant_a=True, w_operand_b=True, dot_m=32)
    with pytest.raises(ValueError, match="dot_m needs block_m 2 or 4 times"):
        kernels.GemmConfig(64, 64, 128, 4, 3, predequant_a=True, w_operand_b=True, dot_m=8)


def mma16_order(a: torch.Tensor, order: int) -> torch.Tensor:
    """[M, Kp] row-major -> the flat mma16 order (kernels/layout.py), written here as reshape/permute:
    per 16-row tile [Kp/64 cc], then order 1: [s][jj][8 g][4 cl][h][r8][j2], order 2: [r8][jj][8 g][4 cl][s][h][j2],
    with row = 8 r8 + g and k = 64 cc + 32 h + 8 cl + 4 s + 2 jj + j2. Rows past M (to a multiple of
    16) are NaN."""
    m, kp = a.shape
    rows = -(-m // 16) * 16
    padded = torch.full((rows, kp), float("nan"), dtype=a.dtype, device=a.device)
    padded[:m] = a
    v = padded.view(rows // 16, 2, 8, kp // 64, 2, 4, 2, 2, 2)  # [t, r8, g, cc, h, cl, s, jj, j2]
    if order == 1:
        return v.permute(0, 3, 6, 7, 2, 5, 4, 1, 8).flatten()
    return v.permute(0, 3, 1, 7, 2, 5, 6, 4, 8).flatten()


@pytest.mark.parametrize("config", [
    kernels.GemmConfig(16, 64, 256, 4, 3, split_k=0, predequant_a=True, w_operand_b=True, a_mma16=True),
    kernels.GemmConfig(16, 32, 64, 4, 2, split_k=2, predequant_a=True, w_operand_b=True, a_mma16=True),
    kernels.GemmConfig(16, 64, 256, 2, 3, split_k=0, predequant_a=True, a_mma16=True),
    kernels.GemmConfig(16, 64, 128, 1, 3, split_k=3, predequant_a=True, a_mma16=True),
], ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}w{c.num_warps}{'b' if c.w_operand_b else ''}")
@pytest.mark.parametrize("m", [1, 5, 16, 17, 40])
def test_a_in_mma16_order(device, config, m):
    """`fake_quantize(a_order=...)` writes the pass's values in the mma16 order of the GEMM's operand
    side (rows past M untouched), and the GEMM reading that order (`GemmConfig.a_mma16`) gives the
    row-major path's bits: K % 256 != 0 (masked K tiles), M not a multiple of 16, rows past M NaN."""
    import dataclasses

    n, k = 100, 1368
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16).to(device)
    _, w, ws, _, qw = operands(m, n, k, device, generator=g)
    gs = global_scale_of(x).to(device)
    alpha = (1 / (gs.cpu() * qw.global_scale.cpu())).to(device)
    kp = ws.shape[1] * 16
    a = kernels.fake_quantize(x, gs, torch.empty(m, kp, dtype=torch.float16, device=device), units=True)
    a16 = torch.full((-(-m // 16) * 16, kp), float("nan"), dtype=torch.float16, device=device)
    kernels.fake_quantize(x, gs, a16, units=True, a_order=config.a_order)
    want_order = mma16_order(a.cpu(), config.a_order)
    written = ~want_order.isnan()
    assert torch.equal(a16.cpu().flatten()[written].view(torch.int16), want_order[written].view(torch.int16))
    assert a16.cpu().flatten()[~written].isnan().all()  # rows past M: untouched
    want = torch.full((m, n), float("nan"), device=device)
    row_major = dataclasses.replace(config, a_mma16=False)
    kernels.nvfp4_gemm_dequantized_a(a, w, ws, alpha, None, want, config=row_major)
    got = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm_dequantized_a(a16, w, ws, alpha, None, got, config=config)
    assert not want.isnan().any() and torch.equal(got, want)


def test_a_mma16_errors():
    with pytest.raises(ValueError, match="a_mma16 needs block_m 16"):
        kernels.GemmConfig(32, 64, 128, 4, 3, a_mma16=True)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="round_up"):
        kernels.fake_quantize(x, torch.ones(1), torch.empty(5, 64, dtype=torch.float16), units=True, a_order=1)
    with pytest.raises(ValueError, match="a_order must be"):
        kernels.fake_quantize(x, torch.ones(1), torch.empty(16, 64, dtype=torch.float16), units=True, a_order=4)
    # the GEMM: A's declared layout must fit its rows and the tile's operand side
    _, w, ws, alpha, _ = operands(5, 40, 192, "cpu")
    out = torch.empty(5, 40)
    with pytest.raises(ValueError, match="a_units must have round_up"):
        kernels.nvfp4_gemm_dequantized_a(torch.zeros(5, 192, dtype=torch.float16), w, ws, alpha, None, out, a_order=1)
    right = kernels.GemmConfig(16, 32, 64, 4, 1, predequant_a=True, w_operand_b=True, a_mma16=True)
    with pytest.raises(ValueError, match="a_order 2 does not match"):
        kernels.nvfp4_gemm_dequantized_a(torch.zeros(16, 192, dtype=torch.float16), w, ws, alpha, None, out,
                                         config=right, a_order=2)
