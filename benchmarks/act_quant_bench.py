"""Fused activation + NVFP4 quantize (fp4linear.act_quantize) against the unfused pipeline.

Same process, same card: device copy ceiling, then per (M, I) the fused kernel (static and
dynamic global scale) and the pipeline an engine runs today, `F.silu(g) * u` in bf16 followed by
`fp4linear.quantize` (dynamic: plus the amax on the device, `format.abs_amax` and the division).
Device times are CUDA-graph replay medians. Effective bandwidth counts what the fused kernel must
move: 2 bytes read per input element (M x 2I), Ip/2 bytes of codes written per row and the padded
swizzled scales (~1/16 byte per output element).

    python benchmarks/act_quant_bench.py              # table -> RESULTS.md section + results/act_quant_<gpu>.csv
    python benchmarks/act_quant_bench.py --configs    # tile sweep of the fused kernel (tuning aid), printed
    python benchmarks/act_quant_bench.py --dry-run    # CPU: walk the same code on tiny shapes, no timing
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import add_output_args, copy_ceiling_tbps, gpu_slug, median_us, publish  # noqa: E402
from fp4linear import kernels  # noqa: E402
from fp4linear.format import E2M1_MAX, E4M3_MAX, NVFP4Tensor, abs_amax  # noqa: E402

MS = [16, 4096, 16384]
IS = [1368, 3696, 232, 2048]
K_ALIGN = 64
OTHER_ACTS = ["gelu_tanh_mul", "relu2", "gelu", "silu"]  # timed at one shape, fused only vs torch + quantize
TILES = [(8, 512, 2), (16, 128, 2), (8, 256, 4), (16, 256, 4), (4, 512, 4), (8, 128, 4), (16, 128, 4), (32, 128, 4)]
HALVES_TILES = [(8, 512, 2), (16, 128, 2), (16, 256, 4), (8, 128, 4)]  # + whole blocks per thread (QuantConfig.halves)
MEASURED = kernels.quantize_launch.MEASURED_VARIANTS  # the quantize kernel's variants its GPU defaults use


def moved_bytes(m: int, width: int, i: int) -> int:
    ip = fp4linear.pad_k(i, K_ALIGN)
    rows, s4 = fp4linear.SWIZZLE_128x4.padded_shape(m, ip)
    return 2 * m * width + m * ip // 2 + rows * s4


def torch_act(x, act):
    if act.endswith("_mul"):
        i = x.shape[-1] // 2
        g, u = x[..., :i], x[..., i:]
        return (F.silu(g) if act == "silu_mul" else F.gelu(g, approximate="tanh")) * u  # in x's dtype, as engines do
    return {"relu2": lambda t: F.relu(t) ** 2, "gelu": F.gelu, "silu": F.silu}[act](x)


def unfused(x, act, gs, divisor):
    """The separate pipeline: torch activation in x's dtype, then quantize (dynamic: amax first)."""
    h = torch_act(x, act)
    if gs is None:
        gs = divisor / abs_amax(h).clamp(min=1e-30).reshape(1)
    return fp4linear.quantize(h, gs, k_align=K_ALIGN)


def timer(dry: bool):
    if dry:
        def run_once(fn):
            fn()
            return math.nan
        return run_once
    return lambda fn: median_us(fn, graph=True)


def bench_shape(m, i, act, time_us, device):
    width = 2 * i if act.endswith("_mul") else i
    x = torch.randn(m, width, dtype=torch.bfloat16, device=device)
    gs = (E4M3_MAX * E2M1_MAX / torch_act(x.float(), act).abs().amax().clamp(min=1e-30)).reshape(1).float()
    divisor = torch.full((1,), E4M3_MAX * E2M1_MAX, device=device)
    out = NVFP4Tensor.empty((m, i), k_align=K_ALIGN, device=device)
    fused = time_us(lambda: fp4linear.act_quantize(x, gs, act=act, k_align=K_ALIGN, out=out))
    fused_dyn = time_us(lambda: fp4linear.act_quantize(x, None, act=act, k_align=K_ALIGN, out=out))
    sep = time_us(lambda: unfused(x, act, gs, divisor))
    sep_dyn = time_us(lambda: unfused(x, act, None, divisor))
    return width, fused, fused_dyn, sep, sep_dyn


def run_table(args, dry: bool):
    device = "cpu" if dry else "cuda"
    ceiling = math.nan if dry else copy_ceiling_tbps()
    time_us = timer(dry)
    shapes = [(m, i, "silu_mul") for m in (MS if not dry else [3, 20]) for i in (IS if not dry else [232, 7])]
    shapes += [(4096 if not dry else 5, 3696 if not dry else 40, act) for act in OTHER_ACTS]
    header = ["M", "I", "act", "fused us", "TB/s", "% copy", "unfused us", "speedup", "fused dynamic us",
              "dyn. TB/s", "dyn. % copy", "unfused dynamic us", "dyn. speedup"]
    rows = []
    for m, i, act in tqdm(shapes, desc="act_quant shapes", file=sys.stderr):
        width, fused, fused_dyn, sep, sep_dyn = bench_shape(m, i, act, time_us, device)
        nbytes = moved_bytes(m, width, i)
        tb, tb_dyn = nbytes / (fused * 1e-6) / 1e12, nbytes / (fused_dyn * 1e-6) / 1e12
        rows.append([m, i, act, fused, tb, 100 * tb / ceiling, sep, sep / fused, fused_dyn, tb_dyn,
                     100 * tb_dyn / ceiling, sep_dyn, sep_dyn / fused_dyn])
    intro = (f"fp4linear.act_quantize (bf16 x [M, 2I] for gated acts, k_align=64, 128x4 scales, `out=` "
             f"preallocated) vs the unfused pipeline: the torch activation in bf16 (`F.silu(g) * u`) then "
             f"`fp4linear.quantize`; dynamic = global scale from the activation's amax on the device (fused: "
             f"2 launches; unfused: + abs_amax and a division). CUDA-graph replay medians. TB/s counts 2 B read per "
             f"input element + Ip/2 B of codes per row + the padded swizzled scales; copy ceiling "
             f"{ceiling:.2f} TB/s (read+write, same run). Goals: >= 1.6x at M >= 4096, >= 1.3x at M = 16, "
             f">= 80% of copy at M >= 4096 (static scale).")
    if dry:
        args.no_write = True
    publish(args, "Fused activation + quantize (benchmarks/act_quant_bench.py)", intro, header, rows,
            csv_name=f"act_quant_{gpu_slug()}.csv")


def run_configs(dry: bool):
    """Tile sweep of the fused kernel (static scale), printed: a tuning aid for act_quant_config."""
    device = "cpu" if dry else "cuda"
    time_us = timer(dry)
    shapes = [(16384, 3696), (16384, 1368), (4096, 3696), (4096, 1368), (4096, 232), (16, 3696)]
    for m, i in (shapes if not dry else [(20, 40)]):
        x = torch.randn(m, 2 * i, dtype=torch.bfloat16, device=device)
        h = fp4linear.activation(x, "silu_mul")
        gs = (E4M3_MAX * E2M1_MAX / h.float().abs().amax()).reshape(1)
        out = NVFP4Tensor.empty((m, i), k_align=K_ALIGN, device=device)
        want = fp4linear.quantize(h, gs, k_align=K_ALIGN)
        res = []
        # the tiles with the quantize kernel's measured variants (its GPU defaults' flags) and as first benchmarked
        configs = ([kernels.QuantConfig(*t, **MEASURED) for t in TILES] + [kernels.QuantConfig(*t) for t in TILES]
                   + [kernels.QuantConfig(*t, halves=True, **MEASURED) for t in HALVES_TILES])
        for cfg in configs:
            fn = lambda: kernels.act_pad_quantize(x, "silu_mul", gs, out.data, out.scale, sf_row_tile=128,  # noqa: E731
                                                  dynamic=False, config=cfg)
            out.data.fill_(0xFF)
            fn()
            if not (torch.equal(out.data, want.data) and torch.equal(out.scale.view(torch.uint8), want.scale.view(torch.uint8))):
                raise SystemExit(f"{cfg.label} at {m}x{i}: bits differ from quantize(activation(x))")
            res.append((time_us(fn), cfg.label))
        tb = moved_bytes(m, 2 * i, i) / 1e12
        res.sort(key=lambda r: (math.isnan(r[0]), r[0]))
        print(f"{m}x{i} silu_mul: " + "; ".join(f"{t:.2f}us {tb / (t * 1e-6):.2f}TB/s {label}" for t, label in res))


FAKE_TILES = [(32, 128, 4), (16, 128, 4), (16, 256, 4), (8, 256, 4), (8, 512, 4), (32, 64, 4), (64, 128, 8),
              (32, 256, 8), (16, 512, 8), (4, 512, 2), (8, 128, 2), (16, 128, 2), (64, 64, 4), (32, 128, 8)]


def run_fake_configs(args, dry: bool):
    """Tile sweep of `act_fake_quantize` as GatedMLP's cuBLAS path runs it (silu_mul, static scale, the
    activation's true values written in bf16, K rounded to 8): device time, the bytes it moves (2 read per
    input element, 2 written per output element) per second and % of the copy ceiling, every tile's output
    checked equal to the routed one's (-> results/act_fake_tiles_<gpu>.csv)."""
    from fp4linear import ops
    from fp4linear.kernels import act_quantize_launch as aql

    device = "cpu" if dry else "cuda"
    time_us = timer(dry)
    ceiling = copy_ceiling_tbps() if not dry else math.nan
    shapes = [(20, 40)] if dry else [(4096, 1368), (4096, 3696), (16384, 1368), (16384, 3696), (4096, 2048),
                                     (2048, 1368), (4096, 232)]
    tiles = [(32, 128, 4), (16, 128, 4)] if dry else FAKE_TILES
    rows = []
    for m, i in tqdm(shapes, desc="act_fake tiles", file=sys.stderr):
        x = torch.randn(m, 2 * i, dtype=torch.bfloat16, device=device)
        gs = (E4M3_MAX * E2M1_MAX / fp4linear.activation(x, "silu_mul").float().abs().amax()).reshape(1)
        ka = ops.cublas_k(i, fp4linear.pad_k(i, K_ALIGN))
        want = torch.empty(m, ka, dtype=torch.bfloat16, device=device)
        kernels.act_fake_quantize(x, "silu_mul", gs, want, units=False)
        routed = aql.fake_tiles(m, ka, False)
        moved = 2 * m * 2 * i + 2 * m * ka
        for t in (tiles if routed in tiles else [routed, *tiles]):
            out = torch.full_like(want, math.nan)
            fn = lambda t=t, out=out: kernels.act_fake_quantize(x, "silu_mul", gs, out, units=False, tiles=t)  # noqa: E731
            fn()
            if not torch.equal(out.view(torch.int16), want.view(torch.int16)):
                raise SystemExit(f"tiles {t} at {m}x{i}: bits differ from the routed tiles'")
            us = time_us(fn)
            tbps = moved / (us * 1e-6) / 1e12
            rows.append([m, i, *t, t == routed, us, tbps, 100 * tbps / ceiling])
        here = sorted((r for r in rows if r[0] == m and r[1] == i), key=lambda r: r[6])
        base = next(r for r in here if r[5])
        print(f"{m}x{i}: routed {base[6]:.2f} us ({base[8]:.0f}% copy), best {here[0][6]:.2f} us "
              f"({here[0][8]:.0f}%) {here[0][2]}x{here[0][3]} w{here[0][4]}", flush=True)
    if dry:
        return
    header = ["m", "i", "block_m", "block_k", "num_warps", "routed", "us", "tbps", "pct_copy"]
    best = {}
    for r in rows:
        if (r[0], r[1]) not in best or r[6] < best[r[0], r[1]][6]:
            best[r[0], r[1]] = r
    md = [[m, i, next(r[6] for r in rows if r[:2] == [m, i] and r[5]), b[6], f"{b[2]}x{b[3]} w{b[4]}", b[8],
           next(r[6] for r in rows if r[:2] == [m, i] and r[5]) / b[6]] for (m, i), b in best.items()]
    publish(args, "act_fake_quantize tiles (benchmarks/act_quant_bench.py --fake-configs)",
            f"silu_mul of x [M, 2I] bf16, static scale, the activation's NVFP4 values written in bf16 [M, K rounded "
            f"to 8] (GatedMLP's cuBLAS path); device time (CUDA-graph replay medians); bytes moved = 2 per input "
            f"element read + 2 per output element written; copy ceiling {ceiling:.2f} TB/s measured in the same "
            f"run. Every tile's output equal to the routed tile's (bits).", header, rows,
            csv_name=f"act_fake_tiles_{gpu_slug()}.csv",
            md_header=["M", "I", "routed us", "best us", "best tile", "best % copy", "routed / best"], md_rows=md)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", action="store_true", help="tile sweep of the fused kernel instead of the table")
    p.add_argument("--fake-configs", action="store_true", help="tile sweep of act_fake_quantize (GatedMLP's cuBLAS "
                   "path) -> results/act_fake_tiles_<gpu>.csv")
    p.add_argument("--dry-run", action="store_true", help="CPU tensors, tiny shapes, no timing: walk the code")
    add_output_args(p)
    args = p.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        print("No CUDA GPU: running the dry run (timings need a GPU).")
    if args.fake_configs:
        run_fake_configs(args, dry)
    else:
        run_configs(dry) if args.configs else run_table(args, dry)


if __name__ == "__main__":
    main()
