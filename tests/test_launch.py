"""kernels.launch.CachedLaunch: which launcher a key takes, what it passes (CPU: the launchers are
stand-ins recording their calls), and on the GPU that torch's static launcher, Triton's runner
and the JIT give the same bits on every kernel path."""

import contextlib
import logging
import types

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

import fp4linear
from fp4linear import kernels, ops
from fp4linear.kernels import launch

from .conftest import modelopt_checkpoint


@triton.jit
def _probe_kernel(a_ptr, b_ptr, n, one, stride, F: tl.constexpr):
    i = tl.arange(0, F)
    tl.store(b_ptr + i * stride, tl.load(a_ptr + i, mask=i < n * one), mask=i < n)


def _compile_probe():
    """_probe_kernel compiled for sm_90 on this machine (no GPU needed: Triton's ptxas), with `one`
    specialized to 1 as the JIT would."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"a_ptr": "*fp32", "b_ptr": "*bf16", "n": "i32", "one": "constexpr", "stride": "i64", "F": "constexpr"}
    src = ASTSource(_probe_kernel, sig, constexprs={"one": 1, "F": 16}, attrs={})
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False))
    except Exception as e:  # no ptxas, say: nothing of fp4linear's to test then
        pytest.skip(f"Triton cannot compile for sm_90 here: {e}")


@pytest.fixture(scope="module")
def probe():
    return _compile_probe()


class _Recorder:
    def __init__(self):
        self.calls = []
        self.fail = None

    def __call__(self, *a):
        if self.fail is not None:
            raise self.fail
        self.calls.append(a)


class _Compiled:
    """A compiled kernel as CachedLaunch sees one: real metadata and source, a stand-in function
    handle and runner."""

    def __init__(self, real):
        self.metadata, self.src, self.function = real.metadata, real.src, 0xF00
        self.runs = []
        self.fail = None

    def __getitem__(self, grid):
        def run(*args):
            if self.fail is not None:
                raise self.fail
            self.runs.append((grid, args))
        return run


class _Kernel:
    """A @triton.jit kernel as CachedLaunch sees one."""

    def __init__(self, compiled):
        self.fn = _probe_kernel.fn
        self.arg_names = _probe_kernel.arg_names
        self.constexprs = _probe_kernel.constexprs
        self.compiled = compiled
        self.jit = []

    def __getitem__(self, grid):
        def launch_(*args, **kwargs):
            self.jit.append((grid, args, kwargs))
            return self.compiled
        return launch_


@pytest.fixture
def fake(probe, monkeypatch):
    """A CachedLaunch of a stand-in kernel with the static launcher, device and stream stubbed."""
    static = _Recorder()
    monkeypatch.setattr(launch, "_static_launch", static)
    monkeypatch.setattr(launch, "_get_device", lambda: 0)
    monkeypatch.setattr(launch, "_raw_stream", lambda index: 1000 + index)
    monkeypatch.setattr(launch.torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(launch.torch.version, "hip", None)
    compiled = _Compiled(probe)
    kernel = _Kernel(compiled)
    return launch.CachedLaunch(kernel, views={0: (torch.uint8, torch.float32)}), kernel, compiled, static


def _args():
    a = torch.zeros(64, dtype=torch.uint8)  # the kernel reads it as fp32: a view on the JIT path only
    b = torch.zeros(16, dtype=torch.bfloat16)
    return (a, b, 9, 1, 3)


def test_static_plan_reads_the_signature(probe, monkeypatch):
    monkeypatch.setattr(launch, "_static_launch", _Recorder())
    monkeypatch.setattr(launch, "_get_device", lambda: 0)
    monkeypatch.setattr(launch, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(launch.torch.version, "hip", None)
    c = _Compiled(probe)
    plan, why = launch._static_plan(c, 5)
    assert why == "" and plan is not None
    function, num_warps, shared, arg_tys, keep, extra = plan
    assert function == 0xF00 and num_warps == probe.metadata.num_warps and shared == probe.metadata.shared
    # pointers, i32 n, (one: a constexpr, dropped), i64 stride; then the scratch pointers Triton adds
    n_scratch = sum(hasattr(probe.metadata, f) for f in ("global_scratch_size", "profile_scratch_size"))
    assert arg_tys == "OOil" + "O" * n_scratch and keep == (0, 1, 2, 4) and extra == (None,) * n_scratch


@pytest.mark.parametrize("change, why", [
    (dict(num_ctas=2), "clusters"), (dict(launch_cooperative_grid=True), "launch_cooperative_grid"),
    (dict(launch_pdl=True), "launch_pdl"), (dict(global_scratch_size=64), "global_scratch_size > 0"),
    (dict(tensordesc_meta=[{"x": 1}]), "tensordesc_meta"), (dict(instrumentation_mode="gsan"), "instrumentation_mode"),
])
def test_static_plan_refuses_what_it_cannot_launch(probe, monkeypatch, change, why):
    monkeypatch.setattr(launch, "_static_launch", _Recorder())
    monkeypatch.setattr(launch, "_get_device", lambda: 0)
    monkeypatch.setattr(launch, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(launch.torch.version, "hip", None)
    c = _Compiled(probe)
    c.metadata = types.SimpleNamespace(**{**c.metadata._asdict(), **change})  # fields older Tritons lack too
    plan, reason = launch._static_plan(c, 5)
    assert plan is None and reason.startswith(why)


def test_static_plan_refuses_without_the_launcher_and_on_rocm(probe, monkeypatch):
    monkeypatch.setattr(launch, "_static_launch", None)
    assert launch._static_plan(_Compiled(probe), 5)[0] is None
    monkeypatch.setattr(launch, "_static_launch", _Recorder())
    monkeypatch.setattr(launch, "_get_device", lambda: 0)
    monkeypatch.setattr(launch, "_raw_stream", lambda index: 0)
    monkeypatch.setattr(launch.torch.version, "hip", "6.0")
    assert launch._static_plan(_Compiled(probe), 5) == (None, "ROCm")
    monkeypatch.setattr(launch.torch.version, "hip", None)
    c = _Compiled(probe)
    c.function = None  # not loaded
    assert launch._static_plan(c, 5)[0] is None


def test_first_call_jit_then_static_launch(fake, caplog):
    cl, kernel, compiled, static = fake
    args = _args()
    with caplog.at_level(logging.DEBUG, logger=launch.__name__):
        cl("k", (2,), args, dict(F=16), dict(num_warps=1))
    assert len(kernel.jit) == 1 and not static.calls and not compiled.runs
    grid, jit_args, kwargs = kernel.jit[0]
    assert jit_args[0].dtype == torch.float32 and jit_args[1] is args[1]  # the view, on the JIT path only
    assert kwargs == dict(F=16, num_warps=1)
    assert "static launcher" in caplog.text
    cl("k", (2,), args, dict(F=16), dict(num_warps=1))
    cl("k", (3, 2), args, dict(F=16), dict(num_warps=1))
    assert len(kernel.jit) == 1 and not compiled.runs and len(static.calls) == 2
    md = compiled.metadata
    n_scratch = sum(hasattr(md, f) for f in ("global_scratch_size", "profile_scratch_size"))
    function, gx, gy, gz, nw, shared, tys, kargs, stream = static.calls[1]
    assert (function, gx, gy, gz, nw, shared, stream) == (0xF00, 3, 2, 1, md.num_warps, md.shared, 1000)
    assert tys == "OOil" + "O" * n_scratch
    # the key's first static launch passes the tensors (torch's launcher checks their pointers once),
    # later ones their addresses
    first = static.calls[0][7]
    assert first[0] is args[0] and first[1] is args[1] and first[2:] == (9, 3) + (None,) * n_scratch
    assert kargs == (args[0].data_ptr(), args[1].data_ptr(), 9, 3) + (None,) * n_scratch


def test_int_pointers_off_passes_the_tensors(fake, monkeypatch):
    cl, kernel, compiled, static = fake
    monkeypatch.setattr(launch, "INT_POINTERS", False)
    args = _args()
    for _ in range(3):
        cl("k", (2,), args, dict(F=16), dict(num_warps=1))
    assert len(static.calls) == 2 and all(c[7][0] is args[0] and c[7][1] is args[1] for c in static.calls)


def test_runner_when_static_is_off_a_hook_is_set_or_the_device_differs(fake, monkeypatch):
    cl, kernel, compiled, static = fake
    args = _args()
    call = lambda: cl("k", (2,), args, dict(F=16), dict(num_warps=1))  # noqa: E731
    call()
    monkeypatch.setattr(launch, "STATIC", False)
    call()
    assert len(compiled.runs) == 1 and not static.calls
    assert compiled.runs[0] == ((2, 1, 1), (*args, 16))  # the runner takes every argument and the constexprs
    monkeypatch.setattr(launch, "STATIC", True)
    with _launch_hook(lambda *a: None):
        call()
    assert len(compiled.runs) == 2 and not static.calls
    monkeypatch.setattr(launch, "_get_device", lambda: 1)  # the function was loaded for device 0
    call()
    assert len(compiled.runs) == 3 and not static.calls
    monkeypatch.setattr(launch, "_get_device", lambda: 0)
    call()
    assert len(compiled.runs) == 3 and len(static.calls) == 1


def test_disabled_launches_through_the_jit_every_time(fake, monkeypatch):
    cl, kernel, compiled, static = fake
    monkeypatch.setattr(launch, "ENABLED", False)
    for _ in range(3):
        cl("k", (2,), _args(), dict(F=16), dict(num_warps=1))
    assert len(kernel.jit) == 3 and not static.calls and not compiled.runs


def test_a_refused_first_static_launch_falls_back_to_the_runner(fake, caplog):
    cl, kernel, compiled, static = fake
    args = _args()
    call = lambda: cl("k", (2,), args, dict(F=16), dict(num_warps=1))  # noqa: E731
    call()
    static.fail = TypeError("cannot convert")
    with caplog.at_level(logging.WARNING, logger=launch.__name__):
        call()
    assert "refused" in caplog.text and len(compiled.runs) == 1
    static.fail = None
    call()
    assert len(compiled.runs) == 2 and not static.calls  # the key keeps to the runner


def test_bad_arguments_raise_and_keep_the_static_launcher(fake):
    cl, kernel, compiled, static = fake
    args = _args()
    call = lambda: cl("k", (2,), args, dict(F=16), dict(num_warps=1))  # noqa: E731
    call()
    static.fail = RuntimeError("CUDA driver error: invalid argument")
    compiled.fail = ValueError("Pointer argument cannot be accessed from Triton (cpu tensor?)")
    with pytest.raises(ValueError, match="cpu tensor"):
        call()
    static.fail = compiled.fail = None
    call()
    assert len(static.calls) == 1 and not compiled.runs


def test_alignment_and_int_keys():
    assert launch.int_key(1) == 1 | 0 and launch.int_key(32) == 2 and launch.int_key(7) == 0
    assert launch.int_key(2**31) == 2 | 4 and launch.int_key(-2**31) == 2
    x = torch.zeros(4, 20)
    assert launch.alignment_key(x) == (x.data_ptr() % 16 == 0, False, False)
    assert launch.alignment_key(x[:, :16]) == (x.data_ptr() % 16 == 0, False, False)
    assert launch.alignment_key(torch.zeros(3, 32)) == (True, True, False)


@contextlib.contextmanager
def _launch_hook(hook):
    """A Triton launch-enter hook for the duration (a hook chain from Triton 3.5 on, else the attribute)."""
    rt = knobs.runtime
    chain = rt.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
        try:
            yield
        finally:
            chain.remove(hook)
    else:
        rt.launch_enter_hook = hook
        try:
            yield
        finally:
            rt.launch_enter_hook = chain


# ---- GPU: the same bits from torch's static launcher, Triton's runner and the JIT ---------------


@contextlib.contextmanager
def _mode(mode):
    saved = launch.ENABLED, launch.STATIC
    launch.ENABLED, launch.STATIC = {"static": (True, True), "runner": (True, False), "jit": (False, True)}[mode]
    try:
        yield
    finally:
        launch.ENABLED, launch.STATIC = saved


class _Count:
    def __init__(self, fn):
        self.fn, self.n = fn, 0

    def __call__(self, *a):
        self.n += 1
        return self.fn(*a)


@pytest.fixture
def static_count(monkeypatch):
    """Counts torch's static launches (the test fails where this torch has the launcher and none
    is made)."""
    if launch._static_launch is None:
        pytest.skip("this torch has no torch._C._StaticCudaLauncher")
    count = _Count(launch._static_launch)
    monkeypatch.setattr(launch, "_static_launch", count)
    return count


def _layers(device):
    ckpt, _ = modelopt_checkpoint(200, 464, bias=True, seed=1)
    static = fp4linear.Linear.from_modelopt(**{n: t.to(device) for n, t in ckpt.items()}, backend="triton")
    dyn = fp4linear.Linear.from_modelopt(**{n: t.to(device) for n, t in ckpt.items() if n != "input_scale"},
                                         input_scale=None, backend="triton")
    big, _ = modelopt_checkpoint(4096, 1024, seed=2)  # the two-launch decode path (over 4 rows)
    wide = fp4linear.Linear.from_modelopt(**{n: t.to(device) for n, t in big.items()}, backend="triton")
    return static, dyn, wide


def _inputs(device):
    g = torch.Generator(device="cpu").manual_seed(0)
    big = {dt: (torch.randn(80, 1100, generator=g) * 3).to(dt).to(device)
           for dt in (torch.float32, torch.bfloat16, torch.float16)}
    f32, bf16, f16 = big.values()
    columns = (torch.randn(464, 4, generator=g) * 3).to(torch.bfloat16).to(device)[:, :2].t()  # [2, 464], stride (1, 4)
    # shapes, dtypes, row strides (1100: not a multiple of 16), misaligned starts, a column stride
    xs = [f32[:1, :464], bf16[:3, :464], f16[:16, 7:471], bf16[2:7, :464], bf16[:40, :464], f16[:1, 100:564],
          f32[:64, :464], columns, bf16[:5, 1:465]]
    return xs, [bf16[:m, :1024] for m in (1, 4, 5, 16)]


def _run_all(layers, xs, wide_xs):
    static, dyn, wide = layers
    outs = []
    for x in xs * 2:  # alternating shapes, strides and dtypes, twice over
        outs += [static(x), dyn(x)]
        q = fp4linear.quantize(x, static.input_global_scale, k_align=64)
        outs += [q.data, q.scale.view(torch.uint8)]
        outs.append(ops.nvfp4_gemm(q.data, q.scale, static.weight, static.weight_scale, static.alpha, static.bias,
                                   200, x.dtype))
        xc = x if x.stride(1) == 1 else x.contiguous()  # the kernels' own calls take rows of unit stride
        outs.append(kernels.fake_quantize(xc, static.input_global_scale,
                                          torch.empty(x.shape[0], static.k_padded, dtype=torch.float16,
                                                      device=x.device), units=True))
        outs.append(kernels.dynamic_scales(xc, dyn.weight_scale_2).clone())
    for x in wide_xs * 2:
        outs.append(wide(x))
    return outs


@pytest.mark.cuda
def test_gpu_static_runner_and_jit_give_the_same_bits(static_count):
    devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    for device in devices:
        with torch.cuda.device(device):
            layers = _layers(device)
            xs, wide_xs = _inputs(device)
            with _mode("jit"):
                want = _run_all(layers, xs, wide_xs)
            with _mode("static"):
                _run_all(layers, xs, wide_xs)  # compile, and the first static launch of every key
                before = static_count.n
                got_static = _run_all(layers, xs, wide_xs)
                assert static_count.n > before, "no launch went through torch's static launcher"
            with _mode("runner"):
                before = static_count.n
                got_runner = _run_all(layers, xs, wide_xs)
                assert static_count.n == before
            for i, (a, b, c) in enumerate(zip(want, got_static, got_runner)):
                assert a.dtype == b.dtype == c.dtype and torch.equal(a, b) and torch.equal(a, c), i


@pytest.mark.cuda
def test_gpu_every_fp4linear_key_takes_the_static_launcher(static_count):
    """On a CUDA torch with the launcher every key of fp4linear's kernels launches statically
    (nothing refused: no scratch memory, no cluster, no unsupported argument type)."""
    layers = _layers("cuda")
    xs, wide_xs = _inputs("cuda")
    _run_all(layers, xs, wide_xs)
    before = static_count.n
    _run_all(layers, xs, wide_xs)
    assert static_count.n - before >= len(xs) * 2 * 5  # at least a launch per call above, all static
    from fp4linear.kernels import gemm_launch, quant_dequant_launch, quantize_launch, scales_launch
    from fp4linear.kernels import gemv_launch

    for cl in (gemv_launch._launch_main, gemm_launch._launch, quant_dequant_launch._launch_fake,
               quantize_launch._launch, scales_launch._launch):
        assert cl._entries, cl.kernel.fn.__name__
        for key, entry in cl._entries.items():  # (this session's other tests' keys too)
            assert entry.function is not None, (cl.kernel.fn.__name__, key)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_graph_capture_through_the_static_launcher(static_count, m, dynamic):
    static, dyn, _ = _layers("cuda")
    layer = dyn if dynamic else static
    x = torch.randn(m, 464, device="cuda", dtype=torch.bfloat16)
    for _ in range(2):
        layer(x)  # compiled, and launched statically once
    torch.cuda.synchronize()
    before = static_count.n
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    assert static_count.n > before, "the capture did not go through torch's static launcher"
    for scale in (3.0, 0.25):
        x.copy_(torch.randn_like(x) * scale)
        eager = layer(x)  # eager calls between replays share no scratch with the graph
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, eager)


@pytest.mark.cuda
def test_gpu_a_launch_hook_sees_every_launch():
    static, _, _ = _layers("cuda")
    x = torch.randn(1, 464, device="cuda", dtype=torch.bfloat16)
    want = static(x)
    seen = []
    with _launch_hook(lambda *a: seen.append(1)):
        got = static(x)
    assert seen and torch.equal(got, want)


def test_next_pow2_is_tritons():
    """The host-side power of two the per-call launch code uses equals `triton.next_power_of_2`."""
    from fp4linear.kernels.launch import next_pow2
    for n in [*range(1, 4100), 2**20 - 1, 2**20, 2**20 + 1, 2**31 - 1]:
        assert next_pow2(n) == triton.next_power_of_2(n), n


def test_x_align_is_what_k_and_the_row_stride_are_multiples_of():
    assert launch.x_align(1368, 1368) == 8 and launch.x_align(232, 232) == 8
    assert launch.x_align(1376, 1376) == 16 and launch.x_align(1376, 1380) == 4 and launch.x_align(201, 201) == 1
    assert launch.x_multiples(1368, 1370, 1) == (8, 16) and launch.x_multiples(1368, 1370, 2) == (8, 2)
    assert launch.x_align(torch.SymInt, 16) == 1  # not a plain int (symbolic under torch.compile): no hint


# The kernels that read x [M, K] at a row stride, with the types and constexprs of a route that takes them
# (x bf16, K = 1368 and its row stride unspecialized: Triton knows neither is a multiple of 16; the integers
# `_X_SIXTEENS` names are, as Triton specializes them at Kp = 1408).
_X_SIXTEENS = ("Kp", "Ka", "stride_wo", "k_per_program")
_X_READERS = {
    "gemm quantizing x": ("gemm", "nvfp4_gemm_kernel", dict(
        a_ptr="*bf16", a_scale_ptr="*fp32", w_ptr="*u8", w_scale_ptr="*u8", alpha_ptr="*fp32", bias_ptr="*bf16",
        out_ptr="*bf16", part_ptr="*fp32", ticket_ptr="*i32"), dict(
        HAS_BIAS=False, SPLIT_K=2, EVEN_K=True, BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, WORD_DECODE=True,
        PREDEQUANT_A=False, QUANTIZE_X=True, DYNAMIC=True, AMAX_ROWS=16, AMAX_BLOCK=512, AMAX_CHUNKS=3,
        W_OPERAND_B=True, A_ORDER=0, RS_ORDER=False, ACT=-1, GATED=0, BF16_BITS=0, FMA_EPILOGUE=0, DOT_M=0)),
    "gemv": ("gemv", "nvfp4_gemv_kernel", dict(
        x_ptr="*bf16", scale_ptr="*fp32", alpha_ptr="*fp32", w_ptr="*i32", w_scale_ptr="*u8", bias_ptr="*bf16",
        out_ptr="*bf16", part_ptr="*fp32", ticket_ptr="*i32"), dict(
        M_ROWS=4, HAS_BIAS=False, SPLIT_K=2, BLOCK_N=32, BLOCK_K=512, EVEN_K=True, USE_ASM=True, PREFETCH=True,
        DYNAMIC=True, AMAX_BLOCK=512, AMAX_CHUNKS=3)),
    "pass": ("quant_dequant", "fake_quantize_kernel", dict(
        x_ptr="*bf16", global_scale_ptr="*fp32", out_ptr="*fp16", scales_ptr="*fp32", words_ptr="*i32",
        maxima_ptr="*fp32"), dict(
        UNITS=True, BLOCK_M=32, BLOCK_K=128, DYNAMIC=False, AMAX_ROWS=1, AMAX_BLOCK=1, AMAX_CHUNKS=1, A_ORDER=1,
        BARRIER=False, MAXIMA_BLOCK=0)),
    "cuBLAS operands": ("quant_dequant", "cublas_operands_kernel", dict(
        x_ptr="*bf16", global_scale_ptr="*fp32", maxima_ptr="*fp32", scales_ptr="*fp32", a_ptr="*bf16",
        w_ptr="*u8", w_scale_ptr="*u8", w_out_ptr="*bf16"), dict(BLOCK_M=32, BLOCK_K=128, BLOCK_N=32, MAXIMA_BLOCK=0)),
    "max |x|": ("scales", "dynamic_scale_kernel", dict(
        x_ptr="*bf16", weight_scale_2_ptr="*fp32", scales_ptr="*fp32", words_ptr="*i32"), dict(
        BLOCK_R=8, BLOCK_K=512, ACT=-1, GATED=False, BF16_BITS=False, MAXIMA=True)),
}


def _x_loads_ptx(name, x_align_value):
    """PTX of one x-reading kernel compiled for sm_90 here (Triton's ptxas, no GPU) with X_ALIGN given."""
    import importlib

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    module, kernel, pointers, consts = _X_READERS[name]
    fn = getattr(importlib.import_module(f"fp4linear.kernels.{module}"), kernel)
    consts = dict(consts, X_ALIGN=x_align_value)
    sig = {a: ("constexpr" if p.is_constexpr else pointers.get(a, "i32")) for a, p in zip(fn.arg_names, fn.params)}
    aligned = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a in pointers or a in _X_SIXTEENS}
    src = ASTSource(fn, sig, {(list(sig).index(c),): v for c, v in consts.items()}, aligned)
    try:
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["ptx"]
    except Exception as e:  # no ptxas, say
        pytest.skip(f"Triton cannot compile for sm_90 here: {e}")


@pytest.mark.parametrize("name", list(_X_READERS))
def test_x_loads_stay_16_bytes_wide_where_k_is_not_a_multiple_of_16(name):
    """At K = 1368 (a per-rank intermediate size) every kernel reading x gets `x_align`'s 8 and loads x in
    16-byte vectors; told nothing (X_ALIGN 1), Triton loads it two bytes at a time (found on the H100:
    16 x 4096 x 1368 took 15.5 us against 8.0 at K = 1376, the same padded K)."""
    import re

    two_bytes = re.compile(r"ld\.global(\.\w+)*\.[bu]16\b")
    assert not two_bytes.search(_x_loads_ptx(name, launch.x_align(1368, 1368)))
    assert two_bytes.search(_x_loads_ptx(name, 1))  # what the test would see without the hint
