"""The decode tile with warp-specialized loads (kernels/gemm_decode_ws.py, `GemmConfig.ws_stages`): bit
for bit Triton's schedule of the same tile (which the CPU runs), within the fp64 bound, and its config
checked."""

import dataclasses

import pytest
import torch

import fp4linear
from fp4linear import kernels

from .conftest import HAVE_CUDA, global_scale_of
from .test_gemm import assert_within_fp32_accumulation, operands


def decode_tile(block_k, stages, split_k=0, programs_per_sm=3):
    return kernels.GemmConfig(16, 64, block_k, 4, 3, split_k=split_k, programs_per_sm=programs_per_sm,
                              predequant_a=True, w_operand_b=True, a_mma16=True, ws_stages=stages)


def triton_schedule(config):
    return dataclasses.replace(config, ws_stages=0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(a_mma16=False), "decode tile"),
    (dict(block_n=128, num_warps=8), "decode tile"),
    (dict(block_k=64), "decode tile"),
    (dict(ws_stages=1), ">= 2 stages"),
])
def test_config_errors(kwargs, message):
    base = dict(block_m=16, block_n=64, block_k=256, num_warps=4, num_stages=3, predequant_a=True, w_operand_b=True,
                a_mma16=True, ws_stages=4)
    with pytest.raises(ValueError, match=message):
        kernels.GemmConfig(**{**base, **kwargs})


def mma16_operands(m, n, k, device, block_k, seed):
    """x's pass output in mma16 order 1 ([round_up(M, 16), Kp], padding rows NaN), the weight, alpha,
    and x's and the weight's quantized forms for the fp64 bound."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16).to(device)
    _, w, ws, _, qw = operands(m, n, k, device, generator=g, k_align=block_k)
    gs = global_scale_of(x).to(device)
    alpha = (1 / (gs.cpu() * qw.global_scale.cpu())).to(device)
    kp = ws.shape[1] * 16
    a16 = torch.full((kernels.mma16_rows(m, 1), kp), float("nan"), dtype=torch.float16, device=device)
    kernels.fake_quantize(x, gs, a16, units=True, a_order=1)
    return a16, w, ws, alpha, fp4linear.quantize(x, gs, k_align=block_k), qw


def test_cpu_runs_triton_schedule():
    """On the CPU (no Gluon) a ws config is Triton's tile: same bits as ws_stages 0."""
    a16, w, ws, alpha, qa, qw = mma16_operands(5, 70, 300, "cpu", 128, 0)
    cfg = decode_tile(128, 4, split_k=2)
    assert not kernels.gemm_launch.runs_warp_specialized(cfg, qa.kp, torch.device("cpu"))
    outs = []
    for c in (cfg, triton_schedule(cfg)):
        out = torch.full((5, 70), float("nan"))
        kernels.nvfp4_gemm_dequantized_a(a16, w, ws, alpha, None, out, config=c)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert_within_fp32_accumulation(outs[0], qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] != 9 or not kernels.gemm_decode_ws.AVAILABLE,
                    reason="needs sm_90 and Triton >= 3.6")
@pytest.mark.parametrize("block_k, stages", [(256, 4), (256, 2), (128, 6), (256, 7)])
@pytest.mark.parametrize("m, n, k", [(1, 64, 256), (5, 200, 1536), (16, 1288, 2688), (11, 333, 3696), (3, 100, 4000)])
@pytest.mark.parametrize("split_k", [0, 1, 3])
def test_bits_equal_triton_schedule(block_k, stages, m, n, k, split_k):
    """Against Triton's schedule of the same tile (same K order, tiles and splits): three calls in a
    row (split-K tickets reset; ring phases start over), poisoned outputs, a bias with split-K, N not a
    multiple of 64, K splits of unequal length, more stages than K tiles."""
    a16, w, ws, alpha, qa, qw = mma16_operands(m, n, k, "cuda", block_k, m * 7919 + n * 31 + k + stages)
    if qa.kp % block_k:
        pytest.skip("K tiles must divide Kp")
    cfg = decode_tile(block_k, stages, split_k=split_k)
    assert kernels.gemm_launch.runs_warp_specialized(cfg, qa.kp, torch.device("cuda"))
    bias = torch.randn(n).to(torch.bfloat16).cuda() if split_k == 3 else None
    results = []
    for c in (cfg, cfg, cfg, triton_schedule(cfg)):
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        kernels.nvfp4_gemm_dequantized_a(a16, w, ws, alpha, bias, out, config=c)
        results.append(out)
    torch.cuda.synchronize()
    assert not results[0].isnan().any()
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
    assert torch.equal(results[0], results[3]), "the warp-specialized kernel and Triton's schedule differ"
    if bias is None:
        out32 = torch.full((m, n), float("nan"), device="cuda")
        kernels.nvfp4_gemm_dequantized_a(a16, w, ws, alpha, None, out32, config=cfg)
        assert_within_fp32_accumulation(out32, qa, qw)
