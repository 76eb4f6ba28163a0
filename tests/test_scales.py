"""The dynamic-scale kernel (`kernels.dynamic_scales`): max |x| (or max |act(x)|) over the whole
input, then the static path's gs and alpha, whatever the tiles and however the rows and columns
fall on them."""

import math

import pytest
import torch

import fp4linear
from fp4linear import kernels
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
        assert scratch_of(x.to(device)).scale_words.cpu().tolist() == [0, 0, 0]
