"""Where a layer's device time goes: per-kernel device time of fp4linear layers and their bf16
baselines, from the torch profiler (CUPTI kernel records), per call.

The issues' remaining gaps are each claimed to sit in one part of the route (the quantize pass, the
weight dequantization, cuBLAS itself); this measures the parts. Rows, all bf16 input, no bias, static
input scale unless named, the routes CUDA graphs take (the eager routes, `ops.eager_route`,
are switched off so that an eager call runs the same kernels):
- prefill Linears at issue 10's near misses (cuBLAS path: the operands launch, the weight chunks,
  cuBLAS) and nn.Linear;
- GatedMLP vs the unfused swapped MLP vs transformers' LlamaMLP at M = 4096 (GLM-4.5-Air per rank);
- decode Linears (the quantize pass and the GEMM), over a chain of cold copies as linear_bench does.

    python benchmarks/breakdown.py            # table -> RESULTS.md section + results/breakdown_<gpu>.csv
    python benchmarks/breakdown.py --dry-run  # CPU: walk the same code on tiny shapes (no kernels recorded)
"""

from __future__ import annotations

import argparse
import collections
import copy
import sys
from pathlib import Path
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import add_output_args, cold_copies, gpu_slug, publish  # noqa: E402
from fp4linear import ops  # noqa: E402
from mlp_bench import bf16_mlp  # noqa: E402

LINEARS = [(2048, 1288, 2688), (4096, 1288, 2688), (2048, 2688, 464), (4096, 2576, 2688), (16, 4096, 4096),
           (16, 8192, 8192), (16, 1288, 2688)]
MLPS = [("GLM-4.5-Air", 4096, 1368, 4096), ("Qwen2.5-72B", 8192, 3696, 4096)]  # (model, hidden, per-rank intermediate, M)
CALLS = 20


def short_name(name: str) -> str:
    """A readable kernel label: Triton kernels keep their function name; cuBLAS/CUTLASS GEMMs one label."""
    if any(s in name for s in ("gemm", "Gemm", "sm90_xmma", "cutlass", "nvjet")) and "nvfp4" not in name:
        return "cuBLAS GEMM"
    return name.split("(")[0][:60].strip()


def kernel_times(fn, calls: int, device: str) -> dict[str, float]:
    """{kernel label: device us per call} over `calls` calls of fn (after a warm-up call)."""
    fn()
    if device != "cuda":
        fn()
        return {}
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals = collections.Counter()
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            totals[short_name(ev.name)] += ev.device_time
    return {k: v / calls for k, v in totals.items()}


def rows_of(label: str, m: int, n: int, k: int, variant: str, times: dict[str, float]) -> list[list]:
    total = sum(times.values())
    return [[label, m, n, k, variant, name, us, 100 * us / total if total else float("nan"), total]
            for name, us in sorted(times.items(), key=lambda t: -t[1])]


@torch.no_grad()
def run(args):
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    linears = [(40, 72, 200), (5, 72, 200)] if device == "cpu" else LINEARS
    mlps = [("tiny", 64, 40, 40)] if device == "cpu" else MLPS
    rows = []
    with mock.patch.object(ops, "eager_route", lambda *a, **kw: None):  # the CUDA-graph routes, eagerly
        for m, n, k in tqdm(linears, desc="linears", file=sys.stderr):
            copies = cold_copies(n * k * 2) if m <= 16 and device == "cuda" else 1
            lins = [torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16) for _ in range(copies)]
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            scale = fp4linear.decode_scale(torch.tensor(4.0))
            fp4 = [fp4linear.Linear.from_linear(lin, input_scale=scale, backend="triton") for lin in lins]
            dyn = [fp4linear.Linear.from_linear(lin, backend="triton") for lin in lins]
            for variant, mods in (("nn.Linear bf16", lins), ("fp4linear static", fp4), ("fp4linear dynamic", dyn)):
                times = kernel_times(lambda mods=mods: [mod(x) for mod in mods], CALLS, device)
                rows += rows_of("Linear", m, n, k, variant, {name: us / copies for name, us in times.items()})
        for model, hidden, inter, m in mlps:
            bf16 = bf16_mlp(hidden, inter, device)
            x = (torch.rand(m, hidden, device=device) * 8 - 4).to(torch.bfloat16)
            scales = fp4linear.calibrate(bf16, [x[:64]])
            variants = {"LlamaMLP bf16": bf16,
                        "unfused static": fp4linear.swap(copy.deepcopy(bf16), input_scales=scales, backend="triton",
                                                         fuse_mlp=False),
                        "GatedMLP static": fp4linear.swap(copy.deepcopy(bf16), input_scales=scales, backend="triton")}
            for variant, mod in variants.items():
                rows += rows_of(f"MLP {model}", m, hidden, inter, variant,
                                kernel_times(lambda mod=mod: mod(x), CALLS, device))
    intro = ("Per-kernel device time per call (torch profiler, CUPTI kernel records, mean of "
             f"{CALLS} eager calls after a warm-up) on the routes CUDA graphs take (`ops.eager_route` off); decode "
             "rows (M <= 16) over a chain of cold layer copies, time per layer. bf16 input, no bias. Linear: N, K "
             "the weight's; MLP: N = hidden, K = per-rank intermediate. cuBLAS GEMM = every cuBLAS/CUTLASS GEMM "
             "kernel of the call. share = % of the variant's summed kernel time (launch gaps not counted). A kernel "
             "can take longer in these eager calls than in graph replays (the dynamic-scale launch of 2048 x 2688: "
             "9.1 us here, 5.4 replayed, session 21): read the shares and the cuBLAS-vs-the-rest split, not a "
             "replay time.")
    if device == "cpu":
        args.no_write = True
    publish(args, "Where the time goes: per-kernel breakdown (benchmarks/breakdown.py)", intro,
            ["what", "m", "n", "k", "variant", "kernel", "us", "share_pct", "variant_total_us"], rows,
            csv_name=f"breakdown_{gpu_slug()}.csv")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny shapes, no kernels recorded")
    add_output_args(p)
    run(p.parse_args())


if __name__ == "__main__":
    main()
