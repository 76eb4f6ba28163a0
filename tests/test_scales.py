"""The dynamic-scale kernel (`kernels.dynamic_scales`): max |x| (or max |act(x)|) over the whole
input, then the static path's gs and alpha, whatever the tiles and however the rows and columns
fall on them."""

import math

import pytest
import torch

import fp4linear
from fp4linear import kernels
from fp4linear.kernels.maxima import MAX_MAXIMA
from fp4linear.kernels.workspace import scratch_of


def expected(values: torch.Tensor, weight_scale_2: torch.Tensor) -> torch.Tensor:
    """(gs, alpha) as a static layer with input_scale = decode_scale(max |values|) holds them."""
    input_scale = fp4linear.decode_scale(values.float().abs().amax().cpu())
    return torch.stack([1.0 / input_scale, input_scale * weight_scale_2.cpu()]).reshape(2)


@pytest.mark.parametrize("m, k", [(1, 48), (3, 2688), (17, 464), (40, 200), (257, 1368), (300, 3000)])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_matches_torch(device, m, k, where):
    """Sizes on either side of the M classes (16, 256) and of the tile widths; the maximum in the
    first, a middle or the last element (ragged last row and column tiles)."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.rand(m, k, generator=g) * 4 - 2).to(torch.bfloat16)
    row, col = {"first": (0, 0), "middle": (m // 2, k // 3), "last": (m - 1, k - 1)}[where]
    x[row, col] = -7.5
    ws2 = torch.tensor([0.0123])
    got = kernels.dynamic_scales(x.to(device), ws2.to(device)).cpu()
    assert torch.equal(got, expected(x, ws2))


@pytest.mark.parametrize("config", [kernels.ScaleConfig(1, 64, 1), kernels.ScaleConfig(4, 128, 1),
                                    kernels.ScaleConfig(8, 64, 0), kernels.ScaleConfig(16, 32, 2)],
                         ids=lambda c: f"{c.block_r}x{c.block_k}x{c.k_blocks}")
@pytest.mark.parametrize("act", [None, "silu_mul"])
@pytest.mark.parametrize("outlier", [9.0, math.nan])
def test_tiles_give_the_routed_bits(device, config, act, outlier):
    """Every tile the tuning tries (`linear_bench.py --tune-scale`) against the routed one, a NaN
    kept (NaN scales, as the static path would get)."""
    m, width = 300, 2 * 100
    x = (torch.rand(m, width, generator=torch.Generator().manual_seed(1)) * 4 - 2).to(torch.bfloat16)
    x[m - 1, width // 2 - 1] = outlier  # gate of the last row's last output
    x, ws2 = x.to(device), torch.tensor([0.5], device=device)
    want = kernels.dynamic_scales(x, ws2, act).clone()
    got = kernels.dynamic_scales(x, ws2, act, config=config)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    if act is None:
        assert torch.equal(got.cpu().view(torch.int32), expected(x, ws2).view(torch.int32))


@pytest.mark.cuda
@pytest.mark.parametrize("m, k", [(3, 2688), (300, 3000)])
def test_later_calls_see_their_own_maximum(m, k):
    """The launch leaves its running maximum and ticket at zero for the next call (its last program resets
    them): a call after one with a larger outlier gets its own, smaller maximum, and the words read zero.
    GPU only: there the words are per-stream scratch that outlives the call (the CPU gets fresh ones)."""
    device = "cuda"
    ws2 = torch.tensor([0.25], device=device)
    for outlier in (50.0, 3.0, 0.75):
        x = (torch.rand(m, k, generator=torch.Generator().manual_seed(7)) * 0.5 - 0.25).to(torch.bfloat16)
        x[m // 2, k // 2] = outlier
        got = kernels.dynamic_scales(x.to(device), ws2).cpu()
        assert torch.equal(got, expected(x, ws2)), outlier
        assert scratch_of(x.to(device)).scale_words.cpu().tolist() == [0, 0]


def _poisoned_like(t: torch.Tensor) -> torch.Tensor:
    """t's shape and dtype, every byte 0xFF (the expected buffers hold NaN, other bits: an element
    neither call wrote cannot compare equal)."""
    out = torch.empty_like(t)
    out.view(torch.uint8).fill_(0xFF)
    return out


def _poisoned_scales(d: kernels.DynamicScale) -> None:
    """NaN in the (gs, alpha) words the consuming pass must write."""
    d.scales.fill_(math.nan)


@pytest.mark.parametrize("m, k, act", [(m, k, act) for m, k in [(1, 48), (17, 464), (300, 200)]
                                       for act in (None, "silu_mul")] + [(4100, 40, None)])
@pytest.mark.parametrize("outlier", [9.0, -7.0, math.nan])
def test_maxima_reduced_by_the_pass_give_the_launchs_bits(device, m, k, act, outlier):
    """`dynamic_maxima` then a pass reducing its per-program maxima (`fake_quantize`, or
    `act_fake_quantize` with an act) against `dynamic_scales` then the same pass on the gs it wrote:
    the same values, and the pass writes the same (gs, alpha). 4100 rows give more programs than
    MAX_MAXIMA (the routed cap, not a limit of the kernels); the outlier sits in the last row, i.e. the
    last program's block."""
    width = 2 * k if act else k
    x = (torch.rand(m, width, generator=torch.Generator().manual_seed(m + k)) * 4 - 2).to(torch.bfloat16)
    x[m - 1, k - 1] = outlier  # (gated: the gate of the last row's last output)
    x, ws2 = x.to(device), torch.tensor([0.0625], device=device)
    want_scales = kernels.dynamic_scales(x, ws2, act).clone()
    kp = -(-k // 64) * 64
    want = torch.full((m, kp), math.nan, dtype=torch.float16, device=device)
    got = _poisoned_like(want)
    if act is None:
        kernels.fake_quantize(x, want_scales[0:1], want, units=True)
    else:
        kernels.act_fake_quantize(x, act, want_scales[0:1], want, units=True)
    d = kernels.dynamic_maxima(x, ws2, act)
    assert d.count == kernels.scale_programs(m, width, act)
    if m == 4100:
        assert d.count > MAX_MAXIMA
    _poisoned_scales(d)
    if act is None:
        kernels.fake_quantize(x, d, got, units=True)
    else:
        kernels.act_fake_quantize(x, act, d, got, units=True)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))
    assert torch.equal(d.scales.view(torch.int32), want_scales.view(torch.int32))
    assert d.alpha.data_ptr() == d.scales.data_ptr() + 4


@pytest.mark.parametrize("m, k, rows", [(5, 40, 64), (300, 464, 200), (2100, 96, 128)])
def test_maxima_reduced_by_the_cublas_operands(device, m, k, rows):
    """`cublas_operands` (x's true values + the first weight rows) under a `DynamicScale`: the x values
    and the weight rows of the same launch under the gs `dynamic_scales` gives, and (gs, alpha) written."""
    g = torch.Generator().manual_seed(m)
    x = (torch.rand(m, k, generator=g) * 6 - 3).to(torch.bfloat16)
    x[m // 2, 1] = 11.0
    w = fp4linear.Linear.from_linear(torch.nn.Linear(k, rows, bias=False, dtype=torch.bfloat16))
    x, ws2 = x.to(device), w.weight_scale_2.to(device)
    wdata, wscale = w.weight.to(device), w.weight_scale.to(device)
    kp = w.k_padded
    want_scales = kernels.dynamic_scales(x, ws2).clone()
    a_want = torch.full((m, kp), math.nan, dtype=torch.bfloat16, device=device)
    w_want = torch.full((rows, kp), math.nan, dtype=torch.bfloat16, device=device)
    kernels.cublas_operands(x, want_scales[0:1], a_want, wdata, wscale, w_want)
    a_got, w_got = _poisoned_like(a_want), _poisoned_like(w_want)
    d = kernels.dynamic_maxima(x, ws2)
    _poisoned_scales(d)
    kernels.cublas_operands(x, d, a_got, wdata, wscale, w_got)
    assert torch.equal(a_got.view(torch.int16), a_want.view(torch.int16))
    assert torch.equal(w_got.view(torch.int16), w_want.view(torch.int16))
    assert torch.equal(d.scales.view(torch.int32), want_scales.view(torch.int32))


@pytest.mark.cuda
def test_maxima_of_later_calls_are_their_own():
    """Per-program maxima are overwritten, never accumulated: a call after one with a larger outlier,
    on the same stream (the same scratch words), gets its own maximum."""
    ws2 = torch.tensor([0.25], device="cuda")
    for outlier in (50.0, 3.0, 0.75):
        x = (torch.rand(300, 3000, generator=torch.Generator().manual_seed(7)) * 0.5 - 0.25).to(torch.bfloat16)
        x[150, 1500] = outlier
        d = kernels.dynamic_maxima(x.to("cuda"), ws2)
        out = torch.empty(300, 3008, dtype=torch.float16, device="cuda")
        kernels.fake_quantize(x.to("cuda"), d, out, units=True)
        assert torch.equal(d.scales.cpu(), expected(x, ws2)), outlier


def test_encode_scale_takes_the_maxima_up_to_the_cap(device, monkeypatch):
    """`dynamic_encode_scale`: per-program maxima where the scale launch has at most MAX_MAXIMA programs,
    the ticket's (gs, alpha) beyond; the same pass output and alpha either way."""
    from fp4linear.kernels import maxima

    x = (torch.rand(40, 300, generator=torch.Generator().manual_seed(3)) * 4 - 2).to(torch.bfloat16).to(device)
    ws2 = torch.tensor([0.125], device=device)
    programs = kernels.scale_programs(40, 300)
    results = []
    for cap, kind in ((programs, kernels.DynamicScale), (programs - 1, torch.Tensor)):
        monkeypatch.setattr(maxima, "MAX_MAXIMA", cap)
        gs, alpha = kernels.dynamic_encode_scale(x, ws2)
        assert isinstance(gs, kind)
        nan = torch.full((40, 320), math.nan, dtype=torch.float16, device=device)
        out = kernels.fake_quantize(x, gs, nan if kind is torch.Tensor else _poisoned_like(nan), units=True)
        results.append((out.clone(), alpha.clone()))
    (a, alpha_a), (b, alpha_b) = results
    assert torch.equal(a.view(torch.int16), b.view(torch.int16))
    assert torch.equal(alpha_a.cpu(), expected(x, ws2)[1:])
    assert torch.equal(alpha_b.cpu(), expected(x, ws2)[1:])
