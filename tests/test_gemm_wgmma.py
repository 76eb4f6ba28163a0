"""The software-pipelined Gluon GEMMs (kernels/gemm_wgmma.py: the decoded weight in shared memory, and
in wgmma's registers): bit for bit the portable Triton kernel of the same tile (which the CPU runs),
and within the fp64 bound."""

import dataclasses

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
    return dataclasses.replace(config, wgmma_stages=0)


def in_registers(bm, bn, bk, stages, split_k=0, max_registers=0):
    """The register-operand kernel's config: bm A rows (wgmma's N), bn weight rows (bn / 16 warps)."""
    return kernels.GemmConfig(bm, bn, bk, bn // 16, 3, split_k=split_k, predequant_a=True, w_registers=True,
                              wgmma_stages=stages, max_registers=max_registers)


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


@pytest.mark.parametrize("kwargs, message", [
    (dict(block_n=256, num_warps=16), "block_n 64 or 128"),
    (dict(num_warps=4), "block_n / 16 warps"),
    (dict(block_m=96), "block_m a power of two in 16..256"),
    (dict(block_m=512), "block_m a power of two in 16..256"),
    (dict(block_k=256), "block_k 64 or 128"),
    (dict(wgmma_stages=2), ">= 3 wgmma_stages"),
    (dict(w_operand_b=True), "left operand"),
    (dict(predequant_a=False), "predequant_a"),
    (dict(word_decode=False), "word_decode"),
])
def test_register_config_errors(kwargs, message):
    base = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3, predequant_a=True, w_registers=True,
                wgmma_stages=4)
    with pytest.raises(ValueError, match=message):
        kernels.GemmConfig(**{**base, **kwargs})


@pytest.mark.parametrize("bm, bn, bk", [(64, 64, 64), (32, 128, 128), (16, 64, 128)])
@pytest.mark.parametrize("m, n, k", [(70, 96, 200), (5, 130, 1368)])
def test_register_operand_order(device, bm, bn, bk, m, n, k):
    """a_order 3: the pass writes its values with the columns of each 64 moved as `layout.rs_col`
    says (checked against a torch permutation of the row-major pass), and the tile reading them, its
    weight decoded into the same order, is within the fp64 bound; the packed-A entry (which writes
    that order itself) gives the same bits. Poisoned outputs, M not a multiple of the tile, masked K
    tiles (Kp % 128 != 0)."""
    from .test_numerics import rs_order

    g = torch.Generator().manual_seed(m * n + bk)
    qa, w, ws, alpha, qw = operands(m, n, k, device, generator=g)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16).to(device)
    gs = torch.tensor([448 * 6 / x.float().abs().max().item()], device=device)
    a = kernels.fake_quantize(x, gs, torch.empty(m, qa.kp, dtype=torch.float16, device=device), units=True)
    a3 = kernels.fake_quantize(x, gs, torch.full_like(a, float("nan")), units=True, a_order=3)
    assert torch.equal(a3.cpu().view(torch.int16), rs_order(a.cpu()).view(torch.int16))
    cfg = portable(in_registers(bm, bn, bk, 3, split_k=2))
    assert cfg.a_order == 3
    got = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm_dequantized_a(a3, w, ws, alpha, None, got, config=cfg, a_order=3)
    want = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm_dequantized_a(a, w, ws, alpha, None, want, config=pipelined(64, 64, bk, 3, split_k=2))
    assert not got.isnan().any()
    torch.testing.assert_close(got, want, rtol=2**-15, atol=1e-6)  # the same products, summed in another order
    packed = torch.full((m, n), float("nan"), device=device)
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, packed, config=cfg)
    assert_within_fp32_accumulation(packed, qa, qw)
    with pytest.raises(ValueError, match="a_order 0 does not match"):
        kernels.nvfp4_gemm_dequantized_a(a, w, ws, alpha, None, got, config=cfg, a_order=0)


def test_cpu_runs_the_portable_kernel():
    """A pipelined config on the CPU (no Gluon there) gives the portable kernel's result."""
    qa, w, ws, alpha, qw = operands(70, 96, 200, "cpu")
    outs = []
    for cfg in (pipelined(64, 64, 64, 3, split_k=2), portable(pipelined(64, 64, 64, 3, split_k=2)),
                in_registers(64, 64, 64, 3, split_k=2), portable(in_registers(64, 64, 64, 3, split_k=2))):
        out = torch.full((70, 96), float("nan"))
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=cfg)
        outs.append(out)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[2], outs[3])
    assert_within_fp32_accumulation(outs[0], qa, qw)
    assert_within_fp32_accumulation(outs[2], qa, qw)


def test_triton_versions_the_gluon_kernels_run_on(monkeypatch, caplog):
    """The Gluon kernels are written for Triton 3.5-3.6 (Gluon's calls moved in 3.7): elsewhere a
    pipelined config runs Triton's portable kernel, with one warning."""
    from fp4linear.kernels import gemm_launch, gemm_wgmma

    assert gemm_wgmma.supported("3.5.1") and gemm_wgmma.supported("3.6.0") and gemm_wgmma.supported("3.6.0+git1234")
    assert not gemm_wgmma.supported("3.4.0") and not gemm_wgmma.supported("3.7.0")
    assert not gemm_wgmma.supported("3.9.0") and not gemm_wgmma.supported("3.10.1")
    cfg = pipelined(64, 64, 64, 3)
    monkeypatch.setattr(gemm_launch, "_capability", lambda device: (9, 0))  # (a Hopper, on any machine)
    monkeypatch.setattr(gemm_wgmma, "SUPPORTED", True)
    assert gemm_launch.runs_pipelined(cfg, 128, torch.device("cuda"))
    monkeypatch.setattr(gemm_wgmma, "SUPPORTED", False)
    gemm_launch._gluon_unsupported_once.cache_clear()
    with caplog.at_level("WARNING", logger="fp4linear.kernels.gemm_launch"):
        assert not gemm_launch.runs_pipelined(cfg, 128, torch.device("cuda"))
        assert not gemm_launch.runs_pipelined(cfg, 128, torch.device("cuda"))
    assert sum("written for Triton 3.5-3.6" in r.message for r in caplog.records) == 1
    gemm_launch._gluon_unsupported_once.cache_clear()


CONFIGS = [(128, 128, 64, 3), (64, 128, 64, 4), (128, 256, 64, 3), (128, 64, 128, 3), (64, 64, 64, 2),
           (64, 256, 64, 3)]
SHAPES = [(1, 64, 64), (77, 200, 464), (130, 333, 1368), (256, 1288, 2688), (300, 520, 3696), (129, 48, 136)]


RS_CONFIGS = [(128, 128, 64, 4), (256, 128, 64, 3), (64, 64, 64, 3), (128, 64, 128, 3), (16, 128, 64, 5),
              (32, 128, 128, 4)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@pytest.mark.parametrize("kind, bm, bn, bk, stages", [("shared", *c) for c in CONFIGS] +
                         [("registers", *c) for c in RS_CONFIGS])
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("split_k", [1, 3])
def test_bits_equal_the_portable_kernel(kind, bm, bn, bk, stages, m, n, k, split_k):
    """Each Gluon kernel (the decoded weight in shared memory, or in wgmma's registers) against
    Triton's tile of the same config (same K order, tiles and splits), twice in a row (split-K
    tickets reset), poisoned outputs, a bias with split-K."""
    gen = torch.Generator().manual_seed(m * 7919 + n * 31 + k + bn + bm)
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=gen, k_align=bk)
    cfg = (pipelined if kind == "shared" else in_registers)(bm, bn, bk, stages, split_k=split_k)
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
    assert torch.equal(results[0], results[2]), f"the {kind} kernel and the portable one differ"
    if bias is None:
        out32 = torch.full((m, n), float("nan"), device="cuda")
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out32, config=cfg)
        assert_within_fp32_accumulation(out32, qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 600), n=st.integers(1, 700), k=st.integers(1, 1500),
       kind_cfg=st.sampled_from([(pipelined, c) for c in CONFIGS] + [(in_registers, c) for c in RS_CONFIGS]),
       split_k=st.sampled_from([0, 1, 2, 5]), seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes_within_fp64_bound(m, n, k, kind_cfg, split_k, seed):
    """Both Gluon kernels (config makers `pipelined`, `in_registers`) at random shapes and splits."""
    make, (bm, bn, bk, stages) = kind_cfg
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=torch.Generator().manual_seed(seed), k_align=bk)
    out = torch.full((m, n), float("nan"), device="cuda")
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=make(bm, bn, bk, stages, split_k))
    assert_within_fp32_accumulation(out, qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@pytest.mark.parametrize("m, n, k", [(150, 8192, 3100), (70, 600, 16400), (300, 700, 16400), (100, 16400, 64),
                                     (300, 16400, 200), (600, 16500, 136)])
def test_routed_tiles(m, n, k):
    """The tiles `gemm_config` routes past decode from 24M weight elements (or Kp >= 16384, or N >=
    16384: the weight in wgmma's registers from 192 rows) run a pipelined kernel, with the bits of
    Triton's schedule of the tile."""
    gen = torch.Generator().manual_seed(m + n + k)
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=gen)
    routed = kernels.gemm_config(m, n, qa.kp, "cuda", torch.cuda.get_device_properties(0).multi_processor_count)
    assert kernels.gemm_launch.runs_pipelined(routed, qa.kp, torch.device("cuda")), routed
    assert routed.w_registers == (m >= 192 and n >= 16384), routed
    outs = []
    for cfg in (None, portable(routed)):
        out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=cfg)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    out32 = torch.empty(m, n, device="cuda")
    kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out32)
    assert_within_fp32_accumulation(out32, qa, qw)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] < 9, reason="needs sm_90 (wgmma)")
@pytest.mark.parametrize("m, n, k", SHAPES)
def test_register_cap_keeps_the_bits(m, n, k):
    """A register cap (`GemmConfig.max_registers`) changes only ptxas's allocation: the same bits."""
    qa, w, ws, alpha, qw = operands(m, n, k, "cuda", generator=torch.Generator().manual_seed(m + k))
    outs = []
    for cap in (0, 128):
        out = torch.full((m, n), float("nan"), device="cuda")
        kernels.nvfp4_gemm(qa.data, qa.scale, w, ws, alpha, None, out, config=in_registers(64, 128, 64, 3, 2, cap))
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert_within_fp32_accumulation(outs[1], qa, qw)
