"""Launcher of the fused pad + quantize kernel: tile choice and the single launch."""

import math
from dataclasses import dataclass

import numpy as np
import triton

from . import _interpreter, nvfp4_quantize


@dataclass(frozen=True)
class QuantConfig:
    block_m: int
    block_k: int  # multiple of 64
    num_warps: int


def quant_config(m: int, kp: int, device_type: str) -> QuantConfig:
    if device_type == "cpu":
        # The interpreter pays per program and per op, not per element: few, large tiles.
        return QuantConfig(min(128, triton.next_power_of_2(max(m, 8))), min(1024, triton.next_power_of_2(max(kp, 64))), 4)
    return QuantConfig(16, 256, 4)


def pad_quantize(x, global_scale, data, scale, *, sf_row_tile: int, config: QuantConfig | None = None):
    """Quantize x [M, K] (unit column stride) into data [M, Kp/2] and swizzled scale [rows, S4].

    Kp and the scale shape are read off the output tensors. Writes every byte of both outputs.
    """
    m, k = x.shape
    kp = data.shape[1] * 2
    scale_rows, s4 = scale.shape
    if config is None:
        config = quant_config(m, kp, x.device.type)
    n_k_tiles = triton.cdiv(s4 * 16, config.block_k)
    n_m_tiles = triton.cdiv(scale_rows, config.block_m)
    if n_k_tiles * n_m_tiles == 0:
        return
    k_mult = math.gcd(k, 16)
    xm_mult = math.gcd(x.stride(0), 16) if m > 1 else 16
    module = _interpreter.for_device(nvfp4_quantize, x.device)
    launch = module.nvfp4_pad_quantize_kernel[(n_k_tiles * n_m_tiles,)]
    args = (x, global_scale, data, scale.view(dtype=data.dtype), m, k // k_mult, x.stride(0) // xm_mult,
            kp // 16, scale_rows, s4 // 4, n_k_tiles)
    meta = dict(K_MULT=k_mult, XM_MULT=xm_mult, SF_ROW_TILE=sf_row_tile, BLOCK_M=config.block_m,
                BLOCK_K=config.block_k, num_warps=config.num_warps,
                enable_fp_fusion=False)  # the recipe is a sequence of IEEE ops: no FMA contraction
    if x.device.type == "cpu":
        # 1 / 0 -> inf is part of the recipe (a block whose scale rounds to 0): numpy must not warn.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            launch(*args, **meta)
    else:
        launch(*args, **meta)
