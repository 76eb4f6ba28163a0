"""NVFP4 GEMM and fp4linear.Linear on the GPU against cuBLAS bf16, same process, same card.

Columns: cuBLAS bf16 `x @ w.t()`; dequantize-then-matmul (both operands dequantized to bf16 each
call, then cuBLAS); our GEMM on the quantized operands; the whole Linear (quantize + GEMM)
against nn.Linear bf16. Device times are CUDA-graph replay medians. Weight bytes = N*Kp/2 + N*Kp/16.

    python benchmarks/gemm_bench.py             # table: RESULTS.md section + results/gemm_<gpu>.csv
    python benchmarks/gemm_bench.py --configs   # tile sweep (tuning aid)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import (add_output_args, card, copy_ceiling_tbps, gpu_slug, matmul_ceiling_tflops, median_us,  # noqa: E402
                    publish)
from fp4linear import kernels  # noqa: E402

NK = [(2576, 2688), (1288, 2688), (2688, 464), (4096, 4096), (8192, 3696), (8192, 8192)]
MS = [1, 16, 128, 2048, 8192]


def layer_for(n, k):
    lin = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16)
    x_amax = 4.0
    layer = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(torch.tensor(x_amax)), backend="triton")
    return lin, layer


def run_table(args):
    copy = copy_ceiling_tbps()
    mm = matmul_ceiling_tflops()
    print(f"{card()}: copy {copy:.2f} TB/s, cuBLAS bf16 8192^3 {mm:.0f} TFLOP/s")
    header = ["M", "N", "K", "cuBLAS bf16 us", "deq+matmul us", "ours us", "vs cuBLAS", "vs deq+matmul",
              "weight TB/s", "% copy", "TFLOP/s", "% cuBLAS peak", "Linear us", "nn.Linear us", "Linear vs nn.Linear"]
    rows = []
    for n, k in tqdm(NK, desc="N,K", file=sys.stderr):
        lin, layer = layer_for(n, k)
        w = lin.weight.detach()
        for m in MS:
            x = (torch.rand(m, k, device="cuda", dtype=torch.bfloat16) * 8 - 4)
            qa = fp4linear.quantize(x, layer.input_global_scale, k_align=layer.k_padded)
            wq = fp4linear.NVFP4Tensor(layer.weight, fp4linear.SWIZZLE_128x4.swizzle(layer.weight_scale.view(torch.uint8)),
                                      1 / layer.weight_scale_2, (n, k), layer.k_padded)
            out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
            t_cublas = median_us(lambda: x @ w.t(), graph=True)
            t_deq = median_us(lambda: fp4linear.dequantize(qa).bfloat16() @ fp4linear.dequantize(wq).bfloat16().t())
            t_ours = median_us(lambda: kernels.nvfp4_gemm(qa.data, qa.scale, layer.weight, layer.weight_scale,
                                                          layer.alpha, None, out), graph=True)
            t_lin = median_us(lambda: layer(x), graph=True)
            t_nn = median_us(lambda: lin(x), graph=True)
            wbytes = n * layer.k_padded // 2 + n * layer.k_padded // 16
            tflops = 2 * m * n * k / (t_ours * 1e-6) / 1e12
            rows.append([m, n, k, t_cublas, t_deq, t_ours, t_cublas / t_ours, t_deq / t_ours,
                         wbytes / (t_ours * 1e-6) / 1e12, 100 * wbytes / (t_ours * 1e-6) / 1e12 / copy, tflops,
                         100 * tflops / mm, t_lin, t_nn, t_nn / t_lin])
    intro = (f"Copy ceiling {copy:.2f} TB/s; cuBLAS bf16 8192^3 {mm:.0f} TFLOP/s (the matmul ceiling). Device times: "
             "CUDA-graph replay medians (deq+matmul: do_bench, it allocates). 'vs X' = X time / ours "
             "(>1: ours faster). 'weight TB/s' counts only the weight's bytes (the decode floor).")
    publish(args, "NVFP4 GEMM kernel (benchmarks/gemm_bench.py)", intro, header, rows, csv_name=f"gemm_{gpu_slug()}.csv")


def run_configs(args):
    """Tuning aid: (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages, split_k; 0 = auto) per shape."""
    decode = [(16, 64, 128, 4, 1, 0), (16, 64, 128, 4, 4, 0), (16, 128, 128, 4, 1, 0), (16, 64, 128, 4, 1, 8),
              (16, 64, 128, 4, 4, 8), (16, 32, 128, 4, 1, 8)]
    mid = [(128, 128, 64, 8, 4, 1), (64, 64, 128, 4, 3, 0), (64, 128, 64, 4, 4, 0), (128, 128, 64, 8, 4, 4),
           (64, 128, 64, 4, 4, 4), (128, 64, 64, 4, 4, 4), (128, 128, 128, 8, 3, 4), (128, 128, 64, 8, 4, 8)]
    prefill = [(128, 128, 64, 8, 4, 1), (256, 128, 64, 8, 3, 1), (256, 128, 64, 8, 4, 1), (256, 128, 128, 8, 2, 1),
               (128, 256, 64, 8, 3, 1)]
    # per-rank shapes whose 256x128 tiles fill less than two waves of SMs
    narrow = [(256, 128, 64, 8, 4, 1), (128, 128, 64, 8, 4, 1), (128, 128, 64, 8, 4, 2), (128, 64, 64, 4, 4, 1),
              (64, 128, 64, 4, 4, 1)]
    shapes = [(16, 4096, 4096, decode), (16, 8192, 8192, decode), (1, 1288, 2688, decode),
              (128, 4096, 4096, mid), (128, 8192, 8192, mid), (8192, 8192, 8192, prefill)]
    if args.narrow:
        shapes = [(2048, 1288, 2688, narrow), (2048, 2576, 2688, narrow), (2048, 2688, 464, narrow),
                  (8192, 1288, 2688, narrow), (8192, 2576, 2688, narrow), (2048, 8192, 3696, narrow)]
    for m, n, k, grid in shapes:
        if args.m and m not in args.m:
            continue
        lin, layer = layer_for(n, k)
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        qa = fp4linear.quantize(x, layer.input_global_scale, k_align=layer.k_padded)
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        t_cublas = median_us(lambda: x @ lin.weight.t(), graph=True)
        want = kernels.nvfp4_gemm(qa.data, qa.scale, layer.weight, layer.weight_scale, layer.alpha, None, out).float()
        res = []
        flags = [(False, False), (True, False)] if m <= 16 else [(True, True)] if args.narrow else [(True, False), (True, True)]
        variants = [(c, word, pre) for c in grid for word, pre in flags]
        for (bm, bn, bk, w, st, sk), word, pre in tqdm(variants, desc=f"{m}x{n}x{k}", file=sys.stderr):
            cfg = kernels.GemmConfig(bm, bn, bk, w, st, split_k=sk, word_decode=word, predequant_a=pre)
            try:
                t = median_us(lambda: kernels.nvfp4_gemm(qa.data, qa.scale, layer.weight, layer.weight_scale,
                                                         layer.alpha, None, out, config=cfg), graph=True)
            except Exception as e:  # e.g. out of shared memory
                print(f"  {cfg}: {type(e).__name__}")
                continue
            err = ((out.float() - want).norm() / want.norm()).item()  # vs the default config: same products
            if not err < 1e-2:
                print(f"  {cfg}: WRONG, relative error {err:.3g} vs the default config")
                continue
            res.append((t, cfg))
        res.sort(key=lambda r: r[0])
        print(f"{m}x{n}x{k}: cuBLAS {t_cublas:.1f}us; " + "; ".join(
            f"{t:.1f}us ({t_cublas / t:.2f}x) {c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} "
            f"split{c.split_k}{' word' if c.word_decode else ''}{' preA' if c.predequant_a else ''}"
            for t, c in res[:6]))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", action="store_true")
    p.add_argument("--m", type=int, nargs="*", help="--configs: only these M")
    p.add_argument("--narrow", action="store_true", help="--configs: large M on narrow per-rank shapes")
    add_output_args(p)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gemm_bench needs a CUDA GPU; correctness of the GEMM on CPU is tested by pytest.")
        return
    run_configs(args) if args.configs else run_table(args)


if __name__ == "__main__":
    main()
