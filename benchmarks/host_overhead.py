"""Host-side cost per call (microseconds of CPU time) of the quantize entry points.

For decode-sized inputs the kernel runs in ~2 us, so whatever Python does around the launch is
the latency a user sees outside CUDA graphs. Prints per-call host time and a cProfile of
`fp4linear.quantize(..., out=)`.
"""

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from fp4linear import kernels  # noqa: E402
from fp4linear.format import NVFP4Tensor  # noqa: E402


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
    import triton
    import triton.language as tl

    @triton.jit
    def _empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
        pass

    x = torch.randn(16, 4096, dtype=torch.bfloat16, device="cuda")
    gs = torch.ones(1, device="cuda")
    out = NVFP4Tensor.empty(x.shape, k_align=64, device="cuda")
    e = torch.empty(16, device="cuda")
    cases = {
        "empty triton launch": lambda: _empty_kernel[(1,)](e, 16, BLOCK=16),
        "kernels.pad_quantize": lambda: kernels.pad_quantize(x, gs, out.data, out.scale, sf_row_tile=128),
        "quantize(out=)": lambda: fp4linear.quantize(x, gs, k_align=64, out=out),
        "quantize()": lambda: fp4linear.quantize(x, gs, k_align=64),
        "torch.empty x2": lambda: (torch.empty(16, 2048, dtype=torch.uint8, device="cuda"),
                                   torch.empty(128, 64, dtype=torch.uint8, device="cuda")),
    }
    for name, fn in cases.items():
        print(f"{name:24s} {host_us(fn):7.2f} us host per call")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(2000):
        fp4linear.quantize(x, gs, k_align=64, out=out)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
