"""Scratch memory the single-launch kernels share: fp32 split-K partials, int32 tickets and the
dynamic-scale words, one set per device and stream.

Kernels on one stream run one after another and each leaves its tickets at zero, so every layer
on that stream can use the same buffers without allocating on the forward path. While a CUDA graph
is being captured the buffers come fresh from the graph's pool instead (zeroed inside the graph),
so a graph never shares scratch memory with eager calls.
"""

from __future__ import annotations

import torch

from .launch import compile_tracing


class Scratch:
    def __init__(self, device: torch.device):
        self.device = device
        self.partials = torch.empty(0, dtype=torch.float32, device=device)
        self.tickets = torch.zeros(0, dtype=torch.int32, device=device)
        self.scale_words = torch.zeros(2, dtype=torch.int32, device=device)  # running max, ticket
        self.scales = torch.empty(2, dtype=torch.float32, device=device)  # gs, alpha
        self.activation = torch.empty(0, dtype=torch.float16, device=device)

    def get(self, part_numel: int, n_tickets: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.partials.numel() < part_numel:
            self.partials = torch.empty(part_numel, dtype=torch.float32, device=self.device)
        if self.tickets.numel() < n_tickets:
            self.tickets = torch.zeros(n_tickets, dtype=torch.int32, device=self.device)
        return self.partials, self.tickets


    def dequantized_activation(self, m: int, kp: int) -> torch.Tensor:
        """fp16 [m, kp] for the dequantized activation (decode and mid-size M: no allocation)."""
        if self.activation.numel() < m * kp:
            self.activation = torch.empty(m * kp, dtype=torch.float16, device=self.device)
        return self.activation[: m * kp].view(m, kp)


class _Fresh(Scratch):
    """Buffers of one call (CUDA-graph capture, CPU): made for it, never kept. (Under capture the
    zeroing is itself captured, so every replay starts from zero.)"""

    def __init__(self, device):
        self.device = device
        self.scale_words = torch.zeros(2, dtype=torch.int32, device=device)
        self.scales = torch.empty(2, dtype=torch.float32, device=device)

    def get(self, part_numel, n_tickets):
        return (torch.empty(part_numel, dtype=torch.float32, device=self.device),
                torch.zeros(n_tickets, dtype=torch.int32, device=self.device))

    def dequantized_activation(self, m, kp):
        return torch.empty((m, kp), dtype=torch.float16, device=self.device)


_scratch: dict = {}


def scratch(device: torch.device) -> Scratch:
    if device.type != "cuda" or compile_tracing() or torch.cuda.is_current_stream_capturing():
        return _Fresh(device)
    key = (device.index, torch._C._cuda_getCurrentRawStream(device.index))
    s = _scratch.get(key)
    if s is None:
        s = _scratch[key] = Scratch(device)
    return s
