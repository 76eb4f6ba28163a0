"""Alignment table, plan(), and the FlashInfer backends' weight layouts against FlashInfer itself."""

import pytest
import torch

import fp4linear
from fp4linear import reference
from fp4linear.backends import BACKENDS, trtllm_row_order

from .conftest import modelopt_checkpoint


def test_alignment_table_is_spec_section_4():
    table = {name: (b.n_align, b.k_align) for name, b in BACKENDS.items()}
    assert table == {"triton": (1, 64), "flashinfer_cutlass": (32, 32), "flashinfer_cudnn": (32, 32),
                     "flashinfer_trtllm": (128, 64)}
    assert BACKENDS["flashinfer_trtllm"].sm == (100, 103)


@pytest.mark.parametrize(
    "backend, n, k, n_pad, k_pad",
    [
        ("flashinfer_cutlass", 2576, 2688, 2592, 2688),  # Nemotron mamba in_proj, TP=4
        ("flashinfer_trtllm", 1288, 2688, 1408, 2688),  # ... TP=8
        ("flashinfer_cudnn", 4096, 1368, 4096, 1376),  # GLM-4.5-Air down K at TP=8
        ("flashinfer_trtllm", 4096, 3696, 4096, 3712),  # Qwen2.5-72B down K at TP=8
        ("triton", 48, 48, 48, 64),  # MiniLM hidden at TP=8
        ("flashinfer_cutlass", 4096, 4096, 4096, 4096),  # aligned control
    ],
)
def test_plan(backend, n, k, n_pad, k_pad):
    p = fp4linear.plan(n, k, backend=backend)
    assert (p.n_padded, p.k_padded) == (n_pad, k_pad)
    k16 = -(-k // 16) * 16
    assert p.weight_pad_bytes == n_pad * k_pad // 2 + n_pad * k_pad // 16 - (n * k16 // 2 + n * k16 // 16)
    assert p.activation_pad_bytes_per_row == (k_pad - k16) // 2 + (-(-k_pad // 64) - -(-k16 // 64)) * 4
    assert backend in str(p) and ("aligned" in p.reason) == ((n_pad, k_pad) == (n, k))


def test_plan_auto_and_errors():
    assert fp4linear.plan(64, 64, backend="auto", device="cpu").backend == "triton"
    with pytest.raises(ValueError, match="backend must be"):
        fp4linear.plan(64, 64, backend="cublas")


def test_trtllm_row_order_equals_flashinfer(flashinfer):
    from flashinfer import shuffle_matrix_a
    from flashinfer.utils import get_shuffle_matrix_sf_a_row_indices

    t = torch.randint(0, 256, (256, 40), dtype=torch.uint8)
    assert torch.equal(t[trtllm_row_order(256)], shuffle_matrix_a(t, 128))
    assert torch.equal(trtllm_row_order(256), get_shuffle_matrix_sf_a_row_indices(t, 128))


def _layer_and_activation(backend, n=200, k=464, m=5):
    ckpt, _ = modelopt_checkpoint(n, k)
    layer = fp4linear.Linear.from_modelopt(**ckpt, backend=backend)
    x = torch.randn(m, k, dtype=torch.bfloat16)
    q = fp4linear.quantize(x, layer.input_global_scale, k_align=layer.k_padded)
    return ckpt, layer, q


@pytest.mark.parametrize("backend", ["flashinfer_cutlass", "flashinfer_cudnn", "flashinfer_trtllm"])
def test_operands_pass_flashinfer_mm_fp4_checks(flashinfer, backend):
    from flashinfer.gemm.gemm_base import _check_mm_fp4_problem_size

    _, layer, q = _layer_and_activation(backend)
    args = layer.backend.mm_fp4_args(q.data, q.scale, layer.weight, layer.weight_scale, layer.alpha, torch.bfloat16)
    assert _check_mm_fp4_problem_size(**args) is True
    assert args["b"].shape == (layer.k_padded // 2, layer.n_padded)
    mm = flashinfer.mm_fp4
    assert not mm.is_backend_supported(args["backend"], 90)  # SM90: FlashInfer refuses, so do we
    assert mm.is_backend_supported(args["backend"], 100)
    assert layer.n_padded % layer.backend.n_align == 0 and layer.k_padded % layer.backend.k_align == 0


def test_cutlass_weight_scales_are_128x4_of_the_checkpoint():
    ckpt, layer, _ = _layer_and_activation("flashinfer_cutlass")
    rows = reference.unswizzle(layer.weight_scale.view(torch.uint8), fp4linear.SWIZZLE_128x4)
    n, s = ckpt["weight_scale"].shape
    assert torch.equal(rows[:n, :s], ckpt["weight_scale"].view(torch.uint8))
    assert rows[n:].eq(0).all() and rows[:, s:].eq(0).all()
    assert torch.equal(layer.weight[:n, : ckpt["weight"].shape[1]], ckpt["weight"]) and layer.weight[n:].eq(0).all()


@pytest.mark.cuda
def test_trtllm_weight_equals_flashinfer_shuffles(flashinfer):
    from flashinfer import shuffle_matrix_a, shuffle_matrix_sf_a

    ckpt, layer, _ = _layer_and_activation("flashinfer_trtllm")
    n, k2 = ckpt["weight"].shape
    data = torch.zeros(layer.n_padded, layer.k_padded // 2, dtype=torch.uint8)
    data[:n, :k2] = ckpt["weight"]
    scale = torch.zeros(layer.n_padded, layer.k_padded // 16, dtype=torch.uint8)
    scale[:n, : k2 // 8] = ckpt["weight_scale"].view(torch.uint8)
    assert torch.equal(layer.weight, shuffle_matrix_a(data, 128))
    theirs = shuffle_matrix_sf_a(scale.cuda(), 128)
    assert torch.equal(layer.weight_scale.view(torch.uint8).flatten(), theirs.view(torch.uint8).flatten().cpu())
