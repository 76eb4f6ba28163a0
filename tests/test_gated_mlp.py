"""fp4linear.GatedMLP: gate and up as one GEMM, the activation fused with the quantization of the
down projection's input. Held to fp64 (reference quantize of the activation, exact products) on
every forward path, to the unfused modules built from the same tensors (bit for bit where the
down GEMM is the same), and wired into swap, the loaders and tensor parallelism."""

import copy
import logging
import math
import os
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fp4linear
from fp4linear import GatedMLP, Linear, kernels, ops, parallel, reference
from fp4linear.format import abs_amax

from .conftest import as_graph_replay, free_port, modelopt_checkpoint, rel_err, without_host_sync

ROWS = ("weight", "weight_scale", "bias")


def mlp_tensors(hidden, inter, *, seed=0, bias=False, down_amax=2.0):
    """ModelOpt tensors of gate, up and down as an export stores them: gate and up quantized as one
    [gate; up] weight (one weight_scale_2, one input_scale); the reference NVFP4Tensor of down."""
    gu, _ = modelopt_checkpoint(2 * inter, hidden, seed=seed, bias=bias)
    gate = {k: v[:inter] if k in ROWS else v for k, v in gu.items()}
    up = {k: v[inter:] if k in ROWS else v for k, v in gu.items()}
    down, q_down = modelopt_checkpoint(hidden, inter, seed=seed + 1, bias=bias)
    down["input_scale"] = fp4linear.decode_scale(torch.tensor(down_amax)).reshape(())
    return gate, up, down, q_down


def on(tensors, device, dynamic=False):
    return {k: None if dynamic and k == "input_scale" else v.to(device) for k, v in tensors.items()}


def build(gate, up, down, device, *, act="silu_mul", dynamic=False, hidden, inter):
    """(GatedMLP, the unfused Linears gate, up, down) from the same tensors."""
    mlp = GatedMLP.from_modelopt(on(gate, device, dynamic), on(up, device, dynamic), on(down, device, dynamic),
                                 act=act, backend="triton", in_features=hidden, intermediate_size=inter)
    unfused = [Linear.from_modelopt(**on(t, device, dynamic), backend="triton", in_features=k)
               for t, k in ((gate, hidden), (up, hidden), (down, inter))]
    return mlp, unfused


def down_reference(mlp, h, q_down, *, dynamic):
    """fp64 of the down projection of act(h), and the elementwise bound of fp32 accumulation
    (tests/test_linear_paths.py's): reference quantize of activation(h) with down's input scale
    (dynamic: amax of the activation, NaN kept), times the reference-dequantized weight."""
    a = fp4linear.activation(h, mlp.act)
    scale = fp4linear.decode_scale(abs_amax(a)) if dynamic else mlp.down.input_scale
    qa = reference.quantize(a.float().cpu(), (1 / scale.float().cpu()).reshape(1), k_align=16)
    a64, w64 = reference.dequantize(qa).double(), reference.dequantize(q_down).double()
    ref = a64 @ w64.T
    if mlp.down.bias is not None:
        ref = ref + mlp.down.bias.double().cpu()
    return ref, mlp.down.k_padded * 2.0**-22 * (a64.abs() @ w64.abs().T) + 1e-30


def check(out, ref, bound):
    """bf16 output: one rounding on top (the interpreter truncates: 2^-7 relative)."""
    err = (out.double().cpu() - ref).abs()
    assert (err <= bound + 2.0**-7 * ref.abs() + 1e-30).all(), f"max err / |ref| {(err / ref.abs()).max():.3g}"


def x_for(m, hidden, device, seed=0):
    return (torch.randn(m, hidden, generator=torch.Generator().manual_seed(seed)) * 2).to(torch.bfloat16).to(device)


# Forward paths of the down projection (ops.triton_act_linear) at these tiny shapes: M <= 8 the
# dequantized-A GEMM where the unfused Linear takes its decode kernel (ops.use_gemv); 17 both the Triton GEMM;
# 130 (static) both the cuBLAS path (torch.addmm on CPU tensors), dynamic both the Triton GEMM.
CASES = [(1, 48, 40, "silu_mul"), (3, 72, 88, "silu_mul"), (17, 48, 232, "silu_mul"), (130, 48, 40, "silu_mul"),
         (3, 48, 40, "gelu_tanh_mul"), (17, 72, 88, "gelu_tanh_mul")]


@pytest.mark.parametrize("m, hidden, inter, act", CASES)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_matches_fp64_and_the_unfused_modules(device, m, hidden, inter, act, dynamic):
    gate, up, down, q_down = mlp_tensors(hidden, inter, seed=inter, bias=True)
    mlp, (g, u, d) = build(gate, up, down, device, act=act, dynamic=dynamic, hidden=hidden, inter=inter)
    assert mlp.fused and mlp.gate_up.out_features == 2 * inter and mlp.down.in_features == inter
    x = x_for(m, hidden, device, seed=m)
    y = mlp(x)
    assert y.shape == (m, hidden) and y.dtype == torch.bfloat16 and not y.isnan().any()
    h = mlp.gate_up(x)
    check(y, *down_reference(mlp, h, q_down, dynamic=dynamic))
    # the unfused modules from the same tensors: gate and up as two GEMMs, the project's unfused
    # activation (the fused pass's numerics), down's Linear
    hu = torch.cat([g(x), u(x)], -1)
    unfused = d(fp4linear.activation(hu, act))
    if device.type == "cpu":  # the interpreter sums each output in the same order for N = I and 2I
        assert torch.equal(h, hu)
        if not ops.use_gemv(m, hidden, d.k_padded):  # down takes the same GEMM as the unfused Linear: same bits
            assert torch.equal(y, unfused)
    check(unfused, *down_reference(mlp, hu, q_down, dynamic=dynamic))


@pytest.mark.parametrize("act", sorted(kernels.ACTS))
@pytest.mark.parametrize("m, tiles_for_m", [(1, None), (5, None), (16, None), (24, None), (37, 256)])
def test_gemm_taking_act_of_x_equals_the_activation_pass_then_the_gemm(device, act, m, tiles_for_m):
    """`nvfp4_gemm_quantize_x(act=)`: every program takes act(x) of the rows it multiplies (one launch),
    against `act_fake_quantize` then `nvfp4_gemm_dequantized_a` (two): the same bits. Odd I (200: Kp
    256, K splits on the interpreter), a strided x, a bias, a poisoned output."""
    n, i = 40, 200
    gated = kernels.ACTS[act][1]
    width = 2 * i if gated else i
    down, _ = modelopt_checkpoint(n, i, seed=m, bias=True)
    layer = Linear.from_modelopt(**on(down, device), backend="triton", in_features=i)
    base = (torch.randn(m, width + 24, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16)
    x = base.to(device)[:, 8:8 + width]  # row stride width + 24
    gs, alpha = layer.input_global_scale, layer.alpha
    order = kernels.activation_order(m, n, layer.k_padded, x.device, tiles_for_m)
    a = torch.empty(kernels.mma16_rows(m, order), layer.k_padded, dtype=torch.float16, device=device)
    kernels.act_fake_quantize(x, act, gs, a, units=True, a_order=order)
    want = kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, alpha, layer.bias,
                                            torch.empty(m, n, dtype=torch.bfloat16, device=device),
                                            tiles_for_m=tiles_for_m, a_order=order)
    got = kernels.nvfp4_gemm_quantize_x(x, gs, layer.weight, layer.weight_scale, alpha, layer.bias,
                                        torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device),
                                        tiles_for_m=tiles_for_m, act=act)
    assert torch.equal(got, want)
    if not ops.use_gemv(m, n, layer.k_padded):  # the unfused Linear, where it takes the same GEMM
        assert torch.equal(got, layer(fp4linear.activation(x, act).contiguous()))


def test_gemm_taking_act_of_x_refuses_bad_arguments():
    down, _ = modelopt_checkpoint(40, 64, seed=1)
    layer = Linear.from_modelopt(**down, backend="triton", in_features=64)
    args = (layer.weight, layer.weight_scale, layer.alpha, None, torch.empty(2, 40))
    with pytest.raises(ValueError, match="act must be one of"):
        kernels.nvfp4_gemm_quantize_x(torch.zeros(2, 128), layer.input_global_scale, *args, act="swish")
    with pytest.raises(ValueError, match="even number of columns"):
        kernels.nvfp4_gemm_quantize_x(torch.zeros(2, 127), layer.input_global_scale, *args, act="silu_mul")
    with pytest.raises(ValueError, match="too large for the dynamic scale inside the GEMM"):
        kernels.nvfp4_gemm_quantize_x(torch.zeros(17, 128), None, layer.weight, layer.weight_scale, None, None,
                                      torch.empty(17, 40), weight_scale_2=layer.weight_scale_2, act="silu_mul")


@pytest.mark.parametrize("act", sorted(kernels.ACTS))
@pytest.mark.parametrize("m", [1, 5, 16])
def test_gemm_taking_act_of_x_takes_a_dynamic_scale_itself(device, act, m):
    """`nvfp4_gemm_quantize_x(act=, weight_scale_2=)`: every program derives the dynamic scale from max |act(x)|
    over all of x itself (one launch), against the scale launch (`dynamic_gs_alpha(act=)`) and then the same GEMM
    with that scale: the same bits. Odd I (200), a strided x, a bias, a poisoned output."""
    n, i = 40, 200
    width = 2 * i if kernels.ACTS[act][1] else i
    down, _ = modelopt_checkpoint(n, i, seed=m, bias=True)
    layer = Linear.from_modelopt(**on(down, device, dynamic=True), backend="triton", in_features=i)
    base = (torch.randn(m, width + 24, generator=torch.Generator().manual_seed(m + 7)) * 3).to(torch.bfloat16)
    x = base.to(device)[:, 8:8 + width]  # row stride width + 24
    assert kernels.fuses_dynamic_scale_in_pass(m, width, x.stride(0))
    gs, alpha = kernels.dynamic_gs_alpha(x, layer.weight_scale_2, act=act)
    want = kernels.nvfp4_gemm_quantize_x(x, gs, layer.weight, layer.weight_scale, alpha, layer.bias,
                                         torch.empty(m, n, dtype=torch.bfloat16, device=device), act=act)
    got = kernels.nvfp4_gemm_quantize_x(x, None, layer.weight, layer.weight_scale, None, layer.bias,
                                        torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device),
                                        weight_scale_2=layer.weight_scale_2, act=act)
    assert torch.equal(got, want)


@pytest.mark.parametrize("m", [1, 6])
def test_host_bound_dynamic_down_projection_takes_one_launch(device, monkeypatch, m):
    """An eager down projection with a dynamic scale whose input is small enough (`fuses_dynamic_scale_in_pass`)
    takes one launch: max |act(h)| inside the GEMM, no scale launch (patched to fail), the bits of the scale
    launch and the GEMM."""
    hidden, inter = 48, 88
    gate, up, down, _ = mlp_tensors(hidden, inter)
    dyn, _ = build(gate, up, down, device, dynamic=True, hidden=hidden, inter=inter)
    d = dyn.down
    h = (torch.randn(m, 2 * inter, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    gs, alpha = kernels.dynamic_gs_alpha(h, d.weight_scale_2, act="silu_mul")
    want = kernels.nvfp4_gemm_quantize_x(h, gs, d.weight, d.weight_scale, alpha, None,
                                         torch.empty(m, hidden, dtype=torch.bfloat16, device=device), act="silu_mul")

    def no_scale_launch(*args, **kwargs):
        raise AssertionError("a scale launch")
    for name in ("dynamic_gs_alpha", "dynamic_encode_scale", "dynamic_maxima"):
        monkeypatch.setattr(kernels, name, no_scale_launch)
    if device == "cuda":
        monkeypatch.setattr(ops, "eager_route", lambda *args: ops.ONE_LAUNCH)  # (as an eager call of a small layer)
    got = ops.triton_act_linear(h, "silu_mul", d.weight, d.weight_scale, d.input_global_scale, d.alpha,
                                d.weight_scale_2, None, hidden, True, None)
    assert torch.equal(got, want)


@pytest.mark.parametrize("m", [3, 17, 130])
def test_dynamic_scale_is_bit_identical_to_the_static_one(device, m):
    """The dynamic down scale is the amax of act(h) with the bits the Linear derives from the activation."""
    hidden, inter = 48, 88
    gate, up, down, _ = mlp_tensors(hidden, inter)
    dyn, _ = build(gate, up, down, device, dynamic=True, hidden=hidden, inter=inter)
    h = (torch.randn(m, 2 * inter, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    a = fp4linear.activation(h, "silu_mul")
    static = Linear.from_modelopt(**on({**down, "input_scale": fp4linear.decode_scale(abs_amax(a))}, device),
                                  backend="triton", in_features=inter)
    d = dyn.down
    got = ops.triton_act_linear(h, "silu_mul", d.weight, d.weight_scale, d.input_global_scale, d.alpha,
                                d.weight_scale_2, None, hidden, True, None)
    want = ops.triton_act_linear(h, "silu_mul", static.weight, static.weight_scale, static.input_global_scale,
                                 static.alpha, static.weight_scale_2, None, hidden, False, None)
    assert torch.equal(got, want)  # the same path (M = 130: cuBLAS, alpha applied on the device)
    assert torch.equal(got, d(a))  # = the dynamic Linear on the activation


@pytest.mark.parametrize("m, inter", [(130, 88), (600, 232), (300, 1368)])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("bias", [False, True])
def test_down_projection_operands_in_one_launch_equal_two(device, monkeypatch, m, inter, dynamic, bias):
    """The down projection on the cuBLAS path: act(h)'s values and the first weight chunk in one launch
    (`ops.ACT_OPERANDS_ONE_LAUNCH`, `kernels.act_cublas_operands`) against the activation's launch and then the
    chunk's: the same bits, over two weight chunks (the second by its own launch in both)."""
    hidden = 300
    gate, up, down, _ = mlp_tensors(hidden, inter)
    mlp, _ = build(gate, up, down, device, dynamic=dynamic, hidden=hidden, inter=inter)
    d = mlp.down
    for name in ("CUBLAS_CHUNK_BYTES", "CUBLAS_WIDE_CHUNK_BYTES"):  # 256-row chunks
        monkeypatch.setattr(ops, name, 256 * d.k_padded * 2)
    if bias:
        d.bias = torch.nn.Parameter(torch.randn(hidden, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
                                    .to(device), requires_grad=False)
    h = (torch.randn(m, 2 * inter, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    args = (h, "silu_mul", d.weight, d.weight_scale, d.input_global_scale, d.alpha, d.weight_scale_2, d.bias, hidden,
            dynamic, None if dynamic else d._alpha_host)
    calls = []
    real = kernels.act_cublas_operands
    monkeypatch.setattr(kernels, "act_cublas_operands", lambda *a, **k: calls.append(1) or real(*a, **k))
    got = ops.triton_act_linear(*args, cublas=True)
    assert calls, "the one launch was not taken"
    assert ops._chunk_rows(m, hidden, d.k_padded, torch.bfloat16) == 256
    monkeypatch.setattr(ops, "ACT_OPERANDS_ONE_LAUNCH", False)
    want = ops.triton_act_linear(*args, cublas=True)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.parametrize("m", [1, 17, 130])
def test_nan_rows_stay_visible(device, m):
    hidden, inter = 48, 40
    gate, up, down, _ = mlp_tensors(hidden, inter)
    for dynamic in (False, True):
        mlp, (g, u, d) = build(gate, up, down, device, dynamic=dynamic, hidden=hidden, inter=inter)
        x = x_for(m, hidden, device)
        x[0, 5] = math.nan
        y = mlp(x)
        if dynamic:  # NaN in the amax: every block of the layer is non-finite, as for the unfused Linears
            assert y.isnan().all()
        else:
            assert y[0].isnan().all() and not y[1:].isnan().any()
        # a NaN the activation makes (inf * 0 in the gate product) stays in its row of the down output
        h = torch.randn(m, 2 * inter, device=device).to(torch.bfloat16)
        h[0, inter + 3], h[0, 3] = math.inf, 0.0  # silu(0) * inf = NaN
        out = ops.act_linear(h, "silu_mul", d.weight, d.weight_scale, d.input_global_scale, d.alpha,
                             d.weight_scale_2, None, hidden, dynamic, d._alpha_host)
        assert torch.equal(out.isnan(), d(fp4linear.activation(h, "silu_mul")).isnan())
        assert out[0].isnan().all() and (out[1:].isnan().all() if dynamic else not out[1:].isnan().any())


@pytest.mark.parametrize("m", [3, 17])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_packed_path(device, m, dynamic):
    """The path of GEMM backends that take a packed activation (FlashInfer's; here the Triton
    backend's packed GEMM, kernels.nvfp4_gemm, stands in): act_quantize's NVFP4Tensor of act(h)
    with down's scale, as Linear.forward quantizes x for them."""
    hidden, inter = 48, 88
    gate, up, down, q_down = mlp_tensors(hidden, inter, bias=True)
    mlp, (g, u, d) = build(gate, up, down, device, dynamic=dynamic, hidden=hidden, inter=inter)
    mlp.down._triton = False  # what a FlashInfer backend's Linear has: the packed path of forward
    x = x_for(m, hidden, device, seed=m)
    y = mlp(x)
    h = mlp.gate_up(x)
    check(y, *down_reference(mlp, h, q_down, dynamic=dynamic))
    assert torch.equal(y, mlp.down(fp4linear.activation(h, "silu_mul")))  # Linear's packed path, same bits


def test_different_gate_up_scales_run_two_gemms(device, caplog):
    hidden, inter = 48, 40
    gate, up, down, q_down = mlp_tensors(hidden, inter)
    for change in (dict(weight_scale_2=up["weight_scale_2"] * 1.5), dict(input_scale=up["input_scale"] * 0.5)):
        up2 = {**up, **change}
        with caplog.at_level(logging.INFO, logger="fp4linear.mlp"):
            mlp, (g, u, d) = build(gate, up2, down, device, hidden=hidden, inter=inter)
        assert not mlp.fused and mlp.gate_up is None and "two GEMMs" in caplog.text
        assert "fused=False" in repr(mlp)
        x = x_for(17, hidden, device)
        h = torch.cat([g(x), u(x)], -1)
        y = mlp(x)
        assert torch.equal(y, d(fp4linear.activation(h, "silu_mul")))  # exact: the unfused result
        check(y, *down_reference(mlp, h, q_down, dynamic=False))


def test_from_linear_shares_one_weight_scale(device):
    torch.manual_seed(0)
    g, u, d = (nn.Linear(a, b, bias=bias, device=device)
               for a, b, bias in ((96, 88, True), (96, 88, False), (88, 96, True)))
    with torch.no_grad():
        u.weight.mul_(3)  # up's amax sets the shared scale
    mlp = GatedMLP.from_linear(g, u, d, input_scale=fp4linear.decode_scale(torch.tensor(8.0)),
                               down_input_scale=fp4linear.decode_scale(torch.tensor(4.0)))
    both = torch.cat([g.weight, u.weight]).detach()
    assert torch.equal(mlp.gate_up.weight_scale_2, fp4linear.decode_scale(both.abs().amax()))
    assert torch.equal(mlp.gate_up.bias[88:].cpu(), torch.zeros(88, dtype=mlp.gate_up.bias.dtype))
    x = torch.randn(17, 96, device=device)
    want = d(torch.nn.functional.silu(g(x)) * u(x))
    assert rel_err(mlp(x), want) < 0.35  # W4A4 noise of three layers (~0.14 each on such data)
    dyn = GatedMLP.from_linear(g, u, d, act="gelu_tanh_mul")
    assert dyn.gate_up.dynamic_input_scale and dyn.down.dynamic_input_scale
    assert torch.equal(dyn(x), dyn.down(fp4linear.activation(dyn.gate_up(x), "gelu_tanh_mul")))


def test_errors_name_the_argument():
    hidden, inter = 48, 40
    gate, up, down, _ = mlp_tensors(hidden, inter)
    kw = dict(in_features=hidden, intermediate_size=inter)
    with pytest.raises(ValueError, match=r"act must be one of \('silu_mul', 'gelu_tanh_mul'\).*got 'relu2'"):
        GatedMLP.from_modelopt(gate, up, down, act="relu2", **kw)
    with pytest.raises(ValueError, match=r"up's weight holds \[N, K\] = \[32, 48\] but gate's \[40, 48\]"):
        GatedMLP.from_modelopt(gate, {k: v[:32] if k in ROWS else v for k, v in up.items()}, down, **kw)
    with pytest.raises(ValueError, match="down's weight holds K = 64 codes per row, which does not fit the I = 40"):
        GatedMLP.from_modelopt(gate, up, mlp_tensors(hidden, 64)[2], **kw)
    with pytest.raises(ValueError, match="gate: weight_scale must have shape"):
        GatedMLP.from_modelopt({**gate, "weight_scale": gate["weight_scale"][:, :1]}, up, down, **kw)
    with pytest.raises(ValueError, match="down has no 'weight_scale_2'"):
        GatedMLP.from_modelopt(gate, up, {k: v for k, v in down.items() if k != "weight_scale_2"}, **kw)
    with pytest.raises(TypeError, match="up must be a mapping of modelopt tensors"):
        GatedMLP.from_modelopt(gate, [up], down, **kw)
    with pytest.raises(ValueError, match="intermediate_size=48 but gate and up have N = 40"):
        GatedMLP.from_modelopt(gate, up, down, in_features=hidden, intermediate_size=48)
    with pytest.raises(ValueError, match="weight_scale_2 must be finite and positive"):
        GatedMLP.from_modelopt({**gate, "weight_scale_2": torch.tensor(-1.0)},
                               {**up, "weight_scale_2": torch.tensor(-1.0)}, down, **kw)
    lin = [nn.Linear(48, 40), nn.Linear(48, 40), nn.Linear(40, 48)]
    with pytest.raises(TypeError, match="up_proj must be a torch.nn.Linear, got Conv1d"):
        GatedMLP.from_linear(lin[0], nn.Conv1d(1, 1, 1), lin[2])
    with pytest.raises(ValueError, match=r"up_proj's weight \(32, 48\) does not match gate_proj's \(40, 48\)"):
        GatedMLP.from_linear(lin[0], nn.Linear(48, 32), lin[2])
    with pytest.raises(ValueError, match="down_proj takes 32 inputs but gate_proj gives 40"):
        GatedMLP.from_linear(*lin[:2], nn.Linear(32, 48))
    with pytest.raises(ValueError, match="act must be one of"):
        GatedMLP.from_linear(*lin, act="swiglu")
    mlp = GatedMLP.from_linear(*lin)
    with pytest.raises(ValueError, match=r"down takes 40 inputs but gate/up give I = 20"):
        GatedMLP(Linear.from_linear(nn.Linear(48, 40)), mlp.down)
    with pytest.raises(TypeError, match="down must be an fp4linear.Linear"):
        GatedMLP(mlp.gate_up, lin[2])
    with pytest.raises(ValueError, match=r"gate \(40 x 48\) and up \(32 x 48\) must have the same shape"):
        GatedMLP((Linear.from_linear(lin[0]), Linear.from_linear(nn.Linear(48, 32))), mlp.down)
    with pytest.raises(ValueError, match=r"x must have shape \(\.\.\., 48\), got \(2, 40\)"):
        mlp(torch.randn(2, 40))


def test_state_dict_round_trip_3d_input_and_compile():
    hidden, inter = 48, 40
    gate, up, down, _ = mlp_tensors(hidden, inter, bias=True)
    mlp, _ = build(gate, up, down, "cpu", hidden=hidden, inter=inter)
    fresh = GatedMLP(Linear(hidden, 2 * inter, bias=True, backend="triton"), Linear(inter, hidden, bias=True,
                                                                                   backend="triton"))
    fresh.load_state_dict(mlp.state_dict())
    x = x_for(12, hidden, "cpu").reshape(2, 6, hidden)
    y = mlp(x)
    assert y.shape == (2, 6, hidden) and torch.equal(fresh(x), y)
    assert torch.equal(y.reshape(12, hidden), mlp(x.reshape(12, hidden)))
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")  # the ops' fake implementations trace
    assert torch.equal(compiled(x), y)


# ---- swap and the loaders ------------------------------------------------------------------


def tiny_hf(kind, **overrides):
    transformers = pytest.importorskip("transformers")
    kw = dict(hidden_size=64, intermediate_size=88, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, max_position_embeddings=32, tie_word_embeddings=False)
    config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[kind](**{**kw, **overrides})
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM}[kind]
    torch.manual_seed(0)
    return cls(config).eval()


def unfused_twin(fused_model, unfused_model):
    """Give each swapped-unfused MLP the fused model's very tensors (gate_up's rows split), so the
    two models differ only in how the MLP runs."""
    for name, mlp in fused_model.named_modules():
        if not isinstance(mlp, GatedMLP):
            continue
        twin, gu, i = unfused_model.get_submodule(name), mlp.gate_up, mlp.intermediate_size
        for child, rows in (("gate_proj", slice(0, i)), ("up_proj", slice(i, 2 * i))):
            layer = Linear.from_modelopt(gu.weight[rows], gu.weight_scale[rows].view(torch.float8_e4m3fn),
                                         gu.weight_scale_2, None if gu.dynamic_input_scale else gu.input_scale,
                                         backend="triton", in_features=gu.in_features)
            setattr(twin, child, layer)
        twin.down_proj = mlp.down


@pytest.mark.parametrize("kind, act, dynamic", [("llama", "silu", False), ("qwen2", "silu", True),
                                                ("llama", "gelu_pytorch_tanh", False)])
def test_swap_tiny_models(kind, act, dynamic):
    model = tiny_hf(kind, hidden_act=act).float()
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(1))
    scales = None if dynamic else fp4linear.calibrate(model, [ids])
    if scales is not None:  # gate and up see the same input: one scale, one GEMM
        assert all(torch.equal(scales[f"model.layers.{i}.mlp.gate_proj"], scales[f"model.layers.{i}.mlp.up_proj"])
                   for i in range(2))
    with torch.no_grad():
        want = model(ids).logits
    fused = fp4linear.swap(copy.deepcopy(model), input_scales=scales, backend="triton")
    unfused = fp4linear.swap(copy.deepcopy(model), input_scales=scales, backend="triton", fuse_mlp=False)
    mlps = [m for m in fused.modules() if isinstance(m, GatedMLP)]
    assert len(mlps) == 2 and all(m.fused for m in mlps)
    assert mlps[0].act == {"silu": "silu_mul", "gelu_pytorch_tanh": "gelu_tanh_mul"}[act]
    assert not any(isinstance(m, GatedMLP) for m in unfused.modules())
    assert not any(type(m) is nn.Linear for m in (*fused.modules(), *unfused.modules()))
    with torch.no_grad():
        got_fused, got_unfused = fused(ids).logits, unfused(ids).logits
        unfused_twin(fused, unfused)  # the same quantized tensors: only the MLP's execution differs
        got_twin = unfused(ids).logits
    # W4A4 noise of 14 layers against fp32 (~0.21 here), alike for both: the shared gate/up weight
    # scale changes the quantization, not its quality
    noise = rel_err(got_unfused, want)
    assert noise < 0.3 and rel_err(got_fused, want) < 1.15 * noise and rel_err(got_fused, got_unfused) < 0.2
    # same tensors: only transformers' activation (torch's exp vs the kernel's, an fp32 ulp) differs
    assert rel_err(got_fused, got_twin) < 1e-4


def test_swap_keeps_mlps_it_cannot_fuse(caplog):
    model = tiny_hf("llama", hidden_act="relu")
    with caplog.at_level(logging.INFO, logger="fp4linear.mlp"):
        fp4linear.swap(model, backend="triton")
    assert "act_fn ReLU has no fused kernel" in caplog.text
    assert not any(isinstance(m, GatedMLP) for m in model.modules())
    model = tiny_hf("llama")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fp4linear.mlp"):
        fp4linear.swap(model, backend="triton", skip=["*.1.mlp.down_proj"])
    assert "model.layers.1.mlp.down_proj is not an nn.Linear made NVFP4 here" in caplog.text
    assert isinstance(model.model.layers[0].mlp, GatedMLP) and type(model.model.layers[1].mlp.down_proj) is nn.Linear
    model = tiny_hf("llama")
    scales = fp4linear.calibrate(model, [torch.randint(0, 128, (1, 4))])
    scales["model.layers.0.mlp.up_proj"] = scales["model.layers.0.mlp.up_proj"] * 2
    fp4linear.swap(model, input_scales=scales, backend="triton")
    assert not model.model.layers[0].mlp.fused and model.model.layers[1].mlp.fused


def test_modelopt_checkpoint_with_different_gate_up_scales(modelopt_dir, tmp_path):
    """A checkpoint whose gate and up scales differ: two GEMMs, the checkpoint's numerics exactly."""
    from safetensors.torch import save_file

    from tests.checkpoints import emulated_model, stored_tensors

    transformers = pytest.importorskip("transformers")
    bad = tmp_path / "apart"
    shutil.copytree(modelopt_dir, bad)
    (f,) = sorted(bad.glob("*.safetensors"))
    tensors = stored_tensors(bad)
    tensors["model.layers.1.mlp.up_proj.input_scale"] = tensors["model.layers.1.mlp.up_proj.input_scale"] * 1.25
    save_file(tensors, f)
    config = transformers.AutoConfig.from_pretrained(bad)
    del config.quantization_config
    model = fp4linear.load_modelopt(transformers.LlamaForCausalLM(config).eval(), bad, backend="triton")
    assert model.model.layers[0].mlp.fused and not model.model.layers[1].mlp.fused
    emulated, _ = emulated_model(bad)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert rel_err(model(ids).logits, emulated(ids).logits) < 1e-5


# ---- tensor parallelism ------------------------------------------------------------------------


@pytest.mark.parametrize("hidden, inter, tp", [(48, 232, 2), (48, 232, 8), (72, 88, 4)])
def test_simulated_ranks_match_unsharded(hidden, inter, tp):
    gate, up, down, _ = mlp_tensors(hidden, inter, seed=tp, bias=True)
    gate["bias"], up["bias"], down["bias"] = gate["bias"].float(), up["bias"].float(), down["bias"].float()
    full, _ = build(gate, up, down, "cpu", hidden=hidden, inter=inter)
    x = torch.randn(5, hidden, generator=torch.Generator().manual_seed(tp)) * 2  # fp32: only sum order may differ
    want = full(x)
    h_full = full.gate_up(x)
    total, bounds = 0, parallel.partition(inter, tp)
    for rank in range(tp):
        shard = parallel.shard_gated_mlp(gate, up, down, tp_size=tp, rank=rank, in_features=hidden)
        local = GatedMLP.from_modelopt(**shard, backend="triton")
        s, e = bounds[rank]
        assert local.intermediate_size == e - s and local.down.bias is None
        h = local.gate_up(x)  # this rank's gate and up columns, exactly
        torch.testing.assert_close(h, torch.cat([h_full[:, s:e], h_full[:, inter + s : inter + e]], -1), rtol=0, atol=0)
        total = total + local(x)
    got = total + down["bias"]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def _gloo_worker(rank, world, port, hidden, inter):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        gate, up, down, _ = mlp_tensors(hidden, inter, bias=True)
        down["bias"] = down["bias"].float()
        full, _ = build(gate, up, down, "cpu", hidden=hidden, inter=inter)
        x = torch.randn(7, hidden, generator=torch.Generator().manual_seed(0)) * 2
        mlp = parallel.ParallelGatedMLP.from_modelopt(gate, up, down, backend="triton", in_features=hidden)
        want = full(x)
        torch.testing.assert_close(mlp(x), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    finally:
        dist.destroy_process_group()


def test_gloo_parallel_gated_mlp():
    mp.spawn(_gloo_worker, args=(2, free_port(), 48, 232), nprocs=2, join=True)


# ---- GPU: the paths at per-rank shapes, graphs, no host sync, compile ------------------------

GPU_M = [1, 16, 64, 300, 1100]  # the unfused decode kernel's size, decode, mid (Triton GEMM), cuBLAS (static)


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("m", [1, 8, 16])
@pytest.mark.parametrize("hidden, inter", [(4096, 1368), (8192, 3696)], ids=["glm", "qwen"])
def test_gpu_decode_eager_equals_graph_at_per_rank_shapes(hidden, inter, m, dynamic):
    """GLM-4.5-Air's and Qwen2.5-72B's per-rank MLPs at TP 8 at decode: called eagerly, the down projection
    takes one launch (`ops.eager_route`: act(h) quantized inside its GEMM; a dynamic scale's max |act(h)|
    taken there too where h is small enough, `fuses_dynamic_scale_in_pass`, else by a launch of its own
    first), captured into a graph the activation pass and then the GEMM. The same bits, no host sync, the
    down projection within the fp64 bound."""
    gate, up, down, q_down = mlp_tensors(hidden, inter, seed=m)
    mlp, _ = build(gate, up, down, "cuda", dynamic=dynamic, hidden=hidden, inter=inter)
    x = x_for(m, hidden, "cuda", seed=m)
    assert ops.eager_route(x, m, hidden, mlp.down.k_padded, dynamic) == ops.ONE_LAUNCH
    mlp(x)  # (kernels compiled)
    eager = without_host_sync(lambda: mlp(x), 2)
    graph = as_graph_replay(mlp, x)
    assert all(torch.equal(e, graph) for e in eager)
    check(graph, *down_reference(mlp, mlp.gate_up(x), q_down, dynamic=dynamic))


@pytest.mark.cuda
@pytest.mark.parametrize("m", GPU_M)
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("act", ["silu_mul", "gelu_tanh_mul"])
def test_gpu_paths_bits_graph_no_sync(m, dynamic, act):
    hidden, inter = 512, 1368  # GLM-4.5-Air's per-rank intermediate at TP 8
    gate, up, down, q_down = mlp_tensors(hidden, inter, seed=m)
    mlp, (g, u, d) = build(gate, up, down, "cuda", act=act, dynamic=dynamic, hidden=hidden, inter=inter)
    x = x_for(m, hidden, "cuda", seed=m)
    y = mlp(x)
    h = mlp.gate_up(x)
    check(y, *down_reference(mlp, h, q_down, dynamic=dynamic))
    a = fp4linear.activation(h, act)
    if not ops.use_gemv(m, hidden, d.k_padded):  # the same quantized operand in the same GEMM as the down Linear
        assert torch.equal(y, d(a))
    else:
        check(d(a), *down_reference(mlp, h, q_down, dynamic=dynamic))
    again = without_host_sync(lambda: mlp(x), 3)
    assert all(torch.equal(y, z) for z in again)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mlp(x)
    x.copy_(x_for(m, hidden, "cuda", seed=m + 1))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, mlp(x))


@pytest.mark.cuda
@pytest.mark.parametrize("act", ["silu_mul", "gelu_tanh_mul", "relu2"])
@pytest.mark.parametrize("m, tiles_for_m", [(1, None), (16, None), (24, None), (100, 256)])
def test_gpu_gemm_taking_act_of_x_equals_the_activation_pass_then_the_gemm(act, m, tiles_for_m):
    """A per-rank down projection (4096 x 1368, bias) on the GPU's own tiles: the one-launch GEMM taking
    act(x) gives the activation pass + GEMM bits (the kernel without FMA contraction, its epilogue's FFMA
    written out), in a CUDA graph too, without a host sync."""
    n, i = 4096, 1368
    width = 2 * i if kernels.ACTS[act][1] else i
    down, _ = modelopt_checkpoint(n, i, seed=m, bias=True)
    layer = Linear.from_modelopt(**on(down, "cuda"), backend="triton", in_features=i)
    x = torch.randn(m, width, device="cuda", dtype=torch.bfloat16) * 3
    gs, alpha = layer.input_global_scale, layer.alpha
    order = kernels.activation_order(m, n, layer.k_padded, x.device, tiles_for_m)
    a = torch.empty(kernels.mma16_rows(m, order), layer.k_padded, dtype=torch.float16, device="cuda")
    kernels.act_fake_quantize(x, act, gs, a, units=True, a_order=order)
    want = kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, alpha, layer.bias,
                                            torch.empty(m, n, dtype=torch.bfloat16, device="cuda"),
                                            tiles_for_m=tiles_for_m, a_order=order)

    def one_launch():
        return kernels.nvfp4_gemm_quantize_x(x, gs, layer.weight, layer.weight_scale, alpha, layer.bias,
                                             torch.full((m, n), math.nan, dtype=torch.bfloat16, device="cuda"),
                                             tiles_for_m=tiles_for_m, act=act)
    got = without_host_sync(one_launch, 2)
    assert all(torch.equal(g, want) for g in got)
    assert torch.equal(as_graph_replay(lambda _: one_launch(), x), want)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_compile(mode):
    torch.manual_seed(0)
    g, u, d = (nn.Linear(a, b, device="cuda", dtype=torch.bfloat16) for a, b in ((512, 1368), (512, 1368), (1368, 512)))
    mlp = GatedMLP.from_linear(g, u, d)  # dynamic scales
    compiled = torch.compile(mlp, fullgraph=True, mode=mode)
    for m in (1, 16, 64, 600):
        x = torch.randn(m, 512, device="cuda", dtype=torch.bfloat16)
        want = as_graph_replay(mlp, x)  # (the eager call of 64 / 600 rows takes the host-bound route)
        for _ in range(3):
            got = compiled(x)
        assert torch.equal(got, want), m  # silu_mul has no multiply-add for Inductor to contract


@pytest.mark.cuda
def test_gpu_cached_launches_match_the_jit_and_launch_statically():
    """GatedMLP's own launches (the activation pass, the dynamic scale of act(h)) through
    CachedLaunch give the JIT's bits, and take torch's static launcher where this torch has it."""
    from fp4linear.kernels import act_quantize_launch, launch, scales_launch

    hidden, inter = 512, 1368
    gate, up, down, _ = mlp_tensors(hidden, inter)
    mlps = [build(gate, up, down, "cuda", dynamic=dyn, hidden=hidden, inter=inter)[0] for dyn in (False, True)]
    xs = [x_for(m, hidden, "cuda", seed=m) for m in (1, 16, 300, 1100)]
    launch.ENABLED = False
    try:
        want = [mlp(x) for mlp in mlps for x in xs]
    finally:
        launch.ENABLED = True
    for _ in range(2):  # the first call of a key compiles through the JIT, the second launches cached
        got = [mlp(x) for mlp in mlps for x in xs]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    if launch._static_launch is not None:
        for cl in (act_quantize_launch._launch_fake, scales_launch._launch):
            assert cl._entries and all(e.function is not None for e in cl._entries.values()), cl.kernel.fn.__name__
