"""Fused pad+quantize on the GPU: medians, effective bandwidth, % of the copy ceiling, ratios.

Same process, same card: device copy ceiling, empty Triton launch, F.pad + quantize of the
padded tensor, quantize of an already aligned Kp-wide tensor, torch.compile of the reference.
Bytes per call = M*K*itemsize (read) + M*Kp/2 (data) + scale bytes (padded, swizzled).

    python benchmarks/quant_bench.py                # full table -> RESULTS.md section + results/quant_<gpu>.csv
    python benchmarks/quant_bench.py --configs      # kernel variants x tiles per shape, A/B against the
                                                    # kernel as first benchmarked (-> quant_configs_<gpu>.csv)
    python benchmarks/quant_bench.py --configs --dry-run   # CPU: every variant checked bit for bit, tiny shapes
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import (add_output_args, card, copy_ceiling_tbps, empty_launch_us, gpu_slug, median_us, merge_rows,  # noqa: E402
                    publish, read_floor_us)
from fp4linear import kernels, reference  # noqa: E402
from fp4linear.format import NVFP4Tensor  # noqa: E402
from kernels.quantize_launch import BASELINE, QuantConfig  # noqa: E402

MS = [1, 16, 256, 4096, 16384]
KS = [(464, 512), (1368, 1408), (2736, 2752), (3696, 3712), (4096, 4096), (8192, 8192)]
K_ALIGN = 64  # gives exactly the Kp column above for every K
COMPILE_SHAPES = {(256, 1368), (4096, 3696), (4096, 4096), (16384, 4096), (16384, 8192)}

# --configs: the shapes of the goals (16384 x 8192 and every M >= 4096 shape kind, decode)
CONFIG_SHAPES = [(16384, 8192, 8192), (16384, 1368, 1408), (16384, 2736, 2752), (16384, 3696, 3712), (4096, 3696, 3712),
                 (4096, 4096, 4096), (4096, 2736, 2752), (4096, 1368, 1408), (4096, 464, 512), (4096, 8192, 8192),
                 (16, 8192, 8192), (16, 1368, 1408), (1, 4096, 4096)]
VARIANTS = {
    "baseline": BASELINE,  # the kernel as first benchmarked
    "r2": dict(BASELINE, recipe=2),
    "r2+words": dict(BASELINE, recipe=2, words=True),
    "r2+words+2d (default)": dict(recipe=2, words=True, grid_2d=True, persistent=0),
    "default+p2": dict(recipe=2, words=True, grid_2d=True, persistent=2),
    "default+p4": dict(recipe=2, words=True, grid_2d=True, persistent=4),
    "default+halves": dict(recipe=2, words=True, grid_2d=True, persistent=0, halves=True),
    "default+r4": dict(recipe=4, words=True, grid_2d=True, persistent=0),
    "default+r4+p4": dict(recipe=4, words=True, grid_2d=True, persistent=4),
    "default+r4+halves": dict(recipe=4, words=True, grid_2d=True, persistent=0, halves=True),
}
WIDE_TILES = [(8, 512, 2), (16, 128, 2), (16, 256, 2), (16, 512, 4), (2, 4096, 4), (4, 2048, 4), (16, 128, 4), (8, 128, 2),
              (8, 256, 4), (16, 256, 4), (32, 128, 4), (8, 128, 4)]  # (the last six: fewer registers a thread)
DECODE_TILES = [(8, 128, 4), (16, 128, 4), (8, 256, 4), (16, 64, 2), (8, 512, 4), (4, 256, 4),
                (16, 64, 4), (8, 64, 4), (8, 64, 2)]  # (the last three: the decode pass's best shape, session 30)


def moved_bytes(m, k, kp, itemsize=2):
    rows, s4 = fp4linear.SWIZZLE_128x4.padded_shape(m, kp)
    return m * k * itemsize + m * kp // 2 + rows * s4


def compiled_reference_us(x, gs):
    torch._dynamo.reset()  # a fresh compile per shape: no recompile-limit fallback to eager
    fn = torch.compile(lambda t: reference.quantize(t, gs, k_align=K_ALIGN))
    try:
        fn(x)
        return median_us(lambda: fn(x))
    except Exception as e:  # report, do not hide
        logging.warning("torch.compile of the reference failed at %s: %s", tuple(x.shape), e)
        return float("nan")


def device_us(fn):
    """Device time (CUDA-graph replays); falls back to do_bench where capture fails."""
    try:
        return median_us(fn, graph=True)
    except Exception as e:  # e.g. a compiled function that cannot be captured
        logging.warning("graph capture failed (%s); timing with do_bench", e)
        torch.cuda.synchronize()
        return median_us(fn)


def run_table(args):
    ceiling = copy_ceiling_tbps()
    empty, empty_graph = empty_launch_us()
    print(f"{card()}: copy ceiling {ceiling:.2f} TB/s; empty launch {empty:.2f} us (graph replay {empty_graph:.2f} us)")
    header = ["M", "K", "Kp", "fused us", "TB/s", "% copy", "aligned-Kp us", "pad overhead", "F.pad+quant us",
              "vs F.pad+quant", "compiled ref us", "vs compiled", "fused host-incl. us", "vs empty (graph)",
              "vs empty (host-incl.)", "read-x us", "vs read-x", "same-size copy us", "% same-size copy"]
    rows = []
    shapes = [(m, k, kp) for m in MS for k, kp in KS]
    for m, k, kp in tqdm(shapes, desc="quant shapes", file=sys.stderr):
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        xa = torch.randn(m, kp, dtype=torch.bfloat16, device="cuda")
        gs = fp4linear.encode_scale(x.float().abs().amax())
        out = NVFP4Tensor.empty((m, k), k_align=K_ALIGN, device="cuda")
        out_a = NVFP4Tensor.empty((m, kp), k_align=K_ALIGN, device="cuda")
        fused = device_us(lambda: fp4linear.quantize(x, gs, k_align=K_ALIGN, out=out))
        aligned = device_us(lambda: fp4linear.quantize(xa, gs, k_align=K_ALIGN, out=out_a))
        padded = device_us(lambda: fp4linear.quantize(F.pad(x, (0, kp - k)), gs, k_align=K_ALIGN))
        host = median_us(lambda: fp4linear.quantize(x, gs, k_align=K_ALIGN, out=out))
        comp = compiled_reference_us(x, gs) if (m, k) in COMPILE_SHAPES and not args.no_compile else float("nan")
        tbps = moved_bytes(m, k, kp) / (fused * 1e-6) / 1e12
        small = m <= 16
        read_x = read_floor_us([x], device_us)  # a kernel that only reads x: the floor of any pass over it
        # a copy moving as many bytes (read + write) as the quantize: the ceiling at this size, launch,
        # ramp-up and tail included (the 'copy ceiling' is measured on 1 GiB)
        src = torch.empty(moved_bytes(m, k, kp) // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        copy_us = device_us(lambda: dst.copy_(src))
        rows.append([m, k, kp, fused, tbps, 100 * tbps / ceiling, aligned, fused / aligned, padded, padded / fused,
                     comp, comp / fused, host, fused / empty_graph if small else float("nan"),
                     host / empty if small else float("nan"), read_x, fused / read_x, copy_us, 100 * copy_us / fused])
    intro = (f"Copy ceiling {ceiling:.2f} TB/s (read+write); empty Triton launch {empty_graph:.2f} us as a "
             f"CUDA-graph replay, {empty:.2f} us host-inclusive (do_bench). Device times ('us' columns) are "
             "medians of CUDA-graph replays (`triton.testing.do_bench_cudagraph`); 'host-incl.' is "
             "`triton.testing.do_bench` of the Python call (L2 flushed), which for small shapes measures the "
             "host launch path, not the GPU. bf16 input, k_align=64, 128x4 scales, `out=` preallocated. "
             "'pad overhead' = fused K->Kp / quantize of an aligned Kp-wide input; 'vs X' = X / fused; "
             "compiled ref = torch.compile of fp4linear.reference.quantize, dynamo reset per shape. 'read-x' = "
             "the fastest kernel that only reads x (`common.read_kernel`, writing one word per program), the "
             "same graph replays: no pass over x can take less, launch, ramp-up and tail included. 'same-size "
             "copy' = torch's device copy of as many bytes as the quantize reads and writes together (half each "
             "way), the same replays: the copy ceiling at this size; '% same-size copy' = its time / fused.")
    publish(args, "Fused pad+quantize (benchmarks/quant_bench.py)", intro, header, rows,
            csv_name=f"quant_{gpu_slug()}.csv")


def config_grid(m: int, kp: int, device_type: str = "cuda", variants=None) -> list[QuantConfig]:
    """Today's tile with the kernel as first benchmarked (the A/B reference), today's tile as routed, then
    every variant (those whose name holds one of `variants`, default all) x tile."""
    today = kernels.quant_config(m, kp, device_type)
    grid = [replace(today, **BASELINE), today]
    for bm, bk, w in DECODE_TILES if m <= 16 else WIDE_TILES:
        for name, flags in VARIANTS.items():
            if variants and not any(v in name for v in variants):
                continue
            cfg = QuantConfig(bm, bk, w, **flags)
            if cfg not in grid:
                grid.append(cfg)
    return grid


def run_configs(args):
    """Tuning aid and A/B: device time of every (variant, tile) per shape against the baseline."""
    ceiling = copy_ceiling_tbps()
    empty, empty_graph = empty_launch_us()
    print(f"{card()}: copy ceiling {ceiling:.2f} TB/s; empty launch (graph replay) {empty_graph:.2f} us")
    header = ["M", "K", "Kp", "config", "us", "TB/s", "% copy", "vs baseline"]
    rows, best_rows = [], []
    for m, k, kp in CONFIG_SHAPES:
        if args.shape and f"{m}x{k}" not in args.shape:
            continue
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        gs = fp4linear.encode_scale(x.float().abs().amax())
        out = NVFP4Tensor.empty((m, k), k_align=K_ALIGN, device="cuda")
        want = reference.quantize(x, gs, k_align=K_ALIGN)
        tb = moved_bytes(m, k, kp) / 1e12
        res = []
        for cfg in tqdm(config_grid(m, kp, variants=args.variants), desc=f"configs {m}x{k}", file=sys.stderr):
            fn = lambda: kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=128, config=cfg)  # noqa: E731
            out.data.fill_(0xFF)
            fn()
            if not (torch.equal(out.data, want.data) and torch.equal(out.scale.view(torch.uint8), want.scale.view(torch.uint8))):
                raise SystemExit(f"{cfg.label} at {m}x{k}: bits differ from the reference")
            res.append((median_us(fn, graph=True), cfg))
        base = res[0][0]
        for t, cfg in res:
            rows.append([m, k, kp, cfg.label, t, tb / (t * 1e-6), 100 * tb / (t * 1e-6) / ceiling, base / t])
        res.sort(key=lambda r: r[0])
        print(f"{m}x{k}: baseline {base:.2f} us; " + "; ".join(
            f"{t:.2f}us {tb / (t * 1e-6):.2f}TB/s {cfg.label}" for t, cfg in res[:5]))
    # the CSV keeps earlier runs' shapes (runs of a few shapes at a time); the table: each shape's baseline and best
    path = args.results_dir / f"quant_configs_{gpu_slug()}.csv"
    rows = merge_rows(path, rows, 4, lambda r: [int(r[0]), int(r[1]), int(r[2]), r[3], *map(float, r[4:])])
    for m, k, kp in sorted({tuple(r[:3]) for r in rows}, key=lambda s: (-s[0], s[1])):
        mine = [r for r in rows if tuple(r[:3]) == (m, k, kp)]
        base = next(r for r in mine if r[7] == 1.0)
        best = min(mine, key=lambda r: r[4])
        best_rows.append([m, k, kp, base[3], base[4], best[3], best[4], best[5], best[6], base[4] / best[4]])
    intro = (f"Kernel variants (kernels/quantize.py flags, `QuantConfig` fields) x tiles, device time of "
             f"`kernels.pad_quantize` (CUDA-graph replay medians, bf16, k_align=64, 128x4 scales; every config "
             f"checked bit for bit against the reference first). Copy ceiling {ceiling:.2f} TB/s, empty launch "
             f"{empty_graph:.2f} us. 'baseline' = today's tile with the kernel as first benchmarked "
             f"(`BASELINE` flags); full grid in the CSV.")
    publish(args, "Quantize kernel variants (benchmarks/quant_bench.py --configs)", intro, header, rows,
            csv_name=f"quant_configs_{gpu_slug()}.csv", md_rows=best_rows,
            md_header=["M", "K", "Kp", "baseline", "baseline us", "best", "best us", "TB/s", "% copy", "speedup"])


def run_dry(configs: bool):
    """No GPU: walk the code on CPU tensors (Triton interpreter) and check the bits."""
    import time

    print("No CUDA GPU (or --dry-run): timings need one. Checking the kernel (Triton interpreter) against the reference:")
    shapes = [(3, 1368), (16, 464), (130, 2736)] if not configs else [(3, 136), (20, 464), (9, 7)]
    for m, k in shapes:
        x = torch.randn(m, k, dtype=torch.bfloat16)
        gs = fp4linear.encode_scale(x.float().abs().amax())
        r = reference.quantize(x, gs, k_align=K_ALIGN)
        cfgs = config_grid(m, fp4linear.pad_k(k, K_ALIGN))[:: 7 if m > 16 else 3] if configs else [None]
        for cfg in cfgs:
            out = NVFP4Tensor.empty((m, k), k_align=K_ALIGN)
            out.data.fill_(0xFF)
            out.scale.view(torch.uint8).fill_(0xFF)
            t = time.perf_counter()
            kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=128, config=cfg)
            dt = time.perf_counter() - t
            same = torch.equal(out.data, r.data) and torch.equal(out.scale.view(torch.uint8), r.scale.view(torch.uint8))
            label = cfg.label if cfg else "cpu config"
            print(f"  M={m:4d} K={k:5d} {label:32s} bit-exact={same}, {dt * 1e3:.0f} ms (interpreter)")
            if not same:
                raise SystemExit("kernel and reference disagree")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", action="store_true", help="A/B kernel variants x tiles instead of the table")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    p.add_argument("--dry-run", action="store_true", help="CPU: check the code paths on tiny shapes, no timing")
    p.add_argument("--shape", action="append", help="with --configs: only this MxK (repeatable), e.g. 16384x8192")
    p.add_argument("--variants", nargs="*", help="with --configs: only the variants whose name holds one of these")
    add_output_args(p)
    args = p.parse_args()
    if args.dry_run or not torch.cuda.is_available():
        run_dry(args.configs)
        return
    run_configs(args) if args.configs else run_table(args)


if __name__ == "__main__":
    main()
