"""Swizzled scale layouts as Triton functions: the one home of the offset formulas.

A scale layout stores the E4M3 block scales of an [M, Kp] tensor as `[round_up(M, T), S4]` bytes
(S4 = round_up(Kp/16, 4)), cut into atoms of T rows x 4 scale columns that are each one contiguous
run of 4*T bytes (docs/nvfp4.md, "Scale layouts"). The offset of scale (row, col) is a row part
plus a column part, so kernels can hoist the row part out of their K loops.

These bodies use only `//`, `%`, `*` and `+`, so the very same Python functions also run on torch
index tensors (`fp4linear.format.ScaleLayout` calls `.fn` on them): the kernels and the library
cannot disagree about a layout. Indices are non-negative, where Triton's truncating `//` and `%`
equal torch's flooring ones.
"""

import triton
import triton.language as tl


@triton.jit
def row_part_128x4(row, S4):
    """128x4: atoms of 128 rows x 4 columns (512 bytes); inside an atom, row r lives at
    (r % 32) * 16 + (r // 32) * 4, so 32 rows x 4 sub-rows x 4 columns."""
    return (row // 128) * (S4 * 128) + (row % 32) * 16 + ((row % 128) // 32) * 4


@triton.jit
def col_part_128x4(col):
    return (col // 4) * 512 + col % 4


@triton.jit
def row_part_8x4(row, S4):
    """8x4: atoms of 8 rows x 4 columns (32 bytes), row-major inside the atom."""
    return (row // 8) * (S4 * 8) + (row % 8) * 4


@triton.jit
def col_part_8x4(col):
    return (col // 4) * 32 + col % 4


@triton.jit
def scale_offset(row, col, S4, ROW_TILE: tl.constexpr):
    """Byte offset of the scale of (row, block column col) in the ROW_TILE x 4 layout (128 or 8)."""
    if ROW_TILE == 128:
        return row_part_128x4(row, S4) + col_part_128x4(col)
    else:
        return row_part_8x4(row, S4) + col_part_8x4(col)


# ---- the decode GEMM's activation operand in MMA fragment order ("mma16") ----------------------
# The pre-dequantized activation (fp16 units, K in `numerics.word_order`) of a 16-row GEMM tile is
# read by Triton as mma.sync fragments (kWidth 8). Stored row-major, each fragment gathers from two
# 128-bit loads, and the register moves that assemble them are a fifth of the decode tile's
# instructions. The mma16 orders store each 16-row tile so that one fragment is one 16-byte run and
# the 32 lanes of a warp read 32 consecutive runs (no shared-memory bank conflicts: an earlier order
# with the lanes 64 bytes apart had 4-way conflicts and measured 1.3-1.9x slower than row-major):
# [Kp/64 cc][2][2][8 g][4 cl][2][2][2 j2] (row = 16 * tile + 8 * r8 + g, k within its 64-group =
# 32 h + 8 cl + 4 s + 2 jj + j2; lane 4 g + cl of the MMA), the five binary digits placed by the MMA
# operand A is: ORDER 1, A the left operand (weight the right one, `GemmConfig.w_operand_b`): the
# runs of one lane s, jj, the run h, r8, j2; ORDER 2, A the right operand: r8, jj, then s, h, j2.
# Buffers hold round_up(M, 16) rows. `mma16_offset` is the writer's formula, `load_mma16_tile` the
# GEMM's reader (one [cc, 2, 2, g, cl, 8] block, permuted back in registers), `mma16_rows` /
# `check_mma16` the launchers' buffer rule.


def mma16_rows(m, a_order: int):
    """Rows of an [M, Kp] activation buffer in layout a_order: M for the row-major ones (0, 3), else
    round_up(M, 16)."""
    return (m + 15) // 16 * 16 if a_order in (1, 2) else m


def check_mma16(a_order, rows: int, m, name: str) -> None:
    """A clear error unless a_order is 0, 1, 2 or 3 and the buffer `name` has the rows it needs."""
    if a_order not in (0, 1, 2, 3):
        raise ValueError(f"a_order must be 0, 1, 2 or 3, got {a_order!r}")
    if a_order and rows != mma16_rows(m, a_order):
        raise ValueError(f"a_order {a_order}: {name} must have round_up(M, 16) = {mma16_rows(m, a_order)} rows, "
                         f"got {rows}")


@triton.jit
def mma16_offset(row, col, Kp, ORDER: tl.constexpr):
    """Element offset of (row, col) of an [M, Kp] activation stored in mma16 order ORDER (1 or 2)."""
    c = col % 64
    h, cl, s, jj, j2 = c // 32, (c // 8) % 4, (c // 4) % 2, (c // 2) % 2, c % 2
    r8 = (row // 8) % 2
    base = (row // 16) * 16 * Kp + (col // 64) * 1024 + jj * 256 + (row % 8) * 32 + cl * 8 + j2
    if ORDER == 1:
        return base + s * 512 + h * 4 + r8 * 2
    else:
        return base + r8 * 512 + s * 4 + h * 2


@triton.jit
def load_mma16_tile(a_ptr, pid_m, k0, Kp, BLOCK_K: tl.constexpr, ORDER: tl.constexpr, EVEN_K: tl.constexpr):
    """fp16 [16, BLOCK_K] = rows 16 pid_m.. and K columns k0.. of an activation in mma16 order ORDER
    (a_ptr fp16; columns from Kp on read as 0 unless EVEN_K: the tile lies inside Kp): one 16-byte
    run per MMA fragment."""
    tile = a_ptr + pid_m.to(tl.int64) * 16 * Kp + k0 * 16
    # one flat run (a 16 x BLOCK_K tile is contiguous): lanes then read consecutive 16-byte pieces
    # (a 6-d load let Triton spread a warp's lanes over the cc blocks, 2 KiB apart)
    run = tl.arange(0, 16 * BLOCK_K)
    if EVEN_K:
        a = tl.load(tile + run)
    else:
        a = tl.load(tile + run, mask=k0 + (run // 1024) * 64 < Kp, other=0.0)
    a8 = tl.reshape(a, [BLOCK_K // 64, 2, 2, 8, 4, 2, 2, 2])
    # -> rows (r8, g), K (cc, h, cl, s, jj, j2); the loaded dims: ORDER 1 cc s jj g cl h r8 j2,
    # ORDER 2 cc r8 jj g cl s h j2
    if ORDER == 1:
        return tl.reshape(tl.permute(a8, [6, 3, 0, 5, 4, 1, 2, 7]), [16, BLOCK_K])
    else:
        return tl.reshape(tl.permute(a8, [1, 3, 0, 6, 4, 5, 2, 7]), [16, BLOCK_K])


# ---- the activation for the weight as wgmma's register operand ("rs", a_order 3) ---------------
# `gemm_wgmma.nvfp4_gemm_wgmma_rs_kernel` decodes each weight word straight into the registers of
# wgmma's left operand, where a thread holds K pairs 2c, 2c + 1 and 2c + 8, 2c + 9 of every 16
# (c = lane % 4). Word j = 2c + h of each 64 columns (its `numerics.word_order` position q = 4 r1 +
# 2 r0 + p) lands at MMA column 32 h + 16 r1 + 8 r0 + 2 c + p, so the activation, the shared-memory
# operand, is stored row-major with its columns moved the same way: `rs_col`. `to_rs_order` moves
# a decoded weight tile likewise (the Triton kernel that computes the same tile portably).


@triton.jit
def rs_col(col):
    """Column of word-order position col of an activation stored for the register-operand kernel."""
    c = col % 64
    return col - c + ((c // 8) % 2) * 32 + ((c // 4) % 2) * 16 + ((c // 2) % 2) * 8 + (c // 16) * 2 + c % 2


@triton.jit
def to_rs_order(v, ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """[ROWS, BLOCK_K] in word order -> the register-operand order of `rs_col` (BLOCK_K % 64 == 0):
    each 64 columns (c, h, r1, r0, p) -> (h, r1, r0, c, p)."""
    v = tl.reshape(v, [ROWS, BLOCK_K // 64, 4, 2, 2, 2, 2])
    return tl.reshape(tl.permute(v, [0, 1, 3, 4, 5, 2, 6]), [ROWS, BLOCK_K])


@triton.jit
def activation_offset(row, col, Kp, ORDER: tl.constexpr):
    """Element offset of (row, word-order column col) of an [M, Kp] activation in layout ORDER
    (`GemmConfig.a_order`): 0 row-major, 1 / 2 `mma16_offset`, 3 row-major with `rs_col` columns."""
    if ORDER == 0:
        return row * Kp + col
    elif ORDER == 3:
        return row * Kp + rs_col(col)
    else:
        return mma16_offset(row, col, Kp, ORDER)
