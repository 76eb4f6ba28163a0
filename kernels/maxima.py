"""A dynamic activation scale handed on as per-program maxima, for the pass that quantizes x to reduce.

`scales_launch.dynamic_maxima` leaves one max |x| word per program of its launch; the passes that
take an encode scale (`fake_quantize`, `act_fake_quantize`, `cublas_operands`) accept a
`DynamicScale` where they accept a static scale tensor and reduce the words themselves
(`numerics.encode_scale`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .launch import next_pow2

# Up to this many programs in the scale launch, the pass after it reduces their maxima
# (`scales_launch.dynamic_encode_scale`); beyond, the launch's ticket does. H100, whole dynamic layer,
# CUDA graphs (linear_bench.py --ab-maxima, results/maxima_ab_h100.csv; x and silu_mul(h), M = 128-8192):
# up to 512 programs the maxima won 34 of 35 layers, median 1.04 us (4.5%) saved, up to 13% (256 x 2688 x
# 464: 9.55 vs 10.8 us); from 1024 to 16384 programs a wash (median 0.3%, -9.6 .. +3.1 us, 18 of 25 won),
# each pass program then reading up to 64 KB of maxima.
MAX_MAXIMA = 512


class DynamicScale(NamedTuple):
    """A dynamic activation scale not yet reduced: per-program max |x| bits of a scale launch
    (`scales_launch.dynamic_maxima`). The passes that quantize x take it where they take a static encode scale
    (`fake_quantize`, `act_fake_quantize`, `cublas_operands`): they reduce the maxima themselves and
    write (gs, alpha) to `scales` for the GEMM after them, which reads `alpha` (per-stream scratch,
    valid once that pass has run, until the next dynamic-scale call on the stream)."""
    maxima: torch.Tensor  # int32 [>= count]
    count: int
    weight_scale_2: torch.Tensor  # fp32 [1]
    scales: torch.Tensor  # fp32 [2]: (gs, alpha), written by the consuming pass
    alpha: torch.Tensor  # fp32 [1], a view of scales[1]

    @property
    def block(self) -> int:
        """The consumer's MAXIMA_BLOCK constexpr (a power of two >= count)."""
        return next_pow2(self.count)

    def kernel_args(self) -> tuple:
        """(the encode-scale pointer's tensor, maxima, count, scales) as the passes take them
        (`numerics.encode_scale`)."""
        return self.weight_scale_2, self.maxima, self.count, self.scales


def static_scale_args(global_scale: torch.Tensor) -> tuple:
    """`DynamicScale.kernel_args` of a static encode scale (fp32 [1]): the maxima unused."""
    return global_scale, global_scale, 0, global_scale


def scale_args(global_scale) -> tuple:
    """(kernel arguments, MAXIMA_BLOCK) of a pass's encode scale: a tensor or a `DynamicScale`."""
    if isinstance(global_scale, DynamicScale):
        return global_scale.kernel_args(), global_scale.block
    return static_scale_args(global_scale), 0
