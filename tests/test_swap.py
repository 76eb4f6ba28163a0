"""fp4linear.calibrate and fp4linear.swap on small torch models (MiniLM: test_swap_minilm.py)."""

import pytest
import torch
from torch import nn

import fp4linear


def test_swap_needs_scales_and_honours_skip():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 16)))
    with pytest.raises(KeyError, match="no input_scale"):
        fp4linear.swap(model, input_scales={"0": 0.01})
    scales = fp4linear.calibrate(model, [torch.randn(4, 32)], skip=["2.*"])
    assert set(scales) == {"0"}
    fp4linear.swap(model, input_scales=scales, skip=lambda name, m: name.startswith("2"))
    assert isinstance(model[0], fp4linear.Linear) and type(model[2][0]) is nn.Linear
    assert model(torch.randn(3, 32)).shape == (3, 16)


def test_swap_without_scales_is_dynamic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 32))
    x = torch.randn(8, 64)
    want = model(x)
    fp4linear.swap(model)  # no calibration: each layer scales its activations per call
    assert all(isinstance(model[i], fp4linear.Linear) and model[i].dynamic_input_scale for i in (0, 2))
    got = model(x)
    assert ((got - want).norm() / want.norm()).item() < 0.2
