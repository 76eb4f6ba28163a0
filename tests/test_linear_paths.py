"""The Triton backend's forward paths (docs/nvfp4.md, "Triton backend paths") against fp64.

Small M: one launch (quantize + GEMM + split-K reduce). Larger M: quantize-dequantize, then the
Triton GEMM or cuBLAS on exactly dequantized operands. Every path must compute the same exact
products with fp32 accumulation, give bit-identical results for a dynamic scale and the equivalent
static one, and write every output element.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fp4linear
from fp4linear import kernels, ops, reference

from .conftest import HAVE_CUDA, as_graph_replay, modelopt_checkpoint, without_host_sync


def chunk_bytes(monkeypatch, nbytes):
    """Weight chunks of the cuBLAS path capped at nbytes at every M (both of `ops._chunk_rows`' caps)."""
    monkeypatch.setattr(ops, "CUBLAS_CHUNK_BYTES", nbytes)
    monkeypatch.setattr(ops, "CUBLAS_WIDE_CHUNK_BYTES", nbytes)


def layer_for(n, k, device, *, bias=True, dynamic=False, seed=0):
    ckpt, q = modelopt_checkpoint(n, k, bias=bias, seed=seed)
    if dynamic:
        ckpt["input_scale"] = None
    layer = fp4linear.Linear.from_modelopt(**{k_: (t.to(device) if t is not None else None) for k_, t in ckpt.items()},
                                           backend="triton")
    return layer, ckpt, q


def fp64_bound(x, layer, q, input_scale):
    """(reference, elementwise bound): fp64 of the reference-quantized x times the weight, and the
    fp32-accumulation bound Kp * 2^-22 * alpha * (|A| @ |W|^T) (+ bias)."""
    gs = (1 / input_scale.float().cpu()).reshape(1)
    qx = reference.quantize(x.float().cpu(), gs, k_align=16)
    a, w = reference.dequantize(qx).double(), reference.dequantize(q).double()
    ref = a @ w.T
    bound = layer.k_padded * 2.0**-22 * (a.abs() @ w.abs().T) + 1e-30
    if layer.bias is not None:
        ref = ref + layer.bias.double().cpu()
    return ref, bound


def check(out, ref, bound, out_dtype):
    err = (out.double().cpu() - ref).abs()
    if out_dtype == torch.float32:
        assert (err <= bound + 1e-6 * ref.abs()).all(), f"max err/bound {(err / bound).max():.3g}"
    else:  # one rounding to bf16/fp16 on top (the CPU interpreter truncates: 2^-7)
        tol = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[out_dtype]
        assert (err <= bound + tol * ref.abs() + 1e-30).all(), f"max rel err {(err / ref.abs()).max():.3g}"
    assert not out.isnan().any()


PATHS = [("small", 1), ("small", 3), ("small", 16), ("triton", 17), ("triton", 40), ("triton", 70), ("cublas", 40)]


@pytest.mark.parametrize("path, m", PATHS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_paths_match_fp64(device, path, m, dtype):
    if path == "cublas" and dtype == torch.float32:
        pytest.skip("the cuBLAS path takes bf16/fp16 activations")
    n, k = 72, 464  # K % 64 != 0 (Kp 512), N not a tile multiple
    layer, ckpt, q = layer_for(n, k, device, seed=m)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(dtype).to(device)
    out = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, layer.bias, n, False, layer._alpha_host, cublas=path == "cublas")
    assert out.shape == (m, n) and out.dtype == dtype
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, dtype)


@pytest.mark.parametrize("path, m", PATHS)
@pytest.mark.parametrize("k, row_stride", [(200, 200), (196, 204), (198, 198), (201, 201)])
def test_paths_where_k_is_not_a_multiple_of_16(device, path, m, k, row_stride):
    """K % 16 = 8, 4, 2, 1 (per-rank intermediate sizes: GLM-4.5-Air's 1368, Nemotron's 232), x's rows
    row_stride elements apart: every kernel reading x is told what K and the stride are multiples of
    (`launch.x_align`, for 16-byte loads; one too large would drop columns) and reads all of them. Static
    and dynamic scale (the max |x| pass, or inside the one launch) against fp64, and bit for bit."""
    if path == "cublas" and device == "cpu" and m != 40:
        pytest.skip()
    n = 72
    layer, ckpt, q = layer_for(n, k, device, seed=k)
    base = torch.randn(m, row_stride, generator=torch.Generator().manual_seed(k)) * 3
    base[:, k - 1] = 40.0  # the last column decides max |x| and, if dropped, the error
    x = base.to(torch.bfloat16).to(device)[:, :k]
    cublas = path == "cublas"
    out = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, layer.bias, n, False, layer._alpha_host, cublas=cublas)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.bfloat16)
    dyn, _, _ = layer_for(n, k, device, dynamic=True, seed=k)
    static = layer
    static.input_scale.copy_(fp4linear.decode_scale(x.float().abs().amax()))
    static.input_global_scale.copy_(1.0 / static.input_scale)
    static.alpha.copy_(static.input_scale * static.weight_scale_2)
    got = ops.triton_linear(x, dyn.weight, dyn.weight_scale, dyn.input_global_scale, dyn.alpha, dyn.weight_scale_2,
                            dyn.bias, n, True, None, cublas=cublas)
    want = ops.triton_linear(x, static.weight, static.weight_scale, static.input_global_scale, static.alpha,
                             static.weight_scale_2, static.bias, n, False, None, cublas=cublas)
    assert torch.equal(got, want)


@pytest.mark.parametrize("path, m", PATHS)
def test_dynamic_scale_is_bit_identical_to_the_static_one(device, path, m):
    n, k = 40, 192
    dyn, ckpt, q = layer_for(n, k, device, dynamic=True)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(7)) * 5).to(torch.bfloat16).to(device)
    static, _, _ = layer_for(n, k, device)
    static.input_scale.copy_(fp4linear.decode_scale(x.float().abs().amax()))
    static.input_global_scale.copy_(1.0 / static.input_scale)
    static.alpha.copy_(static.input_scale * static.weight_scale_2)
    static._refresh_alpha_host()
    cublas = path == "cublas"
    args = (dyn.weight, dyn.weight_scale)
    got = ops.triton_linear(x, *args, dyn.input_global_scale, dyn.alpha, dyn.weight_scale_2, dyn.bias, n, True,
                            None, cublas=cublas)
    # the static layer with its alpha on the device (alpha_host None): on the cuBLAS path the
    # epilogue a dynamic scale takes (fp32 chunks, `kernels.alpha_epilogue`)
    want = ops.triton_linear(x, *args, static.input_global_scale, static.alpha, static.weight_scale_2, static.bias, n,
                             False, None, cublas=cublas)
    assert torch.equal(got, want)


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("outlier", [1e4, math.nan])
def test_gemv_dynamic_scale_in_kernel_matches_the_separate_launch(device, monkeypatch, m, outlier):
    """The decode kernel's own max |x| (every program reads all of x, two unrolled chunks here, the
    second partial) against `kernels.dynamic_scales` + the same kernel: the same bits, NaN included."""
    n, k = 72, 1400
    layer, _, _ = layer_for(n, k, device, dynamic=True, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    x[m - 1, k - 3] = outlier  # the maximum in the last row, in the last chunk's tail
    x = x.to(device)
    args = (layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2, layer.bias,
            n, True, None)
    assert kernels.fuses_dynamic_scale(m, k, k)
    fused = ops.triton_linear(x, *args)
    monkeypatch.setattr(kernels.gemv_launch, "DYNAMIC_IN_KERNEL_MAX", 0)
    assert not kernels.fuses_dynamic_scale(m, k, k)
    separate = ops.triton_linear(x, *args)
    assert torch.equal(fused, separate) if outlier == outlier else (fused.isnan().all() and separate.isnan().all())


@pytest.mark.parametrize("m, outlier, row_stride", [(5, 1e4, 0), (16, 1e4, 1472), (9, math.nan, 0)])
def test_dynamic_scale_in_the_quantize_pass_matches_the_separate_launch(device, monkeypatch, m, outlier, row_stride):
    """Past the decode kernel (5-16 rows): the quantize-dequantize pass takes max |x| itself (every
    program reads all of x: two unrolled chunks of 1024 here, the second partial; a strided x)
    against `kernels.dynamic_scales` as a launch of its own: the same bits, NaN included. The
    outlier sits in the last row's tail, where only the last chunk of the last row sees it."""
    n, k = 72, 1400
    layer, _, _ = layer_for(n, k, device, dynamic=True, seed=m)
    base = torch.randn(m, max(k, row_stride), generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    base[m - 1, k - 3] = outlier
    x = base.to(device)[:, :k]
    assert x.stride(0) == max(k, row_stride)
    args = (layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2, layer.bias,
            n, True, None)
    # the pass's own route (these small weights would take the decode kernel or the GEMM quantizing x)
    monkeypatch.setattr(ops, "use_gemv", lambda *a: False)
    monkeypatch.setattr(ops, "use_quantize_in_gemm", lambda *a: False)
    monkeypatch.setattr(ops, "eager_route", lambda *a: None)  # (eager calls would take one launch)
    assert kernels.fuses_dynamic_scale_in_pass(m, k, x.stride(0))
    fused = ops.triton_linear(x, *args)
    monkeypatch.setattr(kernels.quant_dequant_launch, "DYNAMIC_IN_PASS_MAX", 0)
    assert not kernels.fuses_dynamic_scale_in_pass(m, k, x.stride(0))
    separate = ops.triton_linear(x, *args)
    assert torch.equal(fused, separate) if outlier == outlier else (fused.isnan().all() and separate.isnan().all())
    # the alpha the pass leaves for the GEMM is the separate launch's (both NaN for a NaN input)
    a = torch.empty(m, layer.k_padded, dtype=torch.float16, device=device)
    alpha_in_pass = kernels.fake_quantize_dynamic(x, layer.weight_scale_2, a, units=True).clone()
    alpha_separate = kernels.dynamic_gs_alpha(x, layer.weight_scale_2)[1].clone()
    assert torch.equal(alpha_in_pass, alpha_separate) or (alpha_in_pass.isnan() & alpha_separate.isnan()).all()


@pytest.mark.cuda
@pytest.mark.parametrize("m, k, outlier, a_order", [(1, 464, 1e4, 0), (5, 1376, 1e4, 1), (16, 4096, 1e4, 1),
                                                     (9, 1400, math.nan, 2), (16, 2688, math.inf, 0),
                                                     (3, 8, 1e4, 0), (48, 768, 1e4, 0), (40, 1400, math.nan, 0)])
def test_gpu_dynamic_pass_barrier_matches_every_program_reading_x(monkeypatch, m, k, outlier, a_order):
    """The dynamic pass's GPU barrier (each program reads its own tile, max |x| shared through a word
    per program) against every program reading all of x: the same values and alpha, NaN and inf
    included, over repeated calls and CUDA-graph replays, a larger x between them (its words must be
    zero again after every call)."""
    from fp4linear.kernels import quant_dequant_launch as qdl
    from fp4linear.kernels.workspace import scratch_of

    g = torch.Generator().manual_seed(m + k)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16)
    x[m - 1, k - 1] = outlier
    x = x.cuda()
    kp = -(-k // 64) * 64
    ws2 = torch.tensor([0.01], device="cuda")
    rows = kernels.mma16_rows(m, a_order)

    def poisoned():  # 0xFFFF: a NaN no kernel writes, so unwritten elements show
        return torch.full((rows, kp), -1, dtype=torch.int16, device="cuda").view(torch.float16)

    def run(barrier):
        monkeypatch.setattr(qdl, "DYNAMIC_PASS_BARRIER_ELEMENTS", 0 if barrier else 2**40)
        qdl._fake_plan.cache_clear()
        try:
            grid, meta, _, _ = qdl._fake_plan(0, m, k, kp, True, x.dtype, torch.float16, True, a_order)
            assert meta["BARRIER"] == barrier
            outs = []
            for i in range(3):
                out = poisoned()
                if i == 1:  # a call whose max |x| is larger: stale words from it would show in the next
                    kernels.fake_quantize_dynamic(x * 4, ws2, poisoned(), units=True, a_order=a_order)
                alpha = kernels.fake_quantize_dynamic(x, ws2, out, units=True, a_order=a_order).clone()
                outs.append((out, alpha))
            out = poisoned()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                alpha_g = kernels.fake_quantize_dynamic(x, ws2, out, units=True, a_order=a_order)
            for _ in range(3):
                out.copy_(poisoned())
                graph.replay()
                outs.append((out.clone(), alpha_g.clone()))
            torch.cuda.synchronize()
            return outs
        finally:
            qdl._fake_plan.cache_clear()

    with_barrier, reading_all = run(True), run(False)
    assert not scratch_of(x).barrier_words.any()
    want_out, want_alpha = reading_all[0]
    for out, alpha in with_barrier + reading_all:
        assert torch.equal(out.view(torch.int16), want_out.view(torch.int16))  # (rows past M: both poison)
        assert torch.equal(alpha.view(torch.int32), want_alpha.view(torch.int32))
    # and not vacuously: the static pass under the separate scale launch's gs (NaN gs: NaN blocks)
    gs, alpha_separate = (t.clone() for t in kernels.dynamic_gs_alpha(x, ws2))
    static = poisoned()
    kernels.fake_quantize(x, gs, static, units=True, a_order=a_order)
    assert torch.equal(want_out.isnan(), static.isnan()) and (want_out.view(torch.int16) != -1).sum() >= m * k
    assert torch.equal(want_out[~want_out.isnan()], static[~static.isnan()])
    assert torch.equal(want_alpha, alpha_separate) or (want_alpha.isnan() & alpha_separate.isnan()).all()


@pytest.mark.cuda
@pytest.mark.parametrize("m, k", [(16, 8192), (12, 3696), (8, 8192), (4, 28672), (40, 4096), (64, 2688), (6, 4096)])
def test_gpu_linear_dynamic_through_the_barrier_pass(monkeypatch, m, k):
    """A dynamic-scale Linear past 20K elements of x takes the barrier pass on the GPU, x too large for
    every program to read (16 x 8192, 4 x 28672 in 256-wide tiles) or not: the bits of the separate
    scale launch + static pass."""
    from fp4linear.kernels import quant_dequant_launch as qdl

    n = 2560  # n * Kp >= 8M: the pass + GEMM route, not the GEMM quantizing x
    layer, _, _ = layer_for(n, k, "cuda", dynamic=True, seed=m)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).cuda()
    args = (layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2, layer.bias,
            n, True, None)
    assert kernels.dynamic_pass_barrier(m, layer.k_padded, x.device)
    assert not ops.use_gemv(m, n, layer.k_padded) and not ops.use_quantize_in_gemm(m, n, layer.k_padded)
    monkeypatch.setattr(ops, "eager_route", lambda *a: None)  # the captured route (eager: one launch on small weights)
    qdl._fake_plan.cache_clear()
    barrier = ops.triton_linear(x, *args)
    monkeypatch.setattr(qdl, "DYNAMIC_PASS_BARRIER_ELEMENTS", 2**40)
    qdl._fake_plan.cache_clear()
    try:
        separate = ops.triton_linear(x, *args)
    finally:
        qdl._fake_plan.cache_clear()
    assert torch.equal(barrier, separate)


def test_dynamic_scale_in_the_quantize_pass_bounds():
    """Up to 16 rows and 16 x 4096 elements, and only where 32-bit row offsets reach every row."""
    assert kernels.fuses_dynamic_scale_in_pass(16, 4096, 4096) and kernels.fuses_dynamic_scale_in_pass(8, 8192, 8192)
    assert not kernels.fuses_dynamic_scale_in_pass(17, 464, 464)
    assert not kernels.fuses_dynamic_scale_in_pass(16, 8192, 8192)
    assert not kernels.fuses_dynamic_scale_in_pass(4, 28672, 28672)
    assert not kernels.fuses_dynamic_scale_in_pass(2, 64, 2**30)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("cublas_reads_alpha", [False, True])
def test_cublas_device_alpha_matches_fp64_over_several_chunks(device, monkeypatch, bias, cublas_reads_alpha):
    """The dynamic-scale cuBLAS path, alpha on the device: fp32 output chunks and the epilogue launch,
    or (no bias, GPU) cuBLAS reading alpha itself; chunks forced small (128 rows, 3 chunks, the last
    one short); every output element written (poisoned output)."""
    m, n, k = 40, 300, 464
    monkeypatch.setattr(ops, "CUBLAS_FP32_CHUNK_BYTES", 4 * m * 128)
    chunk_bytes(monkeypatch, 128 * 512 * 2)
    monkeypatch.setattr(fp4linear.cublas_alpha, "ENABLED", cublas_reads_alpha)
    assert ops._chunk_rows(m, n, 512, torch.bfloat16, True) == ops._chunk_rows(m, n, 512, torch.bfloat16) == 128
    layer, ckpt, q = layer_for(n, k, device, bias=bias, seed=3)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(3)) * 3).to(torch.bfloat16).to(device)
    out = torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device)
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=x.dtype, device=device),
                              units=False)
    ops.cublas_dequantized_gemm(a, layer.weight, layer.weight_scale, layer.bias, layer.alpha, out)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.bfloat16)
    assert not out.isnan().any()


@pytest.mark.parametrize("dynamic", [False, True])
def test_cublas_operands_from_scratch_equal_per_call_tensors(device, monkeypatch, dynamic):
    """The cuBLAS path's activation values and weight chunk as views of per-stream scratch
    (`CUBLAS_SCRATCH_BYTES`) give the bits of per-call tensors, over interleaved layers and shapes
    (the views of each shape kept, the buffers grown), for x and for act(h); and the scratch is what
    they used. On the CPU the stream's scratch is stood in by one `workspace.Scratch`."""
    from fp4linear.kernels import workspace

    if device.type == "cpu":
        kept = workspace.Scratch(device)
        monkeypatch.setattr(ops, "scratch_of", lambda t: kept)
    shapes = [(72, 464), (136, 200), (72, 464)]
    layers = [layer_for(n, k, device, bias=False, dynamic=dynamic, seed=i)[0] for i, (n, k) in enumerate(shapes)]
    calls = [(0, 40), (1, 17), (2, 40), (0, 90), (1, 40)]
    xs = [(torch.randn(m, shapes[i][1], generator=torch.Generator().manual_seed(j)) * 3).to(torch.bfloat16).to(device)
          for j, (i, m) in enumerate(calls)]
    hs = [(torch.randn(m, 2 * shapes[i][1], generator=torch.Generator().manual_seed(50 + j)) * 3).to(torch.bfloat16)
          .to(device) for j, (i, m) in enumerate(calls)]

    def run():
        outs = []
        for (i, _), x, h in zip(calls, xs, hs):
            lay = layers[i]
            args = (lay.weight, lay.weight_scale, lay.input_global_scale, lay.alpha, lay.weight_scale_2, None,
                    lay.out_features, dynamic, None if dynamic else lay._alpha_host)
            outs.append(ops.triton_linear(x, *args, cublas=True))
            outs.append(ops.triton_act_linear(h, "silu_mul", *args, cublas=True))
        return outs

    monkeypatch.setattr(ops, "CUBLAS_SCRATCH_BYTES", 0)
    want = run()
    monkeypatch.setattr(ops, "CUBLAS_SCRATCH_BYTES", 32 << 20)
    got = run()
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    scratch = ops.scratch_of(xs[0])
    assert {("cublas_activation", torch.bfloat16), ("weight_chunk", torch.bfloat16)} <= set(scratch._buffers)
    for (name, _), buf in scratch._buffers.items():  # stale operands must never be read: poison them, run again
        if name in ("cublas_activation", "weight_chunk"):
            buf.view(torch.uint8).fill_(0xFF)
    for g, w in zip(run(), want):
        assert torch.equal(g, w)


def test_scratch_views_are_made_once_per_shape_and_follow_a_grown_buffer():
    from fp4linear.kernels import workspace

    s = workspace.Scratch(torch.device("cpu"))
    a = s.cublas_activation(4, 16, torch.bfloat16)
    assert a.shape == (4, 16) and a.dtype == torch.bfloat16 and s.cublas_activation(4, 16, torch.bfloat16) is a
    chunk, w, w_t = s.weight_chunk(8, 64, 40, torch.bfloat16)
    assert chunk.shape == (8, 64) and w.shape == (8, 40) and w_t.shape == (40, 8) and w_t.stride() == (1, 64)
    assert w.data_ptr() == chunk.data_ptr() and s.weight_chunk(8, 64, 40, torch.bfloat16)[2] is w_t
    assert s.weight_chunk(8, 64, 64, torch.bfloat16)[1] is s.weight_chunk(8, 64, 64, torch.bfloat16)[0]
    big = s.cublas_activation(64, 16, torch.bfloat16)  # grows the buffer: the old views are dropped
    again = s.cublas_activation(4, 16, torch.bfloat16)
    assert again is not a and again.data_ptr() == big.data_ptr()
    # one buffer per name and dtype: the operands of one call never share memory
    half = s.cublas_activation(4, 16, torch.float16)
    ptrs = {again.data_ptr(), half.data_ptr(), s.weight_chunk(8, 64, 40, torch.bfloat16)[0].data_ptr(),
            s.dequantized_activation(4, 16).data_ptr()}
    assert len(ptrs) == 4


@pytest.mark.parametrize("entry_points", [False, True])
def test_routing_follows_whether_cublas_can_read_alpha(monkeypatch, entry_points):
    """`use_cublas` and `temp_bytes` ask `cublas_alpha.usable` (the entry points found), not only its
    switch: without them a dynamic scale at small K stays off cuBLAS, and a cuBLAS call counts its fp32
    output chunk."""
    monkeypatch.setattr(fp4linear.cublas_alpha, "_entry_points_or_no_gpu", lambda: entry_points)
    m, n, kp = 2048, 2688, 512
    assert ops.use_cublas(m, n, kp, dynamic=True) == entry_points
    assert ops.use_cublas(m, n, kp, dynamic=False)
    fp32_chunk = m * ops._chunk_rows(m, n, kp, torch.bfloat16, True) * 4
    plain = ops.temp_bytes(m, n, kp, torch.bfloat16, cublas=True)
    dynamic = ops.temp_bytes(m, n, kp, torch.bfloat16, cublas=True, dynamic=True)
    assert dynamic == (plain if entry_points else plain + fp32_chunk)


def test_cublas_chunks_widen_below_the_wide_chunk_rows():
    """Below `CUBLAS_WIDE_CHUNK_ROWS` rows the cuBLAS path dequantizes the weight in chunks of up to
    `CUBLAS_WIDE_CHUNK_BYTES` (8192x8192 fp16 whole at 512 rows), from there up to `CUBLAS_CHUNK_BYTES`;
    always multiples of 128 rows, never more than N, and the temporary `temp_bytes` reports follows."""
    wide, narrow = ops.CUBLAS_WIDE_CHUNK_ROWS - 1, ops.CUBLAS_WIDE_CHUNK_ROWS
    assert ops._chunk_rows(512, 8192, 8192, torch.bfloat16) == 8192
    assert ops._chunk_rows(wide, 8192, 8192, torch.bfloat16) == ops.CUBLAS_WIDE_CHUNK_BYTES // (8192 * 2)
    assert ops._chunk_rows(narrow, 8192, 8192, torch.bfloat16) == ops.CUBLAS_CHUNK_BYTES // (8192 * 2) == 4096
    for m in (1, 100, wide, narrow, 4096):
        for n, kp in ((8192, 8192), (28672, 8192), (8192, 28672), (1288, 2688), (300, 512)):
            rows = ops._chunk_rows(m, n, kp, torch.float16)
            cap = ops.CUBLAS_WIDE_CHUNK_BYTES if m < narrow else ops.CUBLAS_CHUNK_BYTES
            assert rows == n or (rows % 128 == 0 and rows * kp * 2 <= cap)
    m, n, kp = 512, 8192, 8192
    assert ops.temp_bytes(m, n, kp, torch.bfloat16, cublas=True) == m * kp * 2 + n * kp * 2
    assert ops.temp_bytes(narrow, n, kp, torch.bfloat16, cublas=True) == narrow * kp * 2 + 4096 * kp * 2


@pytest.mark.parametrize("m, dynamic", [(9, False), (9, True), (40, False), (40, True)])
def test_temp_bytes_is_what_the_graph_route_takes(monkeypatch, m, dynamic):
    """`temp_bytes` (the Linear table's column) counts the dequantized activation where the route
    writes one (a pass, then the Triton GEMM: 40 rows) and nothing where the GEMM quantizes x itself
    (9 rows), on the routes CUDA graphs take (`eager_route` off)."""
    from fp4linear.kernels import workspace

    n, k = 72, 200
    layer, _, _ = layer_for(n, k, "cpu", bias=False, dynamic=dynamic, seed=m)
    kp = layer.k_padded
    monkeypatch.setattr(ops, "eager_route", lambda *a: None)
    taken = []
    real = workspace.Scratch.dequantized_activation

    def spy(self, rows, cols):
        taken.append(rows * cols * 2)
        return real(self, rows, cols)
    monkeypatch.setattr(workspace.Scratch, "dequantized_activation", spy)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2,
                      None, n, dynamic, None if dynamic else layer._alpha_host)
    assert not ops.use_cublas(m, n, kp, dynamic) and not ops.use_gemv(m, n, kp)
    assert ops.temp_bytes(m, n, kp, torch.bfloat16, dynamic=dynamic, k=k) == sum(taken)
    assert (sum(taken) == 0) == (m <= 16)


def test_cublas_reads_alpha_only_on_the_gpu():
    assert not fp4linear.cublas_alpha.available(torch.zeros(1))
    a = torch.zeros(4, 32, dtype=torch.bfloat16)
    one = torch.ones(1)
    with pytest.raises(ValueError, match="one dtype"):
        fp4linear.cublas_alpha.mm_device_alpha(a, a.half(), one, one, torch.empty(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="alpha and zero"):
        fp4linear.cublas_alpha.mm_device_alpha(a, a, one, one, torch.empty(4, 4, dtype=torch.bfloat16))


CUBLAS_ALPHA_SHAPES = [(1, 136, 464, 1), (37, 300, 464, 3), (300, 72, 2688, 1), (513, 1288, 200, 2), (96, 4096, 1024, 4)]


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("m, n, k, chunks", CUBLAS_ALPHA_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cublas_reading_alpha_gives_the_epilogue_bits(monkeypatch, m, n, k, chunks, dtype):
    """cuBLAS applying the device alpha itself (`cublas_alpha.mm_device_alpha`) against fp32
    accumulators scaled and rounded by `kernels.alpha_epilogue`: the same bits, over odd shapes, one
    to four weight chunks (column slices of the output), repeated calls into poisoned outputs; then
    the fp64 bound."""
    if not fp4linear.cublas_alpha.available(torch.zeros(1, device="cuda")):
        pytest.fail("no usable libcublas found in this process (cublas_alpha._library)")
    layer, ckpt, q = layer_for(n, k, "cuda", bias=False, seed=m + n)
    kp = layer.k_padded
    rows = -(-n // chunks) // 128 * 128 or 128
    chunk_bytes(monkeypatch, rows * kp * dtype.itemsize)
    monkeypatch.setattr(ops, "CUBLAS_FP32_CHUNK_BYTES", rows * m * 4)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(dtype).cuda()
    a = kernels.fake_quantize(x, layer.input_global_scale,
                              torch.empty(m, ops.cublas_k(k, kp), dtype=dtype, device="cuda"), units=False)
    outs = {}
    for reads_alpha in (False, True, True):
        monkeypatch.setattr(fp4linear.cublas_alpha, "ENABLED", reads_alpha)
        out = torch.full((m, n), math.nan, dtype=dtype, device="cuda")
        ops.cublas_dequantized_gemm(a, layer.weight, layer.weight_scale, None, layer.alpha, out)
        outs.setdefault(reads_alpha, []).append(out)
    assert torch.equal(outs[True][0], outs[False][0]) and torch.equal(outs[True][1], outs[False][0])
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(outs[True][0], ref, bound, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("m, n, k", [(512, 1288, 2688), (300, 2688, 464)])
def test_gpu_compiled_cublas_path_reads_alpha_as_eager_does(monkeypatch, m, n, k):
    """torch.compile of a dynamic-scale layer on the cuBLAS path records cuBLAS reading alpha as the
    custom op `fp4linear::mm_device_alpha` (a ctypes call cannot be traced): it runs, and gives the
    eager bits for every input."""
    layer, _, _ = layer_for(n, k, "cuda", bias=False, dynamic=True, seed=m)
    assert ops.use_cublas(m, n, layer.k_padded, True)
    calls = []
    real = fp4linear.cublas_alpha.mm_device_alpha
    monkeypatch.setattr(fp4linear.cublas_alpha, "mm_device_alpha", lambda *a: calls.append(1) or real(*a))
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for seed, scale in ((0, 3.0), (1, 500.0)):
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * scale).to(torch.bfloat16).cuda()
        want = layer(x)
        calls.clear()
        got = compiled(x)
        assert calls, "the compiled layer did not call cuBLAS with a device alpha"
        assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("m", [1, 16, 512])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_layers_on_a_gpu_other_than_the_current_one(m, dynamic):
    """A model spread over GPUs calls layers on cuda:1 while cuda:0 is current (Triton and cuBLAS
    launch on the current device): every path (decode kernel, GEMM quantizing x, cuBLAS with a
    device alpha), `from_linear`'s weight quantization and `quantize` run on the tensors' device,
    with the bits of the same calls made with cuda:1 current."""
    n, k = 1288, 2688
    torch.manual_seed(m)
    lin = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16, device="cuda:1")
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(5)) * 3).to(torch.bfloat16).to("cuda:1")
    scale = None if dynamic else fp4linear.decode_scale(torch.tensor(12.0))
    gs = torch.full((1,), 200.0, device="cuda:1")
    outs = []
    for current in (1, 0):
        with torch.cuda.device(current):
            layer = fp4linear.Linear.from_linear(lin, input_scale=scale, backend="triton")
            q = fp4linear.quantize(x, gs)
            outs.append([layer(x), q.data, q.scale.view(torch.uint8), layer.weight, layer.weight_scale.view(torch.uint8)])
    torch.cuda.synchronize(1)
    for want, got in zip(*outs):
        assert got.device == x.device and torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="needs a CUDA GPU")
def test_cublas_reading_alpha_in_a_graph_follows_each_replays_scale():
    """A dynamic-scale layer on the cuBLAS path captured once: each replay's output equals the eager
    call's for that replay's input (alpha read when the GEMM runs, not at capture), with no host
    sync; the capture's own scratch zero (beta) made inside the capture."""
    m, n, k = 512, 1288, 2688
    layer, _, _ = layer_for(n, k, "cuda", bias=False, dynamic=True)
    assert ops.use_cublas(m, n, layer.k_padded, True)
    xs = [(torch.randn(m, k, generator=torch.Generator().manual_seed(s)) * scale).to(torch.bfloat16).cuda()
          for s, scale in ((1, 3.0), (2, 200.0), (3, 0.01))]
    eager = [without_host_sync(lambda x=x: layer(x))[0] for x in xs]
    static_x = xs[0].clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = layer(static_x)
    for x, want in zip(xs, eager):
        static_x.copy_(x)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, want)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 90), n=st.integers(1, 300), k=st.integers(1, 400), dynamic=st.booleans(),
       cublas=st.sampled_from([None, True, False]), bias=st.booleans(), seed=st.integers(0, 999))
def test_hypothesis_paths_match_fp64(device, monkeypatch, m, n, k, dynamic, cublas, bias, seed):
    """Every route (`use_gemv`, `use_cublas`, forced either way) at random shapes, static and dynamic
    scale, cuBLAS in 128-row chunks (several where N > 128), against the fp64 bound. (Unwritten
    elements: the poisoned-output tests above, per path.)"""
    chunk_bytes(monkeypatch, 1)  # -> 128-row chunks
    monkeypatch.setattr(ops, "CUBLAS_FP32_CHUNK_BYTES", 1)
    layer, ckpt, q = layer_for(n, k, device, bias=bias, dynamic=dynamic, seed=seed)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(seed)) * 3).to(torch.bfloat16).to(device)
    out = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, layer.bias, n, dynamic, None if dynamic else layer._alpha_host,
                            cublas=cublas)
    assert out.shape == (m, n)
    input_scale = fp4linear.decode_scale(x.float().abs().amax().cpu()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, input_scale)
    check(out, ref, bound, torch.bfloat16)


@pytest.mark.parametrize("m", [1, 5, 16])
def test_small_m_kernel_writes_every_element(device, m):
    n, k = 200, 1376
    layer, ckpt, q = layer_for(n, k, device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(device)
    out = torch.full((m, n), math.nan, device=device)  # poisoned
    kernels.linear_small_m(x, layer.input_global_scale, layer.alpha, layer.weight, layer.weight_scale, layer.bias, out)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.float32)


def test_dequantized_a_gemm_writes_every_element_with_a_strided_output(device):
    m, n, k = 33, 96, 320
    layer, ckpt, q = layer_for(n, k, device)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(device)
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=torch.float16,
                                                                          device=device), units=True)
    big = torch.full((m, n + 24), math.nan, device=device)
    out = big[:, 8 : 8 + n]
    kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, layer.bias, out)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.float32)
    assert big[:, :8].isnan().all() and big[:, 8 + n :].isnan().all()


@pytest.mark.parametrize("m, n", [(9, 112), (16, 70), (1, 40), (40, 33)])
def test_quantize_in_gemm_with_one_column(device, m, n):
    """K = 1: `nvfp4_gemm_quantize_x` runs a pass first (see there), which must write A in the layout
    of the tile the GEMM takes (the decode tiles' mma16 order); found by the hypothesis test."""
    layer, ckpt, q = layer_for(n, 1, device, bias=False, seed=44)
    x = (torch.randn(m, 1, generator=torch.Generator().manual_seed(44)) * 3).to(torch.bfloat16).to(device)
    out = torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device)
    kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha, None,
                                  out)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.bfloat16)


@pytest.mark.parametrize("m, k, dtype, row_stride", [(33, 320, torch.float32, 0), (70, 464, torch.bfloat16, 520),
                                                     (5, 1376, torch.float16, 0)])  # the last: split K on the CPU
def test_quantize_in_gemm_equals_the_two_launches_and_writes_every_element(device, m, k, dtype, row_stride):
    """`nvfp4_gemm_quantize_x` (x quantized by every program that reads it) gives the bits of
    `fake_quantize(units=True)` + `nvfp4_gemm_dequantized_a`: K % 64 != 0, M not a tile multiple,
    strided rows, a non-finite block (its row NaN), into a poisoned, column-sliced output."""
    n = 96
    layer, ckpt, q = layer_for(n, k, device, seed=m)
    base = torch.randn(m, max(k, row_stride), generator=torch.Generator().manual_seed(m)) * 3
    base[m // 2, 7] = math.nan
    x = base.to(dtype).to(device)[:, :k]
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=torch.float16,
                                                                          device=device), units=True)
    want = torch.full((m, n), math.nan, dtype=dtype, device=device)
    kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, layer.bias, want)
    big = torch.full((m, n + 24), math.nan, dtype=dtype, device=device)
    got = big[:, 8 : 8 + n]
    kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                  layer.bias, got)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert big[:, :8].isnan().all() and big[:, 8 + n :].isnan().all()
    assert got[m // 2].isnan().all()
    ok = torch.arange(m) != m // 2
    ref, bound = fp64_bound(x[ok.to(x.device)], layer, q, ckpt["input_scale"])
    check(got[ok.to(x.device)], ref, bound, dtype)


@pytest.mark.parametrize("m", [7, 40])
def test_quantize_in_gemm_of_a_single_column(device, m):
    """K = 1 (x's row stride 1): a pass first (Triton turns those integers into constants and then
    fails to compile the kernel on the GPU), the same bits."""
    layer, ckpt, q = layer_for(24, 1, device, bias=False)
    x = torch.randn(m, 1, generator=torch.Generator().manual_seed(m)).to(device)
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=torch.float16,
                                                                          device=device), units=True)
    want = kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, None,
                                            torch.empty(m, 24, device=device), tiles_for_m=256)
    got = kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                        None, torch.full((m, 24), math.nan, device=device), tiles_for_m=256)
    assert torch.equal(got, want)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(got, ref, bound, torch.float32)


def test_quantize_in_gemm_refuses_x_wider_than_the_weight(device):
    layer, _, _ = layer_for(40, 64, device)
    x = torch.randn(3, 80, device=device)
    with pytest.raises(ValueError, match="columns"):
        kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                      None, torch.empty(3, 40, device=device))


@pytest.mark.parametrize("tile", [
    kernels.GemmConfig(128, 64, 64, 8, 3, split_k=0, programs_per_sm=1, predequant_a=True, w_operand_b=True,
                       wgmma_stages=4),
    kernels.GemmConfig(256, 128, 64, 8, 3, split_k=0, programs_per_sm=1, predequant_a=True, w_registers=True,
                       wgmma_stages=4)], ids=["wgmma", "w_registers"])
def test_gemm_quantizing_x_on_a_routed_gluon_tile(device, monkeypatch, tile):
    """The one launch of small eager layers past 16 rows (x quantized inside the GEMM with the tiles
    `gemm_config` gives `ops.TILES_FOR_HOST_BOUND` rows) where those are a Gluon kernel's, which reads a
    pre-dequantized A (on the GPU, past HOST_BOUND_BATCH_ROWS with N >= 16384 and a small K). Triton's kernel of
    the tile runs instead (a ValueError before); within the fp64 bound."""
    from fp4linear.kernels import gemm_launch

    monkeypatch.setattr(gemm_launch, "gemm_config", lambda *a, **kw: tile)
    gemm_launch._gemm_plan.cache_clear()
    try:
        m, n, k = 17, 72, 200
        layer, ckpt, q = layer_for(n, k, device, bias=False, seed=3)
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(3)) * 3).to(torch.bfloat16).to(device)
        out = kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                            None, torch.full((m, n), math.nan, dtype=x.dtype, device=device),
                                            tiles_for_m=ops.TILES_FOR_HOST_BOUND)
    finally:
        gemm_launch._gemm_plan.cache_clear()
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("m, n, k", [(40, 16384, 768), (64, 20480, 368), (40, 512, 16384)])
def test_gpu_eager_one_launch_where_graphs_take_gluon_tiles(m, n, k):
    """Eager calls that take the one-launch route with `TILES_FOR_HOST_BOUND`'s tiles (past HOST_BOUND_BATCH_ROWS,
    M x N x Kp <= HOST_BOUND_MNK) on weights whose tiles for those rows are a Gluon kernel's (N >= 16384 with a
    small K: the register-operand tile; Kp >= 16384 with a small N: the shared-memory one): they run, within the
    fp64 bound, static and dynamic scale."""
    for dynamic in (False, True):
        layer, ckpt, q = layer_for(n, k, "cuda", bias=False, dynamic=dynamic, seed=m)
        x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).cuda()
        assert ops.eager_route(x, m, n, layer.k_padded, dynamic) == ops.ONE_LAUNCH
        assert m > ops.HOST_BOUND_BATCH_ROWS  # so the one launch takes TILES_FOR_HOST_BOUND's tiles
        tile = kernels.gemm_config(ops.TILES_FOR_HOST_BOUND, n, layer.k_padded, "cuda")
        assert tile.wgmma_stages or tile.w_registers
        out = layer(x)
        # (a dynamic scale is a static one of max |x| / 2688: the same encode scale, bit for bit)
        scale = fp4linear.decode_scale(x.float().abs().amax()) if dynamic else ckpt["input_scale"]
        ref, bound = fp64_bound(x, layer, q, scale)
        check(out, ref, bound, torch.bfloat16)


def test_small_layers_called_eagerly_take_one_launch(device):
    """Past 16 rows a small layer called eagerly quantizes x inside the Triton GEMM with the mid-M
    tiles (`ops.eager_route`), not cuBLAS; traced by torch.compile it keeps the device-time routing."""
    m, n, k = 130, 40, 48
    layer, ckpt, q = layer_for(n, k, device)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(5)) * 2).to(torch.bfloat16).to(device)
    assert ops.eager_route(x, m, n, layer.k_padded) == ops.ONE_LAUNCH
    with fp4linear.kernels.launch.wrapped_for_compile():
        assert ops.eager_route(x, m, n, layer.k_padded) is None
    got = layer(x)
    want = kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                         layer.bias, torch.empty(m, n, dtype=x.dtype, device=device),
                                         tiles_for_m=ops.TILES_FOR_HOST_BOUND)
    assert torch.equal(got, want)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(got, ref, bound, torch.bfloat16)


@pytest.mark.parametrize("m", [24, 32])
def test_batched_decode_eager_one_launch_has_the_graph_routes_bits(device, m):
    """Up to HOST_BOUND_BATCH_ROWS rows an eager call's one launch takes the tiles the graphs' two launches
    take (not `TILES_FOR_HOST_BOUND`'s), so an eager call and a graph replay give the same bits. (Kp 1024:
    at Kp <= 512 graphs take the one launch too, `use_quantize_in_gemm`.)"""
    n, k = 72, 1008
    layer, ckpt, q = layer_for(n, k, device, bias=False, seed=m)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    assert ops.eager_route(x, m, n, layer.k_padded) == ops.ONE_LAUNCH
    eager = layer(x)
    two = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, None, n, False, layer._alpha_host, cublas=False)
    with fp4linear.kernels.launch.wrapped_for_compile():  # the device-time routing (what graphs take)
        assert ops.eager_route(x, m, n, layer.k_padded) is None
    assert not ops.use_quantize_in_gemm(m, n, layer.k_padded)  # so `two` was the pass and the GEMM
    assert torch.equal(eager, two)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(eager, ref, bound, torch.bfloat16)


def test_decode_host_bound_by_weight_size():
    """Up to 16 rows an eager call is host-bound by its weight's size (N x Kp), with a static or a
    dynamic scale alike; never while traced."""
    x = torch.zeros(4, 8)
    one = ops.ONE_LAUNCH
    for dynamic in (False, True):
        for m in (2, 16):
            assert ops.eager_route(x, m, 4096, 4096, dynamic) == one
            assert ops.eager_route(x, m, 8192, 3712, dynamic) == one
            assert ops.eager_route(x, m, 8192, 8192, dynamic) is None
        assert ops.eager_route(x, 16, 1, ops.HOST_BOUND_DECODE_ELEMENTS, dynamic) == one
        assert ops.eager_route(x, 16, 1, ops.HOST_BOUND_DECODE_ELEMENTS + 16, dynamic) is None
    with fp4linear.kernels.launch.wrapped_for_compile():
        assert ops.eager_route(x, 8, 4096, 4096) is None


def test_eager_route_tiers_past_decode():
    """Past 16 rows an eager call takes one launch up to HOST_BOUND_MNK multiply-adds, the pass and the
    Triton GEMM up to EAGER_TRITON_MNK (_DYNAMIC with a dynamic scale: the per-rank prefill layers), and
    the device-time routing beyond; never while traced."""
    x = torch.zeros(4, 8)
    assert ops.eager_route(x, 768, 384, 1536) == ops.ONE_LAUNCH  # MiniLM's FFN at 768 rows: 2^28.8
    assert ops.eager_route(x, 17, 1, ops.HOST_BOUND_MNK // 17) == ops.ONE_LAUNCH
    # batched decode, up to 32 rows: the one launch on weights up to HOST_BOUND_BATCH_ELEMENTS past HOST_BOUND_MNK
    for dynamic in (False, True):
        assert ops.eager_route(x, 32, 4096, 4096, dynamic) == ops.ONE_LAUNCH  # 5.4 * 10^8 > 2^29
        assert ops.eager_route(x, 33, 4096, 4096, dynamic) == ops.TRITON
        assert ops.eager_route(x, 32, 8192, 3712, dynamic) == ops.TRITON
    for dynamic in (False, True):
        assert ops.eager_route(x, 1024, 1288, 2688, dynamic) == ops.TRITON
        assert ops.eager_route(x, 4096, 2688, 512, dynamic) == ops.TRITON  # 5.6 * 10^9
        assert ops.eager_route(x, 513, 4096, 4096, dynamic) is None
        assert ops.eager_route(x, 4096, 1288, 2688, dynamic) is None
    assert ops.eager_route(x, 17, 1, ops.EAGER_TRITON_MNK // 17) == ops.TRITON
    assert ops.eager_route(x, 17, 1, ops.EAGER_TRITON_MNK // 17 + 1) is None
    # between the two limits: a dynamic scale's cuBLAS route costs more host time
    assert ops.eager_route(x, 2048, 1288, 2688) is None  # 7.1 * 10^9
    assert ops.eager_route(x, 2048, 1288, 2688, dynamic=True) == ops.TRITON
    assert ops.eager_route(x, 512, 4096, 4096) is None
    assert ops.eager_route(x, 512, 4096, 4096, dynamic=True) == ops.TRITON  # exactly EAGER_TRITON_MNK_DYNAMIC
    with fp4linear.kernels.launch.wrapped_for_compile():
        assert ops.eager_route(x, 1024, 1288, 2688) is None


@pytest.mark.parametrize("act", [None, "silu_mul"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_eager_triton_route_takes_the_pass_and_the_triton_gemm(device, monkeypatch, dynamic, act):
    """A layer the graphs give cuBLAS, called eagerly in the EAGER_TRITON_MNK (_DYNAMIC) tier (the tiers lowered
    here to this small layer's size): the quantize pass, then the Triton GEMM, never cuBLAS, with the
    bits of that route forced (`cublas=False`), and within the fp64 bound. GatedMLP's down projection
    (act(h)) follows the same rule. Past the tier: cuBLAS, as graphs."""
    m, n, k = 130, 40, 1392  # K % 64 != 0
    layer, ckpt, q = layer_for(n, k, device, dynamic=dynamic, seed=7)
    kp = layer.k_padded
    width = 2 * k if act else k
    x = (torch.randn(m, width, generator=torch.Generator().manual_seed(7)) * 3).to(torch.bfloat16).to(device)
    assert ops.use_cublas(m, n, kp, dynamic)
    limit = "EAGER_TRITON_MNK_DYNAMIC" if dynamic else "EAGER_TRITON_MNK"
    monkeypatch.setattr(ops, "HOST_BOUND_MNK", m * n * kp - 1)
    monkeypatch.setattr(ops, limit, m * n * kp)
    assert ops.eager_route(x, m, n, kp, dynamic) == ops.TRITON
    args = (layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2, layer.bias,
            n, dynamic, layer._alpha_host)

    def call(cublas=None):
        if act is None:
            return ops.triton_linear(x, *args, cublas=cublas)
        return ops.triton_act_linear(x, act, *args, cublas=cublas)

    want = call(cublas=False)
    calls, gemms = [], []
    real, real_gemm = ops.cublas_dequantized_gemm, kernels.nvfp4_gemm_dequantized_a
    monkeypatch.setattr(ops, "cublas_dequantized_gemm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    monkeypatch.setattr(kernels, "nvfp4_gemm_dequantized_a", lambda *a, **kw: gemms.append(1) or real_gemm(*a, **kw))
    got = call()
    assert not calls and gemms == [1] and torch.equal(got, want)  # the pass's GEMM (not one launch), not cuBLAS
    if act is None:
        assert torch.equal(layer(x), want)
        scale = fp4linear.decode_scale(x.float().abs().amax().cpu()) if dynamic else ckpt["input_scale"]
        ref, bound = fp64_bound(x, layer, q, scale)
        check(got, ref, bound, torch.bfloat16)
    else:
        h = fp4linear.activation(x, act)
        assert torch.equal(ops.triton_linear(h, *args), want)  # the unfused Linear's bits
    monkeypatch.setattr(ops, limit, m * n * kp - 1)
    assert ops.eager_route(x, m, n, kp, dynamic) is None
    call()
    assert calls  # past the tier: cuBLAS


def _forbid_pass(monkeypatch):
    """Make the quantize-dequantize pass (the first of the two launches) fail if called."""
    def no_pass(*args, **kwargs):
        raise AssertionError("the quantize-dequantize pass ran: two launches")
    monkeypatch.setattr(kernels, "fake_quantize", no_pass)
    monkeypatch.setattr(kernels, "fake_quantize_dynamic", no_pass)


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("m", [2, 9, 16])
def test_decode_called_eagerly_takes_one_launch_with_the_graph_bits(device, monkeypatch, m, dynamic):
    """Up to 16 rows, a weight the captured route gives two launches (pass, then the GEMM; here forced
    by `use_quantize_in_gemm` patched off, as for 4096 x 4096 on a GPU) takes one launch when called
    eagerly: x quantized inside the GEMM, with the decode tiles, so the bits of the two launches."""
    n, k = 72, 1392  # K % 64 != 0 (Kp 1408): K splits on the interpreter's tiles
    layer, ckpt, q = layer_for(n, k, device, dynamic=dynamic, seed=m)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    monkeypatch.setattr(ops, "use_quantize_in_gemm", lambda *args: False)
    monkeypatch.setattr(ops, "use_gemv", lambda *args: False)
    two_launches = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                                     layer.weight_scale_2, layer.bias, n, dynamic, layer._alpha_host, cublas=False)
    _forbid_pass(monkeypatch)
    assert ops.eager_route(x, m, n, layer.k_padded, dynamic) == ops.ONE_LAUNCH
    got = layer(x)
    assert torch.equal(got, two_launches)
    scale = fp4linear.decode_scale(x.float().abs().amax().cpu()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, scale)
    check(got, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("m", [3, 8, 16])
@pytest.mark.parametrize("n, k", [(4096, 4096), (8192, 3696), (8192, 8192)])
def test_gpu_decode_eager_one_launch_equals_graph(m, n, k, dynamic):
    """4096 x 4096, 8192 x 3696 (K % 64 != 0) and 8192 x 8192 at 3-16 rows: captured, the pass and the
    GEMM (two launches); eagerly, the GEMM quantizing x (one launch, no pass; on a weight past
    `ops.HOST_BOUND_DECODE_ELEMENTS` with that bound raised). The same bits, no host sync, the same
    again on every call."""
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=m)
    assert not ops.use_gemv(m, n, layer.k_padded) and not ops.use_quantize_in_gemm(m, n, layer.k_padded)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    graph = as_graph_replay(layer, x)
    with pytest.MonkeyPatch.context() as mp:
        _forbid_pass(mp)
        mp.setattr(ops, "HOST_BOUND_DECODE_ELEMENTS", max(ops.HOST_BOUND_DECODE_ELEMENTS, n * layer.k_padded))
        eager = without_host_sync(lambda: layer(x), 3)
    assert all(torch.equal(e, graph) for e in eager)
    scale = fp4linear.decode_scale(x.float().abs().amax().cpu()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, scale)
    check(graph, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_small_layer_eager_one_launch_and_graph_cublas(dynamic):
    """MiniLM-sized layer, M = 768: eagerly one launch (x quantized in the GEMM), no sync,
    deterministic; captured into a CUDA graph, the cuBLAS path. Both within the fp64 bound."""
    m, n, k = 768, 384, 1536
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=3)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    assert ops.eager_route(x, m, n, layer.k_padded) == ops.ONE_LAUNCH and ops.use_cublas(m, n, layer.k_padded, dynamic)
    eager = layer(x)
    again = without_host_sync(lambda: layer(x), 3)
    assert all(torch.equal(eager, a) for a in again)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = layer(x)
    graph.replay()
    torch.cuda.synchronize()
    forced = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                               layer.weight_scale_2, layer.bias, n, dynamic, layer._alpha_host, cublas=True)
    assert torch.equal(y, forced)
    scale = fp4linear.decode_scale(x.float().abs().amax()) if dynamic else ckpt["input_scale"]  # the scale used
    ref, bound = fp64_bound(x, layer, q, scale)
    check(eager, ref, bound, torch.bfloat16)
    check(y, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("m, n, k", [(1024, 1288, 2688), (2048, 2688, 464), (4096, 2688, 464)])
def test_gpu_per_rank_prefill_eager_triton_and_graph_cublas(m, n, k, dynamic):
    """Per-rank prefill layers in the EAGER_TRITON_MNK tier (both scales): eagerly the pass and the Triton
    GEMM (the bits of that route forced), no sync, deterministic; captured, cuBLAS. Both within the fp64
    bound."""
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    assert ops.eager_route(x, m, n, layer.k_padded, dynamic) == ops.TRITON and ops.use_cublas(m, n, layer.k_padded,
                                                                                                dynamic)
    args = (x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha, layer.weight_scale_2,
            layer.bias, n, dynamic, layer._alpha_host)
    eager = without_host_sync(lambda: layer(x), 3)
    assert all(torch.equal(e, ops.triton_linear(*args, cublas=False)) for e in eager)
    graph = as_graph_replay(layer, x)
    assert torch.equal(graph, ops.triton_linear(*args, cublas=True))
    scale = fp4linear.decode_scale(x.float().abs().amax()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, scale)
    check(eager[0], ref, bound, torch.bfloat16)
    check(graph, ref, bound, torch.bfloat16)


def test_routing_probes_cublas_only_where_it_would_take_it(monkeypatch):
    """`use_cublas` looks at the rows first: its cuBLAS probe (`cublas_alpha.usable`, whose first call
    makes a cuBLAS handle) never runs for a call cuBLAS would not take, e.g. a decode call captured
    into a CUDA graph before any cuBLAS use in the process."""
    def probe():
        raise AssertionError("probed cuBLAS")
    monkeypatch.setattr(fp4linear.cublas_alpha, "usable", probe)
    assert not ops.use_cublas(16, 1536, 384, True) and not ops.use_cublas(1, 4096, 512, True)
    assert ops.use_cublas(2048, 1536, 4096, True)  # Kp >= 1024: no probe either
    with pytest.raises(AssertionError, match="probed"):
        ops.use_cublas(2048, 1536, 384, True)


@pytest.mark.cuda
@pytest.mark.parametrize("m, n, k", [(16, 1288, 2688), (200, 2688, 464), (768, 1536, 384), (2048, 1288, 2688)])
def test_gpu_quantize_in_gemm_equals_the_two_launches(m, n, k):
    """On the GPU's own tiles (16-row split-K up to 256-row tiles): the same bits both ways."""
    layer, _, _ = layer_for(n, k, "cuda", seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=torch.float16,
                                                                          device="cuda"), units=True)
    want = kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, layer.bias,
                                            torch.empty(m, n, dtype=torch.bfloat16, device="cuda"))
    got = kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                        layer.bias, torch.full((m, n), math.nan, dtype=torch.bfloat16, device="cuda"))
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("m, n, k", [(17, 15, 361), (40, 15, 361), (17, 15, 368), (300, 131, 464), (15, 272, 73),
                                     (44, 136, 394), (75, 288, 265)])
def test_gpu_cublas_bias_over_several_chunks(monkeypatch, m, n, k):
    """The cuBLAS path with a bias where the output's rows are not 16-byte aligned (N % 8 != 0), and
    over several weight chunks (each chunk's output a column slice of out, aligned rows or not):
    found by the hypothesis test on the H100 (wrong elements from addmm's 1-D bias there)."""
    chunk_bytes(monkeypatch, 1)  # -> 128-row chunks
    layer, ckpt, q = layer_for(n, k, "cuda", bias=True, seed=0)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16).cuda()
    out = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, layer.bias, n, False, layer._alpha_host, cublas=True)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("config", [
    kernels.GemmConfig(16, 64, 256, 4, 3, split_k=0, predequant_a=True, w_operand_b=True),  # mma.sync, split K
    kernels.GemmConfig(16, 128, 128, 8, 3, split_k=0, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(16, 64, 512, 4, 3, split_k=0, predequant_a=True, w_operand_b=True),  # K tiles past Kp's end
    kernels.GemmConfig(16, 64, 256, 2, 3, split_k=0, predequant_a=True, w_operand_b=True),
    # the per-rank routed tiles: splits of one K tile and up
    kernels.GemmConfig(16, 64, 128, 4, 4, split_k=0, min_split_tiles=1, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(16, 128, 128, 4, 3, split_k=0, min_split_tiles=1, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(64, 128, 64, 4, 4, split_k=0, predequant_a=True, w_operand_b=True),  # wgmma from shared memory
    kernels.GemmConfig(128, 128, 64, 8, 3, predequant_a=True, w_operand_b=True),
    kernels.GemmConfig(128, 128, 128, 8, 3, split_k=0, predequant_a=True, w_operand_b=True),
], ids=lambda c: f"{c.block_m}x{c.block_n}x{c.block_k}w{c.num_warps}")
@pytest.mark.parametrize("m, n, k", [(5, 1288, 2688), (16, 2688, 464), (200, 2576, 2688)])
def test_gpu_weight_as_right_operand(config, m, n, k):
    """The decoded weight as the MMA's right operand: within the fp64 bound, and x quantized inside
    the GEMM gives the bits of the pass + GEMM with the same tiles."""
    layer, ckpt, q = layer_for(n, k, "cuda", seed=m + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    a = kernels.fake_quantize(x, layer.input_global_scale, torch.empty(m, layer.k_padded, dtype=torch.float16,
                                                                          device="cuda"), units=True)
    want = kernels.nvfp4_gemm_dequantized_a(a, layer.weight, layer.weight_scale, layer.alpha, layer.bias,
                                            torch.full((m, n), math.nan, device="cuda"), config=config)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(want, ref, bound, torch.float32)
    got = kernels.nvfp4_gemm_quantize_x(x, layer.input_global_scale, layer.weight, layer.weight_scale, layer.alpha,
                                        layer.bias, torch.full((m, n), math.nan, device="cuda"), config=config)
    assert torch.equal(got, want)


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("route", ["decode", "cublas"])
def test_gpu_graphs_share_scratch_within_a_capture_only(monkeypatch, dynamic, route):
    """One scratch set per capture and stream (zeroed once per replay, not once per layer), none
    shared with eager calls or other graphs: two graphs captured into one shared memory pool and
    replayed in turn, with eager calls in between, give the eager bits. Decode GEMMs split over K
    (their tickets must be zero at every launch), and cuBLAS-path layers (their operands in scratch)."""
    from fp4linear.kernels import workspace

    n = 4096 if route == "decode" else 1024
    ms = (16, 8, 1) if route == "decode" else (600, 520)
    layers = [layer_for(n, n, "cuda", dynamic=dynamic, seed=i)[0] for i in range(3)]
    if route == "cublas":  # eager calls on the cuBLAS route too (not the eager Triton route of these sizes)
        monkeypatch.setattr(ops, "EAGER_TRITON_MNK", ops.HOST_BOUND_MNK)
        monkeypatch.setattr(ops, "EAGER_TRITON_MNK_DYNAMIC", ops.HOST_BOUND_MNK)
        assert all(ops.use_cublas(m, n, n, dynamic) and ops.eager_route(torch.empty(0), m, n, n, dynamic) is None
                   for m in ms)

    def run(x, seen=None):
        for layer in layers:
            x = layer(x)
            if seen is not None:
                seen.append(workspace.scratch_for(x.get_device()))
        return x

    pool = torch.cuda.graph_pool_handle()
    cases = []
    for m in ms:
        x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 2
        graph, seen = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(graph, pool=pool):
            assert workspace.capture_id(torch.cuda.current_stream().cuda_stream) is not None
            y = run(x, seen)
        assert all(s is seen[0] for s in seen) and seen[0] is not workspace.scratch_for(x.get_device())
        cases.append((graph, x, y, seen[0]))
    assert len({id(c[3]) for c in cases}) == len(cases)
    for _ in range(2):
        for graph, x, y, _ in cases:
            x.copy_(torch.randn_like(x) * 3)
            want = run(x)
            y.fill_(math.nan)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(y, want)


@pytest.mark.parametrize("path, m", PATHS)
def test_nan_rows_stay_visible(device, path, m):
    n, k = 48, 128
    layer, _, _ = layer_for(n, k, device, bias=False)
    x = torch.randn(m, k, dtype=torch.bfloat16, device=device)
    x[0, 5] = math.nan
    out = ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                            layer.weight_scale_2, None, n, False, layer._alpha_host, cublas=path == "cublas")
    assert out[0].isnan().all() and not out[1:].isnan().any()


def test_fake_quantize_holds_the_quantized_values(device):
    x = torch.randn(19, 200, dtype=torch.bfloat16, generator=None).to(device)
    gs = fp4linear.encode_scale(x.float().abs().amax())
    q = reference.quantize(x.cpu(), gs.cpu(), k_align=64)
    blocks = reference.block_scales(q)  # [19, Kp/16]
    values = reference.e2m1_decode(reference.unpack_nibbles(q.data)).reshape(19, -1, 16) * blocks[..., None]
    values = values.reshape(19, q.kp)
    true = kernels.fake_quantize(x, gs, torch.empty(19, q.kp, dtype=torch.bfloat16, device=device), units=False)
    assert torch.equal(true.float().cpu(), values)
    units = kernels.fake_quantize(x, gs, torch.empty(19, q.kp, dtype=torch.float16, device=device), units=True)
    order = torch.arange(q.kp).view(-1, 2, 4).transpose(1, 2).reshape(-1)  # the weight decode's K order
    assert torch.equal(units.float().cpu() * 2.0**14, values[:, order])


@pytest.mark.parametrize("k", [200, 48])  # Kp 256 and 64 (under one 128-wide tile: masks)
def test_dequantize_rows_equals_the_reference(device, k):
    layer, ckpt, q = layer_for(70, k, device)
    big = torch.full((32, layer.k_padded + 8), math.nan, dtype=torch.bfloat16, device=device)
    out = big[1:31, : layer.k_padded]
    kernels.dequantize_rows(layer.weight, layer.weight_scale, 40, out)
    want = torch.zeros(30, layer.k_padded)
    want[:, :k] = reference.dequantize(q)[40:70] * q.global_scale  # e2m1 * e4m3: no global scale
    assert torch.equal(out.float().cpu(), want.to(torch.bfloat16).float())
    assert big[0].isnan().all() and big[31].isnan().all() and big[:, layer.k_padded :].isnan().all()


@pytest.mark.parametrize("m, k", [(37, 200), (130, 464)])  # K % 8 == 0 and K < Kp; M over a 32-row tile
@pytest.mark.parametrize("config", [None, (16, 64, 64, 8), (64, 256, 32, 4)])
def test_cublas_operands_equal_the_two_launches_and_write_every_element(device, m, k, config):
    """`kernels.cublas_operands` (one launch; the default tiles and others) against `fake_quantize` +
    `dequantize_rows`, all into poisoned (NaN) buffers: the activation in its unpadded width Ka = K
    rounded to 8 (< Kp), the weight rows in a chunk shorter than N."""
    layer, _, _ = layer_for(70, k, device, seed=k)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(torch.bfloat16).to(device)
    ka, kp, rows = ops.cublas_k(k, layer.k_padded), layer.k_padded, 50
    assert ka < kp
    a1, a2 = (torch.full((m, ka), math.nan, dtype=torch.bfloat16, device=device) for _ in range(2))
    w1, w2 = (torch.full((rows, kp), math.nan, dtype=torch.bfloat16, device=device) for _ in range(2))
    cfg = kernels.OperandsConfig(*config) if config else None
    kernels.cublas_operands(x, layer.input_global_scale, a1, layer.weight, layer.weight_scale, w1, config=cfg)
    kernels.fake_quantize(x, layer.input_global_scale, a2, units=False)
    kernels.dequantize_rows(layer.weight, layer.weight_scale, 0, w2)
    assert torch.equal(a1, a2) and torch.equal(w1, w2)  # (NaN != NaN: an unwritten element fails)


@pytest.mark.cuda
@pytest.mark.parametrize("tiles", [(16, 64, 4), (32, 128, 4), (8, 128, 2), (16, 32, 1), (16, 256, 2)])
@pytest.mark.parametrize("m, k, a_order", [(2, 4096, 1), (5, 1368, 2), (16, 200, 1), (16, 8192, 0), (40, 1368, 0)])
def test_gpu_pass_tiles_give_the_interpreters_bits(tiles, m, k, a_order):
    """The static pass (`fake_quantize`, the two-launch decode route's first launch) with each tile the tuning
    tries (`pass_tiles`' among them) on the GPU against the interpreter's pass on the CPU: the same bits, every
    element written (poisoned buffers; rows M..round_up(M, 16) of a fragment-order layout are not written)."""
    kp = -(-k // 64) * 64
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m + k)) * 3).to(torch.bfloat16)
    gs = torch.tensor([50.0])
    rows = kernels.mma16_rows(m, a_order)
    want = torch.full((rows, kp), math.nan, dtype=torch.float16)
    kernels.fake_quantize(x, gs, want, units=True, a_order=a_order)
    got = torch.full((rows, kp), math.nan, dtype=torch.float16, device="cuda")
    kernels.fake_quantize(x.cuda(), gs.cuda(), got, units=True, a_order=a_order, tiles=tiles)
    assert torch.equal(got.cpu().view(torch.int16), want.view(torch.int16))
    if a_order == 0:
        assert not want.isnan().any()


@pytest.mark.parametrize("sms", [132, 78, 16, 300])
def test_barrier_pass_grid_fits_the_sms(monkeypatch, sms):
    """The dynamic pass's barrier needs every program resident and a word of its own: whatever the GPU's SM
    count, the routed tiles (`_barrier_block_k`, 64 columns up to 16 rows) never launch more programs than SMs
    or than the barrier has words (`BARRIER_WORDS`), and the kernel polls a word for every program; tiles given
    for tuning whose grid would not fit are refused with an error naming them, not launched. (Plans only: no GPU.)"""
    from fp4linear.kernels import quant_dequant_launch as qdl
    from fp4linear.kernels.workspace import BARRIER_WORDS

    fits = min(sms, BARRIER_WORDS - 1)

    monkeypatch.setattr(qdl, "_sm_count", lambda device: sms)
    qdl._fake_plan.cache_clear()
    try:
        taken = 0
        for m in (2, 5, 9, 16, 17, 33, 64):
            for kp in (1024, 2752, 4096, 8192, 16384, 28672):
                grid, meta, _, _ = qdl._fake_plan(0, m, kp, kp, True, torch.bfloat16, torch.float16, True, 1)
                if meta["BARRIER"]:
                    taken += 1
                    assert grid[0] * grid[1] <= fits, (m, kp, meta["BLOCK_K"])
                    assert grid[0] * grid[1] <= meta["BARRIER_SLOTS"] < BARRIER_WORDS
                    assert meta["BLOCK_K"] == 64 or m > 16 or -(-m // 16) * -(-kp // 64) > fits
        assert taken
        kp = 256 * fits  # the barrier applies (256-wide tiles fill the SMs), 64-wide ones would not fit
        assert qdl._fake_plan(0, 16, kp, kp, True, torch.bfloat16, torch.float16, True, 1)[1]["BARRIER"]
        with pytest.raises(ValueError, match="tiles"):
            qdl._fake_plan(0, 16, kp, kp, True, torch.bfloat16, torch.float16, True, 1, tiles=(16, 64, 4))
    finally:
        qdl._fake_plan.cache_clear()


@pytest.mark.parametrize("m", [3, 16])
def test_dynamic_quantize_pass_writes_every_element_and_equals_the_static_pass(device, m):
    """`fake_quantize_dynamic` into a poisoned buffer against `fake_quantize` under the scale the
    separate launch derives: the same bits."""
    layer, _, _ = layer_for(40, 1400, device, dynamic=True, seed=m)
    x = (torch.randn(m, 1400, generator=torch.Generator().manual_seed(m)) * 5).to(torch.bfloat16).to(device)
    a1, a2 = (torch.full((m, layer.k_padded), math.nan, dtype=torch.float16, device=device) for _ in range(2))
    alpha = kernels.fake_quantize_dynamic(x, layer.weight_scale_2, a1, units=True).clone()
    gs, alpha_separate = kernels.dynamic_gs_alpha(x, layer.weight_scale_2)
    kernels.fake_quantize(x, gs, a2, units=True)
    assert torch.equal(a1, a2) and torch.equal(alpha, alpha_separate)


# ---- GPU: graphs, no host sync, determinism, cached launches, torch.compile ---------------------

GPU_PATHS = [("small", 1), ("small", 16), ("triton", 64), ("triton", 300), ("cublas", 1100)]


def _forward(layer, x, path):
    return ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                             layer.weight_scale_2, layer.bias, layer.out_features, layer.dynamic_input_scale,
                             layer._alpha_host, cublas=path == "cublas")


@pytest.mark.cuda
@pytest.mark.parametrize("path, m", GPU_PATHS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_paths_no_sync_graph_deterministic(monkeypatch, path, m, dynamic):
    n, k = 1288, 2688  # a TP-8 per-rank shape
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    first = _forward(layer, x, path)
    again = without_host_sync(lambda: _forward(layer, x, path), 3)  # tickets and scale words reset each call
    assert all(torch.equal(first, a) for a in again)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _forward(layer, x, path)
    x.copy_(torch.randn_like(x) * 3)
    # An eager call of this small layer past 16 rows takes the host-bound route (`ops.eager_route`: other
    # kernels and K splits than the captured one, so other sums); the replay is compared with an eager
    # call of the route the capture took.
    monkeypatch.setattr(ops, "eager_route", lambda *args: None)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, _forward(layer, x, path))
    if not dynamic:
        ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
        check(y, ref, bound, torch.bfloat16)


def _triton_route_checked(layer, x):
    """The layer's Triton route (as graphs capture it) on x: no host sync, the same bits over repeated
    calls and a CUDA-graph replay."""
    first = _forward(layer, x, "triton")
    again = without_host_sync(lambda: _forward(layer, x, "triton"), 3)
    assert all(torch.equal(first, a) for a in again)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _forward(layer, x, "triton")
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(y, first)
    return y


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA or torch.cuda.get_device_capability()[0] != 9, reason="the routed tile on SM90")
@pytest.mark.parametrize("m", [200, 600])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_layer_with_the_weight_in_wgmma_registers(m, dynamic):
    """N >= 16384 from 192 rows: the layer's GEMM is the register-operand kernel (the pass writes A in
    its K order); no host sync, deterministic, graph replays, within the fp64 bound."""
    n, k = 16400, 520
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=m)
    assert kernels.activation_order(m, n, layer.k_padded, torch.device("cuda")) == 3
    assert not ops.use_cublas(m, n, layer.k_padded, dynamic)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    y = _triton_route_checked(layer, x)
    scale = fp4linear.decode_scale(x.float().abs().amax()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, scale)
    check(y, ref, bound, torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("m, n, k", [(24, 8192, 3072), (32, 6144, 4112), (17, 8192, 3072), (40, 16384, 2048),
                                     (48, 3584, 4096), (61, 4096, 4040)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_batched_decode_on_16_row_dots(m, n, k, dynamic):
    """Batched decode on the 16-row-dot tiles (`GemmConfig.dot_m` 16, A in the mma16 order: 17-32 rows from
    24M weight elements, 33-64 rows with N >= 16384 or Kp 4096-8192), whole and masked K tiles, a last 16-row tile past M:
    the pass writes that order, no host sync, deterministic, graph replays; an eager call (the one launch
    with the same tiles where it takes one) gives the graph's bits; within the fp64 bound."""
    layer, ckpt, q = layer_for(n, k, "cuda", dynamic=dynamic, seed=m)
    tile = kernels.gemm_config(m, n, layer.k_padded, "cuda")
    assert tile.dot_m == 16 and tile.a_mma16
    assert kernels.activation_order(m, n, layer.k_padded, torch.device("cuda")) == 1
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    y = _triton_route_checked(layer, x)
    if m <= ops.HOST_BOUND_BATCH_ROWS:  # eager calls of up to 32 rows: the graphs' tiles, the same bits
        assert torch.equal(layer(x), y)
    scale = fp4linear.decode_scale(x.float().abs().amax()) if dynamic else ckpt["input_scale"]
    ref, bound = fp64_bound(x, layer, q, scale)
    check(y, ref, bound, torch.bfloat16)


@pytest.mark.cuda
def test_gpu_cached_launches_follow_shape_dtype_and_stride_changes():
    from fp4linear.kernels import launch

    layer, ckpt, q = layer_for(200, 464, "cuda")
    big = torch.randn(40, 600, device="cuda")
    inputs = [big[:1, :464], big[:16, :464].to(torch.float16), big[3:8, 7:471], big[:3, :464].bfloat16(),
              big[:40, :464].to(torch.float16), big[:17, 100:564], big[:2, :464]]
    cached = [layer(x) for x in inputs * 2]
    launch.ENABLED = False
    try:
        fresh = [layer(x) for x in inputs * 2]
    finally:
        launch.ENABLED = True
    for x, a, b in zip(inputs * 2, cached, fresh):
        assert a.dtype == x.dtype and torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_compile_swapped_model(mode):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(464, 1288), torch.nn.ReLU(), torch.nn.Linear(1288, 200)).cuda().bfloat16()
    fp4linear.swap(model)  # dynamic scales
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    for m in (1, 16, 64):
        x = torch.randn(m, 464, device="cuda", dtype=torch.bfloat16)
        want = as_graph_replay(model, x)  # (the eager call of 64 rows takes the host-bound route)
        for _ in range(3):
            got = compiled(x)
        assert torch.equal(got, want), m


# ---- M <= 4 on CUDA cores (kernels/gemv.py) ---------------------------------------------------


def _gemv(layer, x, out, config=None):
    return kernels.linear_gemv(x, layer.input_global_scale, layer.alpha, layer.weight, layer.weight_scale, layer.bias,
                               out, config=config)


def test_single_launch_kernels_refuse_more_rows_than_they_take(device):
    """Called directly with too many rows, the single-launch kernels would leave rows unwritten."""
    layer, _, _ = layer_for(64, 128, device)
    args = (layer.input_global_scale, layer.alpha, layer.weight, layer.weight_scale, None)
    for fn, max_m in ((kernels.linear_gemv, kernels.gemv_launch.MAX_M), (kernels.linear_small_m, kernels.SMALL_M)):
        x = torch.randn(max_m + 1, 128, device=device)
        with pytest.raises(ValueError, match=f"x has {max_m + 1} rows"):
            fn(x, *args, torch.empty(max_m + 1, 64, device=device))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 7, 16])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gemv_matches_fp64_and_writes_every_element(device, m, dtype):
    n, k = 72, 464  # K % 64 != 0 (Kp 512), N not a tile multiple
    layer, ckpt, q = layer_for(n, k, device, seed=10 + m)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(m)) * 3).to(dtype).to(device)
    out = torch.full((m, n), math.nan, dtype=dtype, device=device)  # poisoned
    _gemv(layer, x, out)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, dtype)


@pytest.mark.parametrize("split_k, prefetch", [(1, False), (3, False), (1, True), (3, True)])
def test_gemv_uneven_k_tiles_strided_rows_and_split_k(device, split_k, prefetch):
    m, n, k = 3, 40, 190  # Kp 192: one full 128-wide tile and a masked half tile
    layer, ckpt, q = layer_for(n, k, device, seed=split_k)
    big = torch.randn(m, k + 30, generator=torch.Generator().manual_seed(5)).to(device)
    x = big[:, 11 : 11 + k]  # row stride k + 30
    cfg = kernels.GemvConfig(32, 128, 4, 1, split_k=split_k, use_asm=device.type == "cuda", prefetch=prefetch)
    out_big = torch.full((m, n + 8), math.nan, device=device)
    out = out_big[:, :n]
    _gemv(layer, x, out, cfg)
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(out, ref, bound, torch.float32)
    assert out_big[:, n:].isnan().all()
    again = torch.empty_like(out)
    _gemv(layer, x, again, cfg)  # the tickets were reset: same bits
    assert torch.equal(out, again)


def test_gemv_nan_rows_stay_visible(device):
    n, k = 48, 128
    layer, _, _ = layer_for(n, k, device, bias=False)
    x = torch.randn(3, k, dtype=torch.bfloat16, device=device)
    x[1, 70] = math.inf
    out = torch.empty(3, n, dtype=torch.bfloat16, device=device)
    _gemv(layer, x, out)
    assert out[1].isnan().all() and not out[0].isnan().any() and not out[2].isnan().any()


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 2, 4])
def test_gpu_gemv_fp16x2_ptx_equals_the_portable_path(m):
    """The inline-PTX path and the portable one (what the CPU runs) give the same bits on the GPU,
    with and without the next K tile's loads issued early."""
    n, k = 1288, 2688
    layer, ckpt, q = layer_for(n, k, "cuda", seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 3
    outs = []
    for use_asm, prefetch in ((True, False), (False, False), (True, True), (False, True)):
        cfg = kernels.GemvConfig(64, 256, 4, 3, use_asm=use_asm, prefetch=prefetch)
        outs.append(_gemv(layer, x, torch.full((m, n), math.nan, device="cuda"), cfg))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(outs[0], ref, bound, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("m", [1, 4])
def test_gpu_gemv_no_sync_graph_deterministic(m):
    n, k = 8192, 1024
    layer, ckpt, q = layer_for(n, k, "cuda", seed=m)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 2
    out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
    first = _gemv(layer, x, out).clone()
    again = without_host_sync(lambda: _gemv(layer, x, torch.empty_like(out)), 3)
    assert all(torch.equal(first, a) for a in again)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = _gemv(layer, x, torch.empty_like(out))
    x.copy_(torch.randn_like(x) * 3)
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(y, _gemv(layer, x, torch.empty_like(out)))
    ref, bound = fp64_bound(x, layer, q, ckpt["input_scale"])
    check(y, ref, bound, torch.bfloat16)

# ---- host-side caches: plans, launch keys, scratch views, the buffer look-up ---------------------


def test_alternating_inputs_stay_right(device):
    """Shapes (1-D, 2-D, 3-D; every path's M), dtypes, row and column strides and misaligned starts
    alternate between calls: every result must be what that input alone gives (plans, launch keys
    and scratch views follow each call's input)."""
    n, k = 72, 464
    static, ckpt, q = layer_for(n, k, device, seed=3)
    dyn, _, _ = layer_for(n, k, device, dynamic=True, seed=3)
    g = torch.Generator().manual_seed(5)
    big = {dt: (torch.randn(48, 2 * k + 9, generator=g) * 3).to(dt).to(device)
           for dt in (torch.float32, torch.bfloat16, torch.float16)}
    f32, bf16, f16 = big.values()
    tall = (torch.randn(k, 8, generator=g) * 3).to(device)  # its columns: rows of column stride 8
    tall_bf16 = tall.bfloat16()
    xs = [bf16[0, :k], f32[:3, :k], f16[:16, 7 : 7 + k], bf16[:17, 1 : 1 + k], f32[: 2 * 5, :k].reshape(2, 5, k),
          tall_bf16[:, :1].t(), tall[:, 3:8].t(), bf16[:40, :k], f16[5:6, 9 : 9 + k], bf16[:4, : 2 * k : 2]]
    first = [(static(x), dyn(x)) for x in xs]
    again = [(static(x), dyn(x)) for x in reversed(xs)][::-1]
    for x, (s1, d1), (s2, d2) in zip(xs, first, again):
        assert s1.shape == d1.shape == (*x.shape[:-1], n) and s1.dtype == d1.dtype == x.dtype
        assert torch.equal(s1, s2) and torch.equal(d1, d2)
        x2 = x.reshape(-1, k)
        ref, bound = fp64_bound(x2, static, q, ckpt["input_scale"])
        check(s1.reshape(-1, n), ref, bound, x.dtype)
        assert torch.equal(s1.reshape(-1, n), static(x2.contiguous()))


def test_forward_follows_buffer_changes(device):
    """forward reads the layer's buffers as they are now: after load_state_dict (in place or
    assign=True), buffer reassignment, _apply / .to(), and inside torch.func.functional_call."""
    a, _, _ = layer_for(40, 192, device, seed=1)
    b, _, _ = layer_for(40, 192, device, seed=2)
    x = torch.randn(3, 192, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16).to(device)
    want_a, want_b = a(x), b(x)
    assert not torch.equal(want_a, want_b)

    got = torch.func.functional_call(a, dict(b.named_buffers()), (x,))
    assert torch.equal(got, want_b) and torch.equal(a(x), want_a)  # and a's own buffers afterwards

    c, _, _ = layer_for(40, 192, device, seed=1)
    assert torch.equal(c(x), want_a)
    c.load_state_dict(b.state_dict())  # copied in place
    assert torch.equal(c(x), want_b)
    c.load_state_dict(a.state_dict(), assign=True)  # new tensors
    assert torch.equal(c(x), want_a)
    for name, t in b.named_buffers():  # reassignment
        setattr(c, name, t.clone())
    c._refresh_alpha_host()
    assert torch.equal(c(x), want_b)
    c._apply(lambda t: t.clone())
    assert torch.equal(c.to(device)(x), want_b)
    c.bias = None
    assert torch.equal(c(x), layer_for(40, 192, device, bias=False, seed=2)[0](x))
    if device.type == "cuda":
        a.cpu()
        with pytest.raises(ValueError, match="x is on cuda:0 but the layer's weights are on cpu"):
            a(x)
        assert torch.equal(a.cuda()(x), want_a)


def test_forward_compares_devices_of_other_kinds():
    layer, _, _ = layer_for(32, 64, "cpu")
    with pytest.raises(ValueError, match="x is on meta but the layer's weights are on cpu"):
        layer(torch.empty(2, 64, dtype=torch.bfloat16, device="meta"))


def test_plans_take_a_symbolic_m(monkeypatch):
    """Under torch.compile M can be a SymInt (unhashable): the launchers then call their plan
    functions uncached (`__wrapped__`), which must keep every constexpr a plain int (the H100
    compile tests once failed here with 'unhashable type: non-nested SymInt')."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from fp4linear.kernels import act_quantize_launch, gemm_launch, quant_dequant_launch

    env = ShapeEnv()
    m = env.create_symintnode(env.create_symbol(64, ConstantSource("m"), dynamic_dim=DimDynamic.DYNAMIC), hint=64)
    with pytest.raises(TypeError):
        hash(m)
    monkeypatch.setattr(gemm_launch, "_sm_count", lambda device: 132)
    grid, meta, options, split, tiles, per_split, _, _ = gemm_launch._gemm_plan.__wrapped__(
        0, m, 1288, 512, None, gemm_launch._UNITS, torch.float16, torch.bfloat16, None)
    assert type(meta["SPLIT_K"]) is int and type(per_split) is int and isinstance(grid[0], torch.SymInt)
    grid, meta, _, _ = quant_dequant_launch._fake_plan.__wrapped__(0, m, 464, 512, True, torch.bfloat16, torch.float16)
    assert all(type(v) in (int, bool) for v in meta.values())
    grid, meta, _, _, _ = act_quantize_launch._fake_plan.__wrapped__(0, m, "silu_mul", 928, 928, 512, True,
                                                                  torch.bfloat16, torch.float16)
    assert all(type(v) in (int, bool) for v in meta.values())


class _TracedTensor:
    """What a launcher reads of a CUDA tensor while torch.compile traces (shape with a symbolic M,
    device index, strides, dtype), without a GPU."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def get_device(self):
        return 0

    def stride(self, dim=None):
        strides = (self.shape[1], 1)
        return strides if dim is None else strides[dim]


def test_launchers_under_compile_tracing_take_a_symbolic_m(monkeypatch):
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    from fp4linear.kernels import act_quantize_launch, gemm_launch, launch, quant_dequant_launch, scales_launch

    env = ShapeEnv()
    m = env.create_symintnode(env.create_symbol(64, ConstantSource("m"), dynamic_dim=DimDynamic.DYNAMIC), hint=64)
    monkeypatch.setattr(gemm_launch, "_sm_count", lambda device: 132)
    launched = []
    for module, name in ((quant_dequant_launch, "_launch_fake"), (quant_dequant_launch, "_launch_operands"),
                         (act_quantize_launch, "_launch_fake"),
                         (gemm_launch, "_launch"), (scales_launch, "_launch"), (quant_dequant_launch, "_launch_epilogue")):
        monkeypatch.setattr(module, name, lambda key, grid, args, meta, options: launched.append((key, meta)))
    monkeypatch.setattr(gemm_launch, "scratch_of", lambda t: type("S", (), {"get": lambda self, a, b: (a, b)})())
    monkeypatch.setattr(scales_launch, "scratch_of",
                        lambda t: type("S", (), {"scales": None, "scale_words": None})())
    monkeypatch.setattr(quant_dequant_launch, "scratch_of",
                        lambda t: type("S", (), {"scales": 0, "alpha": 1, "barrier_words": 2})())
    monkeypatch.setattr(quant_dequant_launch, "_sm_count", lambda device: 132)
    m16 = env.create_symintnode(env.create_symbol(16, ConstantSource("m16"), dynamic_dim=DimDynamic.DYNAMIC), hint=16)
    x = _TracedTensor((m, 464), torch.bfloat16)
    a = _TracedTensor((m, 512), torch.float16)
    out = _TracedTensor((m, 1288), torch.bfloat16)
    w = _TracedTensor((1288, 256), torch.uint8)
    with launch.wrapped_for_compile():
        kernels.fake_quantize(x, None, a, units=True)
        kernels.act_fake_quantize(_TracedTensor((m, 928), torch.bfloat16), "silu_mul", None, a, units=True)
        kernels.nvfp4_gemm_dequantized_a(a, w, None, None, None, out)
        kernels.nvfp4_gemm_quantize_x(x, None, w, None, None, None, out)
        kernels.nvfp4_gemm_quantize_x(_TracedTensor((m16, 464), torch.bfloat16), None, w, None, None, None,
                                      _TracedTensor((m16, 1288), torch.bfloat16), weight_scale_2=w)  # M made concrete
        kernels.dynamic_scales(x, None)  # (its M-dependent choices were once a symbolic bool in a plan key)
        kernels.dynamic_scales(_TracedTensor((m, 928), torch.bfloat16), None, act="silu_mul")
        kernels.alpha_epilogue(_TracedTensor((m, 1288), torch.float32), None, None, out)
        kernels.cublas_operands(x, None, _TracedTensor((m, 464), torch.bfloat16), w, None,
                                _TracedTensor((1288, 512), torch.bfloat16))
        # the max |x| pass unrolls over rows: M made concrete (a guard), the plan left uncached
        assert kernels.fake_quantize_dynamic(_TracedTensor((m16, 464), torch.bfloat16), None,
                                             _TracedTensor((m16, 512), torch.float16), units=True) == 1
    assert len(launched) == 10  # (no plan cache hashed M; CachedLaunch ignores keys while tracing)
    assert all(type(v) in (int, bool) for _, meta in launched for v in meta.values())


def test_fp32_reductions_touch_only_their_dtypes_flag():
    flags = (torch._C._get_cublas_allow_bf16_reduced_precision_reduction,
             torch._C._get_cublas_allow_fp16_reduced_precision_reduction)
    before = [get() for get in flags]
    with ops._fp32_reductions(torch.float32):  # fp32 operands: no reduced-precision flag to clear
        assert [get() for get in flags] == before
    with ops._fp32_reductions(torch.float16):
        assert flags[0]() == before[0]
    assert [get() for get in flags] == before


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cublas_path_runs_with_fp32_reductions_and_restores_the_flag(monkeypatch, dtype):
    """Inside the cuBLAS path the dtype's reduced-precision-reduction flag is off (fp32 split-K
    reductions), and the caller's setting is back afterwards."""
    matmul = torch.backends.cuda.matmul
    name = {torch.bfloat16: "allow_bf16_reduced_precision_reduction",
            torch.float16: "allow_fp16_reduced_precision_reduction"}[dtype]
    seen = []
    real = torch.addmm

    def addmm(*args, **kwargs):
        seen.append(getattr(matmul, name))
        return real(*args, **kwargs)

    layer, ckpt, q = layer_for(40, 192, "cpu", bias=False)
    x = torch.randn(64, 192).to(dtype)
    saved = getattr(matmul, name)
    setattr(matmul, name, True)
    try:
        monkeypatch.setattr(torch, "addmm", addmm)
        ops.triton_linear(x, layer.weight, layer.weight_scale, layer.input_global_scale, layer.alpha,
                          layer.weight_scale_2, None, 40, False, layer._alpha_host, cublas=True)
        assert seen == [False] and getattr(matmul, name) is True
    finally:
        setattr(matmul, name, saved)


@pytest.mark.parametrize("m, k, outlier, row_stride", [(5, 464, 1e4, 0), (16, 1376, 1e4, 1472), (9, 200, math.nan, 0)])
def test_dynamic_scale_inside_the_quantizing_gemm_matches_the_separate_launch(device, monkeypatch, m, k, outlier,
                                                                              row_stride):
    """`nvfp4_gemm_quantize_x(weight_scale_2=)`: every program derives gs and alpha from max |x|
    itself; the bits of `dynamic_gs_alpha` then the same GEMM (strided rows, an outlier or a NaN,
    a poisoned output; split K on the CPU at K = 1376), twice on the same scratch, whose split-K
    tickets each call leaves at zero."""
    from fp4linear.kernels import gemm_launch, workspace

    if device.type == "cpu":  # (the stream's scratch, stood in by one kept set)
        kept = workspace.Scratch(device)
        monkeypatch.setattr(gemm_launch, "scratch_of", lambda t: kept)
    n = 72
    layer, _, _ = layer_for(n, k, device, dynamic=True, seed=m)
    base = torch.randn(m, max(k, row_stride), generator=torch.Generator().manual_seed(m)) * 2
    base[m - 1, k // 3] = outlier
    x = base.to(torch.bfloat16).to(device)[:, :k]
    gs, alpha = kernels.dynamic_gs_alpha(x, layer.weight_scale_2)
    want = kernels.nvfp4_gemm_quantize_x(x, gs, layer.weight, layer.weight_scale, alpha, layer.bias,
                                         torch.empty(m, n, dtype=torch.bfloat16, device=device))
    got = kernels.nvfp4_gemm_quantize_x(x, None, layer.weight, layer.weight_scale, None, layer.bias,
                                        torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device),
                                        weight_scale_2=layer.weight_scale_2)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got.isnan().any().item() == (outlier != outlier)
    again = kernels.nvfp4_gemm_quantize_x(x, None, layer.weight, layer.weight_scale, None, layer.bias,
                                          torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device),
                                          weight_scale_2=layer.weight_scale_2)
    torch.testing.assert_close(again, want, rtol=0, atol=0, equal_nan=True)
    assert not gemm_launch.scratch_of(x).tickets.any()  # the tickets back at zero
    with pytest.raises(ValueError, match="too large"):
        big = torch.zeros(17, k, dtype=torch.bfloat16, device=device)
        kernels.nvfp4_gemm_quantize_x(big, None, layer.weight, layer.weight_scale, None, None,
                                      torch.empty(17, n, dtype=torch.bfloat16, device=device),
                                      weight_scale_2=layer.weight_scale_2)


@pytest.mark.parametrize("k, block_k, split_k", [(1376, 64, 2), (1460, 128, 3), (200, 64, 1), (464, 128, 5)])
def test_dynamic_quantizing_gemm_over_splits_of_several_k_tiles(device, monkeypatch, k, block_k, split_k):
    """The GEMM quantizing x with a dynamic scale (max |x| read by every program before its K loop) over
    forced tiles: the bits of the static one launch after `dynamic_gs_alpha`, with splits of one to
    eleven K tiles, Kp a multiple of the K tile or not (EVEN_K both ways) and a poisoned output."""
    from fp4linear.kernels import gemm_launch, workspace

    if device.type == "cpu":
        kept = workspace.Scratch(device)
        monkeypatch.setattr(gemm_launch, "scratch_of", lambda t: kept)
    m, n = 7, 80
    config = kernels.GemmConfig(16, 64, block_k, 4, 3, split_k=split_k, predequant_a=True, w_operand_b=True)
    layer, _, _ = layer_for(n, k, device, dynamic=True, seed=k)
    x = (torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 3).to(torch.bfloat16).to(device)
    gs, alpha = kernels.dynamic_gs_alpha(x, layer.weight_scale_2)
    want = kernels.nvfp4_gemm_quantize_x(x, gs, layer.weight, layer.weight_scale, alpha, None,
                                         torch.empty(m, n, dtype=torch.bfloat16, device=device), config=config)
    got = kernels.nvfp4_gemm_quantize_x(x, None, layer.weight, layer.weight_scale, None, None,
                                        torch.full((m, n), math.nan, dtype=torch.bfloat16, device=device),
                                        config=config, weight_scale_2=layer.weight_scale_2)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not got.isnan().any()


@pytest.mark.cuda
@pytest.mark.parametrize("dynamic, m", [(False, 768), (True, 768), (True, 16)])
def test_gpu_fresh_process_eager_warmup_then_graph_capture(dynamic, m):
    """A fresh process whose only CUDA work is a small layer called eagerly (the one-launch route,
    no cuBLAS), then captured into a CUDA graph (768 rows: the cuBLAS route): the capture must not be
    the first cuBLAS call (cuBLAS cannot create its handles inside a capture). 16 rows with a dynamic
    scale and Kp < 1024: the capture's routing must not probe cuBLAS (`cublas_alpha`) either (it did,
    and failed, before any row count was looked at)."""
    import subprocess
    import sys
    import textwrap

    scale = "None" if dynamic else "fp4linear.decode_scale(torch.tensor(4.0))"
    code = textwrap.dedent(f"""
        import torch, fp4linear
        lin = torch.nn.Linear(384, 1536, device="cuda", dtype=torch.bfloat16)
        layer = fp4linear.Linear.from_linear(lin, input_scale={scale})
        x = torch.randn({m}, 384, device="cuda", dtype=torch.bfloat16)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                layer(x)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = layer(x)
        g.replay()
        torch.cuda.synchronize()
        assert not y.isnan().any()
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]
