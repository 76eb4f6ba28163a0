"""Layouts as objects and the library's dequantize against the independent reference."""

import pytest
import torch

import fp4linear
from fp4linear import reference
from fp4linear.backends import BACKENDS
from fp4linear.format import SWIZZLE_8x4, SWIZZLE_128x4

from .conftest import global_scale_of, wide_range


@pytest.mark.parametrize("layout", [SWIZZLE_128x4, SWIZZLE_8x4])
@pytest.mark.parametrize("rows, cols", [(1, 1), (7, 5), (130, 88), (256, 4)])
def test_scale_layout_equals_reference_swizzle(layout, rows, cols):
    scales = torch.randint(0, 256, (rows, cols), dtype=torch.uint8)
    mine = layout.swizzle(scales)
    padded = torch.zeros(layout.padded_shape(rows, cols * 16), dtype=torch.uint8)
    padded[:rows, :cols] = scales
    assert mine.shape == padded.shape
    assert torch.equal(mine, reference.swizzle(padded, layout))  # kernel formula == reshape/permute
    assert torch.equal(layout.unswizzle(mine, rows, cols), scales)
    assert torch.equal(layout.unswizzle(mine), padded)
    offsets = layout.offsets(*padded.shape)
    assert torch.equal(offsets.flatten().sort().values, torch.arange(padded.numel()))  # a permutation


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_weight_layouts_round_trip(backend):
    layout = BACKENDS[backend].weight_layout
    n, kp = 256, 192
    data = torch.randint(0, 256, (n, kp // 2), dtype=torch.uint8)
    scale = torch.randint(0, 127, (n, kp // 16), dtype=torch.uint8)
    d, s = layout.swizzle(data, scale)
    d2, s2 = layout.unswizzle(d, s)
    assert torch.equal(d2, data) and torch.equal(s2, scale)
    assert torch.equal(d, data) != layout.trtllm_rows  # the shuffle moves rows


@pytest.mark.parametrize("sf_layout", ["128x4", "8x4"])
@pytest.mark.parametrize("shape", [(5, 1368), (2, 3, 100), (130, 48)])
def test_dequantize_equals_reference(sf_layout, shape):
    x = wide_range(shape)
    x.view(-1)[7] = float("nan")
    q = fp4linear.quantize(x, global_scale_of(x), k_align=64, sf_layout=sf_layout)
    got, want = fp4linear.dequantize(q), reference.dequantize(q)
    assert got.shape == want.shape == shape
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(q.dequantize(torch.bfloat16).nan_to_num(), want.to(torch.bfloat16).nan_to_num())


def test_encode_and_decode_scales_are_inverse_roundings():
    amax = torch.rand(50) * 100
    for a in amax:
        assert fp4linear.encode_scale(a).item() == torch.tensor(2688 / a.item(), dtype=torch.float32).item()
        assert fp4linear.decode_scale(a).item() == torch.tensor(a.item() / 2688, dtype=torch.float32).item()
