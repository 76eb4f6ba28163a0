"""act_quantize (activation fused with NVFP4 quantization) against the project's unfused path
(fp4linear.activation, then fp4linear.quantize) bit for bit, and against torch's activation then
fp4linear.quantize within transcendental ulps (CPU interpreter and CUDA)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp4linear
from fp4linear import kernels, reference
from fp4linear.act import ACTS, GATED_ACTS
from fp4linear.format import NVFP4Tensor
from fp4linear.kernels.act_quantize_launch import AmaxConfig
from fp4linear.kernels.quantize_launch import QuantConfig

from .conftest import assert_same_bits, poisoned, wide_range, without_host_sync


def torch_act(x: torch.Tensor, act: str) -> torch.Tensor:
    """The torch expression act_quantize's numerics equal (fp32 math, one rounding to x's dtype)."""
    if act in GATED_ACTS:
        i = x.shape[-1] // 2
        g, u = x[..., :i].float(), x[..., i:].float()
        a = F.silu(g) if act == "silu_mul" else F.gelu(g, approximate="tanh")
        return (a * u).to(x.dtype)
    f = x.float()
    return {"relu2": F.relu(f) ** 2, "gelu": F.gelu(f), "silu": F.silu(f)}[act].to(x.dtype)


def act_input(rows, i, act, *, dtype=torch.bfloat16, device="cpu", generator=None, binades=6):
    """x for `act` with output width i: magnitudes over several binades around the activations' knees."""
    width = 2 * i if act in GATED_ACTS else i
    return wide_range((*rows, width) if isinstance(rows, tuple) else (rows, width), binades=binades, dtype=dtype,
                      device=device, generator=generator)


def dynamic_scale(h: torch.Tensor) -> torch.Tensor:
    """2688 / max finite |h|, clamped at 1e-30, correctly rounded (act_quantize's dynamic rule)."""
    hf = h.float()
    finite = hf[hf.isfinite()]
    amax = (finite.abs().max() if finite.numel() else torch.zeros((), device=h.device)).clamp(min=1e-30).reshape(1)
    return torch.full_like(amax, 2688.0) / amax


def assert_near(q: NVFP4Tensor, r: NVFP4Tensor, *, min_identical=0.999):
    """>= min_identical of all bytes (data and scales) equal, and every element of q within one
    E2M1 step (at its magnitude, in its block's larger scale) of r's."""
    qd, rd = q.data.cpu(), r.data.cpu()
    qs, rs = q.scale.view(torch.uint8).cpu(), r.scale.view(torch.uint8).cpu()
    same = (qd == rd).sum() + (qs == rs).sum()
    total = qd.numel() + qs.numel()
    assert same >= min_identical * total, f"only {same}/{total} bytes identical"
    a = fp4linear.dequantize(q).cpu().reshape(q.m, -1) * q.global_scale.cpu()
    b = fp4linear.dequantize(r).cpu().reshape(r.m, -1) * r.global_scale.cpu()
    k = a.shape[1]
    scale = torch.maximum(reference.block_scales(q).cpu(), reference.block_scales(r).cpu())
    scale = scale.repeat_interleave(16, dim=1)[:, :k]
    units = torch.maximum(a.abs(), b.abs()) / scale
    step = torch.where(units <= 2, 0.5, torch.where(units <= 4, 1.0, 2.0)) * scale
    ok = ((a - b).abs() <= step) | (a == b) | (a.isnan() & b.isnan())
    assert ok.all(), f"{(~ok).sum().item()} elements more than one E2M1 step apart"


def check_fused(x, act, gs, k_align, sf_layout, *, vs_torch=True):
    """act_quantize (poisoned out=) == quantize(activation(x)) bit for bit; near the torch path."""
    i = x.shape[-1] // 2 if act in GATED_ACTS else x.shape[-1]
    out = poisoned((*x.shape[:-1], i), k_align, sf_layout, x.device)
    q = fp4linear.act_quantize(x, gs, act=act, k_align=k_align, sf_layout=sf_layout, out=out)
    assert q.data.data_ptr() == out.data.data_ptr() and q.scale.data_ptr() == out.scale.data_ptr()
    assert q.shape == (*x.shape[:-1], i)
    h = fp4linear.activation(x, act)
    want_gs = dynamic_scale(h) if gs is None else gs
    assert torch.equal(q.global_scale.cpu(), want_gs.reshape(1).cpu()), "global scale differs"
    assert_same_bits(q, reference.quantize(h.cpu(), want_gs.cpu(), k_align=k_align, sf_layout=sf_layout))
    if vs_torch:
        ht = torch_act(x, act)
        gs_t = dynamic_scale(ht) if gs is None else gs
        assert_near(q, reference.quantize(ht.cpu(), gs_t.cpu(), k_align=k_align, sf_layout=sf_layout))
    return q


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_matches_unfused_paths(device, act, dynamic):
    x = act_input(33, 1368, act, device=device)
    gs = None if dynamic else (2688 / torch_act(x, act).float().abs().amax() * 0.75).reshape(1)
    check_fused(x, act, gs, 64, "128x4")


@pytest.mark.parametrize("act, dtype", [("silu_mul", torch.float16), ("silu_mul", torch.float32),
                                        ("gelu", torch.float16), ("relu2", torch.float32)])
def test_other_dtypes(device, act, dtype):
    x = act_input(20, 232, act, dtype=dtype, device=device)
    check_fused(x, act, None, 32, "8x4")


def test_activation_matches_torch(device):
    """The unfused activation: exact where no transcendental is involved (relu2, and the
    rounding to bf16), within a bf16 ulp elsewhere. Below a gate of -3, 1 + erf / 1 + tanh
    cancels in fp32 in torch as here (tiny results, each off in its own way): absolute bound."""
    for act in ACTS:
        x = act_input(9, 464, act, device=device)
        h, ht = fp4linear.activation(x, act), torch_act(x, act)
        assert h.shape == ht.shape and h.dtype == ht.dtype
        if act == "relu2":
            assert torch.equal(h, ht)
            continue
        g = x[:, :464].float() if act in GATED_ACTS else x.float()
        u = x[:, 464:].float().abs() if act in GATED_ACTS else torch.ones_like(g)
        ulps = (h.float().view(torch.int32) - ht.float().view(torch.int32)).abs() >> 16
        assert (ulps[g > -3] <= 1).float().mean() > 0.999 and (h == ht).float().mean() > 0.95
        diff = (h.float() - ht.float()).abs()
        assert (diff <= 1e-5 * g.abs() * u + ht.float().abs() / 64).all()


@pytest.mark.parametrize("i, k_align, sf_layout", [(7, 16, "128x4"), (232, 64, "8x4"), (464, 128, "128x4"),
                                                   (1368, 32, "8x4")])
def test_odd_widths_strided_rows_3d(device, i, k_align, sf_layout):
    act = "silu_mul"
    big = act_input(19, i + 5, act, device=device)
    x = big[:, 3 : 3 + 2 * i]  # strided rows, a base that is not 4-byte aligned
    check_fused(x, act, (2688 / torch_act(x, act).float().abs().amax()).reshape(1), k_align, sf_layout)
    x3 = act_input((2, 3), i, "gelu_tanh_mul", device=device)
    q = check_fused(x3, "gelu_tanh_mul", None, k_align, sf_layout)
    assert q.data.shape == (6, fp4linear.pad_k(i, k_align) // 2)


def test_empty_m(device):
    for gs in (torch.ones(1, device=device), None):
        x = torch.empty(0, 96, dtype=torch.bfloat16, device=device)
        q = fp4linear.act_quantize(x, gs, act="silu_mul", k_align=32)
        assert q.data.shape == (0, 32) and q.scale.shape == (0, 4) and q.shape == (0, 48)
        if gs is None:
            assert torch.equal(q.global_scale.cpu(), dynamic_scale(torch.zeros(1)))


def test_non_finite_values(device):
    x = act_input(6, 80, "silu_mul", device=device)
    x[0, 5] = math.nan  # gate
    x[2, 80 + 79] = math.inf  # up: inf * silu(g) is inf or nan
    x[4, 33] = -math.inf  # gate: silu(-inf) = -inf / inf = nan
    for gs in (torch.tensor([3.0], device=device), None):
        q = check_fused(x, "silu_mul", gs, 32, "128x4")
        deq = fp4linear.dequantize(q)
        assert sorted(set(torch.nonzero(deq.isnan())[:, 0].tolist())) == [0, 2, 4]
    # relu2 keeps NaN (torch's relu does); relu(-inf) = 0
    y = act_input(3, 48, "relu2", device=device)
    y[1, 0], y[2, 47] = math.nan, -math.inf
    q = check_fused(y, "relu2", None, 16, "8x4")
    assert reference.block_scales(q)[1, 0].isnan() and not reference.block_scales(q)[2].isnan().any()


def test_gpu_tiles_and_two_pass_amax(device):
    """The GPU's tiles (8 x 128, several m tiles and tiles of scale-padding rows, maxima from
    several amax programs) under the interpreter."""
    x = act_input(41, 300, "gelu_tanh_mul", device=device)
    h = fp4linear.activation(x, "gelu_tanh_mul")
    for config, amax, dynamic in [(QuantConfig(8, 128, 4), AmaxConfig(16, 128, 4, 8), True),
                                  (QuantConfig(16, 64, 2, halves=True), AmaxConfig(8, 64, 2, 64), True),
                                  (QuantConfig(8, 128, 4), None, False)]:
        out = poisoned((41, 300), 64, "128x4", device)
        gs = torch.empty(1, device=device) if dynamic else dynamic_scale(h)
        kernels.act_pad_quantize(x, "gelu_tanh_mul", gs, out.data, out.scale, sf_row_tile=128, dynamic=dynamic,
                             config=config, amax=amax)
        assert torch.equal(gs.cpu(), dynamic_scale(h).cpu())
        out.global_scale = gs
        assert_same_bits(out, reference.quantize(h.cpu(), gs.cpu(), k_align=64))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    m=st.integers(1, 40),
    i=st.integers(1, 300),
    act=st.sampled_from(ACTS),
    k_align=st.sampled_from([16, 32, 64, 128]),
    sf_layout=st.sampled_from(["128x4", "8x4"]),
    dtype=st.sampled_from([torch.bfloat16, torch.float16]),
    dynamic=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_hypothesis_shapes(device, m, i, act, k_align, sf_layout, dtype, dynamic, seed):
    g = torch.Generator().manual_seed(seed)
    x = act_input(m, i, act, dtype=dtype, device=device, generator=g)
    gs = None if dynamic else (dynamic_scale(torch_act(x, act)) * (0.5 + torch.rand(1, generator=g)).to(device))
    check_fused(x, act, gs, k_align, sf_layout, vs_torch=False)


# ---- errors -------------------------------------------------------------------------------


def test_errors_name_the_argument():
    x = torch.randn(4, 64, dtype=torch.bfloat16)
    gs = torch.ones(1)
    with pytest.raises(ValueError, match="act must be one of"):
        fp4linear.act_quantize(x, gs, act="swiglu")
    with pytest.raises(ValueError, match="x's last dimension must be even"):
        fp4linear.act_quantize(torch.randn(4, 63, dtype=torch.bfloat16), gs, act="silu_mul")
    with pytest.raises(TypeError, match="x must be"):
        fp4linear.act_quantize(torch.ones(4, 64, dtype=torch.int32), gs, act="silu")
    with pytest.raises(TypeError, match="x must be"):
        fp4linear.activation([1.0], "silu")
    with pytest.raises(TypeError, match="global_scale"):
        fp4linear.act_quantize(x, 1.0, act="silu")
    with pytest.raises(ValueError, match="global_scale must have exactly one element"):
        fp4linear.act_quantize(x, torch.ones(2), act="silu")
    with pytest.raises(ValueError, match="k_align"):
        fp4linear.act_quantize(x, gs, act="silu", k_align=24)
    with pytest.raises(ValueError, match="sf_layout"):
        fp4linear.act_quantize(x, gs, act="silu", sf_layout="32x4")
    with pytest.raises(ValueError, match="out.data has shape"):  # gated: out is [4, 32], not [4, 64]
        fp4linear.act_quantize(x, gs, act="silu_mul", out=NVFP4Tensor.empty((4, 64)))
    with pytest.raises(TypeError, match="out must be an NVFP4Tensor"):
        fp4linear.act_quantize(x, None, act="silu", out=torch.empty(4, 32, dtype=torch.uint8))
    bad = NVFP4Tensor.empty((4, 32))
    bad.global_scale = torch.ones(2)
    with pytest.raises(ValueError, match="out.global_scale"):
        fp4linear.act_quantize(x, None, act="silu_mul", out=bad)


# ---- GPU only ------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_large_shapes_on_gpu(act, dynamic):
    """GPU tiles and sizes: poisoned outputs, odd I, strided rows, NaN/Inf, both layouts."""
    for m, i, k_align, sf_layout in [(4096, 1368, 64, "128x4"), (16, 3696, 64, "8x4"), (130, 7, 16, "128x4"),
                                     (1000, 232, 32, "128x4"), (3, 2048, 128, "8x4")]:
        x = act_input(m, i + 3, act, device="cuda", binades=4)
        x = x[:, 1 : 1 + (2 * i if act in GATED_ACTS else i)]  # strided rows, a 2-byte aligned base
        if m > 100:
            x[7, 0], x[99, -1] = math.nan, -math.inf
        gs = None if dynamic else dynamic_scale(torch_act(x, act)) * 0.8
        check_fused(x, act, gs, k_align, sf_layout)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 1200), i=st.integers(1, 2500), act=st.sampled_from(ACTS), dynamic=st.booleans(),
       k_align=st.sampled_from([16, 32, 64, 128]), sf_layout=st.sampled_from(["128x4", "8x4"]),
       seed=st.integers(0, 2**31 - 1))
def test_hypothesis_shapes_on_gpu(m, i, act, dynamic, k_align, sf_layout, seed):
    g = torch.Generator().manual_seed(seed)
    x = act_input(m, i, act, device="cuda", generator=g)
    gs = None if dynamic else dynamic_scale(torch_act(x, act)) * (0.5 + torch.rand(1, generator=g)).cuda()
    check_fused(x, act, gs, k_align, sf_layout)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_no_host_sync_and_cuda_graph(dynamic):
    x = act_input(40, 1368, "silu_mul", device="cuda")
    gs = None if dynamic else dynamic_scale(torch_act(x, "silu_mul"))
    out = NVFP4Tensor.empty((40, 1368), k_align=64, device="cuda")
    fp4linear.act_quantize(x, gs, act="silu_mul", k_align=64, out=out)  # compile outside the checks
    without_host_sync(lambda: fp4linear.act_quantize(x, gs, act="silu_mul", k_align=64, out=out))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fp4linear.act_quantize(x, gs, act="silu_mul", k_align=64, out=out)
    x.copy_(act_input(40, 1368, "silu_mul", device="cuda"))
    out.data.fill_(0xFF)
    graph.replay()
    torch.cuda.synchronize()
    h = fp4linear.activation(x, "silu_mul")
    want_gs = dynamic_scale(h) if dynamic else gs
    assert torch.equal(out.global_scale, want_gs) if dynamic else True
    out.global_scale = want_gs
    assert_same_bits(out, reference.quantize(h.cpu(), want_gs.cpu(), k_align=64))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("m", [3, 16, 21])
def test_act_fake_quantize_in_mma16_order(device, order, m):
    """`act_fake_quantize(a_order=...)` writes the row-major pass's values in the GEMM's MMA fragment
    order (kernels/layout.py), rows past M untouched."""
    from .test_gemm import mma16_order

    x = act_input(m, 200, "silu_mul", device=device)
    gs = dynamic_scale(torch_act(x, "silu_mul"))
    kp = 256
    a = kernels.act_fake_quantize(x, "silu_mul", gs, torch.empty(m, kp, dtype=torch.float16, device=device), units=True)
    a16 = torch.full((-(-m // 16) * 16, kp), float("nan"), dtype=torch.float16, device=device)
    kernels.act_fake_quantize(x, "silu_mul", gs, a16, units=True, a_order=order)
    want = mma16_order(a.cpu(), order)
    written = ~want.isnan()
    assert torch.equal(a16.cpu().flatten()[written].view(torch.int16), want[written].view(torch.int16))
    assert a16.cpu().flatten()[~written].isnan().all()


@pytest.mark.parametrize("m", [3, 21])
def test_act_fake_quantize_in_register_operand_order(device, m):
    """a_order 3: the row-major pass's values with each 64 columns moved as the register-operand
    GEMM's activation wants them (checked against a torch permutation), every element written."""
    from .test_numerics import rs_order

    x = act_input(m, 200, "silu_mul", device=device)
    gs = dynamic_scale(torch_act(x, "silu_mul"))
    kp = 256
    a = kernels.act_fake_quantize(x, "silu_mul", gs, torch.empty(m, kp, dtype=torch.float16, device=device), units=True)
    a3 = torch.full((m, kp), float("nan"), dtype=torch.float16, device=device)
    kernels.act_fake_quantize(x, "silu_mul", gs, a3, units=True, a_order=3)
    assert not a3.isnan().any()
    assert torch.equal(a3.cpu().view(torch.int16), rs_order(a.cpu()).view(torch.int16))


@pytest.mark.parametrize("m, i, rows", [(5, 40, 64), (300, 232, 200), (700, 1368, 48), (64, 200, 33)])
@pytest.mark.parametrize("act", ["silu_mul", "relu2"])
@pytest.mark.parametrize("scale", ["static", "maxima"])
@pytest.mark.parametrize("tiles", [None, (32, 128, 4), (16, 64, 4)])
def test_act_cublas_operands_equal_the_two_launches(device, m, i, rows, act, scale, tiles):
    """`act_cublas_operands` (act(x)'s values and the down weight's first rows in one launch) against
    `act_fake_quantize` + `dequantize_rows`, into poisoned buffers: the activation written Ka = I rounded to 8
    wide (< Kp), the weight rows in a chunk shorter than N; a static scale and a dynamic one handed on as
    per-program maxima (whose (gs, alpha) the launch writes)."""
    if device.type == "cpu" and tiles is not None:
        pytest.skip("the interpreter takes its own tiles")
    x = act_input(m, i, act, device=device)
    ws2 = torch.tensor([0.02], device=device)
    w = fp4linear.Linear.from_linear(torch.nn.Linear(i, rows + 7, bias=False, dtype=torch.bfloat16)).to(device)
    kp, ka = w.k_padded, -(-i // 8) * 8
    if scale == "static":
        gs = dynamic_scale(torch_act(x, act)).to(device)
        gs_want = gs
    else:
        gs_want = kernels.dynamic_scales(x, ws2, act).clone()[0:1]
        gs = kernels.dynamic_maxima(x, ws2, act)
        gs.scales.fill_(math.nan)
    a_want = torch.full((m, ka), math.nan, dtype=torch.bfloat16, device=device)
    w_want = torch.full((rows, kp), math.nan, dtype=torch.bfloat16, device=device)
    kernels.act_fake_quantize(x, act, gs_want, a_want, units=False)
    kernels.dequantize_rows(w.weight, w.weight_scale, 0, w_want)
    a_got, w_got = torch.empty_like(a_want), torch.empty_like(w_want)
    a_got.view(torch.uint8).fill_(0xFF)  # (other bits than the expected buffers' NaN: an unwritten element differs)
    w_got.view(torch.uint8).fill_(0xFF)
    kernels.act_cublas_operands(x, act, gs, a_got, w.weight, w.weight_scale, w_got, tiles=tiles)
    assert torch.equal(a_got.view(torch.int16), a_want.view(torch.int16))
    assert torch.equal(w_got.view(torch.int16), w_want.view(torch.int16))
    if scale == "maxima":
        assert torch.equal(gs.scales.view(torch.int32), kernels.dynamic_scales(x, ws2, act).view(torch.int32))
