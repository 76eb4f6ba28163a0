"""The main job: what padding costs at every tensor-parallel size, for real models.

For each model layer (`benchmarks/common.py` MODELS) x TP {1, 2, 4, 8} x backend alignment x M
{1, 16, 256, 4096}: the bytes padding adds to the weights and to each activation row (analytic, any
machine), and on a GPU the measured time of the fused pad+quantize against the separate pipeline
engines run today (quantize, F.pad of the packed activation, a zero-filled padded scale buffer with
the scales copied in, and a slice copy of the padded output), plus the whole `fp4linear.Linear`.
Shards are cut on 16-element block boundaries (`fp4linear.parallel.partition`); the widest shard is
what each rank pads.

    python benchmarks/sweep.py [--out plots] [--all-m]

Writes <out>/sweep.csv (padding bytes) and <out>/{weight,activation}_pad_vs_tp.png anywhere; on a
GPU also <results-dir>/sweep_<gpu>.csv (the timings), <out>/fused_vs_separate.png and the sweep's
section of RESULTS.md. A CPU run leaves earlier GPU timings alone.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fp4linear  # noqa: E402
from common import MODELS, Layer, add_output_args  # noqa: E402
from fp4linear.backends import BACKENDS  # noqa: E402
from fp4linear.format import BLOCK_SIZE, round_up  # noqa: E402
from fp4linear.parallel import partition  # noqa: E402

TPS = (1, 2, 4, 8)
MS = (1, 16, 256, 4096)
TIMING_FIELDS = ("fused_us", "separate_us", "linear_us", "bf16_linear_us")


def per_rank_shape(layer: Layer, tp: int) -> tuple[int, int]:
    """The widest rank's (N, K): the shape every rank must be able to run."""
    size = layer.n if layer.split == "column" else layer.k
    widest = max(e - s for s, e in partition(size, tp))
    return (widest, layer.k) if layer.split == "column" else (layer.n, widest)


def nvfp4_row_bytes(k: int) -> int:
    """Packed data + 128x4 scale bytes of one activation row of width k (unpadded beyond 16)."""
    k16 = round_up(k, BLOCK_SIZE)
    return k16 // 2 + fp4linear.SWIZZLE_128x4.padded_shape(1, k16)[1]


def analytic_rows():
    rows = []
    for model, layers in MODELS.items():
        for layer in layers:
            for tp in TPS:
                n, k = per_rank_shape(layer, tp)
                for backend in BACKENDS.values():
                    p = fp4linear.plan(n, k, backend=backend)
                    k16 = round_up(k, BLOCK_SIZE)
                    weight_bytes = n * k16 // 2 + n * k16 // BLOCK_SIZE
                    for m in MS:
                        rows.append(dict(
                            model=model, layer=layer.name, split=layer.split, tp=tp, backend=backend.name, m=m,
                            n=n, k=k, n_padded=p.n_padded, k_padded=p.k_padded,
                            weight_bytes=weight_bytes, weight_pad_bytes=p.weight_pad_bytes,
                            weight_pad_pct=100 * p.weight_pad_bytes / weight_bytes,
                            act_pad_bytes=m * p.activation_pad_bytes_per_row,
                            act_pad_pct=100 * p.activation_pad_bytes_per_row / nvfp4_row_bytes(k),
                        ))
    return rows


def gpu_timer(fn) -> float:
    from common import median_us

    return median_us(fn, graph=True, rep_ms=20)


def gpu_timings(rows, args, timer=gpu_timer, device="cuda"):
    """Adds measured medians (us) to the rows. The padding pipelines depend on (M, K, Kp), the
    Linear on (M, N, K): each distinct shape is timed once. M in {16, 4096} unless --all-m.
    (timer, device) are parameters so that a CPU test can walk this path on tiny shapes.)"""
    pad_times, linear_times = {}, {}
    todo = [r for r in rows if args.all_m or r["m"] in (16, 4096)]
    for r in tqdm(todo, desc="GPU timings", file=sys.stderr):
        m, n, k, kp = r["m"], r["n"], r["k"], r["k_padded"]
        if (m, k, kp) not in pad_times:
            pad_times[(m, k, kp)] = time_padding(m, k, kp, timer, device)
        r.update(pad_times[(m, k, kp)])
        if r["backend"] == "triton":
            if (m, n, k) not in linear_times:
                linear_times[(m, n, k)] = time_linear(m, n, k, timer, device)
            r.update(linear_times[(m, n, k)])


def separate_pipeline(x, gs, kp, y_padded):
    """What engines run today: quantize without padding, pad the packed activation, a zero-filled
    padded scale buffer with the scales copied in, and a slice copy of a padded GEMM output (width K
    stands in for N). For Kp <= round_up(K, 64) both 128x4 scale layouts have the same shape, so
    the copy puts every scale where the fused kernel writes it (tests check the bytes agree)."""
    m, k = x.shape
    q = fp4linear.quantize(x, gs, k_align=BLOCK_SIZE)
    data = F.pad(q.data, (0, (kp - round_up(k, BLOCK_SIZE)) // 2))
    scale = torch.zeros(fp4linear.SWIZZLE_128x4.padded_shape(m, kp), dtype=torch.uint8, device=x.device)
    scale.view(-1)[: q.scale.numel()].copy_(q.scale.view(torch.uint8).view(-1))
    return data, scale, y_padded[:, :k].contiguous()


def time_padding(m, k, kp, timer, device):
    x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    gs = fp4linear.encode_scale(x.float().abs().amax())
    out = fp4linear.NVFP4Tensor.empty((m, k), k_align=kp, device=device)
    fused = timer(lambda: fp4linear.quantize(x, gs, k_align=kp, out=out))
    y_padded = torch.empty(m, round_up(k, 128), dtype=torch.bfloat16, device=device)  # a padded GEMM output
    return dict(fused_us=fused, separate_us=timer(lambda: separate_pipeline(x, gs, kp, y_padded)))


def time_linear(m, n, k, timer, device):
    x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    lin = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
    layer = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(x.float().abs().amax()), backend="triton")
    return dict(linear_us=timer(lambda: layer(x)), bf16_linear_us=timer(lambda: lin(x)))


def timing_summary(rows) -> tuple[list[str], list[list]]:
    """Per model and TP: the fused/separate speed-up over its layers that need padding (geometric
    mean, the widest per-rank shape; padding for flashinfer_trtllm, the strictest rule), and the
    sum of its layers' Linear times against nn.Linear bf16, at each timed M."""
    header = ["model", "TP", "M", "layers padded (trtllm)", "separate/fused (geomean)", "fp4linear.Linear us (sum)",
              "nn.Linear bf16 us (sum)", "bf16/ours"]
    out = []
    for model in MODELS:
        for tp in TPS:
            for m in sorted({r["m"] for r in rows if "fused_us" in r}):
                sel = [r for r in rows if r["model"] == model and r["tp"] == tp and r["m"] == m]
                padded = [r for r in sel if r["backend"] == "flashinfer_trtllm" and r["k_padded"] != round_up(r["k"], 16)]
                lin = [r for r in sel if r["backend"] == "triton"]
                if not lin or any("linear_us" not in r for r in lin):
                    continue  # not timed
                ratios = [r["separate_us"] / r["fused_us"] for r in padded]
                geo = float(torch.tensor(ratios).log().mean().exp()) if ratios else float("nan")
                ours, bf16 = sum(r["linear_us"] for r in lin), sum(r["bf16_linear_us"] for r in lin)
                out.append([model, tp, m, f"{len(padded)}/{len(lin)}", geo, ours, bf16, bf16 / ours])
    return header, out


def plot(rows, out: Path, have_gpu: bool, device_name: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(MODELS)
    backends = list(BACKENDS)
    for metric, title, fname in [("weight_pad_pct", "weight bytes added by padding (% of the layer's NVFP4 weight)",
                                  "weight_pad_vs_tp.png"),
                                 ("act_pad_pct", "activation bytes added per row (% of an NVFP4 row)",
                                  "activation_pad_vs_tp.png")]:
        fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True)
        styles = {"triton": ("-", "o"), "flashinfer_cutlass": ("-", "s"), "flashinfer_cudnn": (":", "x"),
                  "flashinfer_trtllm": ("-", "^")}  # cutlass and cudnn share a rule: dotted over solid
        for ax, model in zip(axes.flat, models):
            for backend in backends:
                ys = []
                for tp in TPS:
                    sel = [r for r in rows if r["model"] == model and r["backend"] == backend and r["tp"] == tp
                           and r["m"] == MS[0]]
                    # whole-model view: pad bytes over all its layers / their bytes
                    if metric == "weight_pad_pct":
                        pad = sum(r["weight_pad_bytes"] for r in sel)
                        base = sum(r["weight_bytes"] for r in sel)
                    else:
                        pad = sum(r["act_pad_bytes"] for r in sel)
                        base = sum(nvfp4_row_bytes(r["k"]) for r in sel)
                    ys.append(100 * pad / base if base else 0.0)
                ax.plot(TPS, ys, linestyle=styles[backend][0], marker=styles[backend][1], label=backend)
            ax.set_title(model, fontsize=10)
            ax.set_xscale("log", base=2)
            ax.set_xticks(TPS, [str(t) for t in TPS])
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
        axes.flat[0].legend(fontsize=8)
        fig.supxlabel("tensor-parallel size")
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(out / fname, dpi=110)
        plt.close(fig)
    if have_gpu:
        timed = [r for r in rows if "fused_us" in r and r["backend"] == "flashinfer_trtllm"]
        fig, ax = plt.subplots(figsize=(8, 6))
        for m in sorted({r["m"] for r in timed}):
            sel = [r for r in timed if r["m"] == m]
            ax.scatter([r["separate_us"] for r in sel], [r["fused_us"] for r in sel], label=f"M={m}", s=14)
        lim = max([r["separate_us"] for r in timed] + [1.0])
        ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="equal")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("separate pipeline (us): quantize + F.pad + zeroed scales + output slice")
        ax.set_ylabel("fused pad+quantize (us)")
        ax.set_title(f"Fused vs separate padding, per-rank shapes ({device_name})")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "fused_vs_separate.png", dpi=110)
        plt.close(fig)


def write_rows(path: Path, rows, fields) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "plots", help="plots and the padding CSV (default %(default)s)")
    p.add_argument("--all-m", action="store_true", help="GPU: time every M, not only 16 and 4096")
    add_output_args(p)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = analytic_rows()
    have_gpu = torch.cuda.is_available()
    analytic_fields = list(rows[0])
    write_rows(args.out / "sweep.csv", rows, analytic_fields)
    if have_gpu:
        gpu_timings(rows, args)
        from common import gpu_slug, publish

        timed = [r for r in rows if "fused_us" in r]
        write_rows(args.results_dir / f"sweep_{gpu_slug()}.csv", timed, analytic_fields + list(TIMING_FIELDS))
        header, table = timing_summary(rows)
        publish(args, "Padding sweep (benchmarks/sweep.py)",
                "Fused pad+quantize vs the separate pipeline (quantize, F.pad of the packed activation, zeroed "
                "padded scales + copy, output slice copy), and each model's layers as fp4linear.Linear (triton "
                "backend) vs nn.Linear bf16; CUDA-graph replay medians at the widest rank's shape. Every timed "
                "point is in the CSV.", header, table, csv_name=f"sweep_summary_{gpu_slug()}.csv")
    else:
        logging.info("No CUDA GPU: padding bytes only; the fused-vs-separate and Linear timings need a GPU "
                     "(earlier GPU timings under %s are left as they are).", args.results_dir)
    plot(rows, args.out, have_gpu, torch.cuda.get_device_name() if have_gpu else "")

    # Summary: the worst padding each backend forces, per model, at TP=8.
    print(f"{'model':26s} {'backend':20s} {'weight pad @TP8':>16s} {'act pad/row @TP8':>17s}")
    for model in MODELS:
        for backend in BACKENDS:
            sel = [r for r in rows if r["model"] == model and r["backend"] == backend and r["tp"] == 8 and r["m"] == 1]
            print(f"{model:26s} {backend:20s} {max(r['weight_pad_pct'] for r in sel):15.2f}% "
                  f"{max(r['act_pad_pct'] for r in sel):16.2f}%")
    logging.info("wrote %s and %s/*.png", args.out / "sweep.csv", args.out)

if __name__ == "__main__":
    main()
