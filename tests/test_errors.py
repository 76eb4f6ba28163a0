"""Bad input to every public function: a clear error naming the argument, or a documented result."""

import math

import pytest
import torch
from torch import nn

import fp4linear
from fp4linear import parallel, reference

from .conftest import modelopt_checkpoint


def test_plan_rejects_bad_sizes():
    for n, k, name in [(-1, 100, "out_features"), (0, 64, "out_features"), (64, 0, "in_features"),
                       (64.0, 64, "out_features"), (64, True, "in_features")]:
        with pytest.raises(ValueError, match=name):
            fp4linear.plan(n, k, backend="triton")
    with pytest.raises(ValueError, match="out_features"):
        fp4linear.Linear(64, -3, backend="triton")


def test_linear_forward_rejects_bad_x():
    layer = fp4linear.Linear.from_modelopt(**modelopt_checkpoint(32, 64)[0])
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\)"):
        layer(torch.randn(2, 63, dtype=torch.bfloat16))
    for dtype in (torch.int32, torch.float64, torch.float8_e4m3fn):
        with pytest.raises(TypeError, match="x must be"):
            layer(torch.ones(2, 64).to(dtype))
    empty = layer(torch.empty(0, 64, dtype=torch.bfloat16))  # documented: an empty batch gives an empty output
    assert empty.shape == (0, 32) and empty.dtype == torch.bfloat16
    x = torch.randn(64, 5, dtype=torch.bfloat16).t()  # column-major rows: works, same as contiguous
    assert torch.equal(layer(x), layer(x.contiguous()))


def test_quantize_rejects_bad_x_and_documents_bad_global_scales():
    gs = torch.ones(1)
    with pytest.raises(ValueError, match="x must have shape"):
        fp4linear.quantize(torch.tensor(1.0), gs)
    with pytest.raises(ValueError, match="x must have shape"):
        fp4linear.quantize(torch.empty(4, 0), gs)
    x = torch.randn(3, 40)
    x[1] = 0
    for bad in (0.0, -0.0, -2.0, math.inf, math.nan):
        q = fp4linear.quantize(x, torch.tensor([bad]), k_align=64)
        r = reference.quantize(x, torch.tensor([bad]), k_align=64)
        assert torch.equal(q.data, r.data) and torch.equal(q.scale.view(torch.uint8), r.scale.view(torch.uint8))
        deq = fp4linear.dequantize(q)
        assert deq[[0, 2]].isnan().all(), "a bad global scale must give NaN, never plausible values"
        rows = q.sf_layout.unswizzle(q.scale.view(torch.uint8), q.m, q.kp // 16)
        assert rows[1].eq(0).all() and rows[[0, 2], :3].eq(0x7F).all()


def test_dequantize_and_scales_reject_non_tensors():
    with pytest.raises(TypeError, match="q must be an NVFP4Tensor"):
        fp4linear.dequantize(torch.zeros(2, 2))
    for fn in (fp4linear.encode_scale, fp4linear.decode_scale):
        with pytest.raises(TypeError, match="amax must be a one-element tensor"):
            fn(3.0)
        with pytest.raises(TypeError, match="amax must be a one-element tensor"):
            fn(torch.ones(2))
    assert fp4linear.encode_scale(torch.tensor(0.0)).isfinite().all()  # documented: amax clamped to 1e-30


def test_from_linear_and_quantize_weight_errors():
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear"):
        fp4linear.Linear.from_linear(nn.Conv1d(4, 4, 1))
    lin = nn.Linear(32, 16)
    with torch.no_grad():
        lin.weight[3, 4] = math.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        fp4linear.Linear.from_linear(lin)
    with pytest.raises(TypeError, match="weight must be a 2-D"):
        fp4linear.quantize_weight(torch.ones(4, 16, dtype=torch.int8))
    with pytest.raises(ValueError, match="input_scale must be finite and positive"):
        fp4linear.Linear.from_linear(nn.Linear(32, 16), input_scale=0.0)


def test_swap_names_the_layer_and_the_argument():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fp4linear.swap([nn.Linear(4, 4)])
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 8))
    with pytest.raises(ValueError, match="layer '2': input_scale must be finite and positive"):
        fp4linear.swap(model, input_scales={"0": 0.01, "2": math.nan})


def test_partition_rejects_bad_sizes():
    for size, tp, name in [(100, 0, "tp_size"), (100, 2.0, "tp_size"), (-16, 2, "size"), (0, 1, "size")]:
        with pytest.raises(ValueError, match=name):
            parallel.partition(size, tp)
    with pytest.raises(ValueError, match="cannot split"):
        parallel.partition(32, 3)


def test_empty_tensor_container_and_layout_errors():
    with pytest.raises(ValueError, match="k_align"):
        fp4linear.NVFP4Tensor.empty((4, 32), k_align=24)
    with pytest.raises(ValueError, match="sf_layout"):
        fp4linear.NVFP4Tensor.empty((4, 32), sf_layout="4x4")
