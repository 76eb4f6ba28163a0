"""The software-pipelined Gluon GEMM (kernels/gemm_wgmma.py): bit for bit the portable Triton kernel
of the same tile (which the CPU runs), and within the fp64 bound."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fp4linear import kernels

from .conftest import HAVE_CUDA
from .test_gemm import assert_within_fp32_accumulation, operands


def pipelined(bm, bn, bk, stages, split_k=0):
    return kernels.GemmConfig(bm, bn, bk, bm // 16, 3, split_k=split_k, predequant_a=True, w_operand_b=True,
                              wgmma_stages=stages)


def portable(config):
    return kernels.GemmConfig(config.block_m, config.block_n, config.block_k, config.num_warps, config.num_stages,
                              split_k=config.split_k, predequant_a=True, w_operand_b=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_m=32, num_warps=2), "block_m 64 or 128"),
    (dict(block_m=128, num_warps=4), "block_m / 16 warps"),
    (dict(block_n=264), "block_n in 16..256"),
    (dict(block_n=72), "block_n in 16..256"),
    (dict(wgmma_stages=1), ">= 2 stages"),
    (dict(w_operand_b=False), "w_operand_b"),
    (dict(predequant_a=False), "predequant_a"),
])
def test_config_errors(kwargs, message):
    base = dict(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=3, predequant_a=True, w_operand_b=True,
                wgmma_stages=3)
    with pytest.raises(ValueError, match=message):
        kernels.GemmConfig(**{**base, **kwargs})


def test_cpu_runs_the_portable_kernel():
    """A pipelined config on the CPU (no Gluon there) gives the portable kernel's result."""
    qa, w, ws, alpha, qw = operands(70, 96, 200, "cpu")
    outs = []
    for cfg in (pipelined(64, 64, 64, 3, split_k=2), portable(pipelined(64, 64, 64, 3, split_k=2))):
        out = torch.full((70, 96), float("nan"))
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=cfg)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert_within_fp32_accumulation(outs[0], qa, qw)


CONFIGS = [(128, 128, 64, 3), (64, 128, 64, 4), (128, 256, 64, 3), (128, 64, 128, 3), (64, 64, 64, 2),
           (64, 256, 64, 3)]
SHAPES = [(1, 64, 64), (77, 200, 464), (130, 333, 1368), (256, 1288, 2688), (300, 520, 3696), (129, 48, 136)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@pytest.mark.parametrize("bm, bn, bk, stages", CONFIGS)
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("split_k", [1, 3])
def test_bits_equal_the_portable_kernel(bm, bn, bk, stages, m, n, k, split_k):
    gen = torch.Generator().manual_seed(m * 7919 + n * 31 + k + bn)
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=gen, k_align=bk)
    cfg = pipelined(bm, bn, bk, stages, split_k=split_k)
    bias = torch.randn(n, generator=gen).to(torch.bfloat16).cuda() if split_k == 3 else None
    assert kernels.gemm_launch.runs_pipelined(cfg, qa.kp, torch.device("cuda"))
    results = []
    for c in (cfg, cfg, portable(cfg)):  # twice: the split-K tickets are reset for the next call
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")  # poisoned
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, bias, out, config=c)
        results.append(out)
    torch.cuda.synchronize()
    assert not results[0].isnan().any()
    assert torch.equal(results[0], results[1])
    assert torch.equal(results[0], results[2]), "pipelined and portable kernels differ"
    if bias is None:
        out32 = torch.full((m, n), float("nan"), device="cuda")
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out32, config=cfg)
        assert_within_fp32_accumulation(out32, qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 400), n=st.integers(1, 700), k=st.integers(1, 1500), cfg=st.sampled_from(CONFIGS),
       split_k=st.sampled_from([0, 1, 2, 5]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes_within_fp64_bound(m, n, k, cfg, split_k, seed):
    bm, bn, bk, stages = cfg
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=torch.Generator().manual_seed(seed), k_align=bk)
    out = torch.full((m, n), float("nan"), device="cuda")
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=pipelined(bm, bn, bk, stages, split_k))
    assert_within_fp32_accumulation(out, qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@pytest.mark.parametrize("m, n, k", [(150, 8192, 3100), (70, 600, 16400), (300, 700, 16400), (100, 16400, 64)])
def test_routed_tiles(m, n, k):
    """The tiles `gemm_config` routes past decode from 24M weight elements (or Kp >= 16384, or N >=
    16384 below 192 rows) run the pipelined kernel, with the bits of Triton's schedule of the tile."""
    gen = torch.Generator().manual_seed(m + n + k)
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=gen)
    routed = kernels.gemm_config(m, n, qa.kp, "cuda", torch.cuda.get_device_properties(0).multi_processor_count)
    assert kernels.gemm_launch.runs_pipelined(routed, qa.kp, torch.device("cuda")), routed
    outs = []
    for cfg in (None, portable(routed)):
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=cfg)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    out32 = torch.empty(m, n, device="cuda")
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out32)
    assert_within_fp32_accumulation(out32, qa, qw)
