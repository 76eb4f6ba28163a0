"""Launcher of the single-launch small-M Linear: tile choice, split-K, the per-stream workspace."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import triton

from . import _interpreter
from . import small_m_linear as small_m_module
from .launch import CachedLaunch, cdiv, compile_tracing, x_align
from .workspace import scratch_of

MAX_M = 16  # rows the kernel takes (one 16-token MMA tile)


@dataclass(frozen=True)
class SmallMConfig:
    block_n: int
    block_k: int  # 64, 128 or 256
    num_warps: int
    num_stages: int
    split_k: int = 0  # 0: enough K splits for about `waves` programs per SM
    waves: int = 1
    natural_x: bool = True  # load x in order (vector loads) and permute after quantizing


def small_m_config(n: int, kp: int, device_type: str) -> SmallMConfig:
    if device_type == "cpu":
        # Interpreter: few, large programs; split K (and so the ticketed reduce) whenever there is room.
        return SmallMConfig(min(64, max(16, triton.next_power_of_2(n))), 64, 4, 1, split_k=2 if kp >= 128 else 1)
    # H100 (linear_bench.py --tune, weights cold in L2): 1x4096x4096 15.5 us with 128 rows x 8 warps;
    # 1x1288x2688 11.2 us with 64 rows x 4 warps; two programs per SM, 2 stages.
    if n >= 4096:
        return SmallMConfig(128, 128, 8, 2, waves=2)
    return SmallMConfig(64, 128, 4, 2, waves=2)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def split_k_for(config: SmallMConfig, n: int, kp: int, device: torch.device) -> tuple[int, int]:
    """(splits, K tiles per split): no empty split, each at least 2 tiles long where K allows."""
    k_tiles = cdiv(kp, config.block_k)
    split = config.split_k
    if split == 0:
        n_tiles = cdiv(n, config.block_n)
        split = max(1, min(cdiv(config.waves * _sm_count(device), n_tiles), k_tiles // 2))
    per_split = cdiv(k_tiles, split)
    return cdiv(k_tiles, per_split), per_split


def linear_small_m(x, gs, alpha, w_data, w_scale, bias, out, *, config: SmallMConfig | None = None):
    """out[M, N] = alpha * quantize(x, gs) @ dequant(W)^T (+ bias), M <= 16, in one launch.

    x [M, K] with unit column stride; gs, alpha: fp32 one-element tensors (read on the device);
    w_data uint8 [Np, Kp/2] (Kp % 64 == 0); w_scale uint8 row-major [Np, Kp/16]; N = out.shape[1].
    """
    return run_single_launch(_SMALL_M, x, gs, alpha, w_data, w_scale, bias, out, config)


class SingleLaunch:
    """What differs between the single-launch Linear kernels (this one, kernels/gemv.py): the kernel
    module and name, its cached launcher, its plan cache and plan function, the row cap."""

    def __init__(self, module, kernel_name: str, plan, max_m: int):
        self.module, self.kernel_name, self.plan, self.max_m = module, kernel_name, plan, max_m
        # The kernels read the weight as int32 words: only the JIT needs the int32 view (`CachedLaunch`).
        self.launch = CachedLaunch(getattr(module, kernel_name), views={3: (torch.uint8, torch.int32)})
        self.plans: dict = {}


def run_single_launch(kind: SingleLaunch, x, gs, alpha, w_data, w_scale, bias, out, config, dynamic: bool = False):
    m, k = x.shape
    if m == 0:
        return out
    n = out.shape[1]
    kp = w_data.shape[1] * 2
    index = out.get_device()  # CUDA device index, -1 on the CPU
    if compile_tracing():
        m = int(m)  # torch.compile: the kernel's row tile is a constexpr (the graph specializes on M)
    # Everything that depends only on the shapes and dtypes is worked out once (host time is what a
    # decode-sized call costs outside CUDA graphs); the key is cheap to hash (ints, dtypes).
    sx = x.stride(0)
    xa = x_align(k, sx)
    plan_key = (index, n, k, kp, m, bias is None or bias.dtype, x.dtype, out.dtype, config, dynamic, xa)
    plan = kind.plans.get(plan_key)
    if plan is None:  # (checked once per shape: the plan is keyed by M)
        if m > kind.max_m:
            raise ValueError(f"x has {m} rows; {kind.kernel_name} takes at most {kind.max_m}")
        plan = kind.plans[plan_key] = kind.plan(out.device, n, k, kp, min(kind.max_m, triton.next_power_of_2(m)),
                                                bias is not None, config, plan_key[5:8], xa,
                                                **({"dynamic": True} if dynamic else {}))
    grid, meta, options, split, per_split, n_tiles, part_numel, launch_id = plan
    if split > 1:
        partials, tickets = scratch_of(out).get(part_numel, n_tiles)
    else:
        partials = tickets = out  # unused
    args = (x, gs, alpha, w_data, w_scale, bias if bias is not None else out, out, partials, tickets, m, sx,
            out.stride(0), n, k, kp // 64, per_split)
    launch = kind.launch
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            getattr(_interpreter.interpreted(kind.module), kind.kernel_name)[grid](*launch.jit_args(args), **meta,
                                                                                   **options)
    elif compile_tracing():
        launch(None, grid, args, meta, options)
    else:  # the launch key: the plan's, and what Triton specializes x on (alignment_key)
        launch((launch_id, x.data_ptr() % 16 == 0, sx % 16 == 0, sx == 1), grid, args, meta, options)
    return out


_launch_ids: dict = {}  # a plan's launch key (dtypes, shape, config, constexprs) -> a small int


def _plan(device, n, k, kp, x_rows, has_bias, config, dtypes, x_al):
    if config is None:
        config = small_m_config(n, kp, device.type)
    return single_launch_plan(device, n, k, kp, config, dtypes, MAX_M, _launch_ids, X_ROWS=x_rows, HAS_BIAS=has_bias,
                              NATURAL_X=config.natural_x, X_ALIGN=x_al)


def single_launch_plan(device, n, k, kp, config, dtypes, max_m: int, launch_ids: dict, **constexprs):
    """Split-K, grid, constexprs (the kernel's own plus SPLIT_K, BLOCK_N, BLOCK_K, EVEN_K), options
    and launch key of a single-launch Linear kernel (`config`: block_n, block_k, split_k, waves,
    num_warps, num_stages)."""
    split, per_split = split_k_for(config, n, kp, device)
    n_tiles = cdiv(n, config.block_n)
    meta = dict(constexprs, SPLIT_K=split, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
                EVEN_K=kp % config.block_k == 0)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    tail = (device.index, *dtypes, n, k, kp, config, split, *meta.values())  # with x's alignment: the launch key
    launch_id = launch_ids.setdefault(tail, len(launch_ids))
    return (n_tiles * split, 1, 1), meta, options, split, per_split, n_tiles, split * max_m * n, launch_id


_SMALL_M = SingleLaunch(small_m_module, "nvfp4_linear_small_m_kernel", _plan, MAX_M)
_launch_main = _SMALL_M.launch  # (tests and benchmarks look launchers up by this name)
