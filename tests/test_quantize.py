"""The fused pad+quantize kernel against the reference, bit for bit (CPU interpreter and CUDA)."""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp4linear
from fp4linear import kernels, reference
from fp4linear.format import NVFP4Tensor, scale_layout
from fp4linear.kernels.quantize_launch import BASELINE, QuantConfig

from .conftest import assert_same_bits, global_scale_of, poisoned, wide_range, without_host_sync


def check(x, gs, k_align, sf_layout, *, poison=True):
    out = poisoned(x.shape, k_align, sf_layout, x.device) if poison else None
    q = fp4linear.quantize(x, gs, k_align=k_align, sf_layout=sf_layout, out=out)
    if poison:
        assert q.data.data_ptr() == out.data.data_ptr() and q.scale.data_ptr() == out.scale.data_ptr()
    r = reference.quantize(x.cpu(), gs.cpu(), k_align=k_align, sf_layout=sf_layout)
    assert_same_bits(q, r)
    return q


SHAPES = [(1, 16), (1, 48), (3, 1368), (129, 464), (7, 100), (130, 48), (8, 176), (17, 2)]


@pytest.mark.parametrize("m, k", SHAPES)
@pytest.mark.parametrize("k_align, sf_layout", [(16, "128x4"), (32, "128x4"), (64, "8x4"), (128, "128x4"), (32, "8x4")])
def test_matches_reference(device, m, k, k_align, sf_layout):
    x = wide_range((m, k), device=device)
    check(x, global_scale_of(x), k_align, sf_layout)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_other_input_dtypes(device, dtype):
    x = wide_range((33, 200), dtype=dtype, device=device)
    check(x, global_scale_of(x), 64, "128x4")


def test_three_d_input_and_strided_rows(device):
    x3 = wide_range((2, 5, 72), device=device)
    q = check(x3, global_scale_of(x3), 32, "128x4")
    assert q.shape == (2, 5, 72) and q.data.shape == (10, 48)
    big = wide_range((37, 1400), device=device)
    x = big[:, 3:1371]  # row stride 1400, misaligned start, K = 1368
    assert x.stride(0) == 1400
    check(x, global_scale_of(x), 64, "128x4")
    xt = wide_range((90, 50), device=device).t()  # column-major: unit stride on dim 0
    check(xt, global_scale_of(xt), 32, "8x4")


def test_unpoisoned_allocation_path(device):
    x = wide_range((5, 90), device=device)
    check(x, global_scale_of(x), 32, "128x4", poison=False)


def test_tiny_values_give_subnormal_and_zero_scales(device):
    x = wide_range((9, 160), device=device) * 1e-3
    x[0] *= 1e-3
    gs = torch.tensor([1.0], device=device)  # vmax * gs / 6 below 2^-6; row 0 below 2^-10
    q = check(x, gs, 32, "128x4")
    scales = reference.block_scales(q)
    assert (scales < 2.0**-6).all() and (scales == 0).any() and (scales > 0).any()


def test_non_finite_blocks(device):
    x = wide_range((6, 80), device=device)
    x[0, 5] = math.nan
    x[2, 79] = math.inf
    x[5, 40] = -math.inf
    x[4, 17] = -0.0
    q = check(x, torch.tensor([3.0], device=device), 32, "128x4")
    deq = fp4linear.dequantize(q)
    assert sorted(set(torch.nonzero(deq.isnan())[:, 0].tolist())) == [0, 2, 5]


def test_all_zero_and_all_large(device):
    z = torch.zeros(4, 64, dtype=torch.bfloat16, device=device)
    q = check(z, torch.tensor([1.0], device=device), 32, "128x4")
    assert q.data.eq(0).all() and q.scale.view(torch.uint8).eq(0).all()
    big = wide_range((4, 64), device=device) * 1e30
    check(big, torch.tensor([1e-20], device=device), 32, "8x4")


def test_empty_m(device):
    x = torch.empty(0, 48, dtype=torch.bfloat16, device=device)
    q = fp4linear.quantize(x, torch.ones(1, device=device), k_align=32)
    assert q.data.shape == (0, 32) and q.scale.shape == (0, 4) and q.shape == (0, 48)
    assert fp4linear.dequantize(q).shape == (0, 48)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(1, 300),
    k=st.integers(1, 600),
    k_align=st.sampled_from([16, 32, 64, 128]),
    sf_layout=st.sampled_from(["128x4", "8x4"]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    binades=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_shapes_and_values(device, m, k, k_align, sf_layout, dtype, binades, seed):
    g = torch.Generator().manual_seed(seed)
    x = wide_range((m, k), binades=binades, dtype=dtype, device=device, generator=g)
    gs = global_scale_of(x) * (0.5 + torch.rand(1, generator=g)).to(device)  # not always amax-exact
    check(x, gs, k_align, sf_layout)


# GPU tiles (smaller than the interpreter's) and every kernel variant: 128-row scale padding split
# over several tiles, persistent programs walking several m tiles, words with an odd K or a base
# that is not 4-byte aligned falling back to elements.
VARIANTS = [
    QuantConfig(8, 128, 4, **BASELINE),
    QuantConfig(16, 256, 2, **dict(BASELINE, recipe=2)),
    QuantConfig(8, 128, 4, recipe=2, words=True, grid_2d=False),
    QuantConfig(16, 256, 2, grid_2d=True, words=True, recipe=2),
    QuantConfig(8, 128, 4, grid_2d=True, words=True, recipe=2),  # the decode tile: one program zeroes a k column's padding rows
    QuantConfig(8, 128, 4, grid_2d=True, words=True, recipe=2, persistent=1),
    QuantConfig(2, 512, 2, grid_2d=True, words=True, recipe=2, persistent=2),
    QuantConfig(8, 512, 2, grid_2d=True, words=True, recipe=4, persistent=4),  # the GPU tile at 4096 <= M < 8192, Kp = 4096
    QuantConfig(8, 256, 2, grid_2d=True, words=True, recipe=2, halves=True),
    QuantConfig(4, 128, 4, **dict(BASELINE, recipe=2, halves=True)),
    QuantConfig(16, 128, 2, grid_2d=True, words=True, recipe=4),  # signs placed a word at a time
    QuantConfig(8, 256, 2, grid_2d=True, words=True, recipe=4, halves=True),
]


@pytest.mark.parametrize("config", VARIANTS, ids=lambda c: c.label)
def test_kernel_variants_match_reference(device, config):
    big = wide_range((37, 1400), device=device)
    cases = [
        (big[:, 2:1370], 64, "128x4"),  # row stride 1400, 4-byte aligned: words
        (big[:, 3:1371], 32, "8x4"),  # 2-byte aligned base: elements
        (wide_range((41, 7), device=device), 16, "128x4"),  # odd K
        (wide_range((20, 200), dtype=torch.float16, device=device), 64, "8x4"),
    ]
    for x, k_align, sf_layout in cases:
        out = poisoned(x.shape, k_align, sf_layout, device)
        gs = global_scale_of(x)
        kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=scale_layout(sf_layout).row_tile, config=config)
        assert_same_bits(out, reference.quantize(x.cpu(), gs.cpu(), k_align=k_align, sf_layout=sf_layout))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_variants_on_gpu():
    """GPU-sized shapes for every variant: several waves of tiles, ragged K, 16 decode rows,
    strided bf16 rows (the reference computed once per shape)."""
    configs = VARIANTS + [QuantConfig(8, 512, 2, grid_2d=True, words=True, recipe=2), QuantConfig(2, 4096, 4, grid_2d=True, words=True, recipe=2, persistent=4),
                          QuantConfig(8, 512, 2, grid_2d=True, words=True, recipe=2, halves=True),
                          QuantConfig(8, 512, 2, grid_2d=True, words=True, recipe=2, persistent=4)]
    big = wide_range((600, 8200), device="cuda")
    for x, k_align, sf_layout in [(big[:, 4:8196], 64, "128x4"), (big[:, :1368], 64, "128x4"),
                                  (big[:16, 2:3698], 32, "8x4"),
                                  (wide_range((300, 464), dtype=torch.float16, device="cuda"), 128, "128x4")]:
        gs = global_scale_of(x)
        want = reference.quantize(x.cpu(), gs.cpu(), k_align=k_align, sf_layout=sf_layout)
        for config in configs:
            out = poisoned(x.shape, k_align, sf_layout, "cuda")
            kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=scale_layout(sf_layout).row_tile,
                                 config=config)
            assert_same_bits(out, want)


def test_dequantize_roundtrip_error(device):
    x = torch.randn(64, 512, dtype=torch.bfloat16, device=device)
    q = fp4linear.quantize(x, global_scale_of(x))
    err = (fp4linear.dequantize(q) - x.float()).norm() / x.float().norm()
    assert 0.05 < err < 0.15  # NVFP4 on Gaussian data: about 9.5% relative error


# ---- errors -------------------------------------------------------------------------------


def test_errors_name_the_argument():
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    gs = torch.ones(1)
    with pytest.raises(TypeError, match="x must be"):
        fp4linear.quantize(torch.ones(4, 32, dtype=torch.int32), gs)
    with pytest.raises(TypeError, match="x must be"):
        fp4linear.quantize([1.0], gs)
    with pytest.raises(TypeError, match="global_scale"):
        fp4linear.quantize(x, 1.0)
    with pytest.raises(TypeError, match="global_scale must be float32"):
        fp4linear.quantize(x, torch.ones(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="global_scale must have exactly one element"):
        fp4linear.quantize(x, torch.ones(2))
    for bad in (0, 8, 24, -16, 16.0, True):
        with pytest.raises(ValueError, match="k_align"):
            fp4linear.quantize(x, gs, k_align=bad)
    with pytest.raises(ValueError, match="sf_layout"):
        fp4linear.quantize(x, gs, sf_layout="32x4")
    with pytest.raises(TypeError, match="out must be an NVFP4Tensor"):
        fp4linear.quantize(x, gs, out=torch.empty(4, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="out.data has shape"):
        fp4linear.quantize(x, gs, k_align=64, out=NVFP4Tensor.empty((4, 32), k_align=32))
    with pytest.raises(ValueError, match="out.scale has shape"):
        fp4linear.quantize(x, gs, sf_layout="128x4", out=NVFP4Tensor.empty((4, 32), sf_layout="8x4"))
    wrong = NVFP4Tensor.empty((4, 32))
    wrong.data = wrong.data.to(torch.int8)
    with pytest.raises(TypeError, match="out.data has dtype"):
        fp4linear.quantize(x, gs, out=wrong)


@pytest.mark.cuda
def test_errors_on_device_mismatch():
    x = torch.randn(4, 32, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match="global_scale is on cpu"):
        fp4linear.quantize(x, torch.ones(1))
    with pytest.raises(ValueError, match="out.data is on cpu"):
        fp4linear.quantize(x, torch.ones(1, device="cuda"), out=NVFP4Tensor.empty((4, 32)))


# ---- GPU only ------------------------------------------------------------------------------


@pytest.mark.cuda
def test_no_host_sync_and_cuda_graph():
    x = wide_range((40, 1368), device="cuda")
    gs = global_scale_of(x)
    out = NVFP4Tensor.empty(x.shape, k_align=64, device="cuda")
    fp4linear.quantize(x, gs, k_align=64, out=out)  # compile outside the checks
    without_host_sync(lambda: fp4linear.quantize(x, gs, k_align=64, out=out))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fp4linear.quantize(x, gs, k_align=64, out=out)
    x.copy_(wide_range((40, 1368), device="cuda"))
    gs.copy_(global_scale_of(x))
    out.data.fill_(0xFF)
    graph.replay()
    torch.cuda.synchronize()
    assert_same_bits(out, reference.quantize(x.cpu(), gs.cpu(), k_align=64))


@pytest.mark.cuda
@pytest.mark.flashinfer
@pytest.mark.parametrize("m, k", [(1, 64), (130, 1368), (256, 4096), (7, 464)])
def test_scales_equal_flashinfer_block_scale_interleave(flashinfer, m, k):
    from flashinfer.fp4_quantization import block_scale_interleave

    x = wide_range((m, k), device="cuda")
    q = fp4linear.quantize(x, global_scale_of(x), k_align=64)
    linear = reference.unswizzle(q.scale.view(torch.uint8), q.sf_layout)[:m]  # [M, S4], padded cols 0
    theirs = block_scale_interleave(linear.contiguous())
    assert torch.equal(theirs.view(torch.uint8).flatten().cpu(), q.scale.view(torch.uint8).flatten().cpu())


def test_quant_config_refuses_unknown_recipes_and_ragged_tiles():
    with pytest.raises(ValueError, match="recipe must be 1, 2 or 4"):
        QuantConfig(16, 128, 2, recipe=3)
    with pytest.raises(ValueError, match="block_k must be a multiple of 64"):
        QuantConfig(16, 96, 2)
