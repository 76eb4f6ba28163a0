"""Launcher of the fused pad + quantize kernel: tile choice and the single launch."""

import math
from dataclasses import dataclass

import numpy as np
import triton

from . import _interpreter
from . import quantize as quantize_module


@dataclass(frozen=True)
class QuantConfig:
    block_m: int
    block_k: int  # multiple of 64
    num_warps: int


# Tiles measured on the H100 (benchmarks/quant_bench.py --configs, RESULTS.md): 8 x 512 with
# two warps where K fills 512-wide tiles, 16 x 128 elsewhere (less waste on ragged K), and
# 8 x 128 with four warps for decode-sized M.
_GPU_WIDE = QuantConfig(8, 512, 2)
_GPU_NARROW = QuantConfig(16, 128, 2)
_GPU_DECODE = QuantConfig(8, 128, 4)


def quant_config(m: int, kp: int, device_type: str) -> QuantConfig:
    if device_type == "cpu":
        # The interpreter pays per program and per op, not per element: few, large tiles.
        return QuantConfig(min(128, triton.next_power_of_2(max(m, 8))), min(1024, triton.next_power_of_2(max(kp, 64))), 4)
    if m <= 16:
        return _GPU_DECODE
    return _GPU_WIDE if kp % 512 == 0 else _GPU_NARROW


def pad_quantize(x, global_scale, data, scale, *, sf_row_tile: int, config: QuantConfig | None = None):
    """Quantize x [M, K] (unit column stride) into data [M, Kp/2] and swizzled scale [rows, S4].

    Kp is read off `data`; `scale` must be [round_up(M, sf_row_tile), round_up(Kp/16, 4)].
    Writes every byte of both outputs.
    """
    m, k = x.shape
    kp = data.shape[1] * 2
    scale_rows, s4 = scale.shape
    if config is None:
        config = quant_config(m, kp, x.device.type)
    n_tiles = triton.cdiv(s4 * 16, config.block_k) * triton.cdiv(scale_rows, config.block_m)
    if n_tiles == 0:
        return
    k_mult = math.gcd(k, 16)
    xm_mult = math.gcd(x.stride(0), 16) if m > 1 else 16
    launch = _interpreter.for_device(quantize_module, x.device).nvfp4_pad_quantize_kernel[(n_tiles,)]
    args = (x, global_scale, data, scale.view(dtype=data.dtype), m, k // k_mult, x.stride(0) // xm_mult, kp // 16)
    meta = dict(K_MULT=k_mult, XM_MULT=xm_mult, SF_ROW_TILE=sf_row_tile, BLOCK_M=config.block_m,
                BLOCK_K=config.block_k, num_warps=config.num_warps,
                enable_fp_fusion=False)  # the recipe is a sequence of IEEE ops: no FMA contraction
    if x.device.type == "cpu":
        # 1 / 0 -> inf is part of the recipe (a block whose scale rounds to 0): numpy must not warn.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            launch(*args, **meta)
    else:
        launch(*args, **meta)
