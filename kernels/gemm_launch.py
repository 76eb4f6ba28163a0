"""Launcher of the NVFP4 GEMM: tile choice and the single launch."""

import functools
import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
import triton

from . import _interpreter
from . import gemm as gemm_module
from . import gemm_wgmma
from .launch import CachedLaunch, cdiv, compile_tracing, int_key, next_pow2, x_align
from .launch import sm_count as _sm_count
from .layout import check_mma16, mma16_rows
from .act_quantize_launch import ACTS, act_fake_quantize, act_width
from .quant_dequant_launch import amax_reads, fake_quantize, fake_quantize_dynamic, fuses_dynamic_scale_in_pass
from .scales_launch import dynamic_gs_alpha
from .workspace import scratch_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int  # 64 or 128
    num_warps: int
    num_stages: int
    group_m: int = 8
    split_k: int = 1  # 0: choose so that the grid fills the GPU (decode): see the next two fields
    # split_k 0: K splits for about this many programs per SM, each split at least min_split_tiles K
    # tiles long (fewer, longer splits where K is short)
    programs_per_sm: int = 2
    min_split_tiles: int = 4
    # Decode each 32-bit word of 8 codes as 4 half2 registers (nibbles i and i+4 paired, the same
    # K permutation on both operands): 18-33% fewer instructions, 6-14% faster on the H100.
    word_decode: bool = True
    # Dequantize A once per call to exact fp16 (one extra pass over A) instead of once per N tile:
    # pays off once several N tiles share A (M > 16), 1.1-1.4x on the H100.
    predequant_a: bool = False
    # The decoded weight as the MMA's right operand (out = A @ W^T) instead of its left one (out^T =
    # W @ A^T). Left: wgmma's 64-row side, but Triton converts the decoded tile through shared memory
    # and waits on each MMA. Right: at 16-token tiles (mma.sync) the weight is decoded straight into
    # the operand registers; at 64+ it is stored once and the MMAs of a K tile run back to back.
    w_operand_b: bool = False
    # With A pre-dequantized by the caller (`nvfp4_gemm_dequantized_a`), A in the 16-row MMA fragment
    # order of its operand side (`fake_quantize(a_order=config.a_order)`, kernels/layout.py): each
    # fragment one 128-bit load, no register moves (offline sm_90 K loop per K tile: 16x64x256w4s3,
    # weight the right operand, 550 -> 408 SASS; 16x64x256w2s3, the left one, 918 -> 757). block_m 16.
    a_mma16: bool = False
    # CUDA, A pre-dequantized row-major, the weight the right operand: the same tile as the Gluon kernel
    # of kernels/gemm_wgmma.py with this many cp.async stages, which decodes weight tile i while the
    # tensor cores multiply tile i - 1 (Triton's schedule waits for each MMA before the next decode);
    # the same bits. 0: Triton's kernel (always so on the CPU, whose interpreter runs no Gluon).
    wgmma_stages: int = 0
    # With wgmma_stages, the weight the left operand (w_operand_b False): each warpgroup decodes 64 weight
    # rows straight into wgmma's register operand (kernels/gemm_wgmma.py, `nvfp4_gemm_wgmma_rs_kernel`)
    # instead of storing the decoded tile for a shared-memory operand; A (block_m rows, wgmma's N) is
    # then the shared-memory operand, written in that kernel's K order (a_order 3). block_n 64 or 128
    # weight rows with block_n / 16 warps. Triton's kernel computes the same tile portably.
    w_registers: bool = False
    # With wgmma_stages: cap the Gluon kernel's registers a thread (ptxas maxnreg; 0: the compiler's
    # choice), e.g. 128 so that two 8-warp CTAs fit on an SM.
    max_registers: int = 0
    # With w_operand_b (Triton's kernel): the block_m rows multiplied as block_m / dot_m (2 or 4) dots of
    # dot_m rows that share each decoded weight tile (decoded once into mma.sync's registers; one dot of 64+
    # rows would take wgmma, which Triton feeds from shared memory). With dot_m 16 and a_mma16 each dot reads
    # its A fragments in one load each (a 32-row dot over a row-major A gathers them with register moves).
    # Each row's sums are those of a tile of dot_m rows (the same bits). 0: one dot.
    dot_m: int = 0

    def __post_init__(self):
        if self.dot_m:
            if not (self.w_operand_b and not self.wgmma_stages and not self.w_registers):
                raise ValueError("dot_m needs w_operand_b on Triton's kernel (no wgmma_stages, w_registers)")
            if self.dot_m < 16 or self.block_m not in (2 * self.dot_m, 4 * self.dot_m):
                raise ValueError(f"dot_m needs block_m 2 or 4 times dot_m (>= 16), got block_m {self.block_m}, "
                                 f"dot_m {self.dot_m}")
        if self.a_mma16 and 16 not in (self.block_m, self.dot_m):
            raise ValueError(f"a_mma16 needs block_m 16 or dot_m 16, got block_m {self.block_m}, dot_m {self.dot_m}")
        if self.w_registers:
            if not (self.predequant_a and self.word_decode and not self.w_operand_b and not self.a_mma16):
                raise ValueError("w_registers needs predequant_a and word_decode (its K order moves whole words), the "
                                 "weight the left operand (w_operand_b False) and A row-major (a_mma16 False)")
            if self.block_n not in (64, 128) or self.num_warps != self.block_n // 16:
                raise ValueError(f"w_registers needs block_n 64 or 128 with block_n / 16 warps (one warpgroup per 64 "
                                 f"weight rows), got block_n {self.block_n}, num_warps {self.num_warps}")
            if self.block_m not in (16, 32, 64, 128, 256) or self.block_k not in (64, 128):
                raise ValueError(f"w_registers needs block_m a power of two in 16..256 and block_k 64 or 128, got "
                                 f"block_m {self.block_m}, block_k {self.block_k}")
            if self.wgmma_stages and self.wgmma_stages < 3:
                raise ValueError(f"w_registers needs >= 3 wgmma_stages, got {self.wgmma_stages}")
        elif self.wgmma_stages:
            if not (self.predequant_a and self.w_operand_b and not self.a_mma16):
                raise ValueError("wgmma_stages needs predequant_a and w_operand_b, A row-major (a_mma16 False)")
            if self.block_m not in (64, 128) or self.num_warps != self.block_m // 16:
                raise ValueError(f"wgmma_stages needs block_m 64 or 128 with block_m / 16 warps (one warpgroup per "
                                 f"64 rows), got block_m {self.block_m}, num_warps {self.num_warps}")
            if self.block_n % 16 or not 16 <= self.block_n <= 256 or self.wgmma_stages < 2:
                raise ValueError(f"wgmma_stages needs block_n in 16..256 (a multiple of 16) and >= 2 stages, got "
                                 f"block_n {self.block_n}, {self.wgmma_stages} stages")

    @property
    def a_order(self) -> int:
        """The layout `nvfp4_gemm_dequantized_a` reads A in: 0 row-major, 1 / 2 the mma16 order for
        A as the MMA's left / right operand (`layout.mma16_offset`), 3 the order of the weight as
        wgmma's register operand (`w_registers`, `layout.rs_col`)."""
        if self.w_registers:
            return 3
        return 0 if not self.a_mma16 else 1 if self.w_operand_b else 2


def gemm_config(m: int, n: int, kp: int, device_type: str, sm_count: int = 132) -> GemmConfig:
    block_k = 128 if kp % 128 == 0 else 64
    if device_type == "cpu":
        # Interpreter: few, large programs; the GPU's split-K and pre-dequantized-A paths still exercised.
        # (the decode tiles read A in the MMA fragment order here, so that CPU tests run that path throughout)
        return GemmConfig(min(64, max(16, triton.next_power_of_2(m))), min(64, max(16, triton.next_power_of_2(n))),
                          block_k, 4, 1, split_k=2 if m <= 16 and kp >= 4 * block_k else 1, predequant_a=m > 16,
                          w_operand_b=m <= 16, a_mma16=m <= 16)
    # Measured on the H100 (linear_bench.py --tune; whole layer, weights cold in L2, CUDA-graph
    # medians). Decode, A already dequantized: 16-token tiles, 64 weight rows, split-K to two programs
    # per SM; 256-wide K tiles with 3 stages where K allows (1x8192x8192: 31.1 us vs 34.2 with 128x4
    # stages; 1x28672x8192: 87.7 vs 91.1), 128 with 4 stages otherwise (1x2688x464: 6.3 vs 6.7). The
    # weight as the right operand (`--tune-operand`, H200, M = 4 / 16): 4x28672x8192 70.6 us vs 115,
    # 16x8192x8192 27.3 vs 31.3, 16x8192x3696 18.1 vs 21.8, 16x2688x464 4.8 vs 6.3 (x quantized inside).
    # The largest weights (H100, --tune-operand, M = 4 / 16): K >= 16384 512-wide K tiles (8192x28672
    # 65.3 / 67.5 us vs 69.4 / 69.9). N >= 16384: see below.
    # A in the MMA fragment order (`a_mma16`; --ab-decode, H100, M = 2 / 4 / 16, vs the same tile
    # row-major): 8192x8192 22.6 / 22.3 / 23.1 us vs 24.3 / 24.0 / 24.1 (H200: 20.6 / 20.6 / 21.1 vs 23.4-23.8),
    # 4096x4096 11.1 / 11.2 / 11.3 vs 12.0 / 11.9 / 12.0, 8192x3696 14.4 / 14.6 vs 15.1 / 15.0 at M = 4 / 16,
    # 8192x28672 58.4 / 59.0 / 61.0 vs 61.2 / 61.4 / 63.6; but with the weight the left operand (28672x8192)
    # 57.0 / 58.3 / 62.3 vs 57.8 / 58.3 / 59.6 (H200: 52.3 / 55.0 / 54.9 vs 56.2-58.1), so that tile stays row-major.
    if m <= 16:
        if kp % 512 == 0 and kp >= 16384:
            return GemmConfig(16, 64, 512, 4, 3, split_k=0, predequant_a=True, w_operand_b=True, a_mma16=True)
        if kp % 256 == 0 and kp >= 2048:
            if n >= 16384:  # the weight as the left operand on 2-warp mma.sync (--ab-decode: 16x28672x8192 59.1 us
                # vs 63.2 as the right operand, 4x 57.8 vs 62.8): enough N tiles to fill the SMs without K splits
                return GemmConfig(16, 64, 256, 2, 3, split_k=0, predequant_a=True)
            return GemmConfig(16, 64, 256, 4, 3, split_k=0, programs_per_sm=3, predequant_a=True, w_operand_b=True,
                              a_mma16=True)
        if kp >= 2048 and n * kp < 8 << 20:
            # The GEMM quantizing x (`fp4linear.ops.use_quantize_in_gemm`) on the per-rank shapes: K splits
            # one K tile short at least, so that the few N tiles still fill the SMs (--tune-fused, H100, M =
            # 8 / 16, us): 1288x2688 7.37 / 6.96 vs 8.35 / 7.59 with >= 4 tiles a split; 2576x2688 128-row
            # weight tiles 8.92 / 8.92 vs 9.74 / 9.41 with 64 rows, 10.63 / 9.88 before. Not at Kp = 512
            # (2688x464: 5.22 vs 4.99 at 16 rows, four K tiles in all).
            if n >= 2048:
                return GemmConfig(16, 128, block_k, 4, 3, split_k=0, min_split_tiles=1, predequant_a=True,
                                  w_operand_b=True, a_mma16=True)
            return GemmConfig(16, 64, block_k, 4, 4, split_k=0, min_split_tiles=1, predequant_a=True, w_operand_b=True,
                              a_mma16=True)
        return GemmConfig(16, 64, block_k, 4, 4, split_k=0, predequant_a=True, w_operand_b=True, a_mma16=True)
    if m <= 64:
        # Batched decode, 17-64 rows: the weight as the right operand of 32- or 64-row tiles (mma.sync; one
        # decode of each weight tile serves every row) with K splits to fill the SMs, where the mid-M tiles
        # below decoded it for 128-row wgmma tiles mostly of padding. H100, two launches, weights cold,
        # device time (linear_bench.py --tune-operand --m 32 64, results/operand_tune_h100.csv), vs the
        # mid-M route then: 32x8192x8192 31.0 us vs 58.2 (bf16 48.5), 32x4096x4096 13.5 vs 23.7, 32x8192x3696
        # 19.3 vs 29.6 (128-wide K tiles: Kp % 256 != 0), 32x28672x8192 95.8 vs 161 (128 weight rows),
        # 32x1288x2688 9.4 vs 11.4; 64x8192x8192 40.8 vs 58.6, 64x8192x3696 23.7 vs 30.1, 64x28672x8192 137.6
        # vs 165 (64x128x128 w8), 64x4096x4096 20.2 vs 24.2 (32x128x256: 18.9).
        # From 24M weight elements the 32-row tiles multiply as two 16-row dots with A in the mma16 order (`dot_m`
        # 16: no register moves gathering A's fragments, 474 SASS a 64x256 K tile instead of 757; --tune-operand
        # --m 32 64 --tiles d16, same run): 32x8192x8192 28.4 us vs 31.4, 32x8192x3696 18.2 vs 19.3, 32x28672x8192
        # 78.6 vs 95.2, 32x8192x28672 82.4 vs 90.7; 64x28672x8192 124.3 vs 137.7 (32x128x256). Not below (32x4096x4096
        # 14.2 vs 13.7, the per-rank shapes 1.1-1.2x slower) nor at 64 rows otherwise (64x8192x8192 41.5 vs 41.4,
        # 64x8192x28672 126.1 vs 124.2, 64x8192x3696 25.5 vs 24.0; Kp 4096-8192 below).
        # Below 8M weight elements 17-32 rows take 16-row tiles, the weight decoded once a 16 rows (--tune-operand
        # --m 24 32, two launches, session 29): 32x2688x464 5.58 us vs 6.32, 32x768x4096 8.50 vs 10.25, 32x4096x512
        # 5.95 vs 6.30, 32x1288x2688 8.93 vs 9.30, 32x2688x232 5.21 vs 5.53, 24x1288x2688 9.09 vs 9.61; level at
        # 2576x2688 (10.93 vs 10.94, 11.17 vs 11.08 at 24). 33-64 rows at Kp 4096-8192 under 64M elements: the
        # 32-row tiles of 16-row dots (64x4096x4096 17.7 vs 20.0, 64x3584x4096 17.6 vs 20.1, 64x14336x4096 40.0
        # vs 44.2, 48 rows alike); not at 64x8192x8192 (41.5 vs 40.6), 64x4096x1792 (14.3 vs 12.3), 64x4096x14336
        # (57.4 vs 45.3).
        tile = dict(split_k=0, predequant_a=True, w_operand_b=True)
        wide = kp % 256 == 0
        if m <= 32 and n * kp < 8 << 20:
            return GemmConfig(16, 64, block_k, 4, 4, **tile)
        if m <= 32:
            if n * kp >= 24 << 20:
                return GemmConfig(32, 64, 256 if wide else 128, 4, 3 if wide else 4, dot_m=16, a_mma16=True, **tile)
            return GemmConfig(32, 128 if n >= 16384 else 64, 256 if wide else 128, 4, 3 if wide else 4, **tile)
        if n >= 16384:
            if wide:
                return GemmConfig(32, 128, 256, 4, 3, dot_m=16, a_mma16=True, **tile)
            return GemmConfig(64, 128, 128, 8, 3, **tile)
        if wide and 4096 <= kp <= 8192 and n * kp < 64 << 20:
            return GemmConfig(32, 128, 256, 4, 3, dot_m=16, a_mma16=True, **tile)
        return GemmConfig(64, 64, 128, 4, 3, **tile)
    # Mid M on the Triton GEMM (the cuBLAS path takes over from M = 512, `fp4linear.ops.use_cublas`):
    # 64x64x128 tiles, 3 stages (128x4096x4096: 26.0 us vs 38.2 with 128x64x64; 128x1288x2688: 17.2
    # vs 30.3). Triton's schedule of the large tiles waits for each MMA before decoding the next weight
    # tile; from 24M weight elements the pipelined Gluon kernel (`wgmma_stages`) wins, one program per SM
    # (linear_bench.py --tune-pipelined, H100, whole layer, M = 128 / 256, us, vs the routed path then):
    # 8192x8192 128x64x64 4 stages 61.8 / 108.1 vs 82.1 / 115.4; 8192x3696 the same tile 32.8 / 50.2 vs
    # 44.1 / 59.8 (cuBLAS at 256); 8192x28672 128x64x64 195.2 at 128 rows, 128x128x64 3 stages 323.5 at
    # 256 and 590.2 at 512 vs 229.6 / 365.5 / 649.1 (cuBLAS at 512); 28672x8192 128x128x64 3 stages 171.2
    # vs 204.9 at 128 rows, but at 256 Triton's 128x128x64 (308.1) beats it (321.3). Not past 24M
    # elements: 128x4096x4096 26.1 vs 23.7, 128x2576x2688 18.3 vs 13.3 (cuBLAS). The weight decoded into
    # wgmma's registers (`w_registers`) wins only with many weight tiles: N >= 16384 from 192 rows (below).
    if m < 512 or (m < 1024 and (kp >= 16384 or n >= 16384)):
        pipelined = dict(split_k=0, programs_per_sm=1, predequant_a=True, w_operand_b=True)
        if kp >= 16384:
            if m < 192:
                return GemmConfig(128, 64, 64, 8, 3, wgmma_stages=4, **pipelined)
            return GemmConfig(128, 128, 64, 8, 3, wgmma_stages=3, **pipelined)
        if n >= 16384:
            if m < 192:
                return GemmConfig(128, 128, 64, 8, 3, wgmma_stages=3, **pipelined)
            # the weight in wgmma's registers, 256 A rows x 128 weight rows (--tune-pipelined --registers,
            # 28672x8192: 253.5 us vs 308.2 on Triton's 128x128x64 at 256 rows, 492.1 vs 566.7 on cuBLAS at 512)
            return GemmConfig(256, 128, 64, 8, 3, split_k=0, programs_per_sm=1, predequant_a=True, w_registers=True,
                              wgmma_stages=4)
        if n * kp >= 24 * 2**20:
            return GemmConfig(128, 64, 64, 8, 3, wgmma_stages=4, **pipelined)
        return GemmConfig(64, 64, block_k, 4, 3, split_k=0, predequant_a=True)
    if 2 * cdiv(m, 256) * cdiv(n, 128) < 3 * sm_count:
        # Narrow per-rank shapes: 256x128 tiles would fill under 1.5 waves (2048x1288x2688: 54.5 us
        # with 128x64 tiles vs 67.0; 2048x2576x2688: 97.6 vs 119). At 1.94 waves (2048x4096x4096)
        # 256x128 still wins: 167 us vs 221.
        return GemmConfig(128, 64, 64, 4, 4, predequant_a=True)
    return GemmConfig(256, 128, 64, 8, 4, predequant_a=True)  # 8192^3: 2515 us vs 2660 (s3), 2786 (128x128)


def activation_order(m, n: int, kp: int, device, tiles_for_m: int | None = None) -> int:
    """The layout (`GemmConfig.a_order`) in which `nvfp4_gemm_dequantized_a` without a config reads
    its A for this shape: what the pass before it must write (rows round_up(M, 16) when not 0)."""
    rows = m if tiles_for_m is None else tiles_for_m
    if compile_tracing():  # M may be symbolic (unhashable) there
        return gemm_config(rows, n, kp, device.type, _sm_count(device)).a_order
    return _activation_order(rows, n, kp, device)


@functools.lru_cache(maxsize=4096)
def _activation_order(rows, n, kp, device) -> int:
    return gemm_config(rows, n, kp, device.type, _sm_count(device)).a_order


def nvfp4_gemm(a_data, a_scale, w_data, w_scale, alpha, bias, out, *, config: GemmConfig | None = None):
    """out[M, N] = alpha * dequant(A) @ dequant(W)^T (+ bias); N = out.shape[1].

    a_data uint8 [M, Kp/2]; a_scale 128x4-swizzled [round_up(M, 128), Kp/16] (Kp % 64 == 0);
    w_data uint8 [>= N, Kp/2]; w_scale uint8 row-major [>= N, Kp/16]; alpha fp32 [1].
    With `predequant_a` A is first dequantized once to fp16 (an extra pass, a temporary [M, Kp]).
    """
    m, n = out.shape
    kp = a_data.shape[1] * 2
    if m == 0 or n == 0:
        return out
    if config is None:
        config = gemm_config(m, n, kp, out.device.type, _sm_count(out.device))
    if not config.predequant_a:
        return _gemm(a_data, a_scale, w_data, w_scale, alpha, bias, out, config)
    module = _interpreter.for_device(gemm_module, out.device)
    a_units = torch.empty((m, kp), dtype=torch.float16, device=out.device)
    order = 3 if config.w_registers else 0  # (the mma16 orders' tiles read a row-major A here)
    module.dequantize_activation_kernel[(cdiv(m, 32), kp // 64)](
        a_data, a_scale.view(dtype=a_data.dtype), a_units, m, kp // 64, WORD_DECODE=config.word_decode,
        BLOCK_M=32, BLOCK_K=64, A_ORDER=order, num_warps=4)
    if order:
        return _gemm(a_units, a_units, w_data, w_scale, alpha, bias, out, config, a_mode=_UNITS, a_order=order)
    return _gemm(a_units, a_units, w_data, w_scale, alpha, bias, out, config)


def nvfp4_gemm_dequantized_a(a_units, w_data, w_scale, alpha, bias, out, *, config: GemmConfig | None = None,
                             tiles_for_m: int | None = None, a_order: int | None = None):
    """The same GEMM with A already dequantized: fp16 in units of 2^-14, in the weight decode's K
    order, laid out as `a_order` says (`GemmConfig.a_order`): 0, [M, Kp] row-major
    (`fake_quantize(..., units=True)`); 1 or 2, [round_up(M, 16), Kp] in that MMA fragment order
    (`fake_quantize(..., a_order=...)`; `activation_order` gives the one the routed tile reads).
    a_order None: config's own, row-major when config is None. tiles_for_m (config None): the tiles
    `gemm_config` picks for that many rows instead of M."""
    m, n = out.shape
    if m == 0 or n == 0:
        return out
    if a_order is None:
        a_order = config.a_order if config is not None else 0
    check_mma16(a_order, a_units.shape[0], m, "a_units")
    return _gemm(a_units, a_units, w_data, w_scale, alpha, bias, out, config, a_mode=_UNITS, tiles_for_m=tiles_for_m,
                 a_order=a_order)


def nvfp4_gemm_quantize_x(x, gs, w_data, w_scale, alpha, bias, out, *, config: GemmConfig | None = None,
                          tiles_for_m: int | None = None, weight_scale_2=None, act: str | None = None):
    """The whole Linear in one launch: out = alpha * quantize(x, gs) @ dequant(W)^T (+ bias), every
    program quantizing the x rows it multiplies in registers. x bf16/fp16/fp32 [M, K] with unit
    column stride (K <= Kp); gs, alpha fp32 [1] (read on the device). The same values, tiles and
    sums as `fake_quantize(x, gs, units=True)` then `nvfp4_gemm_dequantized_a` with the same config:
    the same bits, one launch and no [M, Kp] temporary; x is re-quantized once per N tile.
    tiles_for_m: as for `nvfp4_gemm_dequantized_a`. weight_scale_2 (fp32 [1], the weight's decode
    scale) instead of gs and alpha (then unused): a dynamic scale, every program deriving gs and
    alpha from max |x| (of act(x) with act) over all of x, the bits `dynamic_gs_alpha` gives; x must be
    small enough for `fuses_dynamic_scale_in_pass` (the same unrolled reads). act (a name of `ACTS`):
    x is that activation's input ([M, 2I] for a gated one) and the GEMM multiplies quantize(act(x)):
    the bits of `act_fake_quantize(x, act, gs, units=True)` then `nvfp4_gemm_dequantized_a` (the kernel
    is compiled, as the activation pass is, without FMA contraction; its epilogue's one multiply-add is
    written out as the contracting GEMM rounds it)."""
    m, n = out.shape
    if m == 0 or n == 0:
        return out
    dynamic = weight_scale_2 is not None
    k = act_width(act, x.shape[1]) if act is not None else x.shape[1]  # (checks act and a gated x's width)
    if dynamic and not fuses_dynamic_scale_in_pass(m, x.shape[1], x.stride(0)):
        raise ValueError(f"x of {m} x {x.shape[1]} (row stride {x.stride(0)}) is too large for the dynamic scale "
                         "inside the GEMM (fuses_dynamic_scale_in_pass)")
    if k == 1 or x.stride(0) == 1:
        # Triton makes an integer argument equal to 1 a constant, and with K or x's row stride a
        # constant its dot-operand pass fails to compile this kernel (Triton 3.6): a pass first.
        # (A in the layout the tile reads: the routed decode tiles take the mma16 order)
        kp = w_data.shape[1] * 2
        order = config.a_order if config is not None else activation_order(m, n, kp, x.device, tiles_for_m)
        a = torch.empty((mma16_rows(m, order), kp), dtype=torch.float16, device=x.device)
        if act is not None:
            if dynamic:
                gs, alpha = dynamic_gs_alpha(x, weight_scale_2, act=act)
            act_fake_quantize(x, act, gs, a, units=True, a_order=order)
        elif dynamic:
            alpha = fake_quantize_dynamic(x, weight_scale_2, a, units=True, a_order=order)
        else:
            fake_quantize(x, gs, a, units=True, a_order=order)
        return _gemm(a, a, w_data, w_scale, alpha, bias, out, config, a_mode=_UNITS, tiles_for_m=tiles_for_m,
                     a_order=order)
    if dynamic:
        return _gemm(x, weight_scale_2, w_data, w_scale, weight_scale_2, bias, out, config, a_mode=_X,
                     tiles_for_m=tiles_for_m, dynamic=True, act=act)
    return _gemm(x, gs, w_data, w_scale, alpha, bias, out, config, a_mode=_X, tiles_for_m=tiles_for_m, act=act)


# The kernel reads scale bytes as uint8: only the JIT needs the views of e4m3 scales (`CachedLaunch`).
_launch = CachedLaunch(gemm_module.nvfp4_gemm_kernel,
                       views={1: (torch.float8_e4m3fn, torch.uint8), 3: (torch.float8_e4m3fn, torch.uint8)})
_wgmma_launch = CachedLaunch(gemm_wgmma.nvfp4_gemm_wgmma_kernel,
                             views={1: (torch.uint8, torch.int32), 2: (torch.float8_e4m3fn, torch.uint8)})
_wgmma_rs_launch = CachedLaunch(gemm_wgmma.nvfp4_gemm_wgmma_rs_kernel,
                                views={1: (torch.uint8, torch.int32), 2: (torch.float8_e4m3fn, torch.uint8)})


_PACKED, _UNITS, _X = 0, 1, 2  # what A is: packed NVFP4, fp16 units (dequantized), the input x


def _gemm(a, a_scale, w_data, w_scale, alpha, bias, out, config, a_mode=_PACKED, tiles_for_m=None, dynamic=False,
          a_order=0, act=None):
    m, n = out.shape
    kp = w_data.shape[1] * 2
    index = out.get_device()  # CUDA device index, -1 on the CPU
    if a_mode == _X:
        k, sx = (a.shape[1] if act is None else act_width(act, a.shape[1])), a.stride(0)
        if k > kp:
            raise ValueError(f"x has {k} columns, more than the weight's padded K ({kp})")
    else:
        k = sx = kp  # unused by the kernel
    tracing = compile_tracing()
    plan = _gemm_plan.__wrapped__ if tracing else _gemm_plan  # M may be symbolic (unhashable) there
    # the max |x| reads unroll over rows: M made concrete (under torch.compile, a guard on M)
    amax = (next_pow2(int(m)), k) if dynamic else None
    grid, meta, options, split, tiles, per_split, launch_id, gluon_launch = plan(
        index, m, n, kp, config, a_mode, a.dtype, out.dtype, None if bias is None else bias.dtype,
        *((0, 0) if tracing else (int_key(k), int_key(sx))), tiles_for_m, amax, a_order, tracing, act,
        x_align(k, sx) if a_mode == _X else 1)
    if split > 1:
        partials, tickets = scratch_of(out).get(split * m * n, tiles)
    else:
        partials = tickets = out  # unused
    if gluon_launch is not None:  # a pipelined Gluon kernel (kernels/gemm_wgmma.py)
        gluon_launch(launch_id, grid, (a, w_data, w_scale, alpha, bias if bias is not None else out, out, partials,
                                       tickets, m, n, kp // 64, per_split, out.stride(0)), meta, options)
        return out
    args = (a, a_scale, w_data, w_scale, alpha, bias if bias is not None else out, out, partials, tickets, m, n,
            kp // 64, per_split, out.stride(0), k, sx)
    if index < 0:
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # 1 / 0 -> inf is part of the recipe
            _interpreter.interpreted(gemm_module).nvfp4_gemm_kernel[grid](*_launch.jit_args(args), **meta, **options)
    elif a_mode == _X and not tracing:  # x is the caller's tensor: its alignment joins the key
        _launch((launch_id, a.data_ptr() % 16 == 0), grid, args, meta, options)
    else:
        _launch(launch_id, grid, args, meta, options)
    return out


_launch_ids: dict = {}


def runs_pipelined(config: GemmConfig, kp: int, device: torch.device) -> bool:
    """Whether a GEMM with A dequantized runs config on a Gluon kernel of kernels/gemm_wgmma.py
    (`w_registers`: the register-operand one): config.wgmma_stages set, a CUDA device of compute
    capability 9.x (wgmma), whole K tiles, a Triton those kernels are written for."""
    if not (config.wgmma_stages > 0 and device.type == "cuda" and kp % config.block_k == 0
            and _capability(device)[0] == 9):
        return False
    if not gemm_wgmma.SUPPORTED:
        _gluon_unsupported_once()
        return False
    return True


@functools.cache
def _gluon_unsupported_once() -> None:
    log.warning("Triton %s: the pipelined Gluon GEMMs (kernels/gemm_wgmma.py) are written for Triton 3.5-3.6; "
                "Triton's portable kernel runs their tiles instead (the same results, slower past decode)",
                triton.__version__)


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def k_splits(config: GemmConfig, tiles: int, kp: int, sm_count: int) -> tuple[int, int]:
    """(K splits, K tiles per split) of `tiles` output tiles: config.split_k, or for split_k 0 enough
    programs for programs_per_sm per SM, each split at least min_split_tiles K tiles long; no empty
    splits."""
    k_tiles = cdiv(kp, config.block_k)
    split = config.split_k
    if split == 0:
        split = max(1, min(cdiv(config.programs_per_sm * sm_count, tiles), k_tiles // config.min_split_tiles))
    per_split = int(cdiv(k_tiles, split))  # int(): a constexpr, even where M is symbolic (compile)
    return int(cdiv(k_tiles, per_split)), per_split


@functools.lru_cache(maxsize=4096)
def _gemm_plan(index, m, n, kp, config, a_mode, a_dtype, out_dtype, bias_dtype, k_key=0, sx_key=0, tiles_for_m=None,
               amax=None, a_order=0, tracing=False, act=None, x_al=1):
    """Config, split-K, grid, constexprs and launch key of one shape (device index -1: the CPU):
    worked out once. k_key, sx_key: `int_key` of x's K and row stride (what Triton specializes
    them on; a_mode _X only), x_al their `x_align`; amax: (rows, K) of a dynamic scale's max |x| reads, or None. The last
    item: the `CachedLaunch` of the Gluon kernel where config.wgmma_stages applies (a CUDA device, A
    dequantized, not while torch.compile traces: Inductor launches Triton kernels), else None."""
    device = torch.device("cuda", index) if index >= 0 else torch.device("cpu")
    routed = config is None
    if routed:
        config = gemm_config(m if tiles_for_m is None else tiles_for_m, n, kp, device.type, _sm_count(device))
    if a_mode == _X and (config.wgmma_stages or config.w_registers):
        # x quantized inside: Triton's kernel of the tile (the Gluon kernels read a pre-dequantized A; a routed
        # tile is one of theirs where a small eager call past 32 rows with N >= 16384 or Kp >= 16384 takes the
        # one launch with `ops.TILES_FOR_HOST_BOUND`'s tiles)
        config = replace(config, wgmma_stages=0, w_registers=False, max_registers=0)
    if a_mode != _PACKED:  # A's values in the weight decode's order: word decode on both sides
        config = replace(config, predequant_a=a_mode == _UNITS, word_decode=True)
    a_in_rs_order = a_mode == _UNITS and a_order == 3
    if a_mode == _UNITS and a_order != config.a_order:
        # the caller's layout of A decides; a routed tile follows it where it can (a row-major A and the
        # register-operand tile: Triton's kernel of that tile, A moved into its K order in registers)
        if not routed or a_order in (1, 2) and (16 not in (config.block_m, config.dot_m) or
                                                (a_order == 1) != config.w_operand_b) or (
                a_order == 3) or (config.w_registers and a_order != 0):
            raise ValueError(f"a_order {a_order} does not match the GEMM tile ({config}): its A layout is "
                             f"{config.a_order}")
        config = replace(config, wgmma_stages=0) if config.w_registers else replace(config, a_mma16=bool(a_order))
    if config.w_registers and not a_in_rs_order:  # only Triton's kernel moves A into that order itself
        config = replace(config, wgmma_stages=0)
    tiles = cdiv(m, config.block_m) * cdiv(n, config.block_n)
    split, per_split = k_splits(config, tiles, kp, _sm_count(device))
    if a_mode != _X and not tracing and runs_pipelined(config, kp, device):
        meta = dict(HAS_BIAS=bias_dtype is not None, SPLIT_K=split, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                    BLOCK_K=config.block_k, GROUP_M=config.group_m, STAGES=config.wgmma_stages)
        options = dict(num_warps=config.num_warps)
        if config.max_registers:
            options["maxnreg"] = config.max_registers
        tail = ("wgmma", index, out_dtype, bias_dtype, n, kp, per_split, config.w_registers, *meta.values(),
                config.max_registers)
        launch = _wgmma_rs_launch if config.w_registers else _wgmma_launch
        return ((tiles * split, 1, 1), meta, options, split, tiles, per_split,
                _launch_ids.setdefault(tail, len(_launch_ids)), launch)
    meta = dict(HAS_BIAS=bias_dtype is not None, SPLIT_K=split, EVEN_K=kp % config.block_k == 0,
                BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
                WORD_DECODE=config.word_decode, PREDEQUANT_A=config.predequant_a, QUANTIZE_X=a_mode == _X,
                DYNAMIC=amax is not None, AMAX_ROWS=amax[0] if amax else 1, W_OPERAND_B=config.w_operand_b,
                A_ORDER=a_order if a_mode == _UNITS else 0, RS_ORDER=config.w_registers,
                **amax_reads(amax[1] if amax else 0, amax is not None), ACT=-1, GATED=0, BF16_BITS=0, FMA_EPILOGUE=0,
                DOT_M=config.dot_m, X_ALIGN=x_al)
    options = dict(num_warps=config.num_warps, num_stages=config.num_stages)
    if act is not None:  # the activation's IEEE ops in torch's order, as the activation pass compiles them
        code, gated = ACTS[act]
        meta.update(ACT=code, GATED=int(gated), BF16_BITS=int(index < 0), FMA_EPILOGUE=int(index >= 0))
        options["enable_fp_fusion"] = False
    tail = (index, a_dtype, out_dtype, bias_dtype, n, kp, per_split, *meta.values(), *options.values(), k_key, sx_key)
    return (tiles * split, 1, 1), meta, options, split, tiles, per_split, _launch_ids.setdefault(tail, len(_launch_ids)), None
