"""Launcher of the CUDA-core decode Linear (kernels/gemv.py): tiles, split-K, the per-stream workspace."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton

from . import _interpreter
from . import gemv as gemv_module
from .launch import CachedLaunch, compile_tracing
from .small_m_linear_launch import _sm_count
from .workspace import scratch, scratch_for

MAX_M = 4  # rows the kernel takes


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int  # a multiple of 64
    num_warps: int
    num_stages: int
    split_k: int = 0  # 0: enough K splits for about `waves` programs per SM
    waves: int = 2
    use_asm: bool = True  # fp16x2 PTX on the GPU (the CPU always takes the portable path)


def gemv_config(n: int, kp: int, m_rows: int, device_type: str) -> GemvConfig:
    if device_type == "cpu":
        # Interpreter: few, large programs; split K (and so the ticketed reduce) whenever there is room.
        return GemvConfig(min(64, max(16, triton.next_power_of_2(n))), 64, 4, 1, split_k=2 if kp >= 128 else 1,
                          use_asm=False)
    # H100, weights cold in L2 (benchmarks/results/gemv_tune_h100.csv, `linear_bench.py --tune-gemv`):
    # the tile that is best on average over the shapes of each class, per M.
    if m_rows >= 4:  # 1x4096x4096-class and smaller (the router sends larger weights elsewhere)
        return GemvConfig(32, 512, 4, 3, waves=4) if n * kp < 8 << 20 else GemvConfig(128, 128, 4, 3, waves=2)
    if n * kp < 8 << 20:  # 2688x464 2.36 us, 1288x2688 8.34, 2576x2688 9.46 (M = 1)
        return GemvConfig(32, 512, 4, 3, waves=4)
    if n * kp < 32 << 20:  # 4096x4096 10.5 us, 8192x3696 14.5 (M = 1)
        return GemvConfig(64, 256, 4, 4, waves=4)
    if kp >= 16384:  # 8192x28672: 58.5 us (M = 1), 66.9 (M = 2)
        return GemvConfig(64, 512, 4, 2, waves=2)
    if n >= 16384:  # 28672x8192: 58.5 us (M = 1), 68.5 (M = 2)
        return GemvConfig(64, 256, 4, 3, waves=2) if m_rows == 1 else GemvConfig(32, 512, 4, 3, waves=4)
    # 8192x8192: 22.0 us (M = 1), 26.6 (M = 2)
    return GemvConfig(128, 512, 8, 2, waves=2) if m_rows == 1 else GemvConfig(64, 512, 4, 2, waves=2)


def _split_k(config: GemvConfig, n: int, kp: int, device) -> tuple[int, int]:
    """(splits, K tiles per split): no empty split, each at least 2 tiles long where K allows."""
    k_tiles = triton.cdiv(kp, config.block_k)
    split = config.split_k
    if split == 0:
        n_tiles = triton.cdiv(n, config.block_n)
        split = max(1, min(triton.cdiv(config.waves * _sm_count(device), n_tiles), k_tiles // 2))
    per_split = triton.cdiv(k_tiles, split)
    return triton.cdiv(k_tiles, per_split), per_split


# The kernel reads the weight as int32 words: only the JIT needs the int32 view (`CachedLaunch`).
_launch_main = CachedLaunch(gemv_module.nvfp4_gemv_kernel, views={3: (torch.uint8, torch.int32)})


def linear_gemv(x, gs, alpha, w_data, w_scale, bias, out, *, config: GemvConfig | None = None):
    """out[M, N] = alpha * quantize(x, gs) @ dequant(W)^T (+ bias), M <= 4, in one launch on CUDA cores.

    Arguments as `linear_small_m`'s: x [M, K] with unit column stride; gs, alpha fp32 one-element
    tensors (read on the device); w_data uint8 [Np, Kp/2] (Kp % 64 == 0); w_scale uint8 row-major
    [Np, Kp/16]; N = out.shape[1].
    """
    m, k = x.shape
    if m == 0:
        return out
    n = out.shape[1]
    kp = w_data.shape[1] * 2
    index = out.get_device()  # CUDA device index, -1 on the CPU
    if compile_tracing():
        m = int(m)  # torch.compile: the kernel's row tile is a constexpr (the graph specializes on M <= 4/16)
    # Worked out once per shape and dtypes (host time is what a decode-sized call costs eagerly).
    plan_key = (index, n, k, kp, m, bias is None or bias.dtype, x.dtype, out.dtype, config)
    plan = _plans.get(plan_key)
    if plan is None:
        plan = _plans[plan_key] = _plan(out.device, n, k, kp, triton.next_power_of_2(m), bias is not None, config,
                                        plan_key[5:8])
    grid, meta, options, split, per_split, n_tiles, part_numel, launch_id = plan
    if split > 1:
        partials, tickets = (scratch_for(index) if index >= 0 else scratch(out.device)).get(part_numel, n_tiles)
    else:
        partials = tickets = out  # unused
    sx = x.stride(0)
    args = (x, gs, alpha, w_data, w_scale, bias if bias is not None else out, out, partials, tickets, m, sx,
            out.stride(0), n, k, kp // 64, per_split)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            _interpreter.interpreted(gemv_module).nvfp4_gemv_kernel[grid](*_launch_main.jit_args(args), **meta,
                                                                           **options)
    elif compile_tracing():
        _launch_main(None, grid, args, meta, options)
    else:  # the launch key: the plan's, and what Triton specializes x on (alignment_key)
        _launch_main((launch_id, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1), grid, args, meta, options)
    return out


_plans: dict = {}
_launch_ids: dict = {}  # a plan's launch key (dtypes, shape, config, constexprs) -> a small int


def _plan(device, n, k, kp, m_rows, has_bias, config, dtypes):
    if config is None:
        config = gemv_config(n, kp, m_rows, device.type)
    if config.block_k % 64:
        raise ValueError(f"block_k must be a multiple of 64, got {config.block_k}")
    split, per_split = _split_k(config, n, kp, device)
    n_tiles = triton.cdiv(n, config.block_n)
    meta = dict(M_ROWS=m_rows, HAS_BIAS=has_bias, SPLIT_K=split, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                EVEN_K=kp % config.block_k == 0, USE_ASM=config.use_asm and device.type == "cuda")
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    tail = (device.index, *dtypes, n, k, kp, config, split, *meta.values())  # with x's alignment: the launch key
    launch_id = _launch_ids.setdefault(tail, len(_launch_ids))
    return (n_tiles * split, 1, 1), meta, options, split, per_split, n_tiles, split * MAX_M * n, launch_id
