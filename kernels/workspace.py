"""Scratch memory the single-launch kernels share: fp32 split-K partials, int32 tickets and the
dynamic-scale words, one set per device and stream.

Kernels on one stream run one after another and each leaves its tickets at zero, so every layer
on that stream can use the same buffers without allocating on the forward path. While a CUDA graph
is being captured the buffers come fresh from the graph's pool instead (zeroed inside the graph),
so a graph never shares scratch memory with eager calls.

Telling the two apart costs a capture query (0.6 us of host time a call), so it is asked only
where a capture can be under way: not on the legacy default stream (raw handle 0), which CUDA
cannot capture and `torch.cuda.graph` refuses to capture on (it captures on a side stream).
Eager calls on any other stream still ask, so a side stream used both eagerly and for capture
keeps the two apart.
"""

from __future__ import annotations

import torch

from . import launch as _launch

_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)  # torch.cuda.is_current_stream_capturing

_MAX_VIEWS = 256  # cached activation views per Scratch (shapes seen), cleared beyond


class Scratch:
    def __init__(self, device: torch.device):
        self.device = device
        self.partials = torch.empty(0, dtype=torch.float32, device=device)
        self.tickets = torch.zeros(0, dtype=torch.int32, device=device)
        self.scale_words = torch.zeros(2, dtype=torch.int32, device=device)  # running max, ticket
        self.scales = torch.empty(2, dtype=torch.float32, device=device)  # gs, alpha
        self.gs, self.alpha = self.scales[0:1], self.scales[1:2]  # views made once, not per call
        self.activation = torch.empty(0, dtype=torch.float16, device=device)
        self._views: dict = {}  # (m, kp) -> activation[: m * kp].view(m, kp)

    def get(self, part_numel: int, n_tickets: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.partials.numel() < part_numel:
            self.partials = torch.empty(part_numel, dtype=torch.float32, device=self.device)
        if self.tickets.numel() < n_tickets:
            self.tickets = torch.zeros(n_tickets, dtype=torch.int32, device=self.device)
        return self.partials, self.tickets

    def dequantized_activation(self, m: int, kp: int) -> torch.Tensor:
        """fp16 [m, kp] for the dequantized activation (decode and mid-size M: no allocation; the
        view of each shape is made once)."""
        view = self._views.get((m, kp))
        if view is None:
            if self.activation.numel() < m * kp:
                self.activation = torch.empty(m * kp, dtype=torch.float16, device=self.device)
                self._views.clear()  # views of the old buffer
            if len(self._views) >= _MAX_VIEWS:
                self._views.clear()
            view = self._views[(m, kp)] = self.activation[: m * kp].view(m, kp)
        return view


class _Fresh(Scratch):
    """Buffers of one call (CUDA-graph capture, torch.compile tracing, CPU): made for it, never
    kept. (Under capture the zeroing is itself captured, so every replay starts from zero.)"""

    def __init__(self, device):
        self.device = device
        self.scale_words = torch.zeros(2, dtype=torch.int32, device=device)
        self.scales = torch.empty(2, dtype=torch.float32, device=device)
        self.gs, self.alpha = self.scales[0:1], self.scales[1:2]

    def get(self, part_numel, n_tickets):
        return (torch.empty(part_numel, dtype=torch.float32, device=self.device),
                torch.zeros(n_tickets, dtype=torch.int32, device=self.device))

    def dequantized_activation(self, m, kp):
        return torch.empty((m, kp), dtype=torch.float16, device=self.device)


_scratch: dict = {}  # (device index, raw stream handle) -> Scratch


def scratch(device: torch.device) -> Scratch:
    if device.type != "cuda" or _launch._compile_tracing:
        return _Fresh(device)
    return scratch_for(device.index if device.index is not None else torch.cuda.current_device())


def scratch_of(t: torch.Tensor) -> Scratch:
    """`scratch` of t's device, found from t's device index (cheaper than a device object)."""
    index = t.get_device()  # -1 off CUDA
    return scratch_for(index) if index >= 0 else _Fresh(t.device)


def scratch_for(index: int) -> Scratch:
    """`scratch(torch.device("cuda", index))`, for callers that have the CUDA device index at hand
    (cheaper than a device object)."""
    if _launch._compile_tracing:
        return _Fresh(torch.device("cuda", index))
    stream = _raw_stream(index)
    if stream and _capturing():
        return _Fresh(torch.device("cuda", index))
    s = _scratch.get((index, stream))
    if s is None:
        s = _scratch[(index, stream)] = Scratch(torch.device("cuda", index))
    return s
