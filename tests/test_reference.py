"""The reference against hand-worked cases (docs/nvfp4.md, sections 1-3)."""

import math

import pytest
import torch

from fp4linear import reference
from fp4linear.format import SWIZZLE_8x4, SWIZZLE_128x4


def up(v):  # the next fp32 above v
    return torch.nextafter(torch.tensor(v), torch.tensor(math.inf)).item()


def test_e2m1_ties_go_to_even():
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    # 0.25 -> 0 | 0.75 -> 1.0 | 1.25 -> 1.0 | 1.75 -> 2.0 | 2.5 -> 2.0 | 3.5 -> 4.0 | 5.0 -> 4.0
    assert reference.e2m1_encode(ties).tolist() == [0, 2, 2, 4, 4, 6, 6]
    above = torch.tensor([up(v) for v in ties.tolist()])
    assert reference.e2m1_encode(above).tolist() == [1, 2, 3, 4, 5, 6, 7]


def test_e2m1_exact_values_saturation_and_sign():
    exact = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    assert reference.e2m1_encode(exact).tolist() == list(range(8))
    assert reference.e2m1_encode(-exact).tolist() == list(range(8, 16))  # -0.0 -> 0x8
    big = torch.tensor([6.5, 7.0, 100.0, 3e38, math.inf, -math.inf])
    assert reference.e2m1_encode(big).tolist() == [7, 7, 7, 7, 7, 15]
    assert reference.e2m1_encode(torch.tensor([-0.1, -0.25, 0.1])).tolist() == [8, 8, 0]
    assert torch.equal(reference.e2m1_decode(torch.arange(16, dtype=torch.uint8)), torch.cat([exact, -exact]))


def scale_byte_for(vmax: float) -> int:
    """Scale byte of a block whose max is vmax, with gs = 6 (then vmax * gs / 6 == vmax in fp32)."""
    block = torch.zeros(1, 16)
    block[0, 3] = vmax
    _, scales = reference.quantize_blocks(block, torch.tensor([6.0]))
    return scales.item()


@pytest.mark.parametrize(
    "vmax, byte",
    [
        (1.0, 0x38),  # 2^0: exponent 7, mantissa 0
        (1.0625, 0x38),  # tie between 1.0 and 1.125 -> even mantissa 0
        (1.1875, 0x3A),  # tie between 1.125 and 1.25 -> even mantissa 2
        (448.0, 0x7E),  # the largest finite E4M3
        (1000.0, 0x7E),  # saturates to 448, never the NaN byte
        (2.0**-6, 0x08),  # smallest normal
        (2.0**-9, 0x01),  # smallest subnormal
        (3 * 2.0**-10, 0x02),  # subnormal tie 1 vs 2 (x 2^-9) -> even
        (2.0**-10, 0x00),  # tie 0 vs 2^-9 -> 0
        (7 * 2.0**-9, 0x07),  # largest subnormal
    ],
)
def test_e4m3_scale_rounding(vmax, byte):
    assert scale_byte_for(vmax) == byte


def test_scale_that_rounds_to_zero_saturates_codes():
    # vmax > 0 but its scale rounds to 0: out-scale = min(1/0, FLT_MAX), codes saturate to +-6.
    block = torch.zeros(1, 16)
    block[0, 0], block[0, 1] = 2.0**-11, -(2.0**-12)
    codes, scales = reference.quantize_blocks(block, torch.tensor([6.0]))
    assert scales.item() == 0
    assert codes[0, :2].tolist() == [7, 15] and codes[0, 2:].eq(0).all()


def test_worked_block():
    # gs = 1, vmax = 6: scale e4m3(6 * fp32(1/6)) = 1.0 (0x38), out-scale 1: codes are direct.
    x = torch.tensor([[6.0, -3.0, 0.5, 0.25, 0.75, -1.25, 1.75, 2.5, 3.5, 5.0, -0.0, 0.0, 4.0, -6.0, 1.0, 1.5]])
    codes, scales = reference.quantize_blocks(x, torch.tensor([1.0]))
    assert scales.tolist() == [[0x38]]
    assert codes[0].tolist() == [7, 13, 1, 0, 2, 10, 4, 4, 6, 6, 8, 0, 6, 15, 2, 3]


def test_zero_and_negative_zero_blocks():
    x = torch.zeros(1, 32)
    x[0, 16:] = -0.0
    codes, scales = reference.quantize_blocks(x, torch.tensor([3.0]))
    assert scales.tolist() == [[0, 0]]
    assert codes[0, :16].eq(0).all() and codes[0, 16:].eq(8).all()


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_block(bad):
    x = torch.randn(2, 48)
    x[1, 20] = bad
    good_codes, good_scales = reference.quantize_blocks(torch.where(torch.isfinite(x), x, 0.0), torch.tensor([100.0]))
    codes, scales = reference.quantize_blocks(x, torch.tensor([100.0]))
    assert scales[1, 1].item() == 0x7F and codes[1, 16:32].eq(0).all()
    # Every other block is untouched.
    keep = torch.ones_like(scales, dtype=torch.bool)
    keep[1, 1] = False
    assert torch.equal(scales[keep], good_scales[keep])
    assert torch.equal(codes[1, :16], good_codes[1, :16]) and torch.equal(codes[0], good_codes[0])
    assert fp4_nan_rows(x) == [1]


def fp4_nan_rows(x):
    q = reference.quantize(x, torch.tensor([100.0]), k_align=16)
    deq = reference.dequantize(q)
    return sorted(set(torch.nonzero(deq.isnan())[:, 0].tolist()))


def test_swizzle_128x4_matches_spec_formula():
    rows, s4 = 256, 12
    scales = torch.randint(0, 256, (rows, s4), dtype=torch.uint8)
    flat = reference.swizzle(scales, SWIZZLE_128x4).flatten()
    for m, s in [(0, 0), (1, 0), (31, 3), (32, 0), (127, 11), (128, 4), (200, 7), (255, 11)]:
        off = (m // 128) * (s4 // 4) * 512 + (s // 4) * 512 + (m % 32) * 16 + ((m % 128) // 32) * 4 + (s % 4)
        assert flat[off] == scales[m, s]
    assert torch.equal(reference.unswizzle(reference.swizzle(scales, SWIZZLE_128x4), SWIZZLE_128x4), scales)


def test_swizzle_8x4_matches_spec_formula():
    rows, s4 = 24, 8
    scales = torch.randint(0, 256, (rows, s4), dtype=torch.uint8)
    flat = reference.swizzle(scales, SWIZZLE_8x4).flatten()
    for m in range(rows):
        for s in range(s4):
            assert flat[(m // 8) * (s4 // 4) * 32 + (s // 4) * 32 + (m % 8) * 4 + (s % 4)] == scales[m, s]
    assert torch.equal(reference.unswizzle(reference.swizzle(scales, SWIZZLE_8x4), SWIZZLE_8x4), scales)


def test_pack_low_nibble_first():
    codes = torch.tensor([[1, 2, 15, 8]], dtype=torch.uint8)
    assert reference.pack_nibbles(codes).tolist() == [[0x21, 0x8F]]
    assert torch.equal(reference.unpack_nibbles(reference.pack_nibbles(codes)), codes)


def test_padding_and_shapes():
    x = torch.randn(3, 5, 40)
    q = reference.quantize(x, torch.tensor([50.0]), k_align=64)
    assert q.shape == x.shape and q.kp == 64
    assert q.data.shape == (15, 32) and q.scale.shape == (128, 4)
    assert q.data[:, 20:].eq(0).all()  # K 40..64 packs to zero bytes
    rows = reference.unswizzle(q.scale.view(torch.uint8), SWIZZLE_128x4)
    assert rows[15:].eq(0).all() and rows[:, 3:].eq(0).all()  # padded rows; block 3 is all padding
    assert rows[:15, :3].ne(0).all()
    deq = reference.dequantize(q)
    assert deq.shape == x.shape
    assert (deq - x).norm() / x.norm() < 0.15


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_abs_amax_and_decode_scale(device, dtype):
    """The one amax -> decode-scale rule (calibrate, dynamic scales, quantize_weight): max |x| in
    one pass, and amax / 2688 correctly rounded on every device (fp64 then fp32 rounding is exact)."""
    from fp4linear.format import abs_amax, decode_scale

    g = torch.Generator().manual_seed(11)
    for scale in torch.rand(20, generator=g).mul(1000).tolist():
        x = (torch.randn(7, 3, 33, generator=g) * scale).to(dtype=dtype, device=device)
        amax = abs_amax(x)
        assert amax.dtype == torch.float32 and torch.equal(amax, x.abs().amax().float())
        want = torch.tensor(amax.item() / 2688, dtype=torch.float32)
        assert decode_scale(amax).item() == want.item()
    x[0, 0, 0] = float("nan")
    assert abs_amax(x).isnan()
    assert decode_scale(torch.zeros((), device=device)).item() > 0  # all-zero data: finite 1 / scale
