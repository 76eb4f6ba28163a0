"""Scratch memory the kernels share: fp32 split-K partials, int32 tickets and the dynamic-scale
words, the dequantized activation, and the cuBLAS path's operands (for small layers), one set per
device and stream.

Kernels on one stream run one after another and each leaves its tickets at zero, so every layer
on that stream can use the same buffers without allocating on the forward path.

A CUDA graph gets its own set per capture and stream, allocated from the graph's pool while it is
captured, so a graph never shares scratch memory with eager calls or with other graphs. The
tickets and scale words are zeroed inside the graph where the capture first needs them: once per
replay, not once per layer (each zeroing is a kernel node of ~1 us plus its gap; per layer they
were up to a third of a decode layer's device time). Which capture is under way comes from the
CUDA driver (`cuStreamGetCaptureInfo`, loaded through ctypes: torch tells only whether a stream
captures); where the driver function cannot be loaded every captured call gets fresh buffers.

Telling eager calls and captures apart costs a capture query (0.6 us of host time a call), so it
is asked only where a capture can be under way: not on the legacy default stream (raw handle 0),
which CUDA cannot capture and `torch.cuda.graph` refuses to capture on (it captures on a side
stream). Eager calls on any other stream still ask, so a side stream used both eagerly and for
capture keeps the two apart.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from . import launch as _launch

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)  # torch.cuda.is_current_stream_capturing

_MAX_VIEWS = 256  # cached buffer views per Scratch (shapes seen), cleared beyond
BARRIER_WORDS = 257  # a word per program of a barrier's grid (within the SMs: up to 256) and one more


class Scratch:
    def __init__(self, device: torch.device):
        self._lazy(device)
        self.partials = torch.empty(0, dtype=torch.float32, device=device)
        self.tickets = torch.empty(0, dtype=torch.int32, device=device)
        self.scales = torch.empty(2, dtype=torch.float32, device=device)  # gs, alpha
        self.gs, self.alpha = self.scales[0:1], self.scales[1:2]  # views made once, not per call
        self._buffers: dict = {}  # (name, dtype) -> flat buffer, grown on demand
        self._views: dict = {}  # (name, dtype, shape) -> views of that buffer made for the shape

    def _lazy(self, device: torch.device) -> None:
        """The device, and the buffers made at first use (`_Fresh` makes only these)."""
        self.device = device
        self._scale_words = None
        self._barrier_words = None
        self._zero = None
        self._maxima = None

    @property
    def scale_words(self) -> torch.Tensor:
        """int32 [2] (the scale launch's running max and ticket), zero between calls; zeroed at first
        use (a kernel: under capture a graph node, so only where a dynamic-scale launch needs them)."""
        if self._scale_words is None:
            self._scale_words = torch.zeros(2, dtype=torch.int32, device=self.device)
        return self._scale_words

    @property
    def barrier_words(self) -> torch.Tensor:
        """int32 [BARRIER_WORDS] for a grid-wide barrier among at most BARRIER_WORDS - 1 resident programs
        (a word each, then the departures), zero between calls (as `scale_words`)."""
        if self._barrier_words is None:
            self._barrier_words = torch.zeros(BARRIER_WORDS, dtype=torch.int32, device=self.device)
        return self._barrier_words

    def maxima(self, count: int) -> torch.Tensor:
        """int32 [>= count] for a scale launch's per-program maxima (every program writes its own word
        and the readers take only the first count: never zeroed)."""
        if self._maxima is None or self._maxima.numel() < count:
            self._maxima = torch.empty(count, dtype=torch.int32, device=self.device)
        return self._maxima

    @property
    def zero(self) -> torch.Tensor:
        """fp32 [1] zero, never written (cuBLAS's beta read through a device pointer); made at first use."""
        if self._zero is None:
            self._zero = torch.zeros(1, dtype=torch.float32, device=self.device)
        return self._zero

    def get(self, part_numel: int, n_tickets: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.partials.numel() < part_numel:
            self.partials = torch.empty(part_numel, dtype=torch.float32, device=self.device)
        if self.tickets.numel() < n_tickets:
            self.tickets = torch.zeros(n_tickets, dtype=torch.int32, device=self.device)
        return self.partials, self.tickets

    def _shaped(self, name: str, dtype: torch.dtype, shape: tuple, numel: int, make):
        """make(buffer[:numel]) for the per-stream buffer `name` of dtype, grown to numel elements where
        smaller, made once per shape and kept (a view costs as much host time as an allocation)."""
        key = (name, dtype, shape)
        views = self._views.get(key)
        if views is None:
            buf = self._buffers.get((name, dtype))
            if buf is None or buf.numel() < numel:
                buf = self._buffers[(name, dtype)] = torch.empty(numel, dtype=dtype, device=self.device)
                self._views.clear()  # (some are views of the old buffer)
            if len(self._views) >= _MAX_VIEWS:
                self._views.clear()
            views = self._views[key] = make(buf[:numel])
        return views

    def dequantized_activation(self, m: int, kp: int) -> torch.Tensor:
        """fp16 [m, kp] for the dequantized activation (decode and mid-size M: no allocation)."""
        return self._shaped("activation", torch.float16, (m, kp), m * kp, lambda flat: flat.view(m, kp))

    def cublas_activation(self, m: int, ka: int, dtype: torch.dtype) -> torch.Tensor:
        """[m, ka] in dtype: the activation's values that cuBLAS reads (`fp4linear.ops`' cuBLAS path)."""
        return self._shaped("cublas_activation", dtype, (m, ka), m * ka, lambda flat: flat.view(m, ka))

    def weight_chunk(self, rows: int, kp: int, ka: int, dtype: torch.dtype) -> tuple:
        """(chunk [rows, kp], w = chunk[:, :ka], w.t()) in dtype: a dequantized weight chunk and the
        views of it that cuBLAS reads (`fp4linear.ops.cublas_dequantized_gemm`)."""
        return self._shaped("weight_chunk", dtype, (rows, kp, ka), rows * kp,
                            lambda flat: _chunk_views(flat.view(rows, kp), ka))


class _Fresh(Scratch):
    """Buffers of one call (torch.compile tracing, the CPU, a capture whose identity is unknown):
    made for it, never kept. (Under capture the zeroing is itself captured, so every replay starts
    from zero.)"""

    def __init__(self, device):
        self._lazy(device)

    @functools.cached_property
    def scales(self) -> torch.Tensor:  # (made where asked for: a call taking only operands needs none)
        return torch.empty(2, dtype=torch.float32, device=self.device)

    @property
    def gs(self) -> torch.Tensor:
        return self.scales[0:1]

    @property
    def alpha(self) -> torch.Tensor:
        return self.scales[1:2]

    def get(self, part_numel, n_tickets):
        return (torch.empty(part_numel, dtype=torch.float32, device=self.device),
                torch.zeros(n_tickets, dtype=torch.int32, device=self.device))

    def _shaped(self, name, dtype, shape, numel, make):
        return make(torch.empty(numel, dtype=dtype, device=self.device))  # (the buffers' views: Scratch's)


def _chunk_views(chunk: torch.Tensor, ka: int) -> tuple:
    """(chunk, w = chunk[:, :ka], w.t()): a dequantized weight chunk [rows, Kp] and the views of it
    that cuBLAS reads (its first ka columns: K rounded to 8)."""
    w = chunk[:, :ka] if ka < chunk.shape[1] else chunk
    return chunk, w, w.t()


_scratch: dict = {}  # (device index, raw stream handle) -> Scratch
_captured: dict = {}  # (device index, raw stream handle) -> (capture id, Scratch of that capture)


@functools.lru_cache(maxsize=1)
def _capture_info():
    """The driver's cuStreamGetCaptureInfo (the _v2 entry point: in every driver since CUDA 11.3), or None."""
    try:
        fn = ctypes.CDLL("libcuda.so.1").cuStreamGetCaptureInfo_v2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def capture_id(stream: int) -> int | None:
    """The id of the capture under way on raw stream handle `stream`, None if none or unknown.
    (Asked only while capturing, when host time does not count.)"""
    fn = _capture_info()
    if fn is None:
        return None
    status, cid = ctypes.c_int(), ctypes.c_uint64()
    if fn(stream, ctypes.byref(status), ctypes.byref(cid), None, None, None) != 0 or status.value != 1:
        return None  # (1: CU_STREAM_CAPTURE_STATUS_ACTIVE)
    return cid.value


def per_call(device: torch.device) -> Scratch:
    """Buffers made for one call and never kept (what `scratch` gives where it cannot keep them)."""
    return _Fresh(device)


def scratch(device: torch.device) -> Scratch:
    if device.type != "cuda" or _launch._compile_tracing:
        return per_call(device)
    return scratch_for(device.index if device.index is not None else torch.cuda.current_device())


def scratch_of(t: torch.Tensor) -> Scratch:
    """`scratch` of t's device, found from t's device index (cheaper than a device object)."""
    index = t.get_device()  # -1 off CUDA
    return scratch_for(index) if index >= 0 else per_call(t.device)


def scratch_for(index: int) -> Scratch:
    """`scratch(torch.device("cuda", index))`, for callers that have the CUDA device index at hand
    (cheaper than a device object)."""
    if _launch._compile_tracing:
        return per_call(torch.device("cuda", index))
    stream = _raw_stream(index)
    if stream and _capturing():
        cid = capture_id(stream)
        if cid is None:
            return per_call(torch.device("cuda", index))
        entry = _captured.get((index, stream))
        if entry is None or entry[0] != cid:  # (a finished capture's set is dropped here)
            entry = _captured[(index, stream)] = (cid, Scratch(torch.device("cuda", index)))
        return entry[1]
    s = _scratch.get((index, stream))
    if s is None:
        s = _scratch[(index, stream)] = Scratch(torch.device("cuda", index))
    return s
