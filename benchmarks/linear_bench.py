"""fp4linear.Linear (triton backend) against cuBLAS bf16 nn.Linear, same process, same card.

For each (N, K) of `common.LINEAR_SHAPES` and each M: device time (CUDA-graph replays) of the
whole layer (quantize + GEMM, the dynamic scale's pass included) with a static and a dynamic
activation scale, and eager wall time (a loop of calls, one synchronize), against nn.Linear bf16.
Decode-sized M rotate through enough copies of the layer that its weights cannot stay in L2 (as in
a model, where every layer's weights come from DRAM): the time per layer is the replay time of the
chain over its length. Weight bandwidth counts the padded NVFP4 weight's bytes (codes + scales).

    python benchmarks/linear_bench.py                  # table + results/linear_<gpu>.csv + RESULTS.md
    python benchmarks/linear_bench.py --m 1 16 --no-compile --results-dir D   # some rows, no torch.compile columns
    python benchmarks/linear_bench.py --from-csv D1/linear_<gpu>.csv D2/...   # one table from runs on several GPUs
    python benchmarks/linear_bench.py --tune           # tile sweeps for the small-M kernel and the paths
    python benchmarks/linear_bench.py --tune-gemv      # small M: CUDA-core kernel tiles vs the other one-launch paths
    python benchmarks/linear_bench.py --ab-fused       # past decode: x quantized in the GEMM vs a pass first vs cuBLAS
    python benchmarks/linear_bench.py --ab-decode      # decode: PTX vs portable weight decode, left vs right operand
    python benchmarks/linear_bench.py --ab-eager       # eager decode: one launch vs the route graphs take
    python benchmarks/linear_bench.py --dry-run        # walk the code on tiny CPU shapes
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import functools
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import triton
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import (COLD_ROWS, Forced, L2_ROTATE_BYTES, LINEAR_SHAPES, ROOT, add_output_args, card, chain_copies,
                    cold_copies, copy_ceiling_tbps,  # noqa: E402
                    eager_us, eager_us_interleaved, gpu_slug, markdown_table, median_us, merge_rows, publish,
                    read_floor_us, replace_section, write_csv)
from fp4linear import kernels, ops  # noqa: E402
from fp4linear.kernels import gemm_launch, quant_dequant_launch  # noqa: E402

MS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 2048, 4096, 8192]
TABLE_HEADER = ["m", "n", "k", "input_scale", "bf16_graph_us", "fp4_graph_us", "bf16_eager_us", "fp4_eager_us",
                "temp_bytes", "bf16_compile_us", "fp4_compile_us", "read_floor_us"]


def cold_static_layers(n, k, device):
    """(copies, static fp4 layers, NVFP4 weight bytes of one) for decode tuning: `cold_copies` copies."""
    copies = cold_copies(n * k * 2)
    layers = [c[1] for c in make_layers(n, k, copies, device, torch.bfloat16)]
    return copies, layers, layers[0].n_padded * layers[0].k_padded * 9 // 16


def make_layers(n, k, copies, device, dtype):
    """`copies` pairs (nn.Linear bf16, fp4linear static, fp4linear dynamic) with distinct weights."""
    out = []
    x_amax = 4.0
    for _ in range(copies):
        lin = torch.nn.Linear(k, n, bias=False, device=device, dtype=dtype)
        static = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(torch.tensor(x_amax)),
                                              backend="triton")
        dynamic = fp4linear.Linear.from_linear(lin, backend="triton")
        out.append((lin, static, dynamic))
    return out


def cold_layer_sets(shapes, desc: str, device: str):
    """(n, k, copies, trios, Kp) per shape: `make_layers` copies enough for cold weights on the GPU (one on the CPU)."""
    for n, k in tqdm(shapes, desc=desc, file=sys.stderr):
        copies = cold_copies(n * k * 2) if device == "cuda" else 1
        trios = make_layers(n, k, copies, device, torch.bfloat16)
        yield n, k, copies, trios, trios[0][1].k_padded


def compiled_walls(trio, x, wall_us) -> list[float]:
    """Wall time per call of `torch.compile` of (nn.Linear, static, dynamic), alternating; nan if
    compiling fails (reported). Dynamo is reset first: every Linear shares one forward, whose
    recompile limit the rows would otherwise exhaust (and fall back to eager silently)."""
    torch._dynamo.reset()
    try:
        fns = [lambda c=torch.compile(mod, dynamic=False): c(x) for mod in trio]
        for fn in fns:
            for _ in range(3):
                fn()
        return wall_us(fns)
    except Exception as e:
        print(f"torch.compile failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return [float("nan")] * len(trio)


def chain(layers, x):
    def run():
        for layer in layers:
            layer(x)
    return run


EAGER_ROUND_US = 20_000  # device time a round of eager calls aims at (at most 300 calls, at least 20)


def eager_calls(device_us: float) -> int:
    """Calls per round of an eager measurement: 300 for layers whose device time is under ~67 us (the
    host decides there), fewer for long ones (their wall time is their device time; a 5 ms layer
    needs no 300 calls a round to show it)."""
    return max(20, min(300, int(EAGER_ROUND_US / max(device_us, 1e-3))))


def timers(device):
    if device == "cuda":
        return ((lambda fn: median_us(fn, graph=True, rep_ms=50)),
                (lambda fns, calls=300: eager_us_interleaved(fns, calls=calls)))

    def cpu(fn):  # dry run: wall time of a few calls
        fn()
        t = time.perf_counter()
        for _ in range(2):
            fn()
        return (time.perf_counter() - t) / 2 * 1e6
    return cpu, (lambda fns, calls=300: [cpu(fn) for fn in fns])


def run_table(args):
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, wall_us = timers(device)
    shapes = [(64, 48), (200, 464)] if device == "cpu" else LINEAR_SHAPES
    ms = [1, 16, 40] if device == "cpu" else (args.m or MS)
    copy = copy_ceiling_tbps() if device == "cuda" else float("nan")
    rows = []
    todo = [(n, k, m) for n, k in (args.shapes or shapes) for m in ms]
    cache = {}
    for n, k, m in tqdm(todo, desc="linear", file=sys.stderr):
        wbytes_bf16 = n * k * 2
        copies = chain_copies(m, wbytes_bf16, device == "cuda")
        if cache.get("key") != (n, k, copies):
            cache.clear()
            cache.update(key=(n, k, copies), layers=make_layers(n, k, copies, device, torch.bfloat16))
            # decode: one kernel that only streams the same copies' weight codes (same cold chain)
            cache["floor"] = (read_floor_us([c[1].weight for c in cache["layers"]], graph_us)
                              if m <= COLD_ROWS and device == "cuda" else float("nan"))
        layers = cache["layers"]
        x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
        decode = m <= 16
        bf16_graph = graph_us(chain([c[0] for c in layers], x)) / copies
        # eager, every M (engines run prefill eagerly too): nn.Linear and both fp4 layers in alternating
        # rounds (host speed drifts); long layers in fewer calls a round (`eager_calls`)
        walls = wall_us([lambda i=i: layers[0][i](x) for i in range(3)], eager_calls(bf16_graph))
        bf16_eager = walls[0]
        compiled = (compiled_walls(layers[0], x, wall_us) if decode and device == "cuda" and not args.no_compile
                    else [float("nan")] * 3)
        lin0 = layers[0][1]
        for mode, idx in (("static", 1), ("dynamic", 2)):
            fp4_graph = graph_us(chain([c[idx] for c in layers], x)) / copies
            fp4_eager = walls[idx]
            temp = ops.temp_bytes(m, n, lin0.k_padded, x.dtype, dynamic=mode == "dynamic", k=k)
            rows.append([m, n, k, mode, bf16_graph, fp4_graph, bf16_eager, fp4_eager, temp, compiled[0], compiled[idx],
                         cache["floor"]])
    csv_path = args.results_dir / f"linear_{gpu_slug()}.csv"
    if args.update:  # keep the other rows of an earlier run of this card (columns added since: nan)
        rows = merge_rows(csv_path, rows, 4, parse_table_row)
    publish_table(args, rows, copy, device)


def parse_table_row(r: list[str]) -> list:
    """A row of linear_<gpu>.csv (strings) -> the row `run_table` measures (columns added since: nan)."""
    return [int(r[0]), int(r[1]), int(r[2]), r[3], *map(float, r[4:8]), int(r[8]), *(float(v) for v in r[9:12]),
            *(float("nan"),) * (12 - max(9, len(r)))]


def table_title() -> str:
    """RESULTS.md keeps one Linear table per card."""
    return f"Linear: fp4linear vs cuBLAS bf16, {gpu_slug().upper()} (benchmarks/linear_bench.py)"


def run_from_csv(args):
    """--from-csv: merge the rows of several runs' CSVs (later files win on a repeated row) into this card's
    CSV and table, without timing anything; the copy ceiling (% copy column) is measured now. For runs
    split over several GPUs of one host, each process with its own --results-dir."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    missing = [str(path) for path in args.from_csv if not path.is_file()]
    if missing:
        raise SystemExit(f"--from-csv: no such file {', '.join(missing)}")
    rows = []
    for path in reversed(args.from_csv):  # `merge_rows` keeps the rows it is given: the later files'
        rows = merge_rows(path, rows, 4, parse_table_row)
    copy = copy_ceiling_tbps() if device == "cuda" else float("nan")
    publish_table(args, rows, copy, device)


def publish_table(args, rows, copy: float, device: str):
    """Sort the rows (shape, M, static first), render the markdown view and publish CSV + RESULTS.md section."""
    order = {s: i for i, s in enumerate(LINEAR_SHAPES)}
    rows = sorted(rows, key=lambda r: (order.get((r[1], r[2]), 99), r[0], r[3] != "static"))
    md = []
    for m, n, k, mode, bf16_graph, fp4_graph, bf16_eager, fp4_eager, temp, bf16_comp, fp4_comp, floor in rows:
        p = fp4linear.plan(n, k, backend="triton")
        tbps = p.n_padded * p.k_padded * 9 // 16 / (fp4_graph * 1e-6) / 1e12
        md.append([m, n, k, mode, bf16_graph, fp4_graph, bf16_graph / fp4_graph, tbps, 100 * tbps / copy, floor,
                   bf16_eager, fp4_eager, bf16_eager / fp4_eager, bf16_comp, fp4_comp, bf16_comp / fp4_comp,
                   temp / 2**20])
    md_header = ["M", "N", "K", "scale", "bf16 us", "fp4 us", "speed-up", "weight TB/s", "% copy", "read floor us",
                 "bf16 eager us", "fp4 eager us", "eager speed-up", "bf16 compiled us", "fp4 compiled us",
                 "compiled speed-up", "temp MiB"]
    intro = (f"Whole layer, bf16 input, no bias; device times are CUDA-graph replay medians (decode rows, M <= {COLD_ROWS}: a chain "
             f"of layer copies whose bf16 weights exceed {L2_ROTATE_BYTES >> 20} MiB, so weights come from DRAM), "
             f"eager = wall time per call of a loop of calls and one synchronize (300 calls, fewer where bf16 takes over {EAGER_ROUND_US / 300:.0f} us: about {EAGER_ROUND_US / 1000:.0f} ms of bf16 device time, at least 20), median of 7 rounds in which nn.Linear and both fp4 layers alternate (one layer, weights hot); compiled (M <= 16) = the same for `torch.compile` of each layer (dynamo reset per row). 'speed-up' = bf16 / fp4 "
             f"(> 1: fp4linear faster). Weight TB/s: the padded NVFP4 weight's bytes per fp4 device time; copy "
             f"ceiling {copy:.2f} TB/s measured in the latest run (with --update, the rows of earlier runs are put against it too, "
             f"so their % copy moves as the ceiling does between runs, well under 1%). read floor (decode rows, M <= {COLD_ROWS}): device time per layer of one "
             f"Triton kernel that only reads the same copies' weight codes (launch, ramp-up and tail included), "
             f"the least a kernel streaming that weight takes. temp = per-call temporary (the dequantized "
             f"activation; on the cuBLAS path also the weight chunk, and the fp32 output chunk where cuBLAS cannot apply alpha itself: with a bias).")
    if device == "cpu":
        args.no_write = True
    publish(args, table_title(), intro, TABLE_HEADER, rows,
            csv_name=f"linear_{gpu_slug()}.csv", md_header=md_header, md_rows=md)


GEMV_CONFIGS = [(64, 256, 4, 3, 2), (64, 256, 4, 2, 2), (128, 256, 4, 3, 2), (128, 128, 4, 3, 2), (32, 256, 2, 3, 4),
                (64, 512, 4, 2, 2), (128, 256, 8, 3, 2), (64, 128, 2, 3, 4), (256, 128, 8, 3, 1), (64, 256, 4, 4, 4),
                (128, 512, 8, 2, 2), (32, 512, 4, 3, 4),
                # deeper pipelines and wider K tiles (session 16)
                (128, 512, 8, 3, 2), (128, 512, 8, 2, 3), (128, 1024, 8, 2, 2), (64, 512, 4, 3, 4), (64, 512, 4, 2, 4),
                (64, 256, 4, 5, 4), (64, 256, 4, 4, 3), (128, 256, 8, 4, 2), (256, 256, 8, 3, 1), (256, 512, 8, 2, 1),
                # more warps per SM, each with fewer words (session 17: the loop is latency-bound, ~0.8 eligible
                # warps a scheduler under ncu)
                (64, 256, 8, 4, 4), (32, 256, 4, 4, 8), (64, 256, 4, 4, 6), (128, 256, 8, 4, 3), (32, 512, 4, 3, 6),
                # the next K tile's loads issued before this tile's math (GemvConfig.prefetch; session 17)
                *((bn, bk, w, st, wv, True) for bn, bk, w, st, wv in (
                    (64, 256, 4, 4, 4), (64, 256, 4, 4, 3), (32, 512, 4, 3, 4), (64, 512, 4, 3, 4), (128, 512, 8, 2, 2),
                    (32, 256, 4, 4, 8), (32, 256, 2, 3, 4), (64, 128, 2, 3, 4), (128, 256, 8, 3, 2), (64, 128, 4, 3, 4))),
                # fewer weight rows a program and few or no K splits (session 18: is the split-K tail the fixed
                # cost left at 4096^2? No: 1x4096^2 7.65 us unsplit vs 7.47 on the routed tile; results/
                # gemv_tune_h100_act_scratch_removed.csv); 7th element: an explicit split_k
                *((bn, bk, w, st, 4, True, sk) for bn, bk, w, st, sk in (
                    (16, 512, 4, 3, 1), (16, 1024, 4, 2, 1), (32, 1024, 4, 2, 1), (32, 512, 4, 3, 2), (16, 256, 2, 3, 1),
                    (32, 256, 4, 4, 2), (16, 512, 2, 3, 2), (64, 512, 4, 3, 2))),
                (16, 512, 4, 3, 4, True), (16, 256, 2, 3, 8, True)]
# (session 23: the K loop pipelined by Triton, `tl.range(num_stages=)` on the dot-free loop, 3 / 5 stages on five
# tiles: 1.1-3x slower at M = 1, 4-7x at M = 2-4; results/gemv_tune_h100_loop_stages_removed.csv, commit 6083858)


REFERENCE_PATHS = ("routed path", "cublas path")  # candidates every tuning run keeps


def only_tiles(candidates, tiles):
    """--tiles: the (fn, name) candidates whose name holds one of these strings, and the routed / cuBLAS paths."""
    if not tiles:
        return candidates
    return [(fn, nm) for fn, nm in candidates if nm in REFERENCE_PATHS or any(t in nm for t in tiles)]


def time_candidates(candidates, copies: int = 1):
    """[(device us per layer, name)] of each (fn, name) that compiles and runs (fastest first); a
    candidate that fails (out of registers or shared memory) is reported and left out."""
    timed = []
    for fn, name in candidates:
        try:
            timed.append((median_us(fn, graph=True, rep_ms=30) / copies, name))
        except Exception as e:
            print(f"  {name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
    return sorted(timed, key=lambda r: r[0])


def run_tune_gemv(args):
    """Tuning aid for small M: the CUDA-core kernel (kernels/gemv.py) per tile against the tensor-core
    one-launch kernel and the layer's own routed path, weights cold (a chain of layer copies),
    device time per layer; every candidate's output checked against the routed path's (another K
    split sums in another order: a tolerance, not bits; the cuda tests compare bits)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    gemv_configs = [kernels.GemvConfig(bn, bk, w, st, waves=wv, prefetch=bool(rest and rest[0]),
                                       split_k=rest[1] if len(rest) > 1 else 0)
                    for bn, bk, w, st, wv, *rest in GEMV_CONFIGS]
    name_of = {cfg: f"gemv bn{cfg.block_n} bk{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
                    + (f"split{cfg.split_k}" if cfg.split_k else f"waves{cfg.waves}")
                    + (" prefetch" if cfg.prefetch else "") for cfg in gemv_configs}
    if args.tiles:
        gemv_configs = [cfg for cfg in gemv_configs if any(t in name_of[cfg] for t in args.tiles)]
    if device == "cpu":  # dry run: two tiles (one prefetching), tiny shapes
        gemv_configs = [cfg for cfg in gemv_configs if cfg.block_n == 64 and cfg.block_k == 128][:1] + \
            [cfg for cfg in gemv_configs if cfg.prefetch][:1]
    ms = sorted(set([1, 2] if device == "cpu" else (args.m or (1, 2, 4))))
    suffix = "" if ms == [1, 2, 4] or (args.update and max(ms) <= 4) else "_m" + "-".join(map(str, ms))
    path = args.results_dir / f"gemv_tune_{gpu_slug()}{suffix}.csv"
    copy = copy_ceiling_tbps() if device == "cuda" else float("nan")
    rows = []
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    for n, k, copies, trios, kp in cold_layer_sets(shapes, "gemv tune", device):
        layers = [t[1] for t in trios]
        wbytes = layers[0].n_padded * kp * 9 // 16
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in layers]
            want = layers[0](x).float()
            res = []

            def small_m():
                for layer, out in zip(layers, outs):
                    kernels.linear_small_m(x, layer.input_global_scale, layer.alpha, layer.weight,
                                           layer.weight_scale, None, out)
            res.append((small_m, "tensor-core one-launch"))

            def layer_path():
                for layer in layers:
                    layer(x)
            res.append((layer_path, "Linear's own path (today's routing)"))
            for cfg in gemv_configs:
                def run(cfg=cfg):
                    for layer, out in zip(layers, outs):
                        kernels.linear_gemv(x, layer.input_global_scale, layer.alpha, layer.weight,
                                            layer.weight_scale, None, out, config=cfg)
                res.append((run, name_of[cfg]))
            checked = [(layer_path, "Linear's own path (today's routing)")]  # (`want` is its output)
            for fn, name in res[:1] + res[2:]:
                try:
                    fn()
                except Exception as e:  # out of registers or shared memory: reported, left out
                    print(f"  {name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                    continue
                err = ((outs[0].float() - want).abs().max() / want.abs().max()).item()
                assert err < 1e-2, (m, n, k, name, err)
                checked.append((fn, name))
            lin = trios[0][0]
            bf16 = graph_us(lambda: lin(x))  # one layer: a lower bound of its cold time
            timed = sorted(((graph_us(fn) / copies, name) for fn, name in checked), key=lambda r: r[0])
            for t, name in timed:
                rows.append([m, n, k, name, t, wbytes / t / 1e6, 100 * wbytes / t / 1e6 / copy])
            print(f"gemv {m}x{n}x{k} (bf16 warm-L2 {bf16:.1f}us): " + "; ".join(
                f"{t:.2f}us {wbytes / t / 1e6:.2f}TB/s {name}" for t, name in timed[:4]) +
                f"; tensor-core {[t for t, nm in timed if nm.startswith('tensor')][0]:.2f}us"
                f"; routed path {[t for t, nm in timed if nm.startswith('Linear')][0]:.2f}us", flush=True)
            if device == "cpu":
                continue
            # written after every shape (a run cut short by a time limit keeps what it measured); --update:
            # this run's shapes and M replace theirs, the routing's evidence for M <= 4 stays in
            # gemv_tune_<gpu>.csv, other M go to a file of their own
            if args.update:
                write_csv(path, ["m", "n", "k", "kernel", "us", "weight_tbps", "pct_copy"], merge_rows(
                    path, rows, 3, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], *map(float, r[4:7])]))
            else:
                write_csv(path, ["m", "n", "k", "kernel", "us", "weight_tbps", "pct_copy"], rows)


def run_tune(args):
    """Tuning aid: the small-M paths (one launch with the activation quantized inside, or a
    quantize-dequantize launch + the GEMM), Triton-GEMM tiles for mid M, and host time per call."""
    device = "cuda"
    single = [kernels.SmallMConfig(bn, bk, w, st, waves=wv) for bn, bk, w, st, wv in
              ((64, 128, 4, 2, 2), (128, 128, 4, 2, 2), (128, 128, 8, 2, 2), (256, 128, 8, 2, 1), (128, 256, 4, 2, 2))]
    two = [kernels.GemmConfig(16, bn, bk, w, st, split_k=sk) for bn, bk, w, st, sk in
           ((64, 128, 4, 4, 0), (128, 128, 4, 3, 0), (64, 256, 4, 3, 0), (128, 128, 8, 3, 0), (64, 128, 4, 1, 8))]
    for n, k in args.shapes or LINEAR_SHAPES:
        copies, layers, wbytes = cold_static_layers(n, k, device)
        for m in [m for m in args.m if m <= 16] if args.m else (1, 4, 16):
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in layers]
            a = torch.empty(m, layers[0].k_padded, device=device, dtype=torch.float16)
            res = []
            for cfg in single:
                def run(cfg=cfg):
                    for layer, out in zip(layers, outs):
                        kernels.linear_small_m(x, layer.input_global_scale, layer.alpha, layer.weight,
                                               layer.weight_scale, None, out, config=cfg)
                res.append((run, f"one-launch bn{cfg.block_n} bk{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
                                 f"waves{cfg.waves}"))
            for cfg in two:
                def run(cfg=cfg):
                    for layer, out in zip(layers, outs):
                        kernels.fake_quantize(x, layer.input_global_scale, a, units=True)
                        kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, None, out,
                                                         config=cfg)
                res.append((run, f"two-launch bn{cfg.block_n} bk{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
                                 f"split{cfg.split_k}"))
            timed = time_candidates(res, copies)
            print(f"small-M {m}x{n}x{k}: " + "; ".join(f"{t:.2f}us {wbytes / t / 1e6:.2f}TB/s {name}"
                                                        for t, name in timed[:5]), flush=True)
    # (the first five: the earlier search; then 256 tokens per tile, so that at M <= 256 each weight
    # tile is decoded once, and narrower weight tiles with more warps)
    mid = [kernels.GemmConfig(bm, bn, bk, w, st, split_k=0) for bm, bn, bk, w, st in
           ((128, 128, 64, 8, 4), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 128, 4, 3), (64, 128, 128, 4, 3),
            (256, 64, 64, 8, 3), (256, 64, 128, 8, 2), (128, 64, 128, 8, 3), (128, 32, 128, 4, 3))]
    for n, k in args.shapes or LINEAR_SHAPES:
        layer = make_layers(n, k, 1, device, torch.bfloat16)[0][1]
        for m in [m for m in args.m if m > 16] if args.m else (128, 256, 512):
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            a = torch.empty(m, layer.k_padded, device=device, dtype=torch.float16)
            out = torch.empty(m, n, device=device, dtype=torch.bfloat16)
            lin = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
            t_bf16 = median_us(lambda: lin(x), graph=True, rep_ms=30)
            res = []
            for cfg in mid:
                def run(cfg=cfg):
                    kernels.fake_quantize(x, layer.input_global_scale, a, units=True)
                    kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, None, out,
                                                     config=cfg)
                res.append((run, cfg))
            timed = time_candidates(res)
            print(f"mid {m}x{n}x{k}: bf16 {t_bf16:.1f}us; " + "; ".join(
                f"{t:.1f}us ({t_bf16 / t:.2f}x) {c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages}"
                for t, c in timed[:3]), flush=True)
    # host time per call (eager), decode-sized
    n, k = 4096, 4096
    lin, static, dynamic = make_layers(n, k, 1, device, torch.bfloat16)[0]
    x = torch.rand(1, k, device=device).to(torch.bfloat16)
    e = torch.empty(1, device=device)
    for name, fn in [("nn.Linear bf16", lambda: lin(x)), ("fp4 static", lambda: static(x)),
                     ("fp4 dynamic", lambda: dynamic(x)), ("torch.empty", lambda: torch.empty(1, n, device=device)),
                     ("fill_", lambda: e.fill_(1.0))]:
        print(f"eager M=1 {n}x{k} {name}: {eager_us(fn):.1f} us per call", flush=True)


def run_ab_dynamic(args):
    """A dynamic input scale against the static one, and each dynamic path against the one it
    replaced: decode (M <= 4), the scale taken inside the CUDA-core kernel vs `dynamic_scales` as
    a launch of its own; larger M, cuBLAS with alpha applied by an fp32-chunk epilogue vs the
    Triton GEMM. Device time per layer (decode: a chain of cold layer copies)."""
    from fp4linear.kernels import gemv_launch

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(64, 48), (200, 464)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [1, 40] if device == "cpu" else (args.m or [1, 2, 4, 512, 2048, 8192])
    rows = []
    for n, k in tqdm(shapes, desc="dynamic a/b", file=sys.stderr):
        for m in ms:
            copies = chain_copies(m, n * k * 2, device == "cuda")
            layers = make_layers(n, k, copies, device, torch.bfloat16)
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            static = graph_us(chain([c[1] for c in layers], x)) / copies
            dynamic = graph_us(chain([c[2] for c in layers], x)) / copies
            kp = layers[0][2].k_padded
            if m > 16 and not ops.use_cublas(m, n, kp, dynamic=True) and kernels.dynamic_pass_barrier(m, kp, x.device):
                alt_name = "scale launch + pass"  # the batched-decode rows before the pass took the barrier
                with mock.patch.object(quant_dequant_launch, "DYNAMIC_PASS_BARRIER_ROWS", 16):
                    alt = graph_us(chain([c[2] for c in layers], x)) / copies
            elif ops.use_gemv(m, n, kp):
                alt_name = "dynamic_scales launch + gemv"
                with mock.patch.object(gemv_launch, "DYNAMIC_IN_KERNEL_MAX", 0):
                    alt = graph_us(chain([c[2] for c in layers], x)) / copies
            elif ops.use_cublas(m, n, kp, dynamic=True):
                alt_name = "Triton GEMM"

                def triton_path():
                    for c in layers:
                        d = c[2]
                        ops.triton_linear(x, d.weight, d.weight_scale, d.input_global_scale, d.alpha, d.weight_scale_2,
                                          None, n, True, None, cublas=False)
                alt = graph_us(triton_path) / copies
            else:
                alt_name, alt = "-", float("nan")
            rows.append([m, n, k, static, dynamic, alt, alt_name])
    if device == "cuda":  # (rows of other shapes and M from earlier runs kept)
        rows = merge_rows(args.results_dir / f"dynamic_ab_{gpu_slug()}.csv", rows, 3,
                          lambda r: [int(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]), r[6]])
        order = {s: i for i, s in enumerate(LINEAR_SHAPES)}
        rows.sort(key=lambda r: (order.get((r[1], r[2]), 99), r[0]))
    md = [[m, n, k, st, dy, dy / st, alt, alt / dy, name] for m, n, k, st, dy, alt, name in rows]
    intro = (f"Whole layer, bf16 input, no bias, device time per layer (CUDA-graph replay medians; M <= {COLD_ROWS}: a chain of "
             f"layer copies whose bf16 weights exceed {L2_ROTATE_BYTES >> 20} MiB). 'dynamic' is the routed path with a "
             "dynamic input scale; 'previous' is the path it replaced for that M ('vs previous' = previous / dynamic, "
             "> 1: the new path faster). Goal (decode): dynamic <= 1.15x static.")
    if device == "cpu":
        args.no_write = True
    publish(args, "Dynamic input scale: paths (benchmarks/linear_bench.py --ab-dynamic)", intro,
            ["m", "n", "k", "static_us", "dynamic_us", "previous_us", "previous_path"], rows,
            csv_name=f"dynamic_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "static us", "dynamic us", "dynamic / static", "previous us", "vs previous",
                       "previous path"], md_rows=md)


def run_ab_maxima(args):
    """A dynamic scale past decode: the scale launch leaving per-program maxima that the quantize
    pass reduces (`kernels.dynamic_maxima`) vs the launch reducing them itself through an atomic max
    and a ticket (`kernels.dynamic_gs_alpha`), and the routed choice between them
    (`kernels.dynamic_encode_scale`: maxima up to `kernels.maxima.MAX_MAXIMA` programs), for x itself
    and for silu_mul(h) (`ops.triton_act_linear`, GatedMLP's down projection), with the static layer
    and nn.Linear; device time per layer (CUDA-graph replays), bf16, no bias
    (-> results/maxima_ab_<gpu>.csv)."""
    from fp4linear.kernels import maxima

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 80)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [20, 300] if device == "cpu" else (args.m or [128, 256, 512, 2048, 4096, 8192])
    rows = []
    routed_cap = maxima.MAX_MAXIMA

    def timed(fn):
        """Timings of fn: per-program maxima always, a ticket always, routed; checked to give the same bits."""
        out = []
        for flag, cap in ((True, 1 << 30), (False, routed_cap), (True, routed_cap)):
            with mock.patch.object(ops, "DYNAMIC_MAXIMA", flag), mock.patch.object(maxima, "MAX_MAXIMA", cap):
                out.append((graph_us(fn), fn().clone()))
        if any(not torch.equal(y.view(torch.int16), out[0][1].view(torch.int16)) for _, y in out):
            raise AssertionError("the dynamic routes differ")
        return [t for t, _ in out]

    for n, k in tqdm(shapes, desc="maxima a/b", file=sys.stderr):
        lin, static, dynamic = make_layers(n, k, 1, device, torch.bfloat16)[0]
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            h = (torch.rand(m, 2 * k, device=device) * 8 - 4).to(torch.bfloat16)
            route = "cuBLAS" if ops.use_cublas(m, n, dynamic.k_padded, True) else "Triton"

            # the route graphs take, named (an eager call of a small layer would take the host-bound one)
            def linear(layer, dyn, inp, act=None):
                fn = ops.triton_linear if act is None else functools.partial(ops.triton_act_linear, act=act)
                return lambda: fn(inp, weight=layer.weight, weight_scale=layer.weight_scale, gs=layer.input_global_scale,
                                  alpha=layer.alpha, weight_scale_2=layer.weight_scale_2, bias=None, n=n, dynamic=dyn,
                                  alpha_host=layer._alpha_host, cublas=ops.use_cublas(m, n, layer.k_padded, dyn))
            for what, act, bf16, inp in (("x", None, lambda: lin(x), x),
                                         ("silu_mul(h)", "silu_mul",
                                          lambda: lin(torch.nn.functional.silu(h[:, :k]) * h[:, k:]), h)):
                t_bf16, t_static = graph_us(bf16), graph_us(linear(static, False, inp, act))
                t_maxima, t_ticket, t_routed = timed(linear(dynamic, True, inp, act))
                programs = kernels.scale_programs(m, inp.shape[1], act)
                rows.append([m, n, k, what, route, programs, t_bf16, t_static, t_maxima, t_ticket, t_routed])
                print(f"maxima {what} {m}x{n}x{k} ({route}, {programs} programs): bf16 {t_bf16:.1f}, static "
                      f"{t_static:.1f}, dynamic maxima {t_maxima:.1f} / ticket {t_ticket:.1f} / routed {t_routed:.1f} us",
                      flush=True)
    md = [[m, n, k, w, r, p, bf, st, mx, tk, ro, tk - mx, ro / st, bf / ro]
          for m, n, k, w, r, p, bf, st, mx, tk, ro in rows]
    intro = ("Dynamic input scale past decode, bf16 input, no bias; device time per layer (CUDA-graph replay "
             "medians), one process. 'maxima': the scale launch stores one max |x| per program and the pass that "
             "quantizes x reduces them and writes alpha; 'ticket': the launch folds them with an atomic max and its "
             "last program (a ticket) writes (gs, alpha) (the route before); 'routed': maxima where the launch has "
             f"at most {routed_cap} programs ('programs'), else the ticket. All three give the same bits (checked per "
             "row). 'silu_mul(h)': the down projection taking h = [gate, up] (`ops.triton_act_linear`, as GatedMLP; "
             "its scale launch reads act(h)), bf16 = nn.Linear after torch's silu * up.")
    if device == "cpu":
        args.no_write = True
    publish(args, "Dynamic scale past decode: per-program maxima vs a ticket (benchmarks/linear_bench.py --ab-maxima)",
            intro, ["m", "n", "k", "input", "route", "scale_programs", "bf16_us", "static_us", "dynamic_maxima_us",
                    "dynamic_ticket_us", "dynamic_routed_us"],
            rows, csv_name=f"maxima_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "input", "GEMM route", "scale programs", "bf16 us", "static us",
                       "dynamic maxima us", "dynamic ticket us", "dynamic routed us", "ticket - maxima us",
                       "routed / static", "routed speed-up vs bf16"], md_rows=md)


def run_ab_alpha(args):
    """The cuBLAS path with a dynamic input scale: cuBLAS reading alpha through a device pointer
    (`fp4linear.cublas_alpha`) vs fp32 output chunks scaled by `kernels.alpha_epilogue` (the route
    before it), vs the Triton GEMM, with the static layer and nn.Linear; device time per layer
    (CUDA-graph replays), bf16 input, no bias (-> results/alpha_ab_<gpu>.csv)."""
    from fp4linear import cublas_alpha

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(200, 464)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [130, 600] if device == "cpu" else (args.m or [128, 256, 512, 2048, 8192])
    rows = []
    for n, k in tqdm(shapes, desc="alpha a/b", file=sys.stderr):
        lin, static, dynamic = make_layers(n, k, 1, device, torch.bfloat16)[0]
        kp = dynamic.k_padded
        for m in ms:
            if not ops.use_cublas(m, n, kp) and m < 512:
                continue  # the cuBLAS path is no candidate here
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)

            def forced(cublas, reads_alpha):
                def run():
                    ops.triton_linear(x, dynamic.weight, dynamic.weight_scale, dynamic.input_global_scale,
                                      dynamic.alpha, dynamic.weight_scale_2, None, n, True, None, cublas=cublas)
                return Forced(run, ((cublas_alpha, {"ENABLED": reads_alpha}),))
            t = [graph_us(lambda: lin(x)), graph_us(lambda: static(x)), graph_us(lambda: dynamic(x)),
                 graph_us(forced(True, True)), graph_us(forced(True, False)), graph_us(forced(False, True))]
            route = "cuBLAS" if ops.use_cublas(m, n, kp, True) else "Triton"
            rows.append([m, n, k, route, *t])
            print(f"alpha {m}x{n}x{k}: bf16 {t[0]:.1f}, static {t[1]:.1f}, dynamic {t[2]:.1f} ({route}); cuBLAS "
                  f"reads alpha {t[3]:.1f}, fp32 epilogue {t[4]:.1f}, Triton {t[5]:.1f} us", flush=True)
    md = [[m, n, k, bf, st, dy, r, ra, ep, tr, ep / ra, bf / dy, dy / st]
          for m, n, k, r, bf, st, dy, ra, ep, tr in rows]
    intro = ("Dynamic input scale past decode, bf16 input, no bias; device time per layer (CUDA-graph replay "
             "medians), one process. 'cuBLAS reads alpha': alpha = 1 / (gs * gs_w) read by cuBLAS through a device "
             "pointer (`fp4linear.cublas_alpha`); 'fp32 epilogue': the route before it (cuBLAS writes fp32 "
             "chunks, `kernels.alpha_epilogue` scales and rounds them); 'Triton': the Triton GEMM path; "
             "'dynamic' = the routed layer. 'gain' = fp32 epilogue / cuBLAS reads alpha.")
    if device == "cpu":
        args.no_write = True
    publish(args, "Dynamic scale on the cuBLAS path: alpha read by cuBLAS (benchmarks/linear_bench.py --ab-alpha)",
            intro, ["m", "n", "k", "dynamic_route", "bf16_us", "static_us", "dynamic_us", "cublas_reads_alpha_us",
                    "fp32_epilogue_us", "triton_us"], rows, csv_name=f"alpha_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "bf16 us", "static us", "dynamic us", "dynamic route", "cuBLAS reads alpha us",
                       "fp32 epilogue us", "Triton us", "gain", "dynamic speed-up vs bf16", "dynamic / static"],
            md_rows=md)


def run_ab_operands(args):
    """The cuBLAS path's operands written by one launch (`kernels.cublas_operands`: the activation's
    values and the first weight chunk) against the two launches it replaced (`fake_quantize`, then
    `dequantize_rows`), static and dynamic scale, device time of the whole layer, same process."""
    from unittest import mock

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(200, 464)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [70] if device == "cpu" else (args.m or [512, 2048, 8192])

    def two_launches(x, gs, a, w_data, w_scale, w_out):
        kernels.fake_quantize(x, gs, a, units=False)
        kernels.dequantize_rows(w_data, w_scale, 0, w_out)

    rows = []
    for n, k in tqdm(shapes, desc="operands a/b", file=sys.stderr):
        layers = make_layers(n, k, 1, device, torch.bfloat16)[0]
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            for mode, layer in (("static", layers[1]), ("dynamic", layers[2])):
                if not ops.use_cublas(m, n, layer.k_padded, mode == "dynamic"):
                    continue
                one = graph_us(lambda: layer(x))
                with mock.patch.object(kernels, "cublas_operands", two_launches):
                    two = graph_us(lambda: layer(x))
                rows.append([m, n, k, mode, one, two])
    intro = ("cuBLAS path, whole layer, bf16 input, no bias, device time (CUDA-graph replay medians). 'one launch': the "
             "activation's values and the first weight chunk by `kernels.cublas_operands`; 'two launches': "
             "`fake_quantize` then `dequantize_rows`. 'ratio' = two / one (> 1: one launch faster).")
    if device == "cpu":
        args.no_write = True
    publish(args, "cuBLAS operands: one launch vs two (benchmarks/linear_bench.py --ab-operands)", intro,
            ["m", "n", "k", "input_scale", "one_launch_us", "two_launches_us"], rows,
            csv_name=f"operands_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "scale", "one launch us", "two launches us", "ratio"],
            md_rows=[[*r, r[5] / r[4]] for r in rows])


EAGER_PATHS_BF16_US = 100  # --ab-fused times eager calls of layers under this bf16 device time (host-bound ones)
AB_FUSED_SHAPES = [(384, 384), (1536, 384), (384, 1536), (2688, 464), (1288, 2688), (2576, 2688), (4096, 4096),
                   (8192, 8192)]  # MiniLM's three, then per-rank TP shapes and two large ones


def run_ab_fused(args):
    """Paths of the whole layer past decode: x quantized inside the Triton GEMM (one launch,
    `kernels.nvfp4_gemm_quantize_x`), the quantize-dequantize pass then the Triton GEMM (two
    launches), the cuBLAS path, and (M <= 16, static) the tensor-core single-launch kernel; device
    time (CUDA-graph replays, weights cold at M <= 16) and eager wall time (the paths and nn.Linear
    in alternating rounds; layers under ~20 us of device time only, where the host is what eager
    measures), bf16 input, no bias, static and dynamic scale, same process."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, wall_us = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or AB_FUSED_SHAPES)
    ms = [16, 40] if device == "cpu" else (args.m or [16, 128, 512, 768, 2048])
    def routed(cublas, fused, layer_fn, eager_route=False):
        """layer_fn under a forced path (the routing functions replaced while it runs; `ops.eager_route`
        too, so that an eager call takes the path named rather than an eager route; eager_route: the
        one-launch route of small eager layers itself, forced on, graphs included)."""
        rules = dict(use_gemv=lambda *a: False, eager_route=lambda *a: ops.ONE_LAUNCH if eager_route else None)
        if cublas is not None:
            rules["use_cublas"] = lambda *a: cublas
        if fused is not None:
            rules["use_quantize_in_gemm"] = lambda *a: fused
        return Forced(layer_fn, ((ops, rules),))

    # (name, cublas, fused, eager route); 'host-bound tiles': the one launch with the tiles `ops.eager_route`
    # gives it (`ops.TILES_FOR_HOST_BOUND`), where 'fused' takes the tiles `kernels.gemm_config` picks for M
    paths = [("fused", False, True, False), ("host-bound tiles", None, None, True),
             ("two launches", False, False, False), ("cublas", True, None, False)]
    rows = []
    for n, k in tqdm(shapes, desc="fused a/b", file=sys.stderr):
        for m in ms:
            copies = cold_copies(n * k * 2) if m <= 16 and device == "cuda" else 1
            layers = make_layers(n, k, copies, device, torch.bfloat16)
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            bf16 = graph_us(chain([c[0] for c in layers], x)) / copies
            eager = device == "cpu" or bf16 < EAGER_PATHS_BF16_US
            for mode, idx in (("static", 1), ("dynamic", 2)):
                fns, names = [], []
                for name, cublas, fused, eager_route in paths:
                    if cublas and not ops.use_cublas(m, n, layers[0][idx].k_padded, False) and m < 512:
                        continue  # cuBLAS only where it is a candidate (M >= 512 or small weights from M = 64)
                    if eager_route and (m <= 16 or not args.host_bound_tiles):
                        continue  # (up to 16 rows the host-bound route takes the decode tiles: 'fused' times them)
                    fns.append(routed(cublas, fused, chain([c[idx] for c in layers], x), eager_route))
                    names.append(name)
                if m <= kernels.SMALL_M and mode == "static":
                    outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in layers]

                    def small_m(outs=outs):
                        for c, out in zip(layers, outs):
                            lyr = c[1]
                            kernels.linear_small_m(x, lyr.input_global_scale, lyr.alpha, lyr.weight,
                                                   lyr.weight_scale, None, out)
                    fns.append(small_m)
                    names.append("small_m kernel")
                nan = float("nan")
                dev = []
                for fn, name in zip(fns, names):  # a forced path that does not compile for this tile: reported, nan
                    try:
                        dev.append(graph_us(fn) / copies)
                    except Exception as e:
                        print(f"  {m}x{n}x{k} {mode} {name}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        dev.append(nan)
                failed = {name for name, d in zip(names, dev) if d != d}
                bf16_wall, wall_of = nan, {}
                if eager:  # one layer (eager measures the host), nn.Linear and the routed paths alternating
                    timed = [(name, routed(c, f, lambda lyr=layers[0][idx]: lyr(x), e)) for name, c, f, e in paths
                             if name in names and name not in failed]
                    walls = wall_us([lambda lin=layers[0][0]: lin(x)] + [fn for _, fn in timed], eager_calls(bf16))
                    bf16_wall, wall_of = walls[0], {name: w for (name, _), w in zip(timed, walls[1:])}
                for j, name in enumerate(names):
                    rows.append([m, n, k, mode, name, bf16, dev[j], bf16_wall, wall_of.get(name, nan)])
                best = min((j for j in range(len(names)) if dev[j] == dev[j]), key=lambda j: dev[j])
                print(f"{m}x{n}x{k} {mode}: bf16 {bf16:.2f}us; " + "; ".join(
                    f"{nm} {d:.2f}us" for nm, d in zip(names, dev)) + f" -> {names[best]}", flush=True)
    intro = ("Paths past decode, whole layer, bf16 input, no bias. 'fused': x quantized inside the Triton GEMM "
             "(`kernels.nvfp4_gemm_quantize_x`, one launch); 'two launches': the quantize-dequantize pass, then the "
             "Triton GEMM; 'cublas': the cuBLAS path (operands launch, then cuBLAS); 'host-bound tiles' (runs with "
             "--host-bound-tiles): the one launch with the tiles small eager layers' route gives it "
             "(`ops.TILES_FOR_HOST_BOUND`); 'small_m kernel': the "
             "tensor-core single-launch kernel (M <= 16, static). Device time: CUDA-graph replay medians (M <= 16: "
             "weights cold); eager: wall time per call, the paths and nn.Linear in alternating rounds (each path "
             "forced, the eager routes (`ops.eager_route`) included), for layers under "
             f"{EAGER_PATHS_BF16_US} us of bf16 device time (the rows before session 24: under 20 us, and at "
             "M x N x Kp <= 2^29 every path's eager call took that one-launch route).")
    if device == "cpu":
        args.no_write = True
    else:  # runs over some shapes or M keep the other rows of the card's file
        rows = merge_rows(args.results_dir / f"fused_ab_{gpu_slug()}.csv", rows, 5,
                          lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], r[4], *map(float, r[5:9])])
        rows.sort(key=lambda r: (r[1] * r[2], r[1], r[0], r[3]))
    publish(args, "Triton path: x quantized inside the GEMM vs a pass first (benchmarks/linear_bench.py --ab-fused)",
            intro, ["m", "n", "k", "input_scale", "path", "bf16_graph_us", "fp4_graph_us", "bf16_eager_us",
                    "fp4_eager_us"], rows, csv_name=f"fused_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "scale", "path", "bf16 us", "fp4 us", "speed-up", "bf16 eager us",
                       "fp4 eager us", "eager speed-up"],
            md_rows=[[*r[:5], r[5], r[6], r[5] / r[6], r[7], r[8], r[7] / r[8]] for r in rows])


AB_EAGER_SHAPES = [(4096, 4096), (8192, 3696), (2736, 4096), (8192, 8192)]  # the host-bound decode rows, GLM-4.5-Air's
# per-rank gate/up (2 x 1368 rows), and a weight past HOST_BOUND_DECODE_ELEMENTS (unchanged: a control)


def run_ab_eager(args):
    """Eager decode calls (M <= 16) by route: the eager route (`ops.eager_route`: one launch, x quantized
    inside the GEMM, on weights up to `ops.HOST_BOUND_DECODE_ELEMENTS`) against the route graphs
    capture (eager_route off: the pass, then the GEMM) and nn.Linear bf16, in alternating rounds. Wall
    time per call of a loop of calls and one synchronize, 'hot': one layer called again and again (its
    weights stay in L2: the host's time), 'cold': a chain of layer copies whose bf16 weights exceed
    256 MiB, called eagerly (a model's decode step: every weight from DRAM), time per layer. Device
    time of both routes (CUDA-graph replays of the cold chain) beside them."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, wall_us = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or AB_EAGER_SHAPES)
    ms = [4] if device == "cpu" else (args.m or [2, 4, 8, 16])
    if device == "cuda":  # more rounds than the table's: the host's speed drifts by up to 1.5x between rounds here
        wall_us = lambda fns: eager_us_interleaved(fns, rounds=11)  # noqa: E731

    def with_rule(fn, name, answer):
        """fn with the routing function `ops.<name>` answering `answer` while it runs."""
        return Forced(fn, ((ops, {name: lambda *a: answer}),))

    def captured_route(fn):
        return with_rule(fn, "eager_route", None)

    def one_launch(fn):  # the eager route (the GEMM quantizing x), which a capture would not take
        return with_rule(fn, "use_quantize_in_gemm", True)

    rows = []
    for n, k in tqdm(shapes, desc="eager a/b", file=sys.stderr):
        copies = cold_copies(n * k * 2) if device == "cuda" else 2
        layers = make_layers(n, k, copies, device, torch.bfloat16)
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            for mode, idx in (("static", 1), ("dynamic", 2)):
                kp = layers[0][idx].k_padded
                # the routes differ where an eager call is host-bound and the captured route takes two launches
                eager_route = (ops.eager_route(x, m, n, kp, mode == "dynamic") == ops.ONE_LAUNCH
                               and not ops.use_gemv(m, n, kp)
                               and not ops.use_quantize_in_gemm(m, n, kp))
                cold = [chain([c[j] for c in layers], x) for j in (0, idx)]
                dev = [graph_us(one_launch(cold[1]) if eager_route else cold[1]) / copies, graph_us(cold[1]) / copies]
                hot = wall_us([lambda: layers[0][0](x), lambda: layers[0][idx](x),
                               captured_route(lambda: layers[0][idx](x))])
                walls = wall_us([cold[0], cold[1], captured_route(cold[1])])
                walls = [w / copies for w in walls]
                rows.append([m, n, k, mode, int(eager_route), *hot, *walls, *dev])
                print(f"{m}x{n}x{k} {mode} (eager route {'one launch' if eager_route else 'as captured'}): hot "
                      f"bf16 {hot[0]:.1f} / eager route {hot[1]:.1f} / captured route {hot[2]:.1f} us; cold "
                      f"{walls[0]:.1f} / {walls[1]:.1f} / {walls[2]:.1f} us", flush=True)
    intro = ("Eager decode calls by route, bf16 input, no bias. 'eager route': what an eager call takes (`ops.eager_route`: "
             "one launch, x quantized inside the GEMM, on weights up to HOST_BOUND_DECODE_ELEMENTS); 'captured route': "
             "what CUDA graphs and torch.compile take (eager_route off: the quantize pass, then the GEMM; the CUDA-core "
             "kernel at 1-4 rows on the smaller weights). 'one launch' = 1 where the two routes differ, 0 where they "
             "are the same code (those rows show the host's noise). Wall time per call of a loop of 300 calls and one "
             "synchronize, nn.Linear and both routes in alternating rounds (median of 11): 'hot' = one layer called "
             "over and over (weights in L2: the host's time), 'cold' = an eager chain of layer copies whose bf16 "
             "weights exceed 256 MiB (every weight from DRAM, as in a model's decode step), time per layer. Device "
             "us: CUDA-graph replays of the cold chain per layer, each route forced. Speed-up = bf16 / fp4 (> 1: "
             "fp4linear faster).")
    header = ["m", "n", "k", "input_scale", "one_launch", "bf16_hot_us", "eager_route_hot_us", "captured_route_hot_us",
              "bf16_cold_us", "eager_route_cold_us", "captured_route_cold_us", "eager_route_device_us",
              "captured_route_device_us"]
    if device == "cpu":
        args.no_write = True
    else:
        rows = merge_rows(args.results_dir / f"eager_ab_{gpu_slug()}.csv", rows, 4,
                          lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]), *map(float, r[5:13])])
        rows.sort(key=lambda r: (r[1] * r[2], r[1], r[0], r[3]))
    publish(args, "Eager decode: one launch vs the captured route (benchmarks/linear_bench.py --ab-eager)", intro,
            header, rows, csv_name=f"eager_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "scale", "one launch", "hot bf16 us", "hot eager route us",
                       "hot captured route us", "hot speed-up (eager / captured route)", "cold bf16 us",
                       "cold eager route us", "cold captured route us", "cold speed-up (eager / captured route)",
                       "device us (eager / captured route)"],
            md_rows=[[*r[:5], r[5], r[6], r[7], f"{r[5] / r[6]:.2f} / {r[5] / r[7]:.2f}", r[8], r[9], r[10],
                      f"{r[8] / r[9]:.2f} / {r[8] / r[10]:.2f}", f"{r[11]:.1f} / {r[12]:.1f}"] for r in rows])


FUSED_CONFIGS = [(64, 64, 128, 4, 3, 0), (32, 64, 128, 4, 3, 0), (64, 128, 128, 4, 3, 0), (64, 64, 64, 4, 4, 0),
                 (128, 64, 64, 4, 4, 0), (64, 64, 128, 4, 3, 1), (16, 64, 128, 4, 4, 0), (32, 32, 128, 2, 3, 0)]


# --tune-fused at decode sizes (M <= 16): (block_n, block_k, warps, stages, programs_per_sm,
# min_split_tiles, weight the right operand); the routed per-rank tile is (64, 128, 4, 4, 2, 4, True)
FUSED_DECODE_CONFIGS = [(64, 128, 4, 4, 2, 4, True), (64, 128, 4, 4, 2, 2, True), (64, 128, 4, 4, 2, 1, True),
                        (64, 128, 4, 4, 3, 1, True), (64, 128, 4, 4, 4, 1, True), (64, 64, 4, 4, 2, 1, True),
                        (64, 64, 4, 4, 4, 1, True), (32, 128, 2, 4, 2, 1, True), (32, 128, 2, 4, 4, 1, True),
                        (32, 64, 2, 4, 4, 1, True), (128, 128, 8, 3, 2, 1, True), (128, 128, 4, 3, 2, 1, True),
                        (64, 256, 4, 3, 2, 1, True), (64, 128, 2, 4, 2, 1, False), (64, 128, 2, 4, 4, 1, False),
                        (32, 128, 1, 4, 4, 1, False)]


def run_tune_fused(args):
    """Tuning aid: tiles of the GEMM quantizing x itself (`kernels.nvfp4_gemm_quantize_x`) against the
    layer's routed path; device time, static scale, bf16 input. Past 16 rows, where few, tall tiles
    leave most SMs idle; at decode sizes (M <= 16: weights cold, a chain of copies) the K splits and
    narrow tiles that put more programs on the SMs (-> results/fused_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    rows = []
    configs = [kernels.GemmConfig(bm, bn, bk, w, st, split_k=sk, predequant_a=False)
               for bm, bn, bk, w, st, sk in FUSED_CONFIGS]
    decode_configs = [kernels.GemmConfig(16, bn, bk, w, st, split_k=0, programs_per_sm=pps, min_split_tiles=mst,
                                         predequant_a=False, w_operand_b=right)
                      for bn, bk, w, st, pps, mst, right in FUSED_DECODE_CONFIGS]
    shapes = [(200, 464)] if device == "cpu" else (args.shapes or AB_FUSED_SHAPES[:5])
    for n, k in tqdm(shapes, desc="fused tune", file=sys.stderr):
        for m in ([4, 40] if device == "cpu" else args.m or (128, 768, 2048)):
            copies = cold_copies(n * k * 2) if m <= 16 and device == "cuda" else 1
            layers = [c[1] for c in make_layers(n, k, copies, device, torch.bfloat16)]
            layer = layers[0]
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in layers]
            res = [(chain(layers, x), "routed path")]
            for cfg in decode_configs if m <= 16 else configs:
                if cfg.block_k > layer.k_padded or layer.k_padded % cfg.block_k:
                    continue

                def run(cfg=cfg):
                    for lyr, out in zip(layers, outs):
                        kernels.nvfp4_gemm_quantize_x(x, lyr.input_global_scale, lyr.weight, lyr.weight_scale,
                                                      lyr.alpha, None, out, config=cfg)
                name = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} split{cfg.split_k}"
                if m <= 16:
                    tiles = -(-n // cfg.block_n)
                    split, _ = gemm_launch.k_splits(cfg, tiles, layer.k_padded, gemm_launch._sm_count(x.device))
                    name = (f"16x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages} "
                            f"{'right' if cfg.w_operand_b else 'left'} {cfg.programs_per_sm}/SM >={cfg.min_split_tiles} "
                            f"tiles: {tiles * split} programs")
                res.append((run, name))
            if device == "cpu":  # walk the code: every candidate once, its bits against the routed path's
                want = layer(x)
                for fn, name in res[1:]:
                    fn()
                    assert ((outs[0].float() - want.float()).abs().max() <= 1e-2 * want.float().abs().max()), name
                continue
            timed = time_candidates(res, copies)
            for t, name in timed:
                rows.append([m, n, k, name, t])
            print(f"fused {m}x{n}x{k}: " + "; ".join(f"{t:.2f}us {nm}" for t, nm in timed[:5]) +
                  f"; routed {[t for t, nm in timed if nm == 'routed path'][0]:.2f}us", flush=True)
    if device == "cpu":
        return
    path = args.results_dir / f"fused_tune_{gpu_slug()}.csv"
    if args.update:  # keep the other shapes' and M's rows
        rows = merge_rows(path, rows, 3, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], float(r[4])])
    write_csv(path, ["m", "n", "k", "kernel", "us"], rows)


# --tune-operand candidates: (block_m, block_n, block_k, warps, stages) with the weight as the MMA's right
# operand (`GemmConfig.w_operand_b`), per M class
OPERAND_CONFIGS = {
    "decode": [(16, 64, 256, 4, 3), (16, 64, 128, 4, 4), (16, 128, 128, 4, 3), (16, 128, 256, 4, 3),
               (16, 32, 256, 4, 4), (16, 128, 128, 8, 3), (16, 64, 512, 4, 2), (16, 64, 512, 4, 3),
               (16, 128, 256, 8, 3), (16, 64, 256, 4, 4), (16, 64, 256, 2, 3), (16, 32, 512, 4, 3),
               (16, 128, 512, 8, 2)],
    # batched decode, 17-64 rows: 32 / 64-row tiles on mma.sync (Triton takes wgmma from 64 rows), K splits to fill the SMs
    "small": [(32, 64, 256, 4, 3), (32, 64, 128, 4, 4), (32, 128, 128, 4, 3), (32, 128, 256, 4, 3), (32, 64, 256, 8, 3),
              (32, 128, 128, 8, 3), (64, 64, 128, 4, 3), (64, 64, 256, 4, 3), (64, 128, 128, 8, 3), (16, 64, 256, 4, 3),
              (16, 64, 128, 4, 4),
              # (.., dot_m): the rows as 16-row dots sharing each decoded weight tile (`GemmConfig.dot_m`), A in
              # the mma16 order (32-row dots, A row-major: measured slower, RESULTS.md)
              (32, 64, 256, 4, 3, 16), (32, 64, 128, 4, 4, 16), (32, 128, 256, 4, 3, 16), (32, 128, 128, 4, 3, 16),
              (64, 64, 128, 4, 3, 16), (64, 64, 64, 4, 4, 16), (64, 128, 128, 8, 3, 16), (64, 64, 256, 4, 3, 16)],
    "mid": [(64, 64, 128, 4, 3), (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (128, 128, 64, 8, 3), (64, 128, 128, 4, 3),
            (128, 128, 128, 8, 3), (256, 128, 64, 8, 3),
            # the batched-decode tiles of 16-row dots (dot_m 16 needs block_m 32 or 64), the weight decoded once per 32 / 64 rows
            (32, 64, 256, 4, 3, 16), (32, 128, 256, 4, 3, 16), (32, 128, 128, 4, 3, 16), (64, 64, 128, 4, 3, 16),
            (64, 128, 128, 8, 3, 16), (64, 64, 256, 4, 3, 16)],
    "prefill": [(128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 128, 8, 3)],
}


def operand_configs(cls: str, kp: int) -> list:
    """OPERAND_CONFIGS[cls] as GemmConfigs, those whose K tile divides Kp."""
    return [kernels.GemmConfig(bm, bn, bk, w, st, split_k=0, predequant_a=True, w_operand_b=True,
                               dot_m=dot_m[0] if dot_m else 0, a_mma16=dot_m == [16])
            for bm, bn, bk, w, st, *dot_m in OPERAND_CONFIGS[cls] if bk <= kp and kp % bk == 0]


class TileCandidates:
    """Decode-size candidates over a chain of layer copies (trios from `make_layers`): the routed path,
    and per GemmConfig the pass + GEMM (two launches) or the GEMM quantizing x (one launch)."""

    def __init__(self, trios, x):
        self.trios, self.x = trios, x
        m, n = x.shape[0], trios[0][1].out_features
        self.outs = [torch.empty(m, n, device=x.device, dtype=torch.bfloat16) for _ in trios]
        self.a = torch.empty(m, trios[0][1].k_padded, device=x.device, dtype=torch.float16)
        self.a16 = torch.empty(kernels.mma16_rows(m, 1), trios[0][1].k_padded, device=x.device, dtype=torch.float16)

    def over_layers(self, step):
        def run():
            for (_, layer, _), out in zip(self.trios, self.outs):
                step(layer, out)
        return run

    def routed(self):
        return self.over_layers(lambda layer, out: layer(self.x))

    def two_launches(self, cfg):
        a = self.a16 if cfg.a_mma16 else self.a

        def step(layer, out):
            kernels.fake_quantize(self.x, layer.input_global_scale, a, units=True, a_order=cfg.a_order)
            kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, None, out, config=cfg)
        return self.over_layers(step)

    def one_launch(self, cfg):
        return self.over_layers(lambda layer, out: kernels.nvfp4_gemm_quantize_x(
            self.x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha, None, out, config=cfg))

    def dry_run(self, res, own_output=("routed path",)):
        """CPU: every candidate once, its outputs checked against the layers' own -> [(nan, name)]."""
        want = torch.stack([t[1](self.x) for t in self.trios]).float()
        timed = []
        for fn, name in res:
            fn()
            if name not in own_output:  # (those return their output instead of writing outs)
                err = ((torch.stack(self.outs).float() - want).abs().max() / want.abs().max()).item()
                assert err < 1e-2, (name, err)
            timed.append((float("nan"), name))
        return timed


# --tune-pipelined candidates (block_m, block_n, block_k, cp.async stages): the Gluon kernel of kernels/gemm_wgmma.py
# with the decoded weight in shared memory (wgmma's B; block_m A rows, block_m / 16 warps) ...
PIPELINED_CONFIGS = [(128, 128, 64, 3), (128, 128, 64, 4), (64, 128, 64, 4), (128, 256, 64, 3), (64, 256, 64, 3),
                     (128, 64, 64, 4), (64, 64, 64, 4), (128, 128, 128, 3)]
# ... and in registers (wgmma's A, `GemmConfig.w_registers`; block_m A rows = wgmma's N, block_n weight rows,
# block_n / 16 warps). --registers: only these, with the routed path, cuBLAS and the routed shared-memory tiles.
REGISTER_CONFIGS = [(128, 128, 64, 4), (128, 128, 64, 5), (256, 128, 64, 3), (256, 128, 64, 4), (64, 128, 64, 4),
                    (128, 64, 64, 4), (256, 64, 64, 4), (128, 128, 128, 3), (64, 64, 64, 4)]
# --capped: tiles under a register cap (a fifth item, GemmConfig.max_registers: 64x128x64 s3 fits two
# CTAs per SM at 128), with the uncapped tile and the routed one for reference
CAPPED_REGISTER_CONFIGS = [(64, 128, 64, 3, 128), (64, 128, 64, 4, 128), (64, 128, 64, 3), (256, 128, 64, 4)]


def run_tune_pipelined(args):
    """Past decode: the software-pipelined Gluon GEMMs (`GemmConfig.wgmma_stages`; the decoded weight in
    shared memory, and in wgmma's registers: `w_registers`) per tile and split, after the same
    quantize pass, against the routed path and Triton's schedule of the same tiles (--registers: the
    cuBLAS path instead); device time (CUDA-graph replays), static scale, bf16 input, cuBLAS bf16 in
    the same process (-> results/pipelined_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [40] if device == "cpu" else (args.m or [128, 256, 512, 2048])
    rows = []
    for n, k in tqdm(shapes, desc="pipelined tune", file=sys.stderr):
        trios = make_layers(n, k, 1, device, torch.bfloat16)
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            cand = TileCandidates(trios, x)
            res = [(cand.routed(), "routed path")]
            kp = trios[0][1].k_padded
            shared = [(128, 64, 64, 4, 1), (128, 128, 64, 3, 1)] if args.registers else [
                (*c, pps) for c in PIPELINED_CONFIGS for pps in (1, 2)]
            for bm, bn, bk, stages, pps in shared:
                if kp % bk == 0:
                    cfg = kernels.GemmConfig(bm, bn, bk, bm // 16, 3, split_k=0, programs_per_sm=pps,
                                             predequant_a=True, w_operand_b=True, wgmma_stages=stages)
                    res.append((cand.two_launches(cfg), f"pipelined {bm}x{bn}x{bk} s{stages} pps{pps}"))
            for bm, bn, bk, stages, *cap in CAPPED_REGISTER_CONFIGS if args.capped else REGISTER_CONFIGS:
                # programs per SM (the split chosen from it), or an explicit split (--register-splits: the auto
                # split can leave a partial second wave of one-per-SM programs, e.g. 64 tiles x 3 on 132 SMs)
                for pps, split in [(1, 0), (2, 0)] + [(1, s) for s in args.register_splits or ()]:
                    if kp % bk == 0:
                        cfg = kernels.GemmConfig(bm, bn, bk, bn // 16, 3, split_k=split, programs_per_sm=pps,
                                                 predequant_a=True, w_registers=True, wgmma_stages=stages,
                                                 max_registers=cap[0] if cap else 0)
                        res.append((cand.two_launches(cfg), f"registers {bm}x{bn}x{bk} s{stages} " +
                                    (f"split{split}" if split else f"pps{pps}") + (f" r{cap[0]}" if cap else "")))
            if args.registers:
                res.append((cand.over_layers(lambda layer, out: ops.triton_linear(
                    x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2,
                    None, n, False, layer._alpha_host, cublas=True)), "cublas path"))
            else:
                for bm, bn, bk in ((128, 128, 64), (128, 64, 64)):  # Triton's schedule of the same tiles
                    cfg = kernels.GemmConfig(bm, bn, bk, bm // 16, 3, split_k=0, predequant_a=True, w_operand_b=True)
                    res.append((cand.two_launches(cfg), f"triton {bm}x{bn}x{bk} w{bm // 16} s3"))
            res = only_tiles(res, args.tiles)
            bf16 = graph_us(lambda: trios[0][0](x))
            timed = cand.dry_run(res, REFERENCE_PATHS) if device == "cpu" else time_candidates(res)
            for t, name in timed:
                rows.append([m, n, k, name, t, bf16])
            routed = next(t for t, nm in timed if nm == "routed path")
            print(f"pipelined {m}x{n}x{k}: bf16 {bf16:.2f}us routed {routed:.2f}us ({bf16 / routed:.2f}x); " +
                  "; ".join(f"{t:.2f}us ({bf16 / t:.2f}x) {nm}" for t, nm in timed[:4]), flush=True)
        if device == "cuda":  # after every shape: a run cut short keeps what it measured
            path = args.results_dir / f"pipelined_{'capped' if args.capped else 'tune'}_{gpu_slug()}.csv"
            # (per candidate: a run of some candidates keeps the others' rows)
            merged = merge_rows(path, rows, 4, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], float(r[4]),
                                                          float(r[5])])
            write_csv(path, ["m", "n", "k", "kernel", "us", "bf16_us"], merged)
    if device == "cuda" and args.registers and not args.capped and not args.no_write:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        publish_pipelined(args, args.results_dir / f"pipelined_tune_{gpu_slug()}.csv",
                          f"{card()} · {stamp} · torch {torch.__version__}, triton {triton.__version__} · "
                          f"`{' '.join(sys.argv)}`")


PIPELINED_TITLE = "Pipelined Hopper GEMM past decode (benchmarks/linear_bench.py --tune-pipelined)"


def publish_pipelined(args, path: Path, meta: str) -> None:
    """The --tune-pipelined section of RESULTS.md from its CSV: each shape whose register-operand
    tiles were timed, with the same run's routed path, shared-memory kernel (best tile), register
    kernel (best tile) and cuBLAS path; of several runs, the one that timed the most register tiles."""
    with path.open() as f:
        rows = [(int(r["m"]), int(r["n"]), int(r["k"]), r["kernel"], float(r["us"]), float(r["bf16_us"]))
                for r in csv.DictReader(f)]
    table = []
    for m, n, k in sorted({r[:3] for r in rows if r[3].startswith("registers")}, key=lambda s: (s[1], s[2], s[0])):
        # the run (rows of one run share their bf16 time) that timed the most register tiles, the
        # latest of equals (merged CSVs keep earlier runs' rows first): a full sweep over a partial one
        runs = [r[5] for r in rows if r[:3] == (m, n, k) and r[3].startswith("registers")]
        bf16 = max(reversed(runs), key=runs.count)
        run = [r for r in rows if r[:3] == (m, n, k) and r[5] == bf16]  # that run's candidates

        def best(prefix):
            cands = [r for r in run if r[3].startswith(prefix)]
            return min(cands, key=lambda r: r[4]) if cands else None

        reg, shared = best("registers"), best("pipelined")
        routed, cublas = best("routed path"), best("cublas path")
        others = min((r[4] for r in (shared, cublas) if r is not None), default=float("nan"))
        table.append([m, n, k, bf16, routed[4] if routed else float("nan"),
                      shared[4] if shared else float("nan"), shared[3].removeprefix("pipelined ") if shared else "-",
                      reg[4], reg[3].removeprefix("registers "), cublas[4] if cublas else float("nan"),
                      bf16 / reg[4], others / reg[4]])
    header = ["M", "N", "K", "bf16 us", "routed us", "shared-memory kernel us", "its tile", "register kernel us",
              "its tile", "cuBLAS path us", "register kernel vs bf16", "vs shared-memory / cuBLAS (best)"]
    intro = ("Whole layer (the quantize pass + the GEMM on A dequantized), static scale, bf16 input, CUDA-graph "
             "replay medians, cuBLAS bf16 `nn.Linear` in the same process; every column of a row from one run. "
             "'routed' = the layer's own path in that run; 'shared-memory kernel' = `nvfp4_gemm_wgmma_kernel` "
             "(the decoded weight tile stored for wgmma's B; its two routed tiles), 'register kernel' = "
             "`nvfp4_gemm_wgmma_rs_kernel` (`GemmConfig.w_registers`: the weight decoded into wgmma's register "
             "operand; A rows x weight rows x K, cp.async stages, programs per SM); 'cuBLAS path' = the layer's "
             "cuBLAS route forced. Every candidate: the CSV (earlier runs' tiles too).")
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    replace_section(args.results_md, PIPELINED_TITLE, [meta, "", intro, "", *markdown_table(header, table), "",
                                                       f"CSV: `{rel}`"])


# --tune-operand at M <= 16: the Gluon kernel with the decoded weight in wgmma's registers (`GemmConfig.w_registers`,
# 16 token rows as wgmma's N) after the pass, (block_n weight rows, block_k, cp.async stages, programs per SM): each
# warpgroup's MMAs run asynchronously while it decodes the next K tile, where mma.sync's chains wait (session 33)
DECODE_REGISTER_CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 3, 2), (64, 128, 4, 3), (128, 64, 4, 2),
                           (64, 128, 6, 3), (64, 128, 4, 4), (64, 128, 6, 4),
                           (128, 128, 3, 1)]


def run_tune_operand(args):
    """The decoded weight as the MMA's right operand (`GemmConfig.w_operand_b`) against the layer's
    routed path: the quantize-dequantize pass + the Triton GEMM per tile, and at M <= 16 the GEMM
    quantizing x itself; device time (CUDA-graph replays; M <= 16: weights cold), static scale, bf16
    input, cuBLAS bf16 in the same process (-> results/operand_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [4, 40] if device == "cpu" else (args.m or [1, 4, 16, 128, 256, 512, 2048])
    rows, cache = [], {}
    for n, k in tqdm(shapes, desc="operand tune", file=sys.stderr):
        for m in ms:
            cls = "decode" if m <= 16 else "small" if m <= COLD_ROWS else "mid" if m < 1024 else "prefill"
            copies = chain_copies(m, n * k * 2, device == "cuda")
            if cache.get("key") != (n, k, copies):  # quantized once per shape and chain length
                cache.clear()
                cache.update(key=(n, k, copies), trios=make_layers(n, k, copies, device, torch.bfloat16))
            trios = cache["trios"]
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            kp = trios[0][1].k_padded
            cand = TileCandidates(trios, x)
            res = [(cand.routed(), "routed path")]
            if m > 16:  # the cuBLAS path forced (`use_cublas` sends it M >= 512, or 64 on small weights)
                res.append((cand.over_layers(lambda layer, out: ops.triton_linear(
                    x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2,
                    None, n, False, layer._alpha_host, cublas=True)), "cublas path"))
            configs = operand_configs(cls, kp)
            if device == "cpu":
                for other in OPERAND_CONFIGS:  # every class's tiles are valid GemmConfigs (a GPU run's M may differ)
                    operand_configs(other, 1 << 16)
                configs = [kernels.GemmConfig(16, 32, 64, 4, 1, split_k=0, predequant_a=True, w_operand_b=True),
                           kernels.GemmConfig(32, 32, 64, 4, 1, split_k=0, predequant_a=True, w_operand_b=True, dot_m=16,
                                              a_mma16=True)]
            for cfg in configs:
                label = (f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} s{cfg.num_stages}"
                         + (f" d{cfg.dot_m}" if cfg.dot_m else ""))
                res.append((cand.two_launches(cfg), f"B-operand two launches {label}"))
                if m <= COLD_ROWS:
                    res.append((cand.one_launch(cfg), f"B-operand one launch {label}"))
            if cls == "decode":  # the weight as wgmma's register operand, the tokens its N (16): async MMAs
                for bn, bk, stages, pps in DECODE_REGISTER_CONFIGS:
                    if kp % bk == 0:
                        cfg = kernels.GemmConfig(16, bn, bk, bn // 16, 3, split_k=0, programs_per_sm=pps,
                                                 min_split_tiles=2, predequant_a=True, w_registers=True,
                                                 wgmma_stages=stages)
                        res.append((cand.two_launches(cfg), f"registers 16x{bn}x{bk} s{stages} pps{pps}"))
            res = only_tiles(res, args.tiles)
            lins = [t[0] for t in trios]
            bf16 = graph_us(lambda: [lin(x) for lin in lins]) / copies
            timed = cand.dry_run(res, REFERENCE_PATHS) if device == "cpu" else time_candidates(res, copies)
            for t, name in timed:
                rows.append([m, n, k, name, t, bf16])
            routed = next(t for t, nm in timed if nm == "routed path")
            print(f"operand {m}x{n}x{k}: bf16 {bf16:.2f}us routed {routed:.2f}us ({bf16 / routed:.2f}x); " +
                  "; ".join(f"{t:.2f}us ({bf16 / t:.2f}x) {nm}" for t, nm in timed[:4]), flush=True)
        if device == "cuda":  # after every shape: a run cut short by a time limit keeps what it measured
            path = args.results_dir / f"operand_tune_{gpu_slug()}.csv"  # (rows of candidates not measured now kept)
            write_csv(path, ["m", "n", "k", "kernel", "us", "bf16_us"], merge_rows(
                path, rows, 4, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], float(r[4]), float(r[5])]))
            rows = []


# --ab-decode candidates: (block_m, block_n, block_k, warps, stages, weight the right operand, programs per SM
# [, A in the MMA fragment order]). The left-operand tiles with 1-2 warps stay on mma.sync (wgmma needs 4 warps):
# the decoded weight feeds the MMA from registers with no shared-memory round trip, and each activation fragment
# serves more MMAs. `GemmConfig.a_mma16` (two launches only): the pass writes A so that each fragment is one load.
DECODE_AB_CONFIGS = [(16, 64, 256, 4, 3, True, 2), (16, 64, 256, 4, 3, True, 3), (16, 64, 256, 2, 3, True, 4),
                     (16, 64, 256, 2, 3, True, 6), (16, 64, 256, 2, 3, False, 2),
                     (16, 64, 256, 2, 3, False, 3), (16, 64, 256, 2, 3, False, 4), (16, 64, 256, 2, 3, False, 6),
                     (16, 64, 128, 2, 4, False, 2), (16, 64, 128, 2, 4, False, 4), (16, 64, 128, 2, 4, False, 6),
                     (16, 128, 128, 2, 3, False, 2), (16, 32, 256, 1, 3, False, 4), (16, 32, 256, 1, 3, False, 8),
                     (16, 64, 256, 4, 3, True, 2, True), (16, 64, 256, 4, 3, True, 3, True),
                     (16, 64, 128, 4, 4, True, 2, True), (16, 64, 512, 4, 3, True, 2, True),
                     (16, 64, 256, 2, 3, False, 2, True), (16, 64, 256, 2, 3, False, 3, True)]
# (session 23: the mma16 tile's K loop in registers, tile i + 1 loaded before tile i's math: 1.4-1.75x slower,
# results/decode_regpf_h100_removed.csv, commit f707f6c)


def run_ab_decode(args):
    """Decode (M <= 16): the weight decode as inline PTX against the portable bit operations (run once
    with FP4LINEAR_PORTABLE_DECODE=1, once without; rows merge by decode), for the routed path and
    per tile, the weight as the MMA's left operand on mma.sync included; the pass + GEMM (two
    launches) and the GEMM quantizing x (one launch); device time (CUDA-graph replays, weights cold),
    static scale, bf16 input, cuBLAS bf16 in the same process (-> results/decode_ab_<gpu>.csv)."""
    from fp4linear.kernels import numerics

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    decode = "ptx" if (device == "cuda" and numerics.PTX_DECODE) else "portable"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [4] if device == "cpu" else (args.m or [1, 4, 16])
    rows = []
    for n, k, copies, trios, kp in cold_layer_sets(shapes, f"decode a/b ({decode})", device):
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            cand = TileCandidates(trios, x)
            res = [(cand.routed(), "routed path")]
            for bm, bn, bk, w, st, right, pps, *mma16 in DECODE_AB_CONFIGS:
                if bk > kp or (kp % bk and not args.ragged_k):
                    continue
                cfg = kernels.GemmConfig(bm, bn, bk, w, st, split_k=0, programs_per_sm=pps, predequant_a=True,
                                         w_operand_b=right, a_mma16=bool(mma16))
                label = f"{'right' if right else 'left'} {bm}x{bn}x{bk} w{w} s{st} {pps}/SM{' mma16' if mma16 else ''}"
                res.append((cand.two_launches(cfg), f"two launches {label}"))
                if not mma16:
                    res.append((cand.one_launch(cfg), f"one launch {label}"))
            res = only_tiles(res, args.tiles)
            bf16 = graph_us(chain([t[0] for t in trios], x)) / copies
            timed = cand.dry_run(res) if device == "cpu" else time_candidates(res, copies)
            rows += [[m, n, k, decode, name, t, bf16] for t, name in timed]
            print(f"decode {decode} {m}x{n}x{k}: bf16 {bf16:.2f}us; " +
                  "; ".join(f"{t:.2f}us ({bf16 / t:.2f}x) {nm}" for t, nm in timed[:4]), flush=True)
    if device == "cpu":
        args.no_write = True
    else:
        rows = merge_rows(args.results_dir / f"decode_ab_{gpu_slug()}.csv", rows, 5,
                          lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], r[4], float(r[5]), float(r[6])])
    intro = ("Decode, static scale, bf16 input, no bias; device time per layer (CUDA-graph replays over a chain of "
             "cold copies). 'portable': the weight decode as Triton bit operations (FP4LINEAR_PORTABLE_DECODE=1, "
             "the code before the PTX decode), 'ptx': inline PTX (11 integer instructions per 8 codes). Paths: the "
             "routed one, and per tile the pass + GEMM ('two launches') or the GEMM quantizing x ('one launch'); "
             "'right'/'left': the decoded weight as the MMA's right operand or its left one (mma.sync at 1-2 "
             "warps); 'mma16': A written in the MMA's fragment order (`GemmConfig.a_mma16`); 'rowmask', 'wsN' "
             "(CSV rows of session 19, options since removed: RESULTS.md, 'Decode GEMM: A row mask, ...'): A's "
             "padding rows not read, the loads warp-specialized with a ring of N K tiles; 'n/SM': K splits for "
             "about n programs per SM. The two decodes run in two processes on the "
             "same machine; bf16 is the last run's. Table: the routed path under each decode, and the fastest tile; "
             "every candidate is in the CSV.")
    rows.sort(key=lambda r: (r[1] * r[2], r[1], r[0], r[4], r[3]))
    publish(args, "Decode: inline-PTX weight decode and left-operand tiles (benchmarks/linear_bench.py --ab-decode)",
            intro, ["m", "n", "k", "decode", "path", "us", "bf16_us"], rows, csv_name=f"decode_ab_{gpu_slug()}.csv",
            md_header=DECODE_AB_MD_HEADER, md_rows=decode_ab_md_rows(rows))


DECODE_AB_MD_HEADER = ["M", "N", "K", "bf16 us", "routed, portable us", "routed, ptx us", "ptx speed-up",
                       "ptx vs bf16", "fastest tile (ptx)", "its us", "vs bf16"]


def decode_ab_md_rows(rows):
    """One markdown row per (M, N, K) of --ab-decode's CSV rows: the routed path under each decode and
    the fastest of the tiles (the full grid stays in the CSV)."""
    nan = float("nan")
    out = []
    for m, n, k in sorted({tuple(r[:3]) for r in rows}, key=lambda q: (q[1] * q[2], q[1], q[0])):
        mine = [r for r in rows if tuple(r[:3]) == (m, n, k)]
        bf16 = mine[-1][6]
        routed = {r[3]: r[5] for r in mine if r[4] == "routed path"}
        tiles = [r for r in mine if r[3] == "ptx" and not r[4].startswith("routed")]
        best = min(tiles, key=lambda r: r[5]) if tiles else [nan] * 7
        port, ptx = routed.get("portable", nan), routed.get("ptx", nan)
        out.append([m, n, k, bf16, port, ptx, port / ptx, bf16 / ptx, best[4], best[5], bf16 / best[5]])
    return out


def run_ab_bias(args):
    """The cost of a bias past decode: the same layer with and without one (static scale, bf16 input),
    nn.Linear with and without one in the same process. On the cuBLAS path a bias goes through
    cuBLAS's epilogue only for one weight chunk with 16-byte aligned rows (`ops.bias_in_addmm`),
    elsewhere through fp32 chunks and `alpha_epilogue`; device time (CUDA-graph replays)
    (-> results/bias_ab_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(300, 200)] if device == "cpu" else (args.shapes or [(8192, 8192), (4096, 4096), (2576, 2688),
                                                                    (1288, 2688), (2688, 464)])
    ms = [130] if device == "cpu" else (args.m or [2048, 8192])
    rows = []
    for n, k in tqdm(shapes, desc="bias a/b", file=sys.stderr):
        lin = torch.nn.Linear(k, n, bias=True, device=device, dtype=torch.bfloat16)
        with_bias = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(torch.tensor(4.0)),
                                                 backend="triton")
        lin_nb = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
        lin_nb.weight.data.copy_(lin.weight.data)
        no_bias = fp4linear.Linear.from_linear(lin_nb, input_scale=fp4linear.decode_scale(torch.tensor(4.0)),
                                               backend="triton")
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            t = [graph_us(lambda mod=mod: mod(x)) for mod in (lin_nb, lin, no_bias, with_bias)]
            in_addmm = ops.bias_in_addmm(m, n, with_bias.k_padded, x.dtype)
            rows.append([m, n, k, "addmm" if in_addmm else "fp32 epilogue", *t, t[3] - t[2], t[0] / t[2], t[1] / t[3]])
            print(f"bias {m}x{n}x{k}: bf16 {t[0]:.1f} / {t[1]:.1f} us, fp4 {t[2]:.1f} / {t[3]:.1f} us "
                  f"(no bias / bias)", flush=True)
    if device == "cpu":
        args.no_write = True
    intro = ("Static scale, bf16 input; device time per layer (CUDA-graph replays). 'bias route': how the fp4 "
             "layer's cuBLAS path adds the bias (`ops.bias_in_addmm`: cuBLAS's epilogue for one weight chunk "
             "with 16-byte aligned rows, else fp32 chunks and `alpha_epilogue`). 'bias cost' = fp4 with bias - "
             "fp4 without; 'speed-up' = bf16 / fp4 of the same kind.")
    publish(args, "Bias past decode (benchmarks/linear_bench.py --ab-bias)", intro,
            ["m", "n", "k", "bias_route", "bf16_us", "bf16_bias_us", "fp4_us", "fp4_bias_us", "bias_cost_us",
             "speedup", "speedup_bias"], rows, csv_name=f"bias_ab_{gpu_slug()}.csv")


def run_ab_align(args):
    """x's loads at K % 16 != 0: every kernel reading x told what K and x's row stride are multiples of
    (`kernels.launch.x_align`, 16-byte loads) vs told nothing (x_align forced to 1: Triton, which specializes
    integers on % 16 only, then loads x two bytes at a time). The routed Linear (static and dynamic scale,
    bf16 input; weights cold up to COLD_ROWS rows), nn.Linear bf16 in the same process; K % 16 == 0 shapes of
    the same Kp as a control. Bits checked equal (-> results/align_ab_<gpu>.csv)."""
    from fp4linear.kernels import gemm_launch, quant_dequant_launch, scales_launch, small_m_linear_launch
    from fp4linear.kernels.launch import x_align
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or [(4096, 1368), (4096, 1376), (2688, 232),
                                                                   (2688, 240), (16384, 1368), (16384, 1376)])
    ms = [1, 20, 70] if device == "cpu" else (args.m or [1, 4, 16, 32, 2048])
    unhinted = tuple((mod, {"x_align": lambda *a: 1})
                     for mod in (gemm_launch, quant_dequant_launch, scales_launch, small_m_linear_launch))
    rows, cache = [], {}
    for n, k in tqdm(shapes, desc="align a/b", file=sys.stderr):
        for m in ms:
            copies = chain_copies(m, n * k * 2, device == "cuda")
            if cache.get("key") != (n, k, copies):
                cache.update(key=(n, k, copies), trios=None)  # (the old copies freed first)
                cache["trios"] = make_layers(n, k, copies, device, torch.bfloat16)
            trios = cache["trios"]
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            bf16 = graph_us(lambda: [t[0](x) for t in trios]) / copies
            for scale, which in (("static", 1), ("dynamic", 2)):
                layers = [t[which] for t in trios]
                hinted = Forced(lambda: [layer(x) for layer in layers], ())
                plain = Forced(hinted.fn, unhinted)
                if not torch.equal(hinted()[0], plain()[0]):
                    raise AssertionError(f"{m}x{n}x{k} {scale}: the hint changed the bits")
                t_hint, t_plain = (graph_us(f) / copies for f in (hinted, plain))
                rows.append([m, n, k, scale, x_align(k, k), bf16, t_plain, t_hint, t_plain / t_hint,
                             bf16 / t_hint])
                print(f"align {m}x{n}x{k} {scale}: bf16 {bf16:.2f} us, x_align 1 {t_plain:.2f}, "
                      f"x_align {rows[-1][4]} {t_hint:.2f}", flush=True)
    if device == "cpu":
        args.no_write = True
    intro = ("The routed Linear with every kernel that reads x told what K and x's row stride are multiples of "
             "(`kernels.launch.x_align`) vs told nothing (forced to 1, as before session 29), bits checked equal; "
             "device time per layer (CUDA-graph replays; M <= 64 over a chain of cold copies), bf16 input, "
             "nn.Linear bf16 in the same process. 'gain' = x_align 1 / hinted; 'vs bf16' = bf16 / hinted.")
    publish(args, "x's loads at K % 16 != 0 (benchmarks/linear_bench.py --ab-align)", intro,
            ["m", "n", "k", "scale", "x_align", "bf16_us", "align1_us", "fp4_us", "gain", "vs_bf16"], rows,
            csv_name=f"align_ab_{gpu_slug()}.csv")


def run_tune_operands(args):
    """The cuBLAS path's operands kernel (`kernels.cublas_operands`: x's values and the first weight chunk in one
    launch) per tile: the whole layer's device time (CUDA-graph replays) with each `OperandsConfig`, static and
    dynamic scale, cuBLAS bf16 in the same process (-> results/operands_tune_<gpu>.csv)."""
    from fp4linear.kernels import quant_dequant_launch as qdl
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(300, 200)] if device == "cpu" else (args.shapes or [(2688, 464), (2576, 2688), (1288, 2688)])
    ms = [1100] if device == "cpu" else (args.m or [2048, 4096, 8192])
    configs = [qdl.OperandsConfig(bm, bk, bn, w) for bm in (8, 16, 32, 64) for bk in (64, 128, 256) for bn in (32, 64)
               for w in (2, 4, 8)] if device == "cuda" else [qdl.OperandsConfig(), qdl.OperandsConfig(32, 64, 64, 8)]
    if args.tiles:  # (names as "32x128x32w4": block_m x block_k x block_n, warps)
        configs = [c for c in configs if any(t in f"{c.block_m}x{c.block_k}x{c.block_n}w{c.num_warps}"
                                             for t in args.tiles)]
    routing = qdl.operands_config
    rows = []
    for n, k in tqdm(shapes, desc="operands tune", file=sys.stderr):
        lin, static, dynamic = make_layers(n, k, 1, device, torch.bfloat16)[0]
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            if not ops.use_cublas(m, n, static.k_padded):
                continue
            bf16 = graph_us(lambda: lin(x))
            default = routing(m, ops.cublas_k(k, static.k_padded))
            configs_here = configs if default in configs else [default, *configs]
            for scale, layer in (("static", static), ("dynamic", dynamic)):
                timed = []
                for cfg in configs_here:
                    try:
                        with mock.patch.object(qdl, "operands_config", lambda m_, ka_, cfg=cfg: cfg):
                            timed.append((graph_us(lambda: layer(x)), cfg))
                    except Exception as e:  # (out of registers or shared memory)
                        print(f"  {cfg}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                timed.sort(key=lambda r: r[0])
                base = next(t for t, c in timed if c == default)
                for t, c in timed:
                    rows.append([m, n, k, scale, c.block_m, c.block_k, c.block_n, c.num_warps, t, bf16])
                best, cfg = timed[0]
                print(f"operands {m}x{n}x{k} {scale}: bf16 {bf16:.2f} us, routed {base:.2f} ({bf16 / base:.3f}x), best "
                      f"{best:.2f} ({bf16 / best:.3f}x) {cfg.block_m}x{cfg.block_k}/{cfg.block_n} w{cfg.num_warps}",
                      flush=True)
    if device == "cuda" and not args.no_write:
        path = args.results_dir / f"operands_tune_{gpu_slug()}.csv"
        merged = merge_rows(path, rows, 8, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], *map(int, r[4:8]),
                                                      float(r[8]), float(r[9])])
        write_csv(path, ["m", "n", "k", "input_scale", "block_m", "block_k", "block_n", "num_warps", "us", "bf16_us"],
                  merged)


def run_tune_chunks(args):
    """The cuBLAS path's weight chunk size (`ops.CUBLAS_CHUNK_BYTES`): smaller chunks may stay in L2
    between their dequantization and cuBLAS's read (one chunk buffer, per-stream scratch, serves chunk
    after chunk and layer after layer, so its writes need not reach DRAM), larger ones make fewer,
    wider cuBLAS calls. Device time of the whole layer, static and dynamic scale, with weights hot (one
    layer replayed) and cold (a chain of `cold_copies` distinct layers, time per layer, as in a model);
    the cuBLAS route forced (`ops.use_cublas`) where the layer would take the Triton GEMM (mid M), the
    routed path (path 'routed', no chunk) and cuBLAS bf16 the same way in the same process
    (-> results/chunk_tune_<gpu>.csv, merged by (m, n, k, scale, weights, path, chunk))."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(300, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [40] if device == "cpu" else (args.m or [2048, 4096])
    chunks = [1, 2] if device == "cpu" else [4, 8, 16, 32, 64, 128]  # MiB (the CPU: 128-row chunks)
    rows = []
    for n, k in tqdm(shapes, desc="chunk tune", file=sys.stderr):
        copies = cold_copies(n * k * 2) if device == "cuda" else 2
        layers = make_layers(n, k, copies, device, torch.bfloat16)
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            line = []
            for weights, chained in (("hot", layers[:1]), ("cold", layers)):
                bf16 = graph_us(chain([c[0] for c in chained], x)) / len(chained)
                line.append(f"{weights}: bf16 {bf16:.1f}us")
                cases = [("routed", "", contextlib.nullcontext)] + [
                    ("cublas", mib, lambda mib=mib: mock.patch.multiple(
                        ops, CUBLAS_CHUNK_BYTES=mib << 20 if device == "cuda" else mib, use_cublas=lambda *a, **kw: True))
                    for mib in chunks]
                for path, mib, patches in cases:
                    with patches():
                        for mode, idx in (("static", 1), ("dynamic", 2)):
                            t = graph_us(chain([c[idx] for c in chained], x)) / len(chained)
                            rows.append([m, n, k, mode, weights, path, mib, t, bf16])
                            line.append(f"{mode} {path}{f' {mib}MiB' if mib else ''} {t:.1f}us ({bf16 / t:.2f}x)")
            print(f"chunks {m}x{n}x{k}: " + "; ".join(line), flush=True)
    if device == "cpu":
        args.no_write = True
    path = args.results_dir / f"chunk_tune_{gpu_slug()}.csv"
    rows = merge_rows(path, rows, 7, parse_chunk_row) if device == "cuda" else rows
    publish(args, CHUNK_TITLE, CHUNK_INTRO, CHUNK_HEADER, rows, csv_name=path.name, **chunk_table(rows))


CHUNK_TITLE = "cuBLAS path: weight chunk sizes (benchmarks/linear_bench.py --tune-chunks)"
CHUNK_HEADER = ["m", "n", "k", "input_scale", "weights", "path", "chunk_mib", "us", "bf16_us"]
CHUNK_INTRO = ("The whole layer on the cuBLAS path with the weight dequantized in chunks of at most 4-128 MiB (the "
               "route forced where the layer takes the Triton GEMM), against the routed path and cuBLAS bf16 in the same "
               "process; bf16 input, no bias, device time (CUDA-graph replay medians, us). hot = one layer replayed; "
               "cold = a chain of distinct layer copies whose bf16 weights exceed 256 MiB, time per layer. Rows of "
               "several runs on the same card (the M = 2048 / 4096 hot rows without a routed column: the first run, "
               "2026-11-26). Static scale here; dynamic in the CSV. Routed: 128 MiB below 768 rows, 64 MiB from there "
               "(`ops._chunk_rows`).")


def parse_chunk_row(r):
    """A CSV row of --tune-chunks (CHUNK_HEADER)."""
    return [int(r[0]), int(r[1]), int(r[2]), r[3], r[4], r[5], int(r[6]) if r[6] else "", float(r[7]), float(r[8])]


def chunk_table(rows) -> dict:
    """The markdown view of --tune-chunks rows: one line per (M, N, K, weights), static scale."""
    cells = {}
    mibs = sorted({r[6] for r in rows if r[5] == "cublas"})
    for m, n, k, scale, weights, path, mib, us, bf16 in rows:
        if scale == "static":
            line = cells.setdefault((m, n, k, weights), {"bf16": bf16})
            line["routed" if path == "routed" else mib] = us
    md = []
    for (m, n, k, weights), line in sorted(cells.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0], kv[0][3])):
        best = min((mib for mib in mibs if mib in line), key=line.get)
        md.append([m, n, k, weights, line["bf16"], line.get("routed", float("nan")),
                   *[line.get(mib, float("nan")) for mib in mibs], f"{best} MiB"])
    return dict(md_header=["M", "N", "K", "weights", "bf16 us", "routed us", *[f"{mib} MiB us" for mib in mibs],
                           "best chunk"], md_rows=md)


def run_tune_pass(args):
    """Decode-sized quantize-dequantize passes (the M = 3-16 paths' first launch): static scale,
    dynamic scale taken inside the pass (every program reads all of x; or, on the GPU, each its own
    tile and all wait on a shared maximum: `dynamic_pass_barrier`), and the scale launch + the static
    pass; device time (-> results/pass_tune_<gpu>.csv)."""
    from fp4linear.kernels import quant_dequant_launch as qdl

    def dynamic_pass(x, ws2, a, barrier):
        """Device time of the dynamic pass with or without the barrier at any M; None where the
        barrier does not fit (`dynamic_pass_barrier`: its grid beyond the SMs)."""
        def run():
            kernels.fake_quantize_dynamic(x, ws2, a, units=True)
        with contextlib.ExitStack() as stack:
            stack.callback(qdl._fake_plan.cache_clear)  # (last: the plans made under the patch go)
            stack.enter_context(mock.patch.object(qdl, "DYNAMIC_PASS_BARRIER_ELEMENTS", 0 if barrier else 2**40))
            qdl._fake_plan.cache_clear()
            if barrier and not kernels.dynamic_pass_barrier(x.shape[0], a.shape[1], x.device):
                return None
            return graph_us(run)  # (the plan is taken when the graph is captured)

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    ms = [4] if device == "cpu" else (args.m or [1, 4, 8, 16])
    ks = [200] if device == "cpu" else [k for _, k in (args.shapes or [(0, 2688), (0, 3696), (0, 4096), (0, 8192)])]
    ws2 = torch.tensor([0.01], device=device)
    gs = torch.tensor([100.0], device=device)
    rows = []
    for k in ks:
        kp = -(-k // 64) * 64
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            a = torch.empty(m, kp, device=device, dtype=torch.float16)
            res = [("static pass", lambda: kernels.fake_quantize(x, gs, a, units=True)),
                   ("scale launch + static pass", lambda: kernels.fake_quantize(
                       x, kernels.dynamic_gs_alpha(x, ws2)[0], a, units=True))]
            timed = [(name, graph_us(fn)) for name, fn in res]
            if kernels.fuses_dynamic_scale_in_pass(m, k, k):
                timed.append(("dynamic in pass", dynamic_pass(x, ws2, a, False)))
            t = dynamic_pass(x, ws2, a, True) if device == "cuda" else None
            if t is not None:
                timed.append(("dynamic in pass, barrier", t))
            line = []
            for name, t in timed:
                rows.append([m, k, name, t])
                line.append(f"{name} {t:.2f}us")
            print(f"pass {m}x{k}: " + "; ".join(line), flush=True)
    if device == "cpu":
        return
    write_csv(args.results_dir / f"pass_tune_{gpu_slug()}.csv", ["m", "k", "pass", "us"], rows)


PASS_TILES = [(32, 128, 4), (16, 128, 4), (16, 128, 2), (16, 128, 1), (16, 64, 4), (16, 64, 2), (16, 64, 1),
              (16, 256, 4), (16, 256, 2), (8, 128, 2), (16, 32, 1), (32, 64, 4)]
PASS_SHAPES = [(4096, 4096), (8192, 8192), (8192, 3696), (28672, 8192), (8192, 28672)]


def pass_tune_setup(args, shapes, tiles):
    """(device, graph timer, M values, (N, K) shapes, tiles) of the pass tile sweeps: tiny and two tiles on the CPU."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if device == "cpu":
        return device, timers(device)[0], [4], [(300, 200)], tiles[:2]
    return device, timers(device)[0], args.m or [2, 4, 8, 16], args.shapes or shapes, tiles


def run_tune_pass_tiles(args):
    """The static scale's quantize-dequantize pass of the two-launch decode route (M = 2-16 on weights from 8M
    elements: x's values in the MMA fragment order the GEMM reads, `kernels.activation_order`) per tile
    (block_m x block_k, warps), alone, device time (CUDA-graph replays), every tile's output checked equal to
    the routed tile's (-> results/pass_tiles_<gpu>.csv)."""
    from fp4linear.kernels import quant_dequant_launch as qdl

    device, graph_us, ms, shapes, tiles = pass_tune_setup(args, PASS_SHAPES, PASS_TILES)
    gs = torch.tensor([100.0], device=device)
    rows = []
    for n, k in tqdm(shapes, desc="pass tiles", file=sys.stderr):
        kp = -(-k // 64) * 64
        for m in ms:
            order = kernels.activation_order(m, n, kp, torch.device(device))
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            rows_out = kernels.mma16_rows(m, order)
            want = torch.zeros(rows_out, kp, device=device, dtype=torch.float16)
            kernels.fake_quantize(x, gs, want, units=True, a_order=order)
            routed = qdl.pass_tiles(m, kp)
            res = []
            for t in (tiles if routed in tiles else [routed, *tiles]):
                a = torch.zeros_like(want)
                fn = lambda t=t, a=a: kernels.fake_quantize(x, gs, a, units=True, a_order=order, tiles=t)  # noqa: E731
                fn()
                if not torch.equal(a.view(torch.int16), want.view(torch.int16)):
                    raise AssertionError(f"pass tiles {t} at {m}x{k}: bits differ from the routed tiles'")
                res.append((graph_us(fn), t))
            base = next(us for us, t in res if t == routed)
            for us, t in res:
                rows.append([m, n, k, order, *t, t == routed, us])
            best = min(res)
            print(f"pass {m}x{k} (order {order}, N {n}): routed {base:.2f} us, best {best[0]:.2f} "
                  f"{best[1][0]}x{best[1][1]} w{best[1][2]}", flush=True)
    if device == "cpu" or args.no_write:
        return
    write_csv(args.results_dir / f"pass_tiles_{gpu_slug()}.csv",
              ["m", "n", "k", "a_order", "block_m", "block_k", "num_warps", "routed", "us"], rows)


DYNAMIC_PASS_TILES = [(16, 256, 4), (16, 128, 4), (16, 64, 4), (16, 256, 2), (16, 128, 2), (16, 64, 2), (8, 128, 2),
                      (16, 512, 4), (32, 128, 4)]


def run_tune_dynamic_pass_tiles(args):
    """`run_tune_pass_tiles` for the dynamic scale's pass of the decode route (M = 2-16 from 8M weight elements: max
    |x| taken inside the pass, every program reading all of x, or, from `DYNAMIC_PASS_BARRIER_ELEMENTS`, each its own
    tile behind a grid-wide barrier whose grid must fit the SMs: tiles beyond are skipped); every tile's values and
    alpha checked equal to the routed tile's (-> results/pass_tiles_dynamic_<gpu>.csv)."""
    device, graph_us, ms, shapes, tiles = pass_tune_setup(args, PASS_SHAPES[:3], DYNAMIC_PASS_TILES)
    ws2 = torch.tensor([0.01], device=device)
    rows = []
    for n, k in tqdm(shapes, desc="dynamic pass tiles", file=sys.stderr):
        kp = -(-k // 64) * 64
        for m in ms:
            x_device = torch.device(device)
            barrier = kernels.dynamic_pass_barrier(m, kp, x_device)
            if not (barrier or kernels.fuses_dynamic_scale_in_pass(m, k, k)):
                continue
            order = kernels.activation_order(m, n, kp, x_device)
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            want = torch.zeros(kernels.mma16_rows(m, order), kp, device=device, dtype=torch.float16)
            want_alpha = kernels.fake_quantize_dynamic(x, ws2, want, units=True, a_order=order).clone()
            res = []
            for t in [None, *tiles]:
                a = torch.zeros_like(want)
                fn = lambda t=t, a=a: kernels.fake_quantize_dynamic(x, ws2, a, units=True, a_order=order, tiles=t)  # noqa: E731
                try:
                    alpha = fn().clone()
                except ValueError:  # (the barrier's grid beyond the SMs)
                    continue
                if not (torch.equal(a.view(torch.int16), want.view(torch.int16)) and torch.equal(alpha, want_alpha)):
                    raise AssertionError(f"dynamic pass tiles {t} at {m}x{k}: bits differ from the routed tiles'")
                res.append((graph_us(fn), t))
            base = next(us for us, t in res if t is None)
            for us, t in res:
                rows.append([m, n, k, order, int(barrier), *(t or ("routed", "", "")), us])
            best = min(res, key=lambda r: r[0])
            print(f"dynamic pass {m}x{k} ({'barrier' if barrier else 'every program reads x'}, order {order}): routed "
                  f"{base:.2f} us, best {best[0]:.2f} {best[1]}", flush=True)
    if device == "cpu" or args.no_write:
        return
    write_csv(args.results_dir / f"pass_tiles_dynamic_{gpu_slug()}.csv",
              ["m", "n", "k", "a_order", "barrier", "block_m", "block_k", "num_warps", "us"], rows)


AB_PASS_BARRIER_SHAPES = [*PASS_SHAPES, (2576, 2688)]


def run_ab_pass_barrier(args):
    """The dynamic decode pass's two ways to max |x|, each forced on either side of `DYNAMIC_PASS_BARRIER_ELEMENTS`
    wherever the routed decode layer takes a pass: a grid-wide barrier (every program resident, a word each) and
    every program reading all of x (where x is small enough, `fuses_dynamic_scale_in_pass`). The pass alone (values
    in the GEMM's order) and the whole dynamic layer (weights cold), both forms' bits checked equal, with the static
    pass and layer and nn.Linear in the same process; device time, CUDA-graph replays
    (-> results/barrier_words_ab_<gpu>.csv)."""
    from fp4linear.kernels import quant_dequant_launch as qdl

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(300, 200)] if device == "cpu" else (args.shapes or AB_PASS_BARRIER_SHAPES)
    ms = [16] if device == "cpu" else (args.m or [2, 4, 6, 8, 12, 16, 32, 64])
    ws2 = torch.tensor([0.01], device=device)
    gs = torch.tensor([100.0], device=device)
    routed_elements = qdl.DYNAMIC_PASS_BARRIER_ELEMENTS

    def force(barrier):  # (the plans are cached per shape)
        qdl.DYNAMIC_PASS_BARRIER_ELEMENTS = 0 if barrier else 2**40
        qdl._fake_plan.cache_clear()

    rows = []
    nan = float("nan")
    try:
        for n, k, copies, trios, kp in cold_layer_sets(shapes, "barrier a/b", device):
            for m in ms:
                force(True)
                forms = [f for f, ok in ((True, kernels.dynamic_pass_barrier(m, kp, torch.device(device))),
                                         (False, kernels.fuses_dynamic_scale_in_pass(m, k, k))) if ok]
                if device == "cuda" and (ops.use_gemv(m, n, kp) or ops.use_quantize_in_gemm(m, n, kp) or
                                         ops.use_cublas(m, n, kp, True) or not forms):
                    continue
                x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
                order = kernels.activation_order(m, n, kp, torch.device(device))
                a = torch.zeros(kernels.mma16_rows(m, order), kp, device=device, dtype=torch.float16)
                t_pass_static = graph_us(lambda: kernels.fake_quantize(x, gs, a, units=True, a_order=order))
                t_bf16 = graph_us(chain([t[0] for t in trios], x)) / copies
                t_static = graph_us(chain([t[1] for t in trios], x)) / copies
                t_pass, t_layer, bits = {}, {}, []
                for f in forms:
                    force(f)
                    t_pass[f] = graph_us(lambda: kernels.fake_quantize_dynamic(x, ws2, a, units=True, a_order=order))
                    alpha = kernels.fake_quantize_dynamic(x, ws2, a, units=True, a_order=order).clone()
                    t_layer[f] = graph_us(chain([t[2] for t in trios], x)) / copies
                    bits.append([a.clone().view(torch.int16), alpha, trios[0][2](x).clone().view(torch.int16)])
                if any(not torch.equal(u, v) for other in bits[1:] for u, v in zip(bits[0], other)):
                    raise AssertionError(f"{m}x{n}x{k}: the two forms' bits differ")
                routed = "barrier" if m * kp > routed_elements and True in forms else "reads x"
                rows.append([m, n, k, routed, t_bf16, t_static, t_layer.get(True, nan), t_layer.get(False, nan),
                             t_pass_static, t_pass.get(True, nan), t_pass.get(False, nan)])
                print(f"barrier {m}x{n}x{k}: bf16 {t_bf16:.2f}, static {t_static:.2f}, dynamic " +
                      ", ".join(f"{'barrier' if f else 'reads x'} {t_layer[f]:.2f}" for f in forms) +
                      f" us; pass static {t_pass_static:.2f}, " +
                      ", ".join(f"{'barrier' if f else 'reads x'} {t_pass[f]:.2f}" for f in forms), flush=True)
    finally:
        qdl.DYNAMIC_PASS_BARRIER_ELEMENTS = routed_elements
        qdl._fake_plan.cache_clear()
    header = ["m", "n", "k", "routed", "bf16_us", "static_us", "dynamic_barrier_us", "dynamic_reads_x_us",
              "pass_static_us", "pass_barrier_us", "pass_reads_x_us"]
    md = [[m, n, k, r, bf, st, db, dr, db / st, dr / st, ps, pb, pr] for m, n, k, r, bf, st, db, dr, ps, pb, pr in rows]
    intro = ("Dynamic input scale, decode layers whose first launch is the quantize pass taking max |x| itself: "
             "'barrier', every program resident and reading only its own tile of x, each writing its max |x| to a "
             "word of its own and polling all the words until every one is written; 'reads x', every program "
             "reading all of x (x small enough). 'routed': the form `DYNAMIC_PASS_BARRIER_ELEMENTS` gives. Whole "
             "layer (bf16 input, no bias, weights cold: a chain of copies) and the pass alone (x's values in the "
             "GEMM's order), device time per call (CUDA-graph replay medians), one process; both forms' values, "
             "alpha and layer output checked equal (bits); '-': the form does not apply.")
    if device == "cpu":
        args.no_write = True
    publish(args, "Dynamic decode pass: the barrier vs every program reading x (benchmarks/linear_bench.py "
            "--ab-pass-barrier)", intro, header, rows, csv_name=f"barrier_words_ab_{gpu_slug()}.csv",
            md_header=["M", "N", "K", "routed", "bf16 us", "static us", "dyn barrier us", "dyn reads x us",
                       "dyn/static barrier", "dyn/static reads x", "pass static us", "pass barrier us",
                       "pass reads x us"], md_rows=md)


def run_tune_split(args):
    """Decode: how many K splits (programs per SM) the routed tiles take (`GemmConfig.programs_per_sm`,
    `min_split_tiles`), the routed launches (pass + GEMM, or the GEMM quantizing x), weights cold,
    static scale, device time; cuBLAS bf16 in the same process (-> results/split_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or LINEAR_SHAPES)
    ms = [4, 16] if device == "cpu" else (args.m or [4, 8, 16])
    sm = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 132
    rows = []
    for n, k, copies, trios, kp in cold_layer_sets(shapes, "split tune", device):
        for m in ms:
            if ops.use_gemv(m, n, kp):
                continue
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in trios]
            a = torch.empty(m, kp, device=device, dtype=torch.float16)
            routed = kernels.gemm_config(m, n, kp, "cuda", sm)
            one_launch = ops.use_quantize_in_gemm(m, n, kp)
            bf16 = graph_us(chain([t[0] for t in trios], x)) / copies
            want = trios[0][1](x)
            seen, line = set(), []
            for pps in (2, 3, 4, 6):
                for mst in (4, 2):
                    cfg = dataclasses.replace(routed, programs_per_sm=pps, min_split_tiles=mst)
                    split, _ = gemm_launch.k_splits(cfg, -(-m // cfg.block_m) * -(-n // cfg.block_n), kp, sm)
                    if split in seen:
                        continue
                    seen.add(split)

                    def run(cfg=cfg):
                        for (_, layer, _), out in zip(trios, outs):
                            if one_launch:
                                kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight,
                                                              layer.weight_scale, layer.alpha, None, out, config=cfg)
                            else:
                                kernels.fake_quantize(x, layer.input_global_scale, a, units=True)
                                kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha,
                                                                 None, out, config=cfg)
                    run()
                    err = ((outs[0].float() - want.float()).abs().max() / want.float().abs().max()).item()
                    assert err < 1e-2, (m, n, k, pps, mst, err)  # (another split sums in another order)
                    t = graph_us(run) / copies
                    rows.append([m, n, k, pps, mst, split, t, bf16])
                    line.append(f"split {split} ({pps}/SM, >={mst} tiles) {t:.2f}us ({bf16 / t:.2f}x)")
            print(f"split {m}x{n}x{k}: bf16 {bf16:.2f}us; " + "; ".join(line), flush=True)
    if device == "cpu":
        return
    write_csv(args.results_dir / f"split_tune_{gpu_slug()}.csv",
              ["m", "n", "k", "programs_per_sm", "min_split_tiles", "split", "us", "bf16_us"], rows)


# (block_n, warps, stages, programs per SM, min split tiles) of the 16-token tile quantizing x
SMALL_CONFIGS = [(64, 4, 4, 2, 1), (64, 4, 4, 2, 4), (128, 4, 3, 2, 1), (32, 4, 4, 2, 1), (32, 2, 4, 2, 1),
                 (64, 4, 4, 1, 1), (32, 4, 4, 1, 1), (64, 4, 4, 3, 1),
                 # 8 warps: half the max |x| loads a thread has in flight with a dynamic scale (session 26)
                 (64, 8, 4, 2, 1), (128, 8, 3, 2, 1), (64, 8, 4, 1, 1), (32, 8, 4, 2, 1)]
SMALL_SHAPES = [(2688, 464), (1288, 2688), (2576, 2688)]


def run_tune_small(args):
    """Decode on small per-rank weights (issue 13's 1.3x and dynamic <= 1.15x static at 8-16 rows): the
    16-token tile quantizing x with other weight-tile widths, warps and K splits, static and dynamic scale
    (one launch: every program reads all of x for max |x|), and the dynamic scale's two launches (the pass
    taking max |x|, then the GEMM). Weights cold, device time per layer, the routed layers and nn.Linear in
    the same process (-> results/small_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    shapes = [(72, 200)] if device == "cpu" else (args.shapes or SMALL_SHAPES)
    ms = [9] if device == "cpu" else (args.m or [8, 16])
    sm = torch.cuda.get_device_properties(0).multi_processor_count if device == "cuda" else 132
    rows = []
    for n, k, copies, trios, kp in cold_layer_sets(shapes, "small tune", device):
        for m in ms:
            x = (torch.rand(m, k, device=device) * 8 - 4).to(torch.bfloat16)
            outs = [torch.empty(m, n, device=device, dtype=torch.bfloat16) for _ in trios]
            base = kernels.gemm_config(m, n, kp, "cuda", sm)
            if base.block_m != 16 or not base.a_mma16:
                continue
            bf16 = graph_us(chain([t[0] for t in trios], x)) / copies
            routed_static = graph_us(chain([t[1] for t in trios], x)) / copies
            routed_dynamic = graph_us(chain([t[2] for t in trios], x)) / copies
            want_static, want_dynamic = trios[0][1](x).float(), trios[0][2](x).float()
            rows.append([m, n, k, "routed", "-", 0, routed_static, routed_dynamic, float("nan"), bf16])
            line = [f"bf16 {bf16:.2f}us routed {routed_static:.2f}/{routed_dynamic:.2f}us"]
            for bn, warps, stages, pps, mst in SMALL_CONFIGS:
                cfg = dataclasses.replace(base, block_n=bn, num_warps=warps, num_stages=stages, programs_per_sm=pps,
                                          min_split_tiles=mst, split_k=0)
                split, _ = gemm_launch.k_splits(cfg, -(-m // 16) * -(-n // bn), kp, sm)
                a = torch.empty(kernels.mma16_rows(m, cfg.a_order), kp, device=device, dtype=torch.float16)

                def static(cfg=cfg):
                    for (_, layer, _), out in zip(trios, outs):
                        kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale,
                                                      layer.alpha, None, out, config=cfg)

                def dynamic_one(cfg=cfg):
                    for (_, _, layer), out in zip(trios, outs):
                        kernels.nvfp4_gemm_quantize_x(x, None, layer.weight, layer.weight_scale, None, None, out,
                                                      config=cfg, weight_scale_2=layer.weight_scale_2)

                def dynamic_two(cfg=cfg, a=a):
                    for (_, _, layer), out in zip(trios, outs):
                        alpha = kernels.fake_quantize_dynamic(x, layer.weight_scale_2, a, units=True,
                                                              a_order=cfg.a_order)
                        kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, alpha, None, out,
                                                         config=cfg)

                times = []
                for fn, want in ((static, want_static), (dynamic_one, want_dynamic), (dynamic_two, want_dynamic)):
                    fn()
                    err = ((outs[0].float() - want).abs().max() / want.abs().max()).item()
                    assert err < 1e-2, (m, n, k, cfg, fn.__name__, err)  # (another split sums in another order)
                    times.append(graph_us(fn) / copies)
                label = f"16x{bn}x{cfg.block_k}w{warps}s{stages} {pps}/SM >={mst}"
                rows.append([m, n, k, label, split, 1, *times, bf16])
                line.append(f"{label} split {split}: {times[0]:.2f}/{times[1]:.2f}/{times[2]:.2f}us")
            print(f"small {m}x{n}x{k} (static/dynamic one launch/dynamic two): " + "; ".join(line), flush=True)
    if device == "cpu":
        return
    write_csv(args.results_dir / f"small_tune_{gpu_slug()}.csv",
              ["m", "n", "k", "config", "split", "tuned", "static_us", "dynamic_one_launch_us",
               "dynamic_two_launches_us", "bf16_us"], rows)


SCALE_CONFIGS = [(1, 2048, 1, 4), (1, 1024, 1, 4), (4, 1024, 1, 4), (8, 2048, 0, 4), (8, 2048, 1, 4),
                 (8, 1024, 2, 4), (8, 2048, 0, 8), (16, 1024, 1, 8), (16, 1024, 2, 8), (32, 512, 2, 8)]


def run_tune_scale(args):
    """The dynamic-scale kernel past decode (`kernels.dynamic_scales`, max |x| or max |act(x)| over the
    whole input, then gs and alpha) per tile against the routed one (`kernels.scale_config`); device
    time, bytes read per time against the copy ceiling; every config's (gs, alpha) checked equal to
    the routed one's (-> results/scale_tune_<gpu>.csv)."""
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    graph_us, _ = timers(device)
    copy = copy_ceiling_tbps() if device == "cuda" else float("nan")
    ms = [40, 300] if device == "cpu" else (args.m or [128, 256, 2048, 4096, 8192])
    inputs = [(200, None), (2 * 72, "silu_mul")] if device == "cpu" else (
        [(k, None) for _, k in (args.shapes or [(0, 2688), (0, 3696), (0, 4096), (0, 8192)])]
        + [(2 * 1368, "silu_mul"), (2 * 3696, "silu_mul")])
    configs = [kernels.ScaleConfig(*c) for c in SCALE_CONFIGS]
    if device == "cpu":
        configs = [kernels.ScaleConfig(8, 64, 1), kernels.ScaleConfig(4, 128, 0)]
    ws2 = torch.tensor([0.01], device=device)
    rows = []
    for width, act in tqdm(inputs, desc="scale tune", file=sys.stderr):
        for m in ms:
            x = (torch.rand(m, width, device=device) * 8 - 4).to(torch.bfloat16)
            x[m // 2, width // 3] = 5.5  # one element sets the maximum
            want = kernels.dynamic_scales(x, ws2, act).clone()
            routed = graph_us(lambda: kernels.dynamic_scales(x, ws2, act))
            nbytes = m * width * 2
            line = [f"routed {routed:.2f}us"]
            rows.append([m, width, act or "", "routed", routed, nbytes / routed / 1e6, 100 * nbytes / routed / 1e6 / copy])
            for cfg in configs:
                got = kernels.dynamic_scales(x, ws2, act, config=cfg)
                assert torch.equal(got, want), (m, width, act, cfg)
                t = graph_us(lambda cfg=cfg: kernels.dynamic_scales(x, ws2, act, config=cfg))
                label = f"{cfg.block_r}x{cfg.block_k}x{cfg.k_blocks} w{cfg.num_warps}"
                rows.append([m, width, act or "", label, t, nbytes / t / 1e6, 100 * nbytes / t / 1e6 / copy])
                line.append(f"{label} {t:.2f}us")
            print(f"scale {m}x{width} {act or ''}: " + "; ".join(line), flush=True)
    if device == "cpu":
        return
    write_csv(args.results_dir / f"scale_tune_{gpu_slug()}.csv",
              ["m", "width", "act", "config", "us", "read_tbps", "pct_copy"], rows)


def main():
    # the modes besides the table: flag, runner, help
    modes = [("--tune", run_tune, "tile sweeps for the small-M kernel and the paths"),
             ("--tune-gemv", run_tune_gemv, "small M: CUDA-core kernel tiles vs the tensor-core kernel and the "
              "routed path (-> results/gemv_tune_<gpu>*.csv)"),
             ("--tune-fused", run_tune_fused, "tiles of the GEMM quantizing x past 16 rows "
              "(-> results/fused_tune_<gpu>.csv)"),
             ("--ab-dynamic", run_ab_dynamic, "dynamic vs static scale, new vs previous dynamic paths "
              "(-> results/dynamic_ab_<gpu>.csv)"),
             ("--ab-maxima", run_ab_maxima, "dynamic scale past decode: per-program maxima reduced by the pass vs an "
              "atomic max and ticket (-> results/maxima_ab_<gpu>.csv)"),
             ("--ab-alpha", run_ab_alpha, "dynamic scale on the cuBLAS path: alpha read by cuBLAS vs an fp32 "
              "epilogue vs the Triton GEMM (-> results/alpha_ab_<gpu>.csv)"),
             ("--ab-operands", run_ab_operands, "cuBLAS path: operands in one launch vs two "
              "(-> results/operands_ab_<gpu>.csv)"),
             ("--tune-pipelined", run_tune_pipelined, "past decode: the software-pipelined Gluon GEMM per tile vs "
              "the routed path and Triton's schedule (-> results/pipelined_tune_<gpu>.csv)"),
             ("--tune-operand", run_tune_operand, "the decoded weight as the MMA's right operand, per tile, vs "
              "the routed path (-> results/operand_tune_<gpu>.csv)"),
             ("--ab-decode", run_ab_decode, "decode: inline-PTX vs portable weight decode, right vs left operand "
              "tiles (-> results/decode_ab_<gpu>.csv)"),
             ("--ab-bias", run_ab_bias, "past decode: the same layer with and without a bias "
              "(-> results/bias_ab_<gpu>.csv)"),
             ("--ab-align", run_ab_align, "K %% 16 != 0: x's loads told K's and the row stride's alignment vs not "
              "(-> results/align_ab_<gpu>.csv)"),
             ("--tune-chunks", run_tune_chunks, "cuBLAS path: weight chunk sizes (-> results/chunk_tune_<gpu>.csv)"),
             ("--tune-operands", run_tune_operands, "cuBLAS path: tiles of the operands kernel "
              "(-> results/operands_tune_<gpu>.csv)"),
             ("--tune-pass", run_tune_pass, "decode-sized quantize passes, static and dynamic scale "
              "(-> results/pass_tune_<gpu>.csv)"),
             ("--tune-pass-tiles", run_tune_pass_tiles, "the static decode pass per tile, alone "
              "(-> results/pass_tiles_<gpu>.csv)"),
             ("--tune-dynamic-pass-tiles", run_tune_dynamic_pass_tiles, "the dynamic decode pass per tile, alone "
              "(-> results/pass_tiles_dynamic_<gpu>.csv)"),
             ("--ab-pass-barrier", run_ab_pass_barrier, "dynamic decode pass: the grid-wide barrier vs every program reading "
              "x (-> results/barrier_words_ab_<gpu>.csv)"),
             ("--tune-split", run_tune_split, "decode: K splits of the routed tiles (programs per SM) "
              "(-> results/split_tune_<gpu>.csv)"),
             ("--tune-small", run_tune_small, "decode on small per-rank weights: tiles and K splits of the GEMM "
              "quantizing x, static and dynamic, and the dynamic two launches (-> results/small_tune_<gpu>.csv)"),
             ("--tune-scale", run_tune_scale, "past decode: tiles of the dynamic-scale kernel "
              "(-> results/scale_tune_<gpu>.csv)"),
             ("--ab-fused", run_ab_fused, "past decode: x quantized inside the Triton GEMM vs a pass first vs "
              "cuBLAS (-> results/fused_ab_<gpu>.csv)"),
             ("--ab-eager", run_ab_eager, "eager decode: the one-launch eager route vs the captured route, weights "
              "hot and cold (-> results/eager_ab_<gpu>.csv)")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group()
    for flag, _, help_ in modes:
        group.add_argument(flag, action="store_true", help=help_)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (no timings of note)")
    p.add_argument("--m", type=int, nargs="*", help="only these M")
    p.add_argument("--shapes", type=lambda s: tuple(map(int, s.split("x"))), nargs="*", help="only these NxK")
    p.add_argument("--host-bound-tiles", action="store_true", help="--ab-fused: also the one launch with the tiles "
                   "of the host-bound eager route (ops.TILES_FOR_HOST_BOUND)")
    p.add_argument("--update", action="store_true", help="replace only the measured rows of this card's CSV")
    p.add_argument("--capped", action="store_true", help="--tune-pipelined --registers: only the register "
                   "kernel's tiles under a register cap (two CTAs per SM), with references "
                   "(-> results/pipelined_capped_<gpu>.csv)")
    p.add_argument("--registers", action="store_true", help="--tune-pipelined: the register-operand tiles, with the "
                   "routed path, the cuBLAS path and the routed shared-memory tiles only")
    p.add_argument("--register-splits", type=int, nargs="*", help="--tune-pipelined: also each register-operand tile "
                   "with these explicit split_k (one program per SM)")
    p.add_argument("--tiles", nargs="*", help="--ab-decode, --tune-gemv, --tune-pipelined, --tune-operand, --tune-operands: "
                   "only the tiles whose name "
                   "holds one of these strings (and the routed / cuBLAS paths)")
    p.add_argument("--ragged-k", action="store_true", help="--ab-decode: also K tiles that do not divide Kp "
                   "(the last one masked)")
    p.add_argument("--no-compile", action="store_true", help="the table: leave out the torch.compile columns "
                   "(about a minute a decode row)")
    p.add_argument("--from-csv", type=Path, nargs="+", help="the table from these runs' CSVs, merged (later files "
                   "win), nothing timed: runs split over several GPUs of one host")
    add_output_args(p)
    args = p.parse_args()
    run = next((fn for flag, fn, _ in modes if getattr(args, flag[2:].replace("-", "_"))),
               run_from_csv if args.from_csv else run_table)
    run(args)

if __name__ == "__main__":
    main()
