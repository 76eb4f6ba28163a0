"""Tensor-parallel NVFP4 layers on several GPUs (NCCL): correctness per rank, and an MLP block
(column-parallel up, row-parallel down with all-reduce) against the same block in BF16 under the
same TP.

    python benchmarks/tp_bench.py --tp 2 4 8                 # NCCL, one process per GPU
    python benchmarks/tp_bench.py --backend gloo --small     # CPU dry run of the same code

Shapes (per-rank sizes that need padding): Nemotron-3-Nano in_proj N=10304 (column, K=2688),
GLM-4.5-Air down K=10944 (row, N=4096), Qwen2.5-72B down K=29568 (row, N=8192). NVLink multicast
stays off (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fp4linear  # noqa: E402
from fp4linear import parallel  # noqa: E402

LAYERS = [("Nemotron in_proj", "column", 10304, 2688), ("GLM-4.5-Air down", "row", 4096, 10944),
          ("Qwen2.5-72B down", "row", 8192, 29568)]
MLP = [("GLM-4.5-Air dense MLP", 4096, 10944), ("Qwen2.5-72B MLP", 8192, 29568)]
SMALL_LAYERS = [("small column", "column", 200, 464), ("small row", "row", 48, 1360)]
SMALL_MLP = [("small MLP", 64, 1360)]


def checkpoint(n, k, device, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(n, k, generator=g) * 0.02).to(device=device, dtype=torch.bfloat16)
    tensors = fp4linear.quantize_weight(w)
    tensors["input_scale"] = fp4linear.decode_scale(torch.tensor(4.0, device=device)).reshape(())
    return tensors, w


def timer(device):
    if device.type == "cuda":
        return collective_us
    import time

    def cpu(fn, n=3):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n * 1e6

    return cpu


def collective_us(fn, iters: int = 30, warmup: int = 5) -> float:
    """Median wall time of fn (eager, host included) over a fixed number of calls: every rank must
    make the same number of collective calls (a timer that picks its repetitions from a first
    estimate, as triton.testing.do_bench does, deadlocks when the ranks' estimates differ)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def worker(rank, world, port, backend, small, ms, out_rows):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world, device_id=device if device.type == "cuda" else None)
    try:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        # 1. Every rank's output against the single-GPU layer (computed on the same rank).
        for name, mode, n, k in SMALL_LAYERS if small else LAYERS:
            tensors, _ = checkpoint(n, k, device, seed=n + k)
            full = fp4linear.Linear.from_modelopt(**tensors, backend="triton")
            x = torch.randn(16, k, device=device, generator=torch.Generator(device).manual_seed(3)).to(dtype)
            want = full(x).float()
            if mode == "column":
                layer = parallel.ColumnParallelLinear.from_modelopt(**tensors, backend="triton", gather_output=True)
                got = layer(x).float()
            else:
                layer = parallel.RowParallelLinear.from_modelopt(**tensors, backend="triton")
                got = layer(parallel.split_last_dim(x, world, rank)).float()
            err = ((got - want).norm() / want.norm()).item()
            if err > 2e-2:
                raise AssertionError(f"rank {rank}: {name} at tp={world}: relative error {err:.3g}")
            if rank == 0:
                print(f"tp={world} {name}: every rank matches the single-GPU layer (rank 0 rel. err {err:.2e})")

        # 2. MLP block, NVFP4 vs BF16 under the same TP.
        time_us = timer(device)
        for name, hidden, inter in SMALL_MLP if small else MLP:
            up, w_up = checkpoint(inter, hidden, device, seed=1)
            down, w_down = checkpoint(hidden, inter, device, seed=2)
            col = parallel.ColumnParallelLinear.from_modelopt(**up, backend="triton")
            row = parallel.RowParallelLinear.from_modelopt(**down, backend="triton")
            s_up = parallel.partition(inter, world)[rank]
            w_up_local = w_up[s_up[0]:s_up[1]].to(dtype)
            w_down_local = w_down[:, s_up[0]:s_up[1]].contiguous().to(dtype)

            def bf16_block(x):
                y = torch.relu(x @ w_up_local.t()) @ w_down_local.t()
                dist.all_reduce(y)
                return y

            for m in ms:
                x = torch.randn(m, hidden, device=device, dtype=dtype)
                t_fp4 = time_us(lambda: row(torch.relu(col(x))))
                t_bf16 = time_us(lambda: bf16_block(x))
                if rank == 0:
                    out_rows.append([name, world, m, hidden, inter, t_fp4, t_bf16, t_bf16 / t_fp4])
    finally:
        dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--backend", choices=["nccl", "gloo"], default="nccl")
    p.add_argument("--small", action="store_true", help="small shapes (CPU dry run)")
    p.add_argument("--m", type=int, nargs="+", default=[1, 16, 256, 4096])
    from common import add_output_args

    add_output_args(p)
    a = p.parse_args()
    if a.backend == "nccl" and torch.cuda.device_count() < max(a.tp):
        raise SystemExit(f"--tp {max(a.tp)} needs {max(a.tp)} GPUs, this machine has {torch.cuda.device_count()}")
    manager = mp.Manager()
    rows = manager.list()
    for tp in a.tp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(worker, args=(tp, port, a.backend, a.small, a.m, rows), nprocs=tp, join=True)
    from common import gpu_slug, publish

    header = ["block", "TP", "M", "hidden", "intermediate", "NVFP4 us", "BF16 us", "BF16 / NVFP4"]
    if a.backend != "nccl":
        a.no_write = True  # a CPU dry run prints only
    publish(a, "Tensor-parallel MLP (benchmarks/tp_bench.py)",
            f"TP MLP block (column-parallel up, relu, row-parallel down + all-reduce), {a.backend}; medians on "
            "rank 0: eager wall time per call (CUDA events around each of 30 calls after 5 warm-up ones, the same count on "
            "every rank; host time included).", header, [list(r) for r in rows], csv_name=f"tp_{gpu_slug()}.csv")


if __name__ == "__main__":
    main()
