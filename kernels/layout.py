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
