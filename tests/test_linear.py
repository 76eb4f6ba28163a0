"""fp4linear.Linear: ModelOpt checkpoints, nn.Linear conversion, validation, state_dict, compile/graphs."""

import math

import pytest
import torch
from torch import nn

import fp4linear

from fp4linear import reference

from .conftest import emulate, modelopt_checkpoint, rel_err, without_host_sync


@pytest.mark.parametrize("n, k, lead", [(200, 464, (7,)), (33, 48, (2, 3)), (96, 1376, (1,)), (130, 64, (129,))])
def test_from_modelopt_matches_emulation(device, n, k, lead):
    ckpt, q = modelopt_checkpoint(n, k, bias=True, seed=n)
    layer = fp4linear.Linear.from_modelopt(**{name: t.to(device) for name, t in ckpt.items()}, backend="triton")
    x = (torch.randn(*lead, k) * 2).to(torch.bfloat16).to(device)
    y = layer(x)
    assert y.shape == (*lead, n) and y.dtype == torch.bfloat16
    assert rel_err(y, emulate(x, ckpt, q)) < 8e-3  # bf16 output rounding


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_output_dtype_follows_input(device, dtype):
    ckpt, q = modelopt_checkpoint(64, 128)
    layer = fp4linear.Linear.from_modelopt(**{name: t.to(device) for name, t in ckpt.items()})
    x = torch.randn(5, 128).to(dtype).to(device)
    y = layer(x)
    assert y.dtype == dtype
    assert rel_err(y, emulate(x, ckpt, q)) < (1e-6 if dtype == torch.float32 else 2e-3)


def test_from_linear_error_vs_bf16(device):
    # Measured NVFP4 W4A4 error on Gaussian weights and activations: ~0.13 relative (each operand
    # ~0.095, independent). Bounded here so a regression in either quantizer shows.
    torch.manual_seed(0)
    lin = nn.Linear(1368, 200, bias=True).to(torch.bfloat16).to(device)
    x = torch.randn(16, 1368, dtype=torch.bfloat16, device=device)
    layer = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(x.float().abs().amax()))
    assert layer.in_features == 1368 and layer.k_padded == 1408
    err = rel_err(layer(x), lin(x).double().cpu())
    assert 0.08 < err < 0.18, err


def test_state_dict_round_trip_and_repr(device):
    ckpt, _ = modelopt_checkpoint(72, 176, bias=True)
    layer = fp4linear.Linear.from_modelopt(**{name: t.to(device) for name, t in ckpt.items()})
    fresh = fp4linear.Linear(176, 72, bias=True, backend=layer.backend.name, device=device)
    fresh.load_state_dict(layer.state_dict())
    x = torch.randn(3, 176, dtype=torch.bfloat16, device=device)
    assert torch.equal(fresh(x), layer(x))
    text = repr(layer)
    assert "in_features=176" in text and "out_features=72" in text and "padded=(72, 192)" in text and "triton" in text


def test_bad_checkpoint_tensors_raise():
    ckpt, _ = modelopt_checkpoint(32, 64)
    cases = {
        "weight must be uint8": dict(weight=ckpt["weight"].to(torch.int16)),
        "weight_scale must have shape": dict(weight_scale=ckpt["weight_scale"][:, :2]),
        "weight_scale must be float8_e4m3fn": dict(weight_scale=ckpt["weight_scale"].float()),
        "weight_scale_2 must be finite and positive": dict(weight_scale_2=torch.tensor(0.0)),
        "input_scale must be finite and positive": dict(input_scale=torch.tensor(math.nan)),
        "input_scale must be a scalar": dict(input_scale=torch.ones(2)),
        "bias must have shape": dict(bias=torch.zeros(31)),
    }
    for msg, change in cases.items():
        with pytest.raises((ValueError, TypeError), match=msg):
            fp4linear.Linear.from_modelopt(**{**ckpt, **change})
    nan_scale = ckpt["weight_scale"].view(torch.uint8).clone()
    nan_scale[3, 1] = 0x7F
    with pytest.raises(ValueError, match="NaN"):
        fp4linear.Linear.from_modelopt(**{**ckpt, "weight_scale": nan_scale.view(torch.float8_e4m3fn)})
    neg = fp4linear.Linear.from_modelopt  # negative inf as weight_scale_2
    with pytest.raises(ValueError, match="weight_scale_2"):
        neg(**{**ckpt, "weight_scale_2": torch.tensor(-math.inf)})
    with pytest.raises(ValueError, match="backend must be"):
        fp4linear.Linear.from_modelopt(**ckpt, backend="cublas")
    # K = 1368 codes ends mid-block: 85 scales cover 1360 of them (a checkpoint pads K to 16)
    w, s = torch.zeros(32, 684, dtype=torch.uint8), torch.ones(32, 85).to(torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"weight \(32, 684\) holds K = 1368 codes per row, not a multiple of"):
        fp4linear.Linear.from_modelopt(w, s, ckpt["weight_scale_2"], ckpt["input_scale"])
    with pytest.raises(ValueError, match=r"weight_packed \(32, 684\) holds K = 1368"):
        fp4linear.Linear.from_compressed_tensors(w, s, torch.tensor([100.0]), torch.tensor([10.0]))
    with pytest.raises(ValueError, match="weight_global_scale must be finite and positive"):
        fp4linear.Linear.from_compressed_tensors(ckpt["weight"], ckpt["weight_scale"], torch.tensor([-1.0]), None)


@pytest.mark.parametrize("n, k", [(72, 176), (33, 48)])
def test_from_compressed_tensors_matches_emulation(device, n, k):
    # Same codes and block scales as ModelOpt; the scalars are encode scales (2688 / amax), kept
    # bit for bit where the layer uses them (input_global_scale), inverted once otherwise.
    ckpt, q = modelopt_checkpoint(n, k, bias=True, seed=k)
    wgs = q.global_scale.reshape(1)  # the encode scale the weight was quantized with
    igs = torch.tensor([2688 / 3.0])
    ct = dict(weight_packed=ckpt["weight"], weight_scale=ckpt["weight_scale"], weight_global_scale=wgs,
              input_global_scale=igs, bias=ckpt["bias"])
    layer = fp4linear.Linear.from_compressed_tensors(**{name: t.to(device) for name, t in ct.items()}, backend="triton")
    assert layer.input_global_scale.cpu().view(torch.int32).equal(igs.view(torch.int32))
    assert layer.weight_scale_2.item() == (1 / wgs.double()).float().item()
    assert layer.alpha.item() == (1 / (igs.double() * wgs.double())).float().item()
    x = torch.randn(5, k).to(device)
    qx = reference.quantize(x.cpu(), igs, k_align=16)
    want = fp4linear.dequantize(qx).double() @ fp4linear.dequantize(q).double().T + ckpt["bias"].double()
    assert rel_err(layer(x), want) < 1e-5


def test_bad_inputs_raise():
    ckpt, _ = modelopt_checkpoint(32, 64)
    layer = fp4linear.Linear.from_modelopt(**ckpt)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 64\), got \(2, 63\)"):
        layer(torch.randn(2, 63, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="x must be"):
        layer(torch.ones(2, 64, dtype=torch.int32))


@pytest.mark.parametrize("backend", ["flashinfer_cutlass", "flashinfer_cudnn", "flashinfer_trtllm"])
def test_flashinfer_backends_refuse_cpu(backend):
    ckpt, _ = modelopt_checkpoint(32, 64)
    layer = fp4linear.Linear.from_modelopt(**ckpt, backend=backend)  # preparing weights works anywhere
    with pytest.raises(RuntimeError, match=f"backend '{backend}' runs on"):
        layer(torch.randn(2, 64, dtype=torch.bfloat16))


def test_compile_fullgraph_traces_the_custom_ops():
    ckpt, q = modelopt_checkpoint(40, 96, bias=True)
    layer = fp4linear.Linear.from_modelopt(**ckpt)
    x = torch.randn(4, 96, dtype=torch.bfloat16)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fake impls must trace
    assert torch.equal(compiled(x), layer(x))


@pytest.mark.cuda
def test_gpu_compile_graph_no_sync_and_sm90_refusal():
    ckpt, q = modelopt_checkpoint(200, 464, bias=True)
    layer = fp4linear.Linear.from_modelopt(**{n: t.cuda() for n, t in ckpt.items()})
    x = torch.randn(8, 464, dtype=torch.bfloat16, device="cuda")
    want = layer(x)
    assert torch.equal(torch.compile(layer, fullgraph=True)(x), want)
    without_host_sync(lambda: layer(x))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, layer(x))
    if torch.cuda.get_device_capability() < (10, 0):
        cut = fp4linear.Linear.from_modelopt(**{n: t.cuda() for n, t in ckpt.items()}, backend="flashinfer_cutlass")
        with pytest.raises(RuntimeError, match="not available on"):
            cut(x)


def test_dynamic_input_scale_matches_emulation(device):
    # input_scale=None: gs = 2688 / amax(x) per call, on the device; same bits as a static scale of amax/2688.
    ckpt, q = modelopt_checkpoint(48, 160, bias=True)
    dynamic = fp4linear.Linear.from_modelopt(**{**{n: t.to(device) for n, t in ckpt.items()}, "input_scale": None})
    assert dynamic.dynamic_input_scale and "dynamic_input_scale=True" in repr(dynamic)
    for scale in (0.1, 30.0, *torch.rand(10, generator=torch.Generator().manual_seed(3)).mul(50).tolist()):
        x = (torch.randn(6, 160) * scale).to(device)
        # correctly rounded fp32 amax / 2688 (fp64 division then rounding to fp32 is exact here)
        static = dict(ckpt, input_scale=torch.tensor(x.abs().amax().item() / 2688, dtype=torch.float32))
        got = dynamic(x)
        assert torch.equal(got, fp4linear.Linear.from_modelopt(**{n: t.to(device) for n, t in static.items()})(x))
        assert rel_err(got, emulate(x, static, q)) < 1e-5
    zeros = torch.zeros(3, 160, device=device)
    assert torch.equal(dynamic(zeros), dynamic.bias.float().expand(3, 48))  # finite scales, output = bias
