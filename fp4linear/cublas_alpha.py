"""cuBLAS GEMM with alpha read from device memory: `mm_device_alpha`.

Why: with a dynamic activation scale, alpha = 1 / (gs * gs_w) exists only on the device (reading it
on the host would sync), and torch's matmuls take alpha as a host number. The cuBLAS path therefore
wrote fp32 accumulators and scaled, rounded them in a second launch (`kernels.alpha_epilogue`):
4 bytes per output element written, read back, then the output written, on top of the GEMM (at
8192 x 8192 x 8192, ~12% of the layer). cuBLAS itself can read alpha (and beta) through device
pointers (`CUBLAS_POINTER_MODE_DEVICE`), which also works inside CUDA graphs: every replay reads the
alpha of that replay.

The numerics are the epilogue's: cuBLAS computes alpha * acc in fp32 from the fp32 accumulator
(beta = 0: the output is not read) and rounds once to the output dtype; compute type fp32 with
reduced-precision split-K reductions disallowed, so the accumulation is fp32 throughout. A cuda test
checks the bits against the fp32-accumulator route.

torch exposes its cuBLAS handle (`torch.cuda.current_blas_handle()`: bound to the current stream,
its workspace set) but not this call, so it goes through ctypes into the libcublas torch has loaded.
Where that library or its symbols cannot be found (ROCm, a CPU build), `available` is False and
callers keep the fp32-accumulator route. torch.compile cannot trace a ctypes call: while it traces,
`mm` records the custom op `fp4linear::mm_device_alpha` (which mutates `out`) instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

import torch

log = logging.getLogger(__name__)

ENABLED = True  # False: callers take the fp32-accumulator route (benchmarks and tests compare the two)

# cuBLAS enums (cublas_api.h, library_types.h)
_OP_N, _OP_T = 0, 1
_POINTER_MODE_HOST, _POINTER_MODE_DEVICE = 0, 1
_DEFAULT_MATH, _DISALLOW_REDUCED_PRECISION_REDUCTION = 0, 16
_COMPUTE_32F = 68
_GEMM_DEFAULT = -1
_CUDA_TYPES = {torch.float16: 2, torch.bfloat16: 14}  # CUDA_R_16F, CUDA_R_16BF


def _loaded_cublas_paths() -> list[str]:
    """Paths of the libcublas this process mapped (torch's, once CUDA is initialized)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "/libcublas.so" in line}
    except OSError:
        return []
    return sorted(paths)


@functools.lru_cache(maxsize=1)
def _library():
    """The cuBLAS entry points used here, or None (logged once)."""
    if torch.version.cuda is None or not torch.cuda.is_available():
        return None
    torch.cuda.current_blas_handle()  # creates the handle: torch's libcublas is mapped from here on
    candidates = _loaded_cublas_paths() or [p for p in [ctypes.util.find_library("cublas")] if p]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fns = (lib.cublasGemmEx, lib.cublasSetPointerMode_v2, lib.cublasGetPointerMode_v2, lib.cublasSetMathMode,
                   lib.cublasGetMathMode)
        except (OSError, AttributeError) as err:
            log.debug("cuBLAS device-alpha GEMM: %s unusable (%s)", path, err)
            continue
        gemm, set_ptr, get_ptr, set_math, get_math = fns
        vp, i = ctypes.c_void_p, ctypes.c_int
        gemm.argtypes = [vp, i, i, i, i, i, vp, vp, i, i, vp, i, i, vp, vp, i, i, i, i]
        for fn in fns:
            fn.restype = i
        set_ptr.argtypes = [vp, i]
        get_ptr.argtypes = [vp, ctypes.POINTER(i)]
        set_math.argtypes = [vp, i]
        get_math.argtypes = [vp, ctypes.POINTER(i)]
        return fns
    log.info("cuBLAS device-alpha GEMM unavailable (no usable libcublas among %s): the dynamic-scale "
             "cuBLAS path writes fp32 accumulators and scales them in a second launch", candidates)
    return None


def available(t: torch.Tensor) -> bool:
    """Whether `mm_device_alpha` can run for operands on t's device."""
    return ENABLED and t.is_cuda and _library() is not None


def usable() -> bool:
    """The routing's view of `available` (`fp4linear.ops.use_cublas`, `temp_bytes`: no tensor at hand):
    ENABLED and, on a machine with a CUDA GPU, the cuBLAS entry points found; without a GPU, ENABLED
    (the routing is the GPU's, which CPU tests follow)."""
    return ENABLED and _entry_points_or_no_gpu()


@functools.lru_cache(maxsize=1)
def _entry_points_or_no_gpu() -> bool:
    return not torch.cuda.is_available() or _library() is not None


def mm_device_alpha(a: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, zero: torch.Tensor,
                    out: torch.Tensor) -> torch.Tensor:
    """out [M, Nc] = alpha * (a [M, Ka] @ w [Nc, Ka]^T), fp32 accumulation, one rounding to out's dtype.

    a, w, out: bf16 or fp16 (all one dtype) on the current device, unit column stride, rows 16-byte
    aligned as cuBLAS wants them (any row stride; out may be a column slice of a wider tensor);
    alpha: fp32 [1] on the device, read when the GEMM runs; zero: an fp32 [1] zero on the device
    (beta, never changed)."""
    dtype = a.dtype
    if dtype not in _CUDA_TYPES or w.dtype != dtype or out.dtype != dtype:
        raise ValueError(f"mm_device_alpha: a, w, out must share one dtype of bf16/fp16, got {a.dtype}, {w.dtype}, "
                         f"{out.dtype}")
    if alpha.dtype != torch.float32 or zero.dtype != torch.float32 or not (alpha.is_cuda and zero.is_cuda):
        raise ValueError("mm_device_alpha: alpha and zero must be fp32 tensors on the GPU")
    m, ka = a.shape
    nc = w.shape[0]
    if w.shape[1] != ka or tuple(out.shape) != (m, nc):
        raise ValueError(f"mm_device_alpha: shapes a {tuple(a.shape)}, w {tuple(w.shape)}, out {tuple(out.shape)} "
                         "do not match out = a @ w^T")
    for name, t in (("a", a), ("w", w), ("out", out)):
        if t.stride(1) != 1 and t.shape[1] > 1:
            raise ValueError(f"mm_device_alpha: {name} needs unit column stride, got strides {t.stride()}")
    lib = _library()
    if lib is None:
        raise RuntimeError("mm_device_alpha: no usable libcublas in this process (see `available`)")
    if a.get_device() != torch.cuda.current_device():  # the handle and stream are the current device's
        raise ValueError(f"mm_device_alpha: a is on {a.device}, not the current device (callers run on their "
                         "tensors' device: `ops.on_device_of`)")
    gemm, set_ptr, get_ptr, set_math, get_math = lib
    handle = torch.cuda.current_blas_handle()  # on the current stream, torch's workspace set
    ptr_mode, math_mode = ctypes.c_int(), ctypes.c_int()
    _check(get_ptr(handle, ctypes.byref(ptr_mode)), "cublasGetPointerMode")
    _check(get_math(handle, ctypes.byref(math_mode)), "cublasGetMathMode")
    _check(set_ptr(handle, _POINTER_MODE_DEVICE), "cublasSetPointerMode")
    try:
        _check(set_math(handle, _DEFAULT_MATH | _DISALLOW_REDUCED_PRECISION_REDUCTION), "cublasSetMathMode")
        ctype = _CUDA_TYPES[dtype]
        # Column-major view: out^T [Nc, M] = w (stored [Nc, Ka] row-major = Ka x Nc, transposed) @ a^T.
        _check(gemm(handle, _OP_T, _OP_N, nc, m, ka, alpha.data_ptr(), w.data_ptr(), ctype, max(w.stride(0), ka),
                    a.data_ptr(), ctype, max(a.stride(0), ka), zero.data_ptr(), out.data_ptr(), ctype,
                    max(out.stride(0), nc), _COMPUTE_32F, _GEMM_DEFAULT), "cublasGemmEx")
    finally:
        set_ptr(handle, ptr_mode.value)
        set_math(handle, math_mode.value)
    return out


@torch.library.custom_op("fp4linear::mm_device_alpha", mutates_args=("out",))
def _mm_device_alpha_op(a: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, zero: torch.Tensor,
                        out: torch.Tensor) -> None:
    mm_device_alpha(a, w, alpha, zero, out)


@_mm_device_alpha_op.register_fake
def _(a, w, alpha, zero, out) -> None:
    return None


def mm(a: torch.Tensor, w: torch.Tensor, alpha: torch.Tensor, zero: torch.Tensor, out: torch.Tensor,
       traced: bool) -> torch.Tensor:
    """`mm_device_alpha`, called directly (eager calls and CUDA-graph captures: no dispatcher round
    trip) or, while torch.compile traces (`traced`), as the custom op it can record."""
    if traced:
        torch.ops.fp4linear.mm_device_alpha(a, w, alpha, zero, out)
    else:
        mm_device_alpha(a, w, alpha, zero, out)
    return out


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"{what} failed: cuBLAS status {status}")
