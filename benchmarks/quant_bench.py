"""Fused pad+quantize on the GPU: medians, effective bandwidth, % of the copy ceiling, ratios.

Same process, same card: device copy ceiling, empty Triton launch, F.pad + quantize of the
padded tensor, quantize of an already aligned Kp-wide tensor, torch.compile of the reference.
Bytes per call = M*K*itemsize (read) + M*Kp/2 (data) + scale bytes (padded, swizzled).

    python benchmarks/quant_bench.py                # full table: RESULTS.md section + results/quant_<gpu>.csv
    python benchmarks/quant_bench.py --configs      # sweep tiles/warps per shape (tuning aid)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import add_output_args, card, copy_ceiling_tbps, empty_launch_us, gpu_slug, median_us, publish  # noqa: E402
from fp4linear import kernels, reference  # noqa: E402
from fp4linear.format import NVFP4Tensor  # noqa: E402

MS = [1, 16, 256, 4096, 16384]
KS = [(464, 512), (1368, 1408), (2736, 2752), (3696, 3712), (4096, 4096), (8192, 8192)]
K_ALIGN = 64  # gives exactly the Kp column above for every K
COMPILE_SHAPES = {(256, 1368), (4096, 3696), (4096, 4096), (16384, 4096), (16384, 8192)}


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
              "vs empty (host-incl.)"]
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
        rows.append([m, k, kp, fused, tbps, 100 * tbps / ceiling, aligned, fused / aligned, padded, padded / fused,
                     comp, comp / fused, host, fused / empty_graph if small else float("nan"),
                     host / empty if small else float("nan")])
    intro = (f"Copy ceiling {ceiling:.2f} TB/s (read+write); empty Triton launch {empty_graph:.2f} us as a "
             f"CUDA-graph replay, {empty:.2f} us host-inclusive (do_bench). Device times ('us' columns) are "
             "medians of CUDA-graph replays (`triton.testing.do_bench_cudagraph`); 'host-incl.' is "
             "`triton.testing.do_bench` of the Python call (L2 flushed), which for small shapes measures the "
             "host launch path, not the GPU. bf16 input, k_align=64, 128x4 scales, `out=` preallocated. "
             "'pad overhead' = fused K->Kp / quantize of an aligned Kp-wide input; 'vs X' = X / fused; "
             "compiled ref = torch.compile of fp4linear.reference.quantize, dynamo reset per shape.")
    publish(args, "Fused pad+quantize (benchmarks/quant_bench.py)", intro, header, rows,
            csv_name=f"quant_{gpu_slug()}.csv")


def run_configs(args):
    """Tuning aid: best (block_m, block_k, warps) per shape, by device time."""
    grid = [(bm, bk, w) for bm in (8, 16, 32, 64) for bk in (128, 256, 512) for w in (2, 4, 8)
            if 1024 <= bm * bk <= 16384 and bm * bk // (32 * w) >= 8]
    for m, k, kp in [(16384, 8192, 8192), (16384, 1368, 1408), (4096, 3696, 3712), (4096, 464, 512), (16, 8192, 8192)]:
        x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
        gs = fp4linear.encode_scale(x.float().abs().amax())
        out = NVFP4Tensor.empty((m, k), k_align=K_ALIGN, device="cuda")
        res = []
        for bm, bk, w in tqdm(grid, desc=f"configs {m}x{k}", file=sys.stderr):
            cfg = kernels.QuantConfig(bm, bk, w)
            fn = lambda: kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=128, config=cfg)  # noqa: E731
            res.append((median_us(fn, graph=True), bm, bk, w))
        res.sort()
        tb = moved_bytes(m, k, kp) / 1e12
        print(f"{m}x{k}: " + "; ".join(f"{t:.1f}us {tb / (t * 1e-6):.2f}TB/s bm{bm} bk{bk} w{w}" for t, bm, bk, w in res[:5]))


def run_cpu_check():
    """No GPU: run the kernel under Triton's interpreter on a few real shapes and check its bits."""
    import time

    print("No CUDA GPU: timings need one. Checking the kernel (Triton interpreter) against the reference:")
    for m, k in [(3, 1368), (16, 464), (130, 2736)]:
        x = torch.randn(m, k, dtype=torch.bfloat16)
        gs = fp4linear.encode_scale(x.float().abs().amax())
        t = time.perf_counter()
        q = fp4linear.quantize(x, gs, k_align=K_ALIGN)
        dt = time.perf_counter() - t
        r = reference.quantize(x, gs, k_align=K_ALIGN)
        same = torch.equal(q.data, r.data) and torch.equal(q.scale.view(torch.uint8), r.scale.view(torch.uint8))
        err = ((fp4linear.dequantize(q) - x.float()).norm() / x.float().norm()).item()
        print(f"  M={m:4d} K={k:5d} -> Kp={q.kp:5d}: bit-exact={same}, rel. error {err:.3f}, {dt * 1e3:.0f} ms (interpreter)")
        if not same:
            raise SystemExit("kernel and reference disagree")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", action="store_true", help="sweep kernel tiles/warps instead of the table")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    add_output_args(p)
    args = p.parse_args()
    if not torch.cuda.is_available():
        run_cpu_check()
        return
    run_configs(args) if args.configs else run_table(args)


if __name__ == "__main__":
    main()
