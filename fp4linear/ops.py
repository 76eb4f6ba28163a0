"""The Triton backend's forward (`triton_linear`), and the kernels as torch.library ops.

Eager calls go straight to the launchers, which launch already compiled kernels (a dispatcher
round trip costs host time that decode-size calls feel). Under `torch.compile` the forward is the
op `fp4linear::linear`, a `torch.library.triton_op` on CUDA (Inductor sees and launches the Triton
kernels itself) and an opaque custom op on CPU (the interpreter cannot be traced).

Paths of `triton_linear` by the number of rows M (docs/nvfp4.md, "Triton backend paths"):
- M <= 2, M <= 4 on small weights, M <= 8 on tiny ones: one launch on CUDA cores (`kernels.linear_gemv`: quantize,
  exact E2M1 x E2M1 products in fp16 pairs, split-K reduce); `use_gemv`;
- up to 16 rows on weights under 8M elements: the Triton GEMM quantizing x itself, one launch
  (`kernels.nvfp4_gemm_quantize_x`); `use_quantize_in_gemm`;
- called eagerly (`eager_route`), up to 16 rows on weights up to 32M elements and past 16 rows on small
  layers: the GEMM quantizing x, one launch; past 16 rows on per-rank layers up to 6 x 10^9 multiply-adds
  (2^33 with a dynamic scale): the pass, then the Triton GEMM, not cuBLAS (the host, not the GPU, sets
  such calls' time);
- otherwise one quantize-dequantize pass of x, then either the Triton GEMM on the dequantized
  activation (one launch, split-K reduced inside) or, for larger M with a bf16/fp16 input, cuBLAS
  on exactly dequantized operands with fp32 accumulation (the weight dequantized in row chunks,
  never kept; a dynamic scale's alpha applied by a small epilogue launch per chunk): `use_cublas`.
The tensor-core single-launch kernel for M <= 16 (`kernels.linear_small_m`) is not chosen: the
CUDA-core kernel or the GEMM quantizing x measured as fast or faster (linear_bench.py --tune-gemv,
--ab-fused).
With a dynamic activation scale one small launch (`kernels.dynamic_scales`) comes first, except for
small inputs, where the first launch takes max |x| itself: the decode kernel
(`kernels.fuses_dynamic_scale`), the GEMM quantizing x, or the quantize-dequantize pass (up to 16
rows, `kernels.fuses_dynamic_scale_in_pass`).
"""

from __future__ import annotations

import functools

import torch

from . import cublas_alpha, kernels
from .format import SCALE_LAYOUTS, pad_k
from .kernels import launch as _launch_mod
from .kernels.workspace import per_call, scratch_of

_current_device = getattr(torch._C, "_cuda_getDevice", None)  # torch.cuda.current_device() without the Python


def on_device_of(position: int):
    """Decorator: run the function on the CUDA device of its argument at `position` (a tensor).
    Triton and cuBLAS launch on the current device, so a call with tensors on another GPU (a model
    spread over several, e.g. `device_map="auto"`) would fail there; this makes that device current
    for the call. Costs two device-index reads an eager call; skipped while torch.compile traces
    (its generated code guards devices itself)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = args[position]
            index = t.get_device() if isinstance(t, torch.Tensor) else -1
            if index >= 0 and not torch.compiler.is_compiling() and index != _current_device():
                with torch.cuda.device(index):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        return wrapper
    return decorate


# cuBLAS path: the dequantized weight chunk is at most this many bytes (a per-call temporary) ...
CUBLAS_CHUNK_BYTES = 64 << 20
# ... and below CUBLAS_WIDE_CHUNK_ROWS rows at most this many: there cuBLAS's GEMM on one chunk has too few
# output tiles to fill the GPU unless the chunk is wide (chunks cut N). H100, whole layer, CUDA-graph medians,
# static / dynamic (linear_bench.py --tune-chunks, results/chunk_tune_h100.csv): 512x8192x8192 156.8 / 163.8 us
# with one 128 MiB chunk vs 164.3 / 169.9 with two of 64 (weights cold: 156.6 / 163.3 vs 163.8 / 171.8); equal
# from 768 rows (205.9 vs 206.0; 1024 rows 252.6 vs 251.7). Narrower chunks lose everywhere (4-16 MiB: 1.1-6x
# slower from 128 to 2048 rows, each cuBLAS call a few output tiles deep in K), L2 residency of the chunk
# notwithstanding.
CUBLAS_WIDE_CHUNK_BYTES = 128 << 20
CUBLAS_WIDE_CHUNK_ROWS = 768
# ... and where the activation's values, or a weight chunk, take at most this many bytes, they are views
# of per-stream scratch (`kernels.workspace`, shared by every layer on the stream, views made once per
# shape) instead of per-call tensors: an eager call of a small layer on this path is host-bound, and its
# two allocations and three views were a fifth of its host time (benchmarks/NOTES.md, session 24).
CUBLAS_SCRATCH_BYTES = 32 << 20
# ... and with alpha on the device (dynamic scale), the chunk's fp32 output, which the epilogue
# (`kernels.alpha_epilogue`) reads back while it is still mostly in L2 (50 MB on the H100)
CUBLAS_FP32_CHUNK_BYTES = 32 << 20


# Below M = 512, cuBLAS from (rows, up to this many weight elements): `use_cublas`
CUBLAS_EARLY = ((64, 4 << 20), (128, 8 << 20), (256, (24 << 20) - 1))


def use_cublas(m: int, n: int, kp: int, dynamic: bool = False) -> bool:
    """cuBLAS on dequantized operands beats the Triton GEMM from M = 512 (the weight's
    dequantization, one pass over it per call, is then small against the GEMM), and earlier the
    smaller the weight: from M = 64 up to 4M elements, 128 up to 8M, 256 under 24M. H100, whole
    layer, CUDA-graph medians (linear_bench.py --tune, --tune-operand): 512x8192x8192 167.7 us vs
    235.3, 512x4096x4096 43.5 vs 74.1, 128x1288x2688 12.7 vs 17.2, 128x2576x2688 13.1 vs 20.2,
    256x4096x4096 34.2 vs 47.0; but 128x8192x8192 124.5 vs 82.7, 128x4096x4096 30.0 vs 26.2,
    256x8192x8192 140 vs 119. From 24M elements at 256 rows, and below 1024 rows from Kp = 16384 or
    N = 16384, the pipelined Triton-path kernels win (`kernels.gemm_config`; --tune-pipelined):
    256x8192x3696 50.2 us vs 59.8, 512x8192x28672 590 vs 649, 512x28672x8192 492 vs 567 (the weight
    in wgmma's registers).

    A dynamic scale's fp32 output chunks (8 more bytes per output element), where cuBLAS cannot read
    alpha itself (`cublas_alpha`), cost more than cuBLAS gains where K is small: from Kp = 1024 only.
    H100 (linear_bench.py, same card): 2048x2688x464 33.3 us on cuBLAS vs 30.5 on the Triton GEMM,
    128x2688x464 14.9 vs 11.7, 8192x2688x464 114 vs 95.1; but 128x1288x2688 19.2 vs 22.1,
    2048x1288x2688 53.4 vs 67.3."""
    if m >= 512:
        rows_say = m >= 1024 or (kp < 16384 and n < 16384)
    else:
        rows_say = any(m >= rows and n * kp <= elements for rows, elements in CUBLAS_EARLY)
    # (the probe last: its first call makes a cuBLAS handle, which a decode call captured into a CUDA graph
    # before any cuBLAS use in the process could not)
    return rows_say and not (dynamic and kp < 1024 and not cublas_alpha.usable())


def use_gemv(m: int, n: int, kp: int) -> bool:
    """M = 1, M <= 2 on weights under 24M elements, M <= 4 under 16M, and M <= 8 under 2M: the
    CUDA-core kernel (`kernels.linear_gemv`, one launch). H100, weights cold, device time
    (linear_bench.py --tune-gemv against the paths below): 1x8192x8192 22.0 us vs 32.1, 1x28672x8192
    58.5 vs 89.9, 1x2688x464 2.4 vs 7.3, 8x2688x464 4.65 vs 6.8; but 8x1288x2688 13.9 vs 12.3 and
    16x2688x464 8.8 vs 6.1 (its products, one per weight element and row, then outweigh the decode
    it shares). Against the GEMM reading A in fragment order (--ab-decode, H100, same run): 2x8192x8192
    24.2 vs 22.6, 2x8192x3696 16.7 vs 14.5, 2x28672x8192 68.2 vs 57.0, 4x4096x4096 12.8 vs 11.2; but
    2x4096x4096 9.0 vs 11.1 (an H200 run agreed: 2x28672x8192 66.7 vs 52.3, 2x4096x4096 8.7 vs 11.0)."""
    return m == 1 or (m <= 2 and n * kp < 24 * 2**20) or (m <= 4 and n * kp < 16 * 2**20) or (
        m <= 8 and n * kp < 2 * 2**20)


def use_quantize_in_gemm(m: int, n: int, kp: int) -> bool:
    """On the Triton GEMM path: x quantized inside the GEMM (`kernels.nvfp4_gemm_quantize_x`, one
    launch) rather than by a quantize-dequantize pass first (two launches, an [M, Kp] fp16 scratch):
    up to 16 rows on weights under 8M elements. H100, static scale, weights cold, device time
    (linear_bench.py --ab-fused): 16x2688x464 6.1 us vs 7.4, 16x1288x2688 11.3 vs 12.8,
    16x2576x2688 13.6 vs 14.6, 16x384x1536 9.0 vs 10.8; but 16x4096x4096 19.9 vs 17.0, 16x8192x8192
    53.6 vs 31.7 (more weight tiles, each re-quantizing x). Past 16 rows the quantize work grows
    with M per weight tile: 128x4096x4096 61.7 vs 26.7, 768x1288x2688 81.4 vs 35.4; up to 32 rows it
    still pays where Kp <= 512 (16-row tiles, --tune-operand, session 29): 32x2688x232 3.64 vs 4.85,
    32x2688x464 5.18 vs 5.53, 32x4096x512 5.26 vs 5.75, 24 rows 3.67 / 5.53 / 5.83 vs 4.90 / 5.63 / 5.81;
    not at 32x1288x2688 (9.24 vs 8.89) nor 32x2576x2688 (12.76 vs 10.83)."""
    return n * kp < 8 << 20 and (m <= 16 or (m <= 32 and kp <= 512))


# torch's flags letting cuBLAS reduce split-K partials in bf16 / fp16, read and set without
# `torch.backends.cuda.matmul`'s attribute layer (host time on every cuBLAS-path call): each a pair
# (allow reduced precision, allow split-K) in the torch versions supported (>= 2.11).
_REDUCTION_FLAGS = {
    torch.bfloat16: (torch._C._get_cublas_allow_bf16_reduced_precision_reduction,
                     torch._C._set_cublas_allow_bf16_reduced_precision_reduction),
    torch.float16: (torch._C._get_cublas_allow_fp16_reduced_precision_reduction,
                    torch._C._set_cublas_allow_fp16_reduced_precision_reduction),
}


class _fp32_reductions:
    """Context: cuBLAS may reduce split-K partials in bf16/fp16 unless told not to: fp32 accumulation
    only. Only the flag of the operands' dtype is touched, and put back as it was (split-K choice
    included); other dtypes have none."""

    __slots__ = ("_get", "_set", "_saved")

    def __init__(self, dtype: torch.dtype):
        self._get, self._set = _REDUCTION_FLAGS.get(dtype, (None, None))

    def __enter__(self):
        self._saved = self._get() if self._get is not None else None
        if self._saved is not None and self._saved[0]:
            self._set(False, self._saved[1])
        else:
            self._saved = None  # nothing to put back

    def __exit__(self, *exc):
        if self._saved is not None:
            self._set(*self._saved)
        return False


def temp_bytes(m: int, n: int, kp: int, dtype: torch.dtype, cublas: bool | None = None, dynamic: bool = False,
               k: int | None = None, bias: bool = False) -> int:
    """Temporary device memory of `triton_linear` besides the output, on the routes CUDA graphs take:
    none for the decode kernel and the Triton GEMM quantizing x itself; the dequantized activation
    (per-stream scratch on the Triton path, reused from call to call; on the cuBLAS path K rounded up
    to 8 columns (k None: Kp), with the weight chunk, each per-stream scratch up to
    CUBLAS_SCRATCH_BYTES and allocated per call beyond, and, for a bias
    cuBLAS cannot add (`bias_in_addmm`) or a dynamic scale with a bias (or without
    `cublas_alpha`), the fp32 output chunk). Split-K partials (per-stream scratch) not counted."""
    if use_gemv(m, n, kp):
        return 0
    cublas = use_cublas(m, n, kp, dynamic) if cublas is None else cublas
    if not cublas:
        return 0 if use_quantize_in_gemm(m, n, kp) else m * kp * 2
    ka = kp if k is None else cublas_k(k, kp)
    # (a dynamic scale without a bias: cuBLAS reads alpha on the device where it can, `cublas_alpha`)
    fp32_out = (dynamic and (bias or not cublas_alpha.usable())) or (bias and not bias_in_addmm(m, n, kp, dtype))
    rows = _chunk_rows(m, n, kp, dtype, fp32_out)
    return m * ka * dtype.itemsize + rows * kp * dtype.itemsize + (m * rows * 4 if fp32_out else 0)


def cublas_k(k: int, kp: int) -> int:
    """Columns cuBLAS reads on the cuBLAS path: K rounded up to 8 (its rows must start 16-byte
    aligned), not the FP4 kernels' padding Kp (2688x464: 464, not 512); zeros beyond K."""
    return min(kp, -(-k // 8) * 8)


def _chunk_rows(m, n: int, kp: int, dtype: torch.dtype, fp32_out: bool = False) -> int:
    """Weight rows dequantized per cuBLAS call for M = m: within CUBLAS_CHUNK_BYTES (CUBLAS_WIDE_CHUNK_BYTES
    below CUBLAS_WIDE_CHUNK_ROWS rows), and a multiple of 128 so that every chunk's output columns start
    16-byte aligned (cuBLAS falls back to slow kernels on unaligned pointers: 2048x8192x28672 ran 6120 us
    with 1170-row chunks vs 1320 us for bf16). fp32_out: the chunk's fp32 output [m, rows] (device alpha)
    stays within CUBLAS_FP32_CHUNK_BYTES. (m may be symbolic while torch.compile traces: then the wide
    chunk is not taken.)"""
    wide = isinstance(m, int) and m < CUBLAS_WIDE_CHUNK_ROWS
    rows = (CUBLAS_WIDE_CHUNK_BYTES if wide else CUBLAS_CHUNK_BYTES) // (kp * dtype.itemsize)
    if fp32_out:
        rows = min(rows, CUBLAS_FP32_CHUNK_BYTES // (4 * m))
    return min(n, max(128, rows // 128 * 128))


def triton_linear(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n: int, dynamic: bool,
                  alpha_host: float | None, cublas: bool | None = None) -> torch.Tensor:
    """x [M, K] (unit column stride) -> alpha * quantize(x) @ dequant(W)^T (+ bias), [M, n] in x's dtype.

    weight uint8 [Np, Kp/2], weight_scale uint8 row-major [Np, Kp/16]; gs, alpha: the static
    encode scale and alpha (ignored when `dynamic`); weight_scale_2: the weight's decode scale;
    alpha_host: alpha as a Python float (static layers: cuBLAS applies it; None: the cuBLAS path
    applies the device alpha in an epilogue, as for a dynamic scale).
    """
    m = x.shape[0]
    kp = weight.shape[1] * 2
    out = x.new_empty((m, n))
    if m == 0:
        return out
    if not use_gemv(m, n, kp):
        return _dequantized_operand_linear(x, None, weight, weight_scale, gs, alpha, weight_scale_2, bias, out, dynamic,
                                           alpha_host, cublas)
    if dynamic:
        if kernels.fuses_dynamic_scale(m, x.shape[1], x.stride(0)):  # one launch, the scale computed inside
            return kernels.linear_gemv(x, None, None, weight, weight_scale, bias, out, weight_scale_2=weight_scale_2)
        gs, alpha = kernels.dynamic_gs_alpha(x, weight_scale_2)  # views of per-stream scratch, made once
    return kernels.linear_gemv(x, gs, alpha, weight, weight_scale, bias, out)


# A dynamic scale past decode, where a pass quantizes x before the GEMM (cuBLAS or Triton): up to
# `kernels.maxima.MAX_MAXIMA` programs, the scale launch leaves per-program maxima that the pass reduces
# (`kernels.dynamic_encode_scale`) instead of reducing them itself through atomics and a ticket
# (`kernels.dynamic_gs_alpha`). False: always the latter (linear_bench.py --ab-maxima compares the two).
DYNAMIC_MAXIMA = True
# GatedMLP's down projection on the cuBLAS path: act(h)'s values and the first weight chunk in one launch
# (`kernels.act_cublas_operands`), as the Linear's x and weight (`kernels.cublas_operands`). False: the
# activation's launch, then the weight chunk's (mlp_bench.py --ab-act-operands compares the two).
ACT_OPERANDS_ONE_LAUNCH = True

# Eager calls (not captured into a CUDA graph, not traced by torch.compile) pay their launches in host
# time, which on per-rank layers is more than their GPU time: such calls take the path with the least of
# the two (`eager_route`), where graphs and compiled code take the least device time.
# One launch (the GEMM quantizing x) up to this M * N * Kp past 16 rows: it runs <= ~20 us of device time
# on the H100 with the mid-M tiles (linear_bench.py --ab-fused, --tune-fused: 768x1536x384 15-18 us,
# 768x384x1536 19.7-19.9, 2048x384x384 10.6-11.8), under the host time of the two-launch Triton path
# (~24 us) and the cuBLAS path (~52 us) there.
HOST_BOUND_MNK = 1 << 29
TILES_FOR_HOST_BOUND = 256  # host-bound calls take the tiles `kernels.gemm_config` picks for M < 512
# Past it, up to this M * N * Kp (static scale; _DYNAMIC for a dynamic one): the pass and then the Triton
# GEMM (two launches, the tiles graphs take for M), not cuBLAS. An eager call takes about the larger of its
# host and device time. H100, linear_bench.py --ab-fused, eager wall per call, static / dynamic, two
# launches vs the cuBLAS route, on a host whose nn.Linear call took ~30 us: 2048x1288x2688 57.9 / 106 vs
# 73.4 / 186 us, 4096x2688x464 54.4 / 98.1 vs 83.8 / 163, 512x4096x4096 58.8 / 90.8 vs 69.6 / 144,
# 512x1288x2688 62.9 / 99.0 vs 98.9 / 174; past 2^33 cuBLAS's device time wins (2048x2576x2688 101 / 110
# vs 68.9 / 100). On a faster host the static cuBLAS route costs less host time, and a static call whose two
# launches need more device time than that loses to it. The two launches take ~7.5 us of device time per
# 10^9 multiply-adds past ~2^31 (4096x2688x464 43.6 us, 2048x1288x2688 53.0, 1024x4096x4096 126), and the
# static cuBLAS route's host time was 44.6 us a call at 2048x1288x2688 on a host whose nn.Linear call took
# 23.1 us (host_overhead.py, session 26), so the static tier ends at 6 * 10^9 (two launches <= ~45 us). Same-run
# eager A/B on that machine (--ab-fused, session 26, nn.Linear ~20-22 us): 4096x2688x464 (5.6 * 10^9) 47.6 vs
# 59.9 us, 2048x1288x2688 (7.1 * 10^9) 56.4 vs 53.3, 1024x1288x2688 55.1 vs 80.7, 2048x2688x464 32.9 vs 48.4.
# The dynamic cuBLAS route adds a scale launch and a ctypes GEMM call (~85-185 us of host time on these
# hosts), so its tier reaches 2^33 (two launches' device time <= ~60 us; that run: 2048x1288x2688 64.5 vs
# 88.5, 4096x2688x464 74.0 vs 121, but past it 4096x1288x2688 125 vs 83.4).
EAGER_TRITON_MNK = 6 * 10**9
EAGER_TRITON_MNK_DYNAMIC = 1 << 33
# Up to 16 rows the same holds by weight size: the GEMM quantizing x (one launch, the decode tiles) takes,
# weights cold, at most about one launch's host time (~17 us, nn.Linear's) where the two-launch path
# routed for graphs costs ~24 us of host time an eager call (H100, linear_bench.py --ab-fused, device time,
# static / dynamic): 4x4096x4096 15.4 / 16.2 us, 16x4096x4096 13.8 / 17.3, 4x8192x3696 22.7 / 24.3,
# 16x8192x3696 19.6 / 32.6; past them the device decides (16x8192x8192 37.7 us fused vs 25.4 two launches).
# Up to 32M weight elements (8192x3696), with a static or a dynamic scale: the dynamic one launch (every program
# also reads all of x) takes more device time, but an eager call takes its host time (session 32, linear_bench.py
# --ab-eager, eager wall per call, weights cold: 2x8192x3696 38.0 us vs 55.4 for the two launches, 16 rows 38.1 vs
# 56.4, device time 22.8-28.4 vs 13.4-14.8; nn.Linear 29-31).
HOST_BOUND_DECODE_ELEMENTS = 32 << 20
# Batched decode, 17-32 rows: the one launch with the tiles graphs take (the 32-row tiles, `kernels.gemm_config`;
# the captured route's bits), and on weights up to this many elements past HOST_BOUND_MNK too. H100, weights hot,
# eager wall per call / device time, static (linear_bench.py --ab-fused --host-bound-tiles --m 32, session 27, a
# host whose nn.Linear call took ~20-35 us): 32x4096x4096 21.0 / 19.6 us vs 32.1 / 12.6 for the two launches (dynamic
# 48.9 vs 55.8); on the mid-M tiles (`TILES_FOR_HOST_BOUND`) instead: 32x2576x2688 24.9 / 13.3 vs 25.3 / 24.1,
# 32x1288x2688 32.3 / 10.1 vs 32.8 / 20.7. Past it a tie (32x8192x3696, 31M elements: 31.0 vs 30.9); at 64 rows
# every weight tile re-quantizing 64 rows of x costs more than it saves (64x4096x4096 44.8 / 43.2 vs 43.3 / 19.5).
HOST_BOUND_BATCH_ROWS = 32
HOST_BOUND_BATCH_ELEMENTS = 16 << 20

ONE_LAUNCH, TRITON = "one launch", "triton"  # `eager_route`'s routes


def eager_route(x, m: int, n: int, kp: int, dynamic: bool = False) -> str | None:
    """The route of a call whose time is the host's, or None where the device-time routing holds
    (`use_cublas`, `use_quantize_in_gemm`): every call captured into a CUDA graph or traced by
    torch.compile (there only device time counts), and eager calls past EAGER_TRITON_MNK (_DYNAMIC).

    - ONE_LAUNCH: up to 16 rows on a weight of at most HOST_BOUND_DECODE_ELEMENTS (N x Kp), up to
      HOST_BOUND_BATCH_ROWS on one of at most HOST_BOUND_BATCH_ELEMENTS, or past 16 rows up to
      HOST_BOUND_MNK multiply-adds: x quantized inside the Triton GEMM; past
      HOST_BOUND_BATCH_ROWS with the mid-M tiles whatever M (`TILES_FOR_HOST_BOUND`), below with the tiles
      graphs use, so the bits are those of the captured two-launch path (act(h), GatedMLP's down
      projection, takes the same tiles as x on every call, so it keeps its unfused Linear's bits).
    - TRITON: past 16 rows up to EAGER_TRITON_MNK (_DYNAMIC for a dynamic scale): the quantize-dequantize
      pass, then the Triton GEMM (the graphs' Triton route), where graphs may take cuBLAS (operands
      launch, the cuBLAS call and its flag cost ~45-100 us of host time on the H100 machines measured,
      against ~20-30 for nn.Linear)."""
    if m <= 16:
        if n * kp > HOST_BOUND_DECODE_ELEMENTS:
            return None
        route = ONE_LAUNCH
    else:
        mnk = m * n * kp
        if mnk <= HOST_BOUND_MNK or (m <= HOST_BOUND_BATCH_ROWS and n * kp <= HOST_BOUND_BATCH_ELEMENTS):
            route = ONE_LAUNCH
        elif mnk <= (EAGER_TRITON_MNK_DYNAMIC if dynamic else EAGER_TRITON_MNK):
            route = TRITON
        else:
            return None
    if _launch_mod.compile_tracing():
        return None
    if x.is_cuda:
        if torch.cuda.is_current_stream_capturing():
            return None
        if m > 16 and (x.get_device(), x.dtype) not in _cublas_ready:
            _warm_cublas(x)
    return route


_cublas_ready: set = set()


def _warm_cublas(x) -> None:
    """The calls the cuBLAS path makes, once per device and dtype, on tiny operands. An eager
    warm-up of a small layer takes an `eager_route`, so it would leave cuBLAS uninitialized,
    and a CUDA graph captured next takes the cuBLAS route: cuBLAS cannot create its handles inside
    a capture (CUBLAS_STATUS_NOT_INITIALIZED)."""
    cublas_alpha.usable()  # (its first call makes torch's cuBLAS handle: never inside a capture)
    a = torch.ones(8, 8, dtype=x.dtype, device=x.device)
    with _fp32_reductions(x.dtype):
        torch.addmm(a[0], a, a.t(), alpha=0.5)
        torch.addmm(a, a, a.t(), beta=0, alpha=0.5, out=torch.empty_like(a))
        if x.dtype in (torch.bfloat16, torch.float16):
            _mm_fp32(a, a.t(), torch.empty(8, 8, device=x.device))
    _cublas_ready.add((x.get_device(), x.dtype))


def _dequantized_operand_linear(x, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, out, dynamic,
                                alpha_host, cublas):
    """The paths past decode, for x itself (act None) or act(x) (`triton_act_linear`): the Triton
    GEMM quantizing x itself (one launch; `use_quantize_in_gemm`, or a small eager call:
    `eager_route`), or the activation's NVFP4 values written once, then cuBLAS (large M, bf16/fp16:
    true values in x's dtype) or the Triton GEMM (fp16 units in the weight decode's order, per-stream
    scratch). A dynamic scale: taken inside the first launch for small x
    (`kernels.fuses_dynamic_scale_in_pass`), else by a launch of its own first."""
    m, n = out.shape
    kp = weight.shape[1] * 2
    tiles_for_m, one_launch = None, False
    if cublas is None:
        route = eager_route(x, m, n, kp, dynamic)
        if route == ONE_LAUNCH:
            cublas, one_launch = False, True
            tiles_for_m = TILES_FOR_HOST_BOUND if m > HOST_BOUND_BATCH_ROWS else None
        else:
            cublas = route is None and use_cublas(m, n, kp, dynamic)
    cublas = cublas and x.dtype in (torch.bfloat16, torch.float16)
    # act(x) too, on host-bound calls only (a dynamic scale's max |act(x)| taken inside as max |x| is, where x is
    # small enough, else by a launch of its own first): every N tile's programs recompute the activation, which
    # cost the GPU more than the pass it saves (H100, mlp_bench.py, GLM-4.5-Air per rank, CUDA graphs: M = 1
    # 20.0 us vs 15.5, M = 16 24.4 vs 20.6)
    in_gemm = not cublas and (one_launch or (act is None and use_quantize_in_gemm(m, n, kp)))
    if dynamic:
        fuses = kernels.fuses_dynamic_scale_in_pass(m, x.shape[1], x.stride(0))
        if in_gemm and fuses:  # one launch, max |x| (|act(x)|) taken by every program
            return kernels.nvfp4_gemm_quantize_x(x, None, weight, weight_scale, None, bias, out, tiles_for_m=tiles_for_m,
                                                 weight_scale_2=weight_scale_2, act=act)
        if not cublas and act is None and not in_gemm and (fuses or kernels.dynamic_pass_barrier(m, kp, x.device)):
            order = kernels.activation_order(m, n, kp, x.device)
            a = scratch_of(x).dequantized_activation(kernels.mma16_rows(m, order), kp)
            alpha = kernels.fake_quantize_dynamic(x, weight_scale_2, a, units=True, a_order=order)
            return kernels.nvfp4_gemm_dequantized_a(a, weight, weight_scale, alpha, bias, out, a_order=order)
        if in_gemm or not DYNAMIC_MAXIMA:
            gs, alpha = kernels.dynamic_gs_alpha(x, weight_scale_2, act=act)  # views of per-stream scratch, made once
        else:  # where it pays, the pass below reduces the scale launch's per-program maxima and writes alpha
            gs, alpha = kernels.dynamic_encode_scale(x, weight_scale_2, act=act)
    if in_gemm:
        return kernels.nvfp4_gemm_quantize_x(x, gs, weight, weight_scale, alpha, bias, out, tiles_for_m=tiles_for_m,
                                             act=act)
    if cublas:
        k = kernels.act_width(act, x.shape[1]) if act is not None else x.shape[1]
        ka = cublas_k(k, kp)
        a = _operands_source(x, m * ka * x.element_size()).cublas_activation(m, ka, x.dtype)
        host_alpha = not dynamic and alpha_host is not None and (bias is None or bias_in_addmm(m, n, kp, x.dtype))
        alpha_arg = alpha_host if host_alpha else alpha
        if act is None or ACT_OPERANDS_ONE_LAUNCH:  # x's (act(x)'s) values and the first weight chunk in one launch
            return cublas_dequantized_gemm(a, weight, weight_scale, bias, alpha_arg, out, x=x, gs=gs, act=act)
        kernels.act_fake_quantize(x, act, gs, a, units=False)
        return cublas_dequantized_gemm(a, weight, weight_scale, bias, alpha_arg, out)
    order = kernels.activation_order(m, n, kp, x.device, tiles_for_m)
    a = _fake_quantize(x, act, gs, scratch_of(x).dequantized_activation(kernels.mma16_rows(m, order), kp), units=True,
                       a_order=order)
    return kernels.nvfp4_gemm_dequantized_a(a, weight, weight_scale, alpha, bias, out, tiles_for_m=tiles_for_m,
                                            a_order=order)


def _fake_quantize(x, act, gs, out, units: bool, a_order: int = 0):
    if act is None:
        return kernels.fake_quantize(x, gs, out, units=units, a_order=a_order)
    return kernels.act_fake_quantize(x, act, gs, out, units=units, a_order=a_order)


def cublas_dequantized_gemm(a, weight, weight_scale, bias, alpha: float | torch.Tensor, out, *, x=None,
                            gs=None, act: str | None = None) -> torch.Tensor:
    """out [M, N] = alpha * a @ dequant(W)^T (+ bias) with cuBLAS and fp32 accumulation: `a`
    [M, Ka] (Kp >= Ka >= K) holds an activation's exact NVFP4 values in out's dtype (bf16/fp16),
    zeros beyond K; the weight is dequantized in chunks of `_chunk_rows` rows (never kept), of which
    cuBLAS reads the first Ka columns. The cuBLAS path of `triton_linear` and `triton_act_linear`.
    With x and gs, `a` is written here first, by the first chunk's launch (`kernels.cublas_operands`; with
    `act`, of act(x): `kernels.act_cublas_operands`).

    alpha a Python float (a static scale): cuBLAS applies it, `addmm(alpha=)` (with a bias only where
    `bias_in_addmm`; elsewhere alpha goes to the device and the route below is taken). alpha an fp32 [1]
    tensor (a dynamic scale, computed on the device; reading it on the host would sync): without a
    bias cuBLAS reads it through a device pointer (`cublas_alpha.mm_device_alpha`; eager calls,
    CUDA graphs and torch.compile); with a bias, or where that call is unavailable, cuBLAS writes
    each chunk's fp32 accumulators and `kernels.alpha_epilogue` scales, adds the bias
    and rounds them once, as cuBLAS's own epilogue does (the same bits).
    """
    n, kp, ka = out.shape[1], weight.shape[1] * 2, a.shape[1]
    if bias is not None and not isinstance(alpha, torch.Tensor) and not bias_in_addmm(a.shape[0], n, kp, a.dtype):
        alpha = torch.full((1,), alpha, dtype=torch.float32, device=a.device)  # the epilogue route (see there)
    on_device = isinstance(alpha, torch.Tensor)
    # alpha on the device without a bias: cuBLAS reads it itself (no fp32 chunk, no epilogue launch)
    device_alpha = on_device and bias is None and cublas_alpha.available(a)
    fp32_out = on_device and not device_alpha
    rows = _chunk_rows(a.shape[0], n, kp, a.dtype, fp32_out)  # (<= n: the first chunk is whole)
    chunk, w_whole, w_whole_t = _operands_source(a, rows * kp * a.element_size()).weight_chunk(rows, kp, ka, a.dtype)
    acc = torch.empty((a.shape[0], rows), dtype=torch.float32, device=a.device) if fp32_out else None
    zero = scratch_of(a).zero if device_alpha else None
    with _fp32_reductions(a.dtype):
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            whole = r1 - r0 == rows
            if x is not None and r0 == 0:  # the activation's values and this chunk in one launch
                if act is None:
                    kernels.cublas_operands(x, gs, a, weight, weight_scale, chunk)
                else:
                    kernels.act_cublas_operands(x, act, gs, a, weight, weight_scale, chunk)
            else:
                kernels.dequantize_rows(weight, weight_scale, r0, chunk if whole else chunk[: r1 - r0])
            w = w_whole if whole else chunk[: r1 - r0, :ka]
            o = out[:, r0:r1] if r1 - r0 < n else out  # a view: cuBLAS writes it in place (leading dimension n)
            if device_alpha:
                cublas_alpha.mm(a, w, alpha, zero, o, _launch_mod.compile_tracing())
                continue
            w_t = w_whole_t if whole else w.t()
            if on_device:
                _mm_fp32(a, w_t, acc[:, : r1 - r0])
                kernels.alpha_epilogue(acc[:, : r1 - r0], alpha, None if bias is None else bias[r0:r1], o)
            elif bias is None:
                torch.addmm(o, a, w_t, beta=0, alpha=alpha, out=o)  # beta=0: o is not read
            else:  # one chunk, aligned rows (`bias_in_addmm`)
                torch.addmm(bias.to(a.dtype), a, w_t, alpha=alpha, out=o)
    return out


def _operands_source(t: torch.Tensor, nbytes: int):
    """Where a cuBLAS-path operand of nbytes on t's device comes from: per-stream scratch up to
    CUBLAS_SCRATCH_BYTES, tensors made for the call beyond (and while torch.compile traces: M may be
    symbolic there, and the traced graph allocates)."""
    if not _launch_mod.compile_tracing() and nbytes <= CUBLAS_SCRATCH_BYTES:  # (nbytes may be symbolic there)
        return scratch_of(t)
    return per_call(t.device)


def bias_in_addmm(m, n: int, kp: int, dtype: torch.dtype) -> bool:
    """Whether the cuBLAS path with a static scale may add the bias in cuBLAS's own epilogue
    (`torch.addmm` with a 1-D bias): only where the output is one chunk with 16-byte aligned rows.
    Elsewhere torch 2.11's addmm gave wrong elements on the H100 (found by the hypothesis test):
    rows not 16-byte aligned (17x15x361, 81x85x369), and column slices of the output (several
    chunks: 15x272x73, 44x136x394), the latter also with the bias first copied into the slice
    (beta = 1). There the path takes the dynamic scale's route instead: fp32 accumulators, then
    `kernels.alpha_epilogue` (alpha, bias, one rounding)."""
    return n % 8 == 0 and _chunk_rows(m, n, kp, dtype) >= n


def _mm_fp32(a, b, out):
    """out (fp32) = a @ b for bf16/fp16 a, b with fp32 accumulation (cuBLAS; the CPU has no mixed-dtype
    mm, so there both are widened: the products are exact either way)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32, out=out)
    return torch.mm(a.float(), b.float(), out=out)


def triton_act_linear(h, act: str, weight, weight_scale, gs, alpha, weight_scale_2, bias, n: int, dynamic: bool,
                      alpha_host: float | None, cublas: bool | None = None) -> torch.Tensor:
    """h [M, 2I] ([gate, up], unit column stride) -> alpha * quantize(act(h)) @ dequant(W)^T (+ bias),
    [M, n] in h's dtype: `triton_linear` of `activation(h, act)` (same scale rules, same paths
    and GEMMs), with the activation fused into the pass that quantizes it, so act(h) is never
    written. What `fp4linear.GatedMLP` runs for its down projection.

    - dynamic: the scale pass reads h and computes max |act(h)| (`kernels.dynamic_gs_alpha(...,
      act=)`: the bits `triton_linear` derives from activation(h)); the one launch below takes it
      itself where h is small enough (`kernels.fuses_dynamic_scale_in_pass`);
    - cuBLAS (large M, bf16/fp16): act(h)'s exact NVFP4 values in h's dtype and the first weight chunk in one
      launch (`kernels.act_cublas_operands`), then `cublas_dequantized_gemm`;
    - an eager call whose time is the host's (`eager_route` ONE_LAUNCH): the Triton GEMM taking act(h) itself, one
      launch (`kernels.nvfp4_gemm_quantize_x(act=)`; a dynamic scale's pass first where h is larger);
    - otherwise, decode sizes included: those values as fp16 units in the weight decode's order
      (per-stream scratch), then `kernels.nvfp4_gemm_dequantized_a`. (`triton_linear`'s decode
      kernel, `linear_gemv`, quantizes a plain x itself; it takes no activation.)
    Same quantized operand as `triton_linear(activation(h))` on every path, so the same bits
    wherever that takes the same GEMM (wherever `use_gemv` is false).
    """
    m = h.shape[0]
    out = h.new_empty((m, n))
    if m == 0:
        return out
    return _dequantized_operand_linear(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, out, dynamic,
                                       alpha_host, cublas)


# ---- torch.library ops (what torch.compile traces) -------------------------------------------


@torch.library.triton_op("fp4linear::linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, gs: torch.Tensor,
               alpha: torch.Tensor, weight_scale_2: torch.Tensor, bias: torch.Tensor | None, n: int, dynamic: bool,
               alpha_host: float | None) -> torch.Tensor:
    with _launch_mod.wrapped_for_compile():
        return triton_linear(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


@torch.library.custom_op("fp4linear::linear_cpu", mutates_args=())
def _linear_cpu_op(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, gs: torch.Tensor,
                   alpha: torch.Tensor, weight_scale_2: torch.Tensor, bias: torch.Tensor | None, n: int, dynamic: bool,
                   alpha_host: float | None) -> torch.Tensor:
    return triton_linear(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


@_linear_cpu_op.register_fake
def _(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host):
    return x.new_empty((x.shape[0], n))


def linear(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n: int, dynamic: bool, alpha_host):
    """`triton_linear`, through the registered op when torch.compile is tracing."""
    if torch.compiler.is_compiling():
        op = torch.ops.fp4linear.linear if x.is_cuda else torch.ops.fp4linear.linear_cpu
        return op(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)
    return triton_linear(x, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


def _scale_shape(m: int, kp: int, row_tile: int) -> tuple[int, int]:
    return _LAYOUT_BY_ROW_TILE[row_tile].padded_shape(m, kp)


_LAYOUT_BY_ROW_TILE = {layout.row_tile: layout for layout in SCALE_LAYOUTS.values()}


def _quantize_impl(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int):
    m, k = x.shape
    kp = pad_k(k, k_align)
    data = torch.empty((m, kp // 2), dtype=torch.uint8, device=x.device)
    scale = torch.empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn, device=x.device)
    kernels.pad_quantize(x, global_scale, data, scale, sf_row_tile=sf_row_tile)
    return data, scale


@torch.library.custom_op("fp4linear::quantize", mutates_args=())
def _quantize_op(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_impl(x, global_scale, k_align, sf_row_tile)


@_quantize_op.register_fake
def _(x, global_scale, k_align, sf_row_tile):
    m, k = x.shape
    kp = pad_k(k, k_align)
    return (x.new_empty((m, kp // 2), dtype=torch.uint8),
            x.new_empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn))


def quantize(x: torch.Tensor, global_scale: torch.Tensor, k_align: int, sf_row_tile: int = 128):
    """x [M, K] (unit column stride) -> (data uint8 [M, Kp/2], swizzled scale e4m3)."""
    if torch.compiler.is_compiling():
        return torch.ops.fp4linear.quantize(x, global_scale, k_align, sf_row_tile)
    return _quantize_impl(x, global_scale, k_align, sf_row_tile)


def _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
    out = torch.empty((a_data.shape[0], n), dtype=out_dtype, device=a_data.device)
    return kernels.nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, out)


@torch.library.custom_op("fp4linear::nvfp4_gemm", mutates_args=())
def _gemm_op(a_data: torch.Tensor, a_scale: torch.Tensor, w_data: torch.Tensor, w_scale: torch.Tensor,
             alpha: torch.Tensor, bias: torch.Tensor | None, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    return _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)


@_gemm_op.register_fake
def _(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
    return a_data.new_empty((a_data.shape[0], n), dtype=out_dtype)


def nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, n: int, out_dtype: torch.dtype) -> torch.Tensor:
    """alpha * dequant(A) @ dequant(W)^T (+ bias) -> [M, n] of out_dtype (packed A: the kernel-level GEMM)."""
    if torch.compiler.is_compiling():
        return torch.ops.fp4linear.nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)
    return _gemm_impl(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)


@torch.library.triton_op("fp4linear::act_linear", mutates_args=())
def _act_linear_op(h: torch.Tensor, act: str, weight: torch.Tensor, weight_scale: torch.Tensor, gs: torch.Tensor,
                   alpha: torch.Tensor, weight_scale_2: torch.Tensor, bias: torch.Tensor | None, n: int, dynamic: bool,
                   alpha_host: float | None) -> torch.Tensor:
    with _launch_mod.wrapped_for_compile():
        return triton_act_linear(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


@torch.library.custom_op("fp4linear::act_linear_cpu", mutates_args=())
def _act_linear_cpu_op(h: torch.Tensor, act: str, weight: torch.Tensor, weight_scale: torch.Tensor, gs: torch.Tensor,
                       alpha: torch.Tensor, weight_scale_2: torch.Tensor, bias: torch.Tensor | None, n: int,
                       dynamic: bool, alpha_host: float | None) -> torch.Tensor:
    return triton_act_linear(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


@_act_linear_cpu_op.register_fake
def _(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host):
    return h.new_empty((h.shape[0], n))


def act_linear(h, act: str, weight, weight_scale, gs, alpha, weight_scale_2, bias, n: int, dynamic: bool,
               alpha_host):
    """`triton_act_linear`, through the registered op when torch.compile is tracing."""
    if torch.compiler.is_compiling():
        op = torch.ops.fp4linear.act_linear if h.is_cuda else torch.ops.fp4linear.act_linear_cpu
        return op(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)
    return triton_act_linear(h, act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, dynamic, alpha_host)


def _act_quantize_impl(h: torch.Tensor, act: str, global_scale: torch.Tensor, kp: int, sf_row_tile: int):
    m = h.shape[0]
    data = torch.empty((m, kp // 2), dtype=torch.uint8, device=h.device)
    scale = torch.empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn, device=h.device)
    kernels.act_pad_quantize(h, act, global_scale, data, scale, sf_row_tile=sf_row_tile, dynamic=False)
    return data, scale


@torch.library.custom_op("fp4linear::act_quantize", mutates_args=())
def _act_quantize_op(h: torch.Tensor, act: str, global_scale: torch.Tensor, kp: int,
                     sf_row_tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    return _act_quantize_impl(h, act, global_scale, kp, sf_row_tile)


@_act_quantize_op.register_fake
def _(h, act, global_scale, kp, sf_row_tile):
    m = h.shape[0]
    return (h.new_empty((m, kp // 2), dtype=torch.uint8),
            h.new_empty(_scale_shape(m, kp, sf_row_tile), dtype=torch.float8_e4m3fn))


def act_quantize(h: torch.Tensor, act: str, global_scale: torch.Tensor, kp: int, sf_row_tile: int = 128):
    """h [M, 2I] -> packed NVFP4 of act(h) padded to kp (data uint8 [M, kp/2], swizzled scale e4m3),
    under the encode scale global_scale (read on the device): the packed GEMMs' operand."""
    if torch.compiler.is_compiling():
        return torch.ops.fp4linear.act_quantize(h, act, global_scale, kp, sf_row_tile)
    return _act_quantize_impl(h, act, global_scale, kp, sf_row_tile)
