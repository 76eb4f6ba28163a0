"""Host time per call (microseconds of CPU time) of fp4linear's eager forward, piece by piece.

For decode-sized inputs the kernels run in microseconds, so whatever Python and the launch path do
around them is the latency a user sees outside CUDA graphs. Prints per-call host time of the
pieces of `fp4linear.Linear.forward`, each cached launch through torch's static launcher
(`kernels.launch.STATIC`, the default) and through Triton's runner, the whole layer both ways
against nn.Linear (issue 14's targets: static <= 1.25x, dynamic <= 1.6x), and a cProfile of the
layer call.

    python benchmarks/host_overhead.py [--n 4096 --k 4096] [--no-profile]   # table + results/host_overhead_<gpu>.csv
    python benchmarks/host_overhead.py --dry-run   # CPU: the layer-level cases on tiny shapes, a few calls, prints only
"""

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fp4linear  # noqa: E402
from common import Forced, add_output_args, card, eager_us_interleaved, empty_kernel, gpu_slug, publish  # noqa: E402
from fp4linear import cublas_alpha, kernels, ops  # noqa: E402
from fp4linear.kernels import launch  # noqa: E402
from fp4linear.kernels.workspace import scratch, scratch_for  # noqa: E402


HOST_CALLS, WARMUP = 2000, 50  # (--dry-run: 2 and 1)


def host_us(fn, n=None):
    n = n or HOST_CALLS
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(WARMUP):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    sync()
    return dt / n * 1e6


def static_launcher(on: bool, int_pointers: bool = True):
    return mock.patch.multiple(launch, STATIC=on, INT_POINTERS=int_pointers)


def both(fn):
    """{'static': fn, 'static, tensors': fn, 'runner': fn}: torch's static launcher given addresses
    (`launch.INT_POINTERS`, the default) or the tensors themselves, and Triton's runner."""
    def under(on, int_pointers=True):
        def run():
            with static_launcher(on, int_pointers):
                return host_us(fn)
        return run
    return {"static": under(True), "static, tensors": under(True, False), "runner": under(False)}


def cublas_route(layer, x, dynamic: bool):
    """`ops.triton_linear` of layer on x forced onto the cuBLAS path (as an eager call past `ops.EAGER_TRITON_MNK`)."""
    return ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                             layer.weight_scale_2, layer.bias, layer.out_features, dynamic,
                             None if dynamic else layer._alpha_host, cublas=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--m-large", type=int, default=768, help="rows of the prefill-size cases (the cuBLAS path; "
                   "with a small weight, e.g. MiniLM's 1536x384, the GPU is not what is timed)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile listings")
    p.add_argument("--route-shapes", type=lambda v: tuple(map(int, v.split("x"))), nargs="*",
                   default=[(2048, 1288, 2688), (512, 2688, 464)],
                   help="MxNxK layers whose eager cuBLAS-route calls are also timed, operands in scratch or not")
    p.add_argument("--dry-run", action="store_true", help="CPU tensors (Triton's interpreter), tiny shapes, a few "
                   "calls: walks the layer-level cases and the alternating rounds; the launcher-level cases need a GPU")
    add_output_args(p)
    a = p.parse_args()
    global HOST_CALLS, WARMUP
    gpu = torch.cuda.is_available() and not a.dry_run
    dev = "cuda" if gpu else "cpu"
    if not gpu:  # (prints only; timings of note need the GPU)
        HOST_CALLS, WARMUP = 2, 1
        a.n, a.k, a.m_large, a.route_shapes, a.no_write = 72, 200, 40, [(40, 72, 200)], True
    print(f"{card() if gpu else 'CPU (dry run)'}, torch {torch.__version__}, triton {__import__('triton').__version__}; "
          f"static launcher {'available' if launch._static_launch is not None else 'ABSENT'}")
    lin = torch.nn.Linear(a.k, a.n, bias=False, device=dev, dtype=torch.bfloat16)
    layer = fp4linear.Linear.from_linear(lin, input_scale=fp4linear.decode_scale(torch.tensor(4.0)), backend="triton")
    dyn = fp4linear.Linear.from_linear(lin, backend="triton")
    x1 = torch.randn(1, a.k, dtype=torch.bfloat16, device=dev)
    x16 = torch.randn(16, a.k, dtype=torch.bfloat16, device=dev)
    xl = torch.randn(a.m_large, a.k, dtype=torch.bfloat16, device=dev)
    ml = a.m_large
    kp = layer.k_padded
    a_l = torch.empty(ml, ops.cublas_k(a.k, kp), dtype=torch.bfloat16, device=dev)
    chunk = torch.empty(a.n, kp, dtype=torch.bfloat16, device=dev)
    out_l = torch.empty(ml, a.n, dtype=torch.bfloat16, device=dev)
    w_l = chunk[:, : a_l.shape[1]]
    zero = torch.zeros(1, device=dev)
    out = torch.empty(1, a.n, dtype=torch.bfloat16, device=dev)
    out16 = torch.empty(16, a.n, dtype=torch.bfloat16, device=dev)
    act16 = torch.empty(16, layer.k_padded, dtype=torch.float16, device=dev)
    e = torch.empty(16, device=dev)
    compiled = empty_args = entry = None  # (the launcher-level cases: GPU only)
    if gpu:
        compiled = empty_kernel[(1,)](e, 16, BLOCK=16)
        cached_empty = launch.CachedLaunch(empty_kernel)
        empty_args = lambda: cached_empty("e", (1,), (e, 16), dict(BLOCK=16), dict(num_warps=4))  # noqa: E731
        for _ in range(3):
            empty_args()
        entry = cached_empty._entries["e"]
    args = (x1, layer.input_global_scale, layer.alpha, layer.weight, layer.weight_scale, None, out)
    gemm_args = (act16, layer.weight, layer.weight_scale, layer.alpha, None, out16)
    q16 = fp4linear.NVFP4Tensor.empty((16, a.k), k_align=64, device=dev)
    for fn in (lambda: kernels.linear_small_m(*args), lambda: kernels.nvfp4_gemm_dequantized_a(*gemm_args),
               lambda: kernels.fake_quantize(x16, layer.input_global_scale, act16, units=True),
               lambda: kernels.pad_quantize(x16, layer.input_global_scale, q16.data, q16.scale, sf_row_tile=128)):
        for _ in range(3):
            fn()

    def fp32_reductions():
        with ops._fp32_reductions(torch.bfloat16):
            pass

    cases = {
        "nn.Linear bf16, M=1": lambda: lin(x1),
        "empty kernel, JIT dispatch": lambda: empty_kernel[(1,)](e, 16, BLOCK=16),
        "empty kernel, compiled[grid] (runner)": lambda: compiled[(1, 1, 1)](e, 16, 16),
        "empty kernel, CachedLaunch": both(empty_args),
        "torch.empty": lambda: torch.empty(1, a.n, dtype=torch.bfloat16, device=dev),
        "x.new_empty": lambda: x1.new_empty((1, a.n)),
        "is_current_stream_capturing": torch.cuda.is_current_stream_capturing,
        "torch._C._cuda_getDevice": getattr(torch._C, "_cuda_getDevice", None),  # (absent from CPU builds)
        "raw stream (device 0)": lambda: torch._C._cuda_getCurrentRawStream(0),
        "launch hooks check": launch._hooks_empty,
        "scratch(device)": lambda: scratch(x1.device),
        "scratch_for(0)": lambda: scratch_for(0),
        "x.reshape + stride": lambda: x1.reshape(-1, a.k).stride(-1),
        "x.get_device() != w.get_device()": lambda: x1.get_device() != layer.weight.get_device(),
        "kernels.linear_small_m (out given)": both(lambda: kernels.linear_small_m(*args)),
        "kernels.dynamic_scales": both(lambda: kernels.dynamic_scales(x1, layer.weight_scale_2)),
        "kernels.fake_quantize, M=16": both(lambda: kernels.fake_quantize(x16, layer.input_global_scale, act16,
                                                                          units=True)),
        "kernels.nvfp4_gemm_dequantized_a, M=16": both(lambda: kernels.nvfp4_gemm_dequantized_a(*gemm_args)),
        "kernels.pad_quantize, M=16": both(lambda: kernels.pad_quantize(x16, layer.input_global_scale, q16.data,
                                                                        q16.scale, sf_row_tile=128)),
        "ops.triton_linear, M=1": both(lambda: ops.triton_linear(x1, layer.weight, layer.weight_scale,
                                                                 layer.input_global_scale, layer.alpha,
                                                                 layer.weight_scale_2, None, a.n, False, 1.0)),
        "fp4linear.Linear static, M=1": both(lambda: layer(x1)),
        "fp4linear.Linear dynamic, M=1": both(lambda: dyn(x1)),
        "fp4linear.Linear static, M=16": both(lambda: layer(x16)),
        "fp4linear.Linear dynamic, M=16": both(lambda: dyn(x16)),
        f"nn.Linear bf16, M={ml}": lambda: lin(xl),
        f"torch.addmm(alpha=, beta=0, out=), M={ml}": lambda: torch.addmm(out_l, a_l, chunk[:, :a_l.shape[1]].t(),
                                                                          beta=0, alpha=0.5, out=out_l),
        "ops._fp32_reductions (enter + exit)": fp32_reductions,
        f"kernels.cublas_operands, M={ml}": both(lambda: kernels.cublas_operands(xl, layer.input_global_scale, a_l,
                                                                                 layer.weight, layer.weight_scale,
                                                                                 chunk)),
        f"ops.cublas_dequantized_gemm, M={ml}": lambda: ops.cublas_dequantized_gemm(
            a_l, layer.weight, layer.weight_scale, None, 0.5, out_l, x=xl, gs=layer.input_global_scale),
        f"fp4linear.Linear static, M={ml}": both(lambda: layer(xl)),
        f"fp4linear.Linear dynamic, M={ml}": both(lambda: dyn(xl)),
        # pieces of the cuBLAS route (what eager layers past `ops.EAGER_TRITON_MNK` take; the whole route: above)
        f"cublas_alpha.mm_device_alpha, M={ml}": lambda: cublas_alpha.mm_device_alpha(a_l, w_l, dyn.alpha, zero,
                                                                                      out_l),
        "a view (chunk[:n])": lambda: chunk[: a.n],
        "a transpose (w.t())": lambda: w_l.t(),
    }
    if not gpu:  # the CPU runs kernels through Triton's interpreter: no launcher, stream or cuBLAS to time
        gpu_only = ("empty kernel", "is_current_stream_capturing", "torch._C._cuda_getDevice", "raw stream",
                    "scratch_for(0)", "cublas_alpha.mm_device_alpha")
        cases = {name: fn for name, fn in cases.items() if not name.startswith(gpu_only)}
    elif entry.function is not None:  # the static launcher itself, the empty kernel's arguments as tensors or ints
        tys, extra = entry.arg_tys, entry.extra
        fn_, nw, sh = entry.function, entry.num_warps, entry.shared
        cases["empty kernel, _launch_kernel (tensor)"] = lambda: launch._static_launch(
            fn_, 1, 1, 1, nw, sh, tys, (e, 16) + extra, torch._C._cuda_getCurrentRawStream(0))
        ptr = e.data_ptr()
        cases["empty kernel, _launch_kernel (int pointer)"] = lambda: launch._static_launch(
            fn_, 1, 1, 1, nw, sh, tys, (ptr, 16) + extra, torch._C._cuda_getCurrentRawStream(0))
    else:
        print("the empty kernel's key takes Triton's runner: no static-launcher rows")
    results = {}
    # the cuBLAS route's operands from per-stream scratch vs per-call tensors, in alternating rounds
    # (the host's speed drifts within a run; the layer is small, so the host is what is timed)
    routed_cap = ops.CUBLAS_SCRATCH_BYTES

    def capped(cap, fn):
        return Forced(fn, ((ops, {"CUBLAS_SCRATCH_BYTES": cap}),))
    def route_pairs(tag, lay, dy, x):
        return [(f"ops.triton_linear cuBLAS route {kind}, {tag} [{label}]",
                 capped(cap, lambda lay=lay, d=d: cublas_route(lay, x, d)))
                for kind, lay, d in (("static", lay, False), ("dynamic", dy, True))
                for label, cap in (("operands in scratch", routed_cap), ("operands per call", 0))]
    pairs = route_pairs(f"M={ml}", layer, dyn, xl)
    # per-rank layers at prefill sizes, whose eager calls took this route before `ops.EAGER_TRITON_MNK`: wall time
    # per call with nn.Linear in the same rounds (the host decides it where the GPU needs less)
    for m_, n_, k_ in a.route_shapes:
        lin_ = torch.nn.Linear(k_, n_, bias=False, device=dev, dtype=torch.bfloat16)
        st_ = fp4linear.Linear.from_linear(lin_, input_scale=fp4linear.decode_scale(torch.tensor(4.0)),
                                           backend="triton")
        dy_ = fp4linear.Linear.from_linear(lin_, backend="triton")
        x_ = torch.randn(m_, k_, dtype=torch.bfloat16, device=dev)
        pairs += [(f"nn.Linear bf16, {m_}x{n_}x{k_}", lambda lin_=lin_, x_=x_: lin_(x_))]
        pairs += route_pairs(f"{m_}x{n_}x{k_}", st_, dy_, x_)
    calls, rounds = (500, 7) if gpu else (2, 1)
    for (name, _), us in zip(pairs, eager_us_interleaved([fn for _, fn in pairs], calls=calls, rounds=rounds)):
        results[name] = us
        print(f"{name:50s} {us:7.2f} us per call (alternating rounds)", flush=True)
    for name, fn in cases.items():
        if isinstance(fn, dict):
            for mode, run in fn.items():
                results[f"{name} [{mode}]"] = us = run()
                print(f"{name + ' [' + mode + ']':50s} {us:7.2f} us host per call", flush=True)
        else:
            results[name] = us = host_us(fn)
            print(f"{name:50s} {us:7.2f} us host per call", flush=True)
    intro = (f"Host time per call of {a.n}x{a.k} (M = 1, 16 and {ml}, bf16): a loop of 2000 calls without a synchronize, "
             "time per call; for the smallest cases this is the host's cost, not the GPU's. '[static]': torch's static "
             "launcher given the tensors' addresses (the default), '[static, tensors]': given the tensors, '[runner]': "
             "Triton's launcher. The host's speed drifts between runs: compare rows of one run. Rows marked 'alternating "
             "rounds' (the cuBLAS route with its operands in per-stream scratch or per-call tensors, and nn.Linear beside "
             "the per-rank MxNxK layers): 7 rounds of 500 calls each with a synchronize, in which the cases alternate; "
             "wall time per call, median. The n and k columns are the main layer's; a row naming MxNxK timed that layer.")
    publish(a, "Host time per call (benchmarks/host_overhead.py)", intro, ["case", "n", "k", "host_us"],
            [[name, a.n, a.k, us] for name, us in results.items()], csv_name=f"host_overhead_{gpu_slug()}.csv")
    base = results["nn.Linear bf16, M=1"]
    print(f"--- against nn.Linear bf16 M=1 ({base:.1f} us; targets: static <= 1.25x, dynamic <= 1.6x)")
    for kind, target in (("static", 1.25), ("dynamic", 1.6)):
        for mode in ("static", "runner"):
            us = results[f"fp4linear.Linear {kind}, M=1 [{mode}]"]
            print(f"{kind} layer, {mode + ' launcher:':17s} {us:6.1f} us = {us / base:4.2f}x "
                  f"({'meets' if us <= target * base else 'misses'} {target}x)")
    if a.no_profile:
        return
    for label, fn in (("static M=1", lambda: layer(x1)), ("dynamic M=1", lambda: dyn(x1)),
                      ("static M=16", lambda: layer(x16)), ("dynamic M=16", lambda: dyn(x16)),
                      (f"static M={ml}", lambda: layer(xl)), (f"dynamic M={ml}", lambda: dyn(xl)),
                      (f"static M={ml}, cuBLAS route", lambda: cublas_route(layer, xl, False)),
                      (f"dynamic M={ml}, cuBLAS route", lambda: cublas_route(dyn, xl, True))):
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(HOST_CALLS):
            fn()
        prof.disable()
        print(f"--- cProfile of {HOST_CALLS} calls, {label} (static launcher {'on' if launch.STATIC else 'off'})")
        pstats.Stats(prof).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
