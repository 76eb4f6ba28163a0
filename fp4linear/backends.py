"""GEMM backends, each declared once with its alignment, where it runs and its weight layout
(docs/nvfp4.md, "Backends and alignment").

A backend knows: the N and K multiples its kernel accepts, the GPUs it runs on, how to prepare a
padded weight once at load (`prepare_weight`), and how to run the GEMM on an activation that
`fp4linear.quantize` padded to its K (`gemm`). `plan(...)` reads the same declarations to explain
the padding chosen for a layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import ops
from .format import BLOCK_SIZE, SWIZZLE_128x4, ScaleLayout, pad_k, round_up

BACKEND_NAMES = ("triton", "flashinfer_cutlass", "flashinfer_cudnn", "flashinfer_trtllm")


@functools.lru_cache(maxsize=None)
def flashinfer_import_error() -> str | None:
    try:
        import flashinfer  # noqa: F401
        from flashinfer import mm_fp4  # noqa: F401
    except Exception as e:  # ImportError or a broken install
        return f"{type(e).__name__}: {e}"
    return None


@functools.lru_cache(maxsize=None)
def _sm(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def trtllm_row_order(n: int, device=None) -> torch.Tensor:
    """Row gather index of TRT-LLM-gen's shuffleMatrixA for epilogue_tile_m=128 (n % 32 == 0):
    new row a*8 + b <- old row b*4 + a within each block of 32 rows."""
    return torch.arange(n, device=device).view(-1, 8, 4).transpose(1, 2).reshape(-1)


@dataclass(frozen=True)
class WeightLayout:
    """How a backend stores a weight padded to [Np, Kp]: packed codes uint8 [Np, Kp/2] with rows in
    order or shuffled, and block scales row-major ([Np, Kp/16] bytes) or in a swizzled ScaleLayout."""

    name: str
    scale_layout: ScaleLayout | None = None  # None: row-major scales
    trtllm_rows: bool = False  # rows (and their scales) in TRT-LLM-gen's shuffled order

    def swizzle(self, data: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row-major (uint8 [Np, Kp/2], scale bytes uint8 [Np, Kp/16]) -> this layout."""
        if self.trtllm_rows:
            rows = trtllm_row_order(data.shape[0], data.device)
            data, scale = data[rows], scale[rows]
        if self.scale_layout is not None:
            scale = self.scale_layout.swizzle(scale).view(torch.float8_e4m3fn)
        return data.contiguous(), scale.contiguous()

    def unswizzle(self, data: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of `swizzle`: -> row-major (codes [Np, Kp/2], scale bytes uint8 [Np, Kp/16])."""
        scale = scale.view(torch.uint8)
        if self.scale_layout is not None:
            scale = self.scale_layout.unswizzle(scale, data.shape[0], data.shape[1] * 2 // BLOCK_SIZE)
        if self.trtllm_rows:
            inverse = torch.argsort(trtllm_row_order(data.shape[0], data.device))
            data, scale = data[inverse], scale[inverse]
        return data.contiguous(), scale.contiguous()


ROW_MAJOR = WeightLayout("packed E2M1 [N, Kp/2] + row-major E4M3 scales [N, Kp/16]")
SCALES_128x4 = WeightLayout("packed E2M1 [N, Kp/2] + 128x4-swizzled scales", SWIZZLE_128x4)
TRTLLM_SHUFFLE = WeightLayout("rows shuffled as shuffle_matrix_a (epilogue_tile_m=128) + 128x4 scales "
                              "as shuffle_matrix_sf_a", SWIZZLE_128x4, trtllm_rows=True)


@dataclass(frozen=True)
class Backend:
    name: str
    n_align: int  # weight rows (N) padded to a multiple of this at load
    k_align: int  # K padded to a multiple of this (weights at load, activations by the quant kernel)
    runs_on: str  # for people
    sm: tuple[int, ...] | None  # compute capabilities (major*10+minor); None: any GPU Triton supports, and CPU
    weight_layout: WeightLayout
    rule: str  # why these multiples

    # -- availability ------------------------------------------------------------------------
    def unavailable_reason(self, device: torch.device) -> str | None:
        """None when this backend can run a GEMM on `device`, else why not."""
        if self.sm is None:
            return None
        sm = _sm(device)
        if sm is None:
            return f"backend {self.name!r} runs on {self.runs_on} GPUs, not on {device}"
        if sm not in self.sm:
            name = torch.cuda.get_device_name(device)
            return f"backend {self.name!r} is not available on {name} (SM{sm}): it runs on {self.runs_on}"
        err = flashinfer_import_error()
        if err:
            return f"backend {self.name!r} needs flashinfer-python (pip install 'fp4linear[flashinfer]'): {err}"
        return None

    def check_available(self, device: torch.device) -> None:
        reason = self.unavailable_reason(device)
        if reason:
            raise RuntimeError(reason)

    # -- weights -----------------------------------------------------------------------------
    def prepare_weight(self, data: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded weight (uint8 [Np, Kp/2], row-major scale bytes uint8 [Np, Kp/16]) -> this backend's layout."""
        return self.weight_layout.swizzle(data, scale)

    # -- forward -----------------------------------------------------------------------------
    def gemm(self, a_data, a_scale, w_data, w_scale, alpha, bias, n: int, out_dtype) -> torch.Tensor:
        raise NotImplementedError


class TritonBackend(Backend):
    def gemm(self, a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
        return ops.nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype)


class FlashInferBackend(Backend):
    mm_fp4_backend: str = ""

    def mm_fp4_args(self, a_data, a_scale, w_data, w_scale, alpha, out_dtype) -> dict:
        """The arguments `gemm` passes to flashinfer.mm_fp4 (tests run FlashInfer's own checks on them)."""
        return dict(a=a_data, b=w_data.T, a_descale=a_scale, b_descale=w_scale.T, alpha=alpha,
                    out_dtype=out_dtype, block_size=BLOCK_SIZE, use_8x4_sf_layout=False,
                    backend=self.mm_fp4_backend)

    def gemm(self, a_data, a_scale, w_data, w_scale, alpha, bias, n, out_dtype):
        from flashinfer import mm_fp4

        out = mm_fp4(**self.mm_fp4_args(a_data, a_scale, w_data, w_scale, alpha, out_dtype))
        # Padded weight rows give output columns that are never shown: a view, not a copy.
        out = out[:, :n]
        return out + bias if bias is not None else out


class CutlassBackend(FlashInferBackend):
    mm_fp4_backend = "cutlass"


class CudnnBackend(FlashInferBackend):
    mm_fp4_backend = "cudnn"


class TrtllmBackend(FlashInferBackend):
    mm_fp4_backend = "trtllm"


_BLACKWELL = (100, 103, 110, 120, 121)
BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        TritonBackend(
            "triton", 1, 64, "Hopper (measured) and other CUDA GPUs Triton supports; CPU through the interpreter", None,
            ROW_MAJOR,  # the Triton GEMM reads a weight row's scales as one contiguous run
            "the Triton GEMM masks N; it reads activation scales one 4-byte word (64 K columns) at a time, so K % 64",
        ),
        CutlassBackend(
            "flashinfer_cutlass", 32, 32, "SM100/103/110/120/121", _BLACKWELL, SCALES_128x4,
            "FlashInfer CUTLASS FP4 GEMM needs N % 32 and K % 32 (SGLang PR #17300, mm_fp4)",
        ),
        CudnnBackend(
            "flashinfer_cudnn", 32, 32, "SM100/103/110/120/121", _BLACKWELL, SCALES_128x4,
            "FlashInfer cuDNN FP4 GEMM needs N % 32 and K % 32 (SGLang PR #17300, mm_fp4)",
        ),
        TrtllmBackend(
            "flashinfer_trtllm", 128, 64, "SM100/103", (100, 103), TRTLLM_SHUFFLE,
            "TRT-LLM-gen FP4 GEMM needs N % 128 and K % 64 (K/16 % 4) (SGLang PR #17300, mm_fp4)",
        ),
    )
}


def resolve(backend: str | Backend, device: torch.device | str | None = None) -> Backend:
    """A Backend by name; "auto" is FlashInfer CUTLASS on SM100+ when flashinfer imports, else Triton."""
    if isinstance(backend, Backend):
        return backend
    if backend == "auto":
        device = torch.device(device) if device is not None else (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu"))
        cutlass = BACKENDS["flashinfer_cutlass"]
        return cutlass if cutlass.unavailable_reason(device) is None else BACKENDS["triton"]
    try:
        return BACKENDS[backend]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be 'auto' or one of {list(BACKENDS)}, got {backend!r}") from None


@dataclass(frozen=True)
class Plan:
    """The padding chosen for one linear layer on one backend, and why."""

    backend: str
    out_features: int
    in_features: int
    n_padded: int
    k_padded: int
    weight_pad_bytes: int  # packed data + scale bytes that padding adds to the weight
    activation_pad_bytes_per_row: int  # packed data + scale bytes that padding adds per activation row
    reason: str

    def __str__(self) -> str:
        return (f"{self.backend}: N {self.out_features} -> {self.n_padded}, K {self.in_features} -> {self.k_padded}; "
                f"+{self.weight_pad_bytes} weight bytes, +{self.activation_pad_bytes_per_row} bytes per activation "
                f"row ({self.reason})")


def plan(out_features: int, in_features: int, *, backend: str | Backend = "auto", device=None) -> Plan:
    """Padded N and K for a layer of `out_features` x `in_features` on `backend`, with the cost."""
    for name, v in (("out_features", out_features), ("in_features", in_features)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    b = resolve(backend, device)
    n, k = out_features, in_features
    np_, kp = round_up(n, b.n_align), pad_k(k, b.k_align)
    k16 = pad_k(k, BLOCK_SIZE)  # the unpadded NVFP4 width (block granularity)

    def row_bytes(width):  # packed codes + scale bytes of one row (activation scales: 128x4 columns)
        return width // 2, SWIZZLE_128x4.padded_shape(1, width)[1]

    weight_pad = np_ * (kp // 2 + kp // BLOCK_SIZE) - n * (k16 // 2 + k16 // BLOCK_SIZE)
    act_pad = sum(row_bytes(kp)) - sum(row_bytes(k16))
    steps = []
    if np_ != n:
        steps.append(f"N % {b.n_align} != 0")
    if kp != k:
        steps.append(f"K % {b.k_align} != 0")
    why = (", ".join(steps) + "; " if steps else "aligned; ") + b.rule
    return Plan(b.name, n, k, np_, kp, weight_pad, act_pad, why)


__all__ = ["BACKENDS", "Backend", "Plan", "WeightLayout", "plan", "resolve", "trtllm_row_order"]
