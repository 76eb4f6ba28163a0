"""Host time per call (microseconds of CPU time) of fp4linear's eager forward, piece by piece.

For decode-sized inputs the kernels run in microseconds, so whatever Python and the launch path do
around them is the latency a user sees outside CUDA graphs. Prints per-call host time of the
pieces of `fp4linear.Linear.forward` and a cProfile of the layer call.

    python benchmarks/host_overhead.py [--n 4096 --k 4096]
"""

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import empty_kernel  # noqa: E402
from fp4linear import kernels, ops  # noqa: E402
from fp4linear.kernels.workspace import scratch  # noqa: E402


def host_us(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    a = p.parse_args()
    lin = torch.nn.Linear(a.k, a.n, bias=False, device="cuda", dtype=torch.bfloat16)
    layer = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(torch.tensor(4.0)), backend="triton")
    dyn = fp4linear.Linear.from_linear(lin, backend="triton")
    x1 = torch.randn(1, a.k, dtype=torch.bfloat16, device="cuda")
    x16 = torch.randn(16, a.k, dtype=torch.bfloat16, device="cuda")
    out = torch.empty(1, a.n, dtype=torch.bfloat16, device="cuda")
    e = torch.empty(16, device="cuda")
    empty_kernel[(1,)](e, 16, BLOCK=16)
    compiled = empty_kernel[(1,)](e, 16, BLOCK=16)
    args = (x1, layer.input_global_scale, layer.alpha, layer.weight, layer.weight_scale, None, out)
    kernels.linear_small_m(*args)
    cases = {
        "nn.Linear bf16, M=1": lambda: lin(x1),
        "fp4linear.Linear static, M=1": lambda: layer(x1),
        "fp4linear.Linear dynamic, M=1": lambda: dyn(x1),
        "fp4linear.Linear static, M=16": lambda: layer(x16),
        "ops.triton_linear, M=1": lambda: ops.triton_linear(x1, layer.weight, layer.weight_scale,
                                                            layer.input_global_scale, layer.alpha,
                                                            layer.weight_scale_2, None, a.n, False, 1.0),
        "kernels.linear_small_m (out given)": lambda: kernels.linear_small_m(*args),
        "kernels.dynamic_scales": lambda: kernels.dynamic_scales(x1, layer.weight_scale_2),
        "empty kernel, JIT dispatch": lambda: empty_kernel[(1,)](e, 16, BLOCK=16),
        "empty kernel, compiled[grid]": lambda: compiled[(1, 1, 1)](e, 16, 16),
        "torch.empty": lambda: torch.empty(1, a.n, dtype=torch.bfloat16, device="cuda"),
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "scratch(device)": lambda: scratch(x1.device),
        "x.reshape + stride": lambda: x1.reshape(-1, a.k).stride(-1),
        "x.device != w.device": lambda: x1.device != layer.weight.device,
    }
    for name, fn in cases.items():
        print(f"{name:38s} {host_us(fn):7.2f} us host per call", flush=True)
    for label, fn in (("static M=1", lambda: layer(x1)), ("dynamic M=1", lambda: dyn(x1))):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            fn()
        prof.disable()
        print(f"--- cProfile of 2000 calls, {label}")
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
