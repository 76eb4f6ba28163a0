"""fp4linear.GatedMLP against the unfused swapped MLP and the bf16 MLP, same process, same card.

Per-rank TP-8 shapes of GLM-4.5-Air (hidden 4096, intermediate 10944 / 8 = 1368) and Qwen2.5-72B
(hidden 8192, intermediate 29568 / 8 = 3696), bf16 input, no bias, at M = 1, 16 and 4096:
- bf16: transformers' LlamaMLP (three nn.Linear, `F.silu(gate) * up` in bf16);
- unfused: the same module after `fp4linear.swap(..., fuse_mlp=False)`: three fp4linear.Linear and
  the torch activation between them;
- GatedMLP: `fp4linear.swap(...)` (gate and up one GEMM, the activation fused with the
  quantization of down's input);
each with static activation scales (`fp4linear.calibrate` on one batch) and dynamic ones. Device
time = CUDA-graph replay medians (M <= 16: a chain of module copies whose bf16 weights exceed
256 MiB, so weights come from DRAM as in a model; time per MLP); eager = wall time per call of a
loop of calls and one synchronize. "speed-up" = unfused / GatedMLP, "vs bf16" = bf16 / GatedMLP
(> 1: GatedMLP faster).

    python benchmarks/mlp_bench.py              # table -> RESULTS.md section + results/mlp_<gpu>.csv
    python benchmarks/mlp_bench.py --ab-act-operands  # the down projection's cuBLAS operands, forms compared
    python benchmarks/mlp_bench.py --dry-run    # CPU: walk the same code on tiny shapes, no timing
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import (COLD_ROWS, L2_ROTATE_BYTES, add_output_args, chain_copies, eager_us_interleaved, gpu_slug,  # noqa: E402
                    median_us, merge_rows, publish)

MODELS = {"GLM-4.5-Air": (4096, 1368), "Qwen2.5-72B": (8192, 3696)}  # (hidden, per-rank intermediate at TP 8)
MS = [1, 16, 64, 4096]
EAGER_CALLS, EAGER_ROUNDS = 100, 7  # eager: calls per timed loop, alternating rounds (median)
X_AMAX = 4.0  # inputs are uniform in [-4, 4)


def bf16_mlp(hidden, inter, device):
    """transformers' LlamaMLP in bf16 (the module swap fuses), inside a container (swap fuses MLPs
    that are children, not the model itself)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, hidden_act="silu")
    return nn.Sequential(LlamaMLP(config)).to(device=device, dtype=torch.bfloat16).requires_grad_(False).eval()


def make_copies(hidden, inter, copies, device):
    """`copies` dicts {variant: module} with distinct weights; static scales from one batch."""
    out = []
    for _ in range(copies):
        bf16 = bf16_mlp(hidden, inter, device)
        scales = fp4linear.calibrate(bf16, [torch.rand(64, hidden, device=device).to(torch.bfloat16) * 8 - 4])
        variants = {"bf16": bf16}
        for mode, s in (("static", scales), ("dynamic", None)):
            variants[f"unfused {mode}"] = fp4linear.swap(copy.deepcopy(bf16), input_scales=s, backend="triton",
                                                         fuse_mlp=False)
            variants[f"GatedMLP {mode}"] = fp4linear.swap(copy.deepcopy(bf16), input_scales=s, backend="triton")
        assert isinstance(variants["GatedMLP static"][0], fp4linear.GatedMLP)
        assert not isinstance(variants["unfused static"][0], fp4linear.GatedMLP)
        out.append(variants)
    return out


def chain(modules, x):
    def run():
        for m in modules:
            m(x)
    return run


def timers(dry: bool):
    """(device time of one function, eager wall times of several measured in alternating rounds)."""
    if dry:
        def run_once(fn):
            fn()
            return math.nan
        return run_once, (lambda fns: [run_once(fn) for fn in fns])
    return (lambda fn: median_us(fn, graph=True, rep_ms=50)), (
        lambda fns: eager_us_interleaved(fns, calls=EAGER_CALLS, rounds=EAGER_ROUNDS))


def rel_err(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


@torch.no_grad()
def run_table(args, dry: bool):
    device = "cpu" if dry else "cuda"
    graph_us, walls_us = timers(dry)
    models = {"tiny": (64, 40)} if dry else {k: v for k, v in MODELS.items() if not args.models or k in args.models}
    ms = [1, 20, 70] if dry else (args.m or MS)  # dry: decode-kernel-sized, Triton GEMM and cuBLAS-path rows
    header = ["model", "hidden", "inter", "M", "scale", "bf16 us", "unfused us", "GatedMLP us", "speed-up", "vs bf16",
              "bf16 eager us", "unfused eager us", "GatedMLP eager us", "eager speed-up", "eager vs bf16",
              "unfused err", "GatedMLP err"]
    rows = []
    todo = [(name, m) for name in models for m in ms]
    cache = {}
    for name, m in tqdm(todo, desc="mlp", file=sys.stderr):
        hidden, inter = models[name]
        copies = chain_copies(m, 3 * hidden * inter * 2, not dry)
        if cache.get("key") != (name, copies):
            cache.clear()
            cache.update(key=(name, copies), copies=make_copies(hidden, inter, copies, device))
        sets = cache["copies"]
        x = (torch.rand(m, hidden, device=device) * (2 * X_AMAX) - X_AMAX).to(torch.bfloat16)
        first = sets[0]
        want = first["bf16"](x)
        t_bf16 = graph_us(chain([s["bf16"] for s in sets], x)) / copies
        # eager: the bf16 MLP and the four fp4 variants in alternating rounds (the host's speed drifts)
        keys = ["bf16"] + [f"{variant} {mode}" for mode in ("static", "dynamic") for variant in ("unfused", "GatedMLP")]
        walls = dict(zip(keys, walls_us([lambda key=key: first[key](x) for key in keys])))
        e_bf16 = walls["bf16"]
        for mode in ("static", "dynamic"):
            t, e, err = {}, {}, {}
            for variant in ("unfused", "GatedMLP"):
                key = f"{variant} {mode}"
                t[variant] = graph_us(chain([s[key] for s in sets], x)) / copies
                e[variant] = walls[key]
                err[variant] = rel_err(first[key](x), want)
            rows.append([name, hidden, inter, m, mode, t_bf16, t["unfused"], t["GatedMLP"],
                         t["unfused"] / t["GatedMLP"], t_bf16 / t["GatedMLP"], e_bf16, e["unfused"], e["GatedMLP"],
                         e["unfused"] / e["GatedMLP"], e_bf16 / e["GatedMLP"], err["unfused"], err["GatedMLP"]])
    intro = (f"Per-rank TP-8 MLPs, bf16 input uniform in [-{X_AMAX:g}, {X_AMAX:g}), no bias. bf16 = transformers' "
             f"LlamaMLP (3 nn.Linear + `F.silu(g) * u`); unfused = that module after `fp4linear.swap(fuse_mlp=False)` "
             f"(3 fp4linear.Linear + the torch activation); GatedMLP = after `fp4linear.swap` ([gate; up] one NVFP4 "
             f"GEMM, activation fused with the quantization of down's input). static = `calibrate` scales, dynamic = "
             f"per call on the device. Device times: CUDA-graph replay medians (M <= {COLD_ROWS}: a chain of copies whose bf16 "
             f"weights exceed {L2_ROTATE_BYTES >> 20} MiB, time per MLP); eager: wall time per call, loop of {EAGER_CALLS} "
             f"calls and one synchronize, median of {EAGER_ROUNDS} rounds in which the bf16 MLP and the four fp4 "
             f"variants alternate. speed-up = unfused / GatedMLP, vs bf16 = bf16 / GatedMLP (> 1: "
             f"GatedMLP faster); err = relative error of the output vs the bf16 MLP. Goal: GatedMLP >= 1.15x the "
             f"unfused MLP at M = 4096.")
    if not dry:  # (rows of other models and M from earlier runs kept)
        order = {name: i for i, name in enumerate(MODELS)}
        rows = merge_rows(args.results_dir / f"mlp_{gpu_slug()}.csv", rows, 5,
                          lambda r: [r[0], int(r[1]), int(r[2]), int(r[3]), r[4], *map(float, r[5:])])
        rows.sort(key=lambda r: (order.get(r[0], 99), r[3], r[4] != "static"))
    md_header = ["model", *header[3:]]
    md_rows = [[r[0], *r[3:]] for r in rows]  # the shapes are in the intro
    if dry:
        args.no_write = True
    publish(args, "Gated MLP: GatedMLP vs unfused vs bf16 (benchmarks/mlp_bench.py)", intro, header, rows,
            csv_name=f"mlp_{gpu_slug()}.csv", md_header=md_header, md_rows=md_rows)


@torch.no_grad()
def run_ab_act_operands(args, dry: bool):
    """GatedMLP's down projection on the cuBLAS path (M >= 512): 'before' = the activation's launch with
    `fake_quantize`'s tiles (32 x 128, 4 warps), then the weight chunk's launch; 'tiles' = the same with the
    activation's routed tiles (`act_quantize_launch.fake_tiles`); 'one launch' = act(h)'s values and the first
    weight chunk in one launch (`ops.ACT_OPERANDS_ONE_LAUNCH`, `kernels.act_cublas_operands`), the routed tiles.
    Whole GatedMLP, device time (CUDA-graph replays), with the unfused MLP and bf16 in the same process; the
    three forms' outputs checked equal (-> results/act_operands_ab_<gpu>.csv)."""
    import contextlib
    from unittest import mock

    from fp4linear import ops
    from fp4linear.kernels import act_quantize_launch as aql

    device = "cpu" if dry else "cuda"
    graph_us, _ = timers(dry)
    models = {"tiny": (64, 40)} if dry else {k: v for k, v in MODELS.items() if not args.models or k in args.models}
    ms = [600] if dry else (args.m or [2048, 4096, 8192])

    @contextlib.contextmanager
    def form(one_launch, old_tiles):
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(ops, "ACT_OPERANDS_ONE_LAUNCH", one_launch))
            if old_tiles:
                stack.enter_context(mock.patch.object(aql, "fake_tiles", lambda m, kp, units: (32, 128, 4)))
            for plan in (aql._fake_plan, aql._operands_plan):  # (plans made under another rule go)
                plan.cache_clear()
                stack.callback(plan.cache_clear)
            yield

    forms = [("before", False, True), ("tiles", False, False), ("one launch", True, False)]
    rows = []
    for name, (hidden, inter) in tqdm(models.items(), desc="act operands a/b", file=sys.stderr):
        variants = make_copies(hidden, inter, 1, device)[0]
        for m in ms:
            x = (torch.rand(m, hidden, device=device) * (2 * X_AMAX) - X_AMAX).to(torch.bfloat16)
            t_bf16 = graph_us(lambda: variants["bf16"](x))
            for mode in ("static", "dynamic"):
                mlp, unfused = variants[f"GatedMLP {mode}"], variants[f"unfused {mode}"]
                t_unfused = graph_us(lambda: unfused(x))
                times, outs = [], []
                for _, one_launch, old_tiles in forms:
                    with form(one_launch, old_tiles):
                        times.append(graph_us(lambda: mlp(x)))
                        outs.append(mlp(x).clone())
                if any(not torch.equal(o.view(torch.int16), outs[0].view(torch.int16)) for o in outs):
                    raise AssertionError(f"{name} {m} {mode}: the forms' outputs differ")
                rows.append([name, hidden, inter, m, mode, t_bf16, t_unfused, *times])
                print(f"{name} M={m} {mode}: bf16 {t_bf16:.1f}, unfused {t_unfused:.1f}, GatedMLP " +
                      ", ".join(f"{f[0]} {t:.1f}" for f, t in zip(forms, times)) + " us", flush=True)
    header = ["model", "hidden", "inter", "M", "scale", "bf16_us", "unfused_us", "gated_before_us", "gated_tiles_us",
              "gated_one_launch_us"]
    md = [[r[0], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[6] / r[7], r[6] / r[9], r[5] / r[9]] for r in rows]
    if dry:
        args.no_write = True
    publish(args, "Gated MLP: the down projection's operands (benchmarks/mlp_bench.py --ab-act-operands)",
            "GatedMLP on the cuBLAS path (per-rank TP-8 MLPs, bf16 input, no bias), device time (CUDA-graph replay "
            "medians), one process. 'before': the activation's values by `act_fake_quantize` with 32 x 128 tiles, "
            "4 warps, then the down weight's first chunk by its own launch; 'tiles': the activation's tiles routed "
            "since (8 x 128, 2 warps); 'one launch': those values and the weight chunk in one launch "
            "(`kernels.act_cublas_operands`). The three forms' outputs equal (bits), checked per row. speed-up = "
            "unfused / GatedMLP.", header, rows, csv_name=f"act_operands_ab_{gpu_slug()}.csv",
            md_header=["model", "M", "scale", "bf16 us", "unfused us", "GatedMLP before us", "GatedMLP tiles us",
                       "GatedMLP one launch us", "speed-up before", "speed-up one launch", "vs bf16 one launch"],
            md_rows=md)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny shapes, no timing: walk the code")
    p.add_argument("--m", type=int, nargs="*", help="only these M")
    p.add_argument("--ab-act-operands", action="store_true", help="the down projection's cuBLAS operands: one launch "
                   "and the activation's tiles vs before (-> results/act_operands_ab_<gpu>.csv)")
    p.add_argument("--models", nargs="*", choices=list(MODELS), help="only these models")
    add_output_args(p)
    args = p.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("No CUDA GPU: running the dry run (timings need a GPU).")
    (run_ab_act_operands if args.ab_act_operands else run_table)(args, dry)


if __name__ == "__main__":
    main()
