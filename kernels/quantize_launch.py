"""Launcher of the fused pad + quantize kernel: tile choice and the single launch."""

from dataclasses import dataclass

import numpy as np
import torch
import triton

from . import _interpreter
from . import quantize as quantize_module
from .launch import CachedLaunch, cdiv, compile_tracing, int_key, x_multiples


@dataclass(frozen=True)
class QuantConfig:
    block_m: int
    block_k: int  # multiple of 64
    num_warps: int
    # Kernel variants (kernels/quantize.py); all off / recipe 1 is the kernel as first benchmarked
    # (`BASELINE`, the A/B reference of `quant_bench.py --configs`; the GPU defaults below are measured).
    grid_2d: bool = False
    words: bool = False  # bf16 read as 32-bit pairs where x allows it (else the element path)
    recipe: int = 1  # 1, 2 or 4 (kernels/quantize.py, RECIPE)
    persistent: int = 0  # > 0: with grid_2d, this many programs per SM walk the m tiles
    halves: bool = False  # whole blocks per thread, loaded as two 16-byte halves (lanes along blocks)

    def __post_init__(self):
        if self.recipe not in (1, 2, 4):
            raise ValueError(f"recipe must be 1, 2 or 4 (kernels/quantize.py), got {self.recipe}")
        if self.block_k % 64:
            raise ValueError(f"block_k must be a multiple of 64, got {self.block_k}")

    @property
    def label(self) -> str:
        flags = [f"r{self.recipe}"] + [n for n, on in (("2d", self.grid_2d), ("words", self.words),
                                                       ("halves", self.halves)) if on]
        if self.persistent:
            flags.append(f"p{self.persistent}")
        return f"{self.block_m}x{self.block_k}w{self.num_warps}:" + ",".join(flags)


BASELINE = dict(grid_2d=False, words=False, recipe=1, persistent=0, halves=False)  # QuantConfig(..., **BASELINE)

# H100 defaults, each the fastest of `quant_bench.py --configs` (variants x tiles, every one checked
# bit for bit first; CUDA-graph medians, benchmarks/results/quant_configs_h100.csv and RESULTS.md):
# recipe 2 + 32-bit words + the 2-D grid wins everywhere measured; wide K at large M also gains from
# 2 x 4096 tiles walked by two persistent programs per SM.
#   16384x8192: 131.1 us (2.62 TB/s, 87.5% of copy) vs 148.3 as first benchmarked; 4096x8192: 35.9 vs 40.4
#   16384x1368: 26.0 us vs 29.6 (16 x 128);  16x8192: 1.61 us vs 1.83 (8 x 128)
#   4096x4096: 8 x 512 walked by four persistent programs per SM, 18.0 us vs 19.3 for 16 x 128 (79.7% of copy);
#   16 x 128 stays best at 4096x1368 / 4096x2736 / 16384x2736 (session 19; larger M at Kp = 4096 not measured);
#   there, with a word's two signs placed at once (recipe 4: 64 elements a thread, 2-3% fewer instructions)
#   17.3 us vs 17.7-18.0 (session 20); recipe 4 lost 1-2% on the 16 x 128 tiles (32 elements a thread)
MEASURED_VARIANTS = dict(recipe=2, words=True, grid_2d=True)
_GPU_WIDE_K = QuantConfig(2, 4096, 4, persistent=2, **MEASURED_VARIANTS)
_GPU_MID_K = QuantConfig(8, 512, 2, persistent=4, **dict(MEASURED_VARIANTS, recipe=4))
_GPU_ROWS = QuantConfig(16, 128, 2, **MEASURED_VARIANTS)
_GPU_DECODE = QuantConfig(8, 128, 4, **MEASURED_VARIANTS)


def quant_config(m: int, kp: int, device_type: str) -> QuantConfig:
    if device_type == "cpu":
        # The interpreter pays per program and per op, not per element: few, large tiles.
        return QuantConfig(min(128, triton.next_power_of_2(max(m, 8))), min(1024, triton.next_power_of_2(max(kp, 64))), 4)
    if m <= 16:
        return _GPU_DECODE
    if m >= 4096 and kp >= 8192 and kp % 4096 == 0:
        return _GPU_WIDE_K
    if 4096 <= m < 8192 and kp == 4096:
        return _GPU_MID_K
    return _GPU_ROWS


def _sm_count(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def kernel_meta(config: QuantConfig, *, k: int, stride: int, m: int, dtype=torch.bfloat16, x_aligned: bool = True,
                sf_row_tile: int = 128) -> dict:
    """The kernel's constexprs for x of shape [m, k], row stride `stride` (shared with kernel_asm)."""
    k_mult, xm_mult = x_multiples(k, stride, m)
    words = config.words and dtype == torch.bfloat16 and k_mult % 2 == 0 and xm_mult % 2 == 0 and x_aligned
    persistent = config.persistent > 0 and config.grid_2d
    # one zero-store program per k column for the padding rows, where its tile is at most 8 bytes
    # a thread (decode tiles; larger ones would add their stores' code to every program)
    one_pad = config.grid_2d and not persistent and config.block_m < sf_row_tile and \
        sf_row_tile * config.block_k // 16 <= 8 * 32 * config.num_warps
    return dict(K_MULT=k_mult, XM_MULT=xm_mult, SF_ROW_TILE=sf_row_tile, BLOCK_M=config.block_m,
                BLOCK_K=config.block_k, GRID_2D=int(config.grid_2d), WORDS=int(words), HALVES=int(config.halves),
                RECIPE=config.recipe, PERSISTENT=int(persistent), ONE_PAD_TILE=int(one_pad))


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
    n_k = cdiv(s4 * 16, config.block_k)
    n_m = cdiv(scale_rows, config.block_m)  # m tiles, scale-padding-only ones included
    if n_k == 0 or n_m == 0:
        return
    meta = kernel_meta(config, k=k, stride=x.stride(0), m=m, dtype=x.dtype, x_aligned=x.data_ptr() % 4 == 0,
                       sf_row_tile=sf_row_tile)
    if not meta["GRID_2D"]:
        grid = (n_k * n_m,)
    elif meta["PERSISTENT"]:
        grid = (n_k, max(1, min(n_m, cdiv(config.persistent * _sm_count(x.device), n_k))), 1)
    else:
        if meta["ONE_PAD_TILE"]:
            real = cdiv(m, config.block_m)
            n_m = real + (scale_rows > real * config.block_m)
        grid = (n_k, min(n_m, 65535), cdiv(n_m, 65535))
    k_mult, xm_mult = meta["K_MULT"], meta["XM_MULT"]
    args = (x, global_scale, data, scale, m, k // k_mult, x.stride(0) // xm_mult, kp // 16)
    # the recipe is a sequence of IEEE ops: no FMA contraction
    options = dict(num_warps=config.num_warps, enable_fp_fusion=False)
    if x.device.type == "cpu":
        launch = _interpreter.for_device(quantize_module, x.device).nvfp4_pad_quantize_kernel[grid]
        # 1 / 0 -> inf is part of the recipe (a block whose scale rounds to 0): numpy must not warn.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            launch(*_launch.jit_args(args), **meta, **options)
    elif compile_tracing():
        _launch(None, grid, args, meta, options)
    else:
        # Nothing here is exempt from Triton's specialization: the key holds every dtype, every
        # pointer's 16-byte alignment and every integer's int_key, besides the constexprs.
        key = (x.get_device(), x.dtype, global_scale.dtype, data.dtype,
               *meta.values(), config.num_warps, *[t.data_ptr() % 16 == 0 for t in args[:4]],
               *[int_key(v) for v in args[4:]])
        _launch(key, grid, args, meta, options)


# The kernel reads scale bytes as uint8: only the JIT needs the view of e4m3 scales.
_launch = CachedLaunch(quantize_module.nvfp4_pad_quantize_kernel, views={3: (torch.float8_e4m3fn, torch.uint8)})


__all__ = ["BASELINE", "QuantConfig", "kernel_meta", "pad_quantize", "quant_config"]
