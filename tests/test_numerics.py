"""The kernels' NVFP4 decode (kernels/numerics.py) against the reference, bit for bit."""

import pytest
import torch
import triton
import triton.language as tl

import fp4linear
from fp4linear import reference
from fp4linear.kernels import _interpreter, gemm, numerics

from .conftest import global_scale_of


def word_order(v: torch.Tensor) -> torch.Tensor:
    """[..., K] natural K order -> the word decode's (within 8 codes: 0, 4, 1, 5, 2, 6, 3, 7)."""
    return v.unflatten(-1, (-1, 2, 4)).transpose(-1, -2).flatten(-3)


def expected_units(q: fp4linear.NVFP4Tensor, rows: int) -> torch.Tensor:
    """fp16 value * 2^-14 of every element (padding included), from the reference's own decode."""
    codes = reference.unpack_nibbles(q.data[:rows].cpu())
    scales = reference.unswizzle(q.scale.view(torch.uint8).cpu(), q.sf_layout)[:rows]
    sf = scales.view(torch.float8_e4m3fn).float().repeat_interleave(16, dim=-1)
    sf[scales.repeat_interleave(16, dim=-1) & 0x7F == 0x7F] = float("nan")
    return (reference.e2m1_decode(codes) * sf * 2.0**-14).to(torch.float16)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor):
    got, want = got.cpu(), want.cpu()
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))


def rs_order(v: torch.Tensor) -> torch.Tensor:
    """Word-ordered columns moved as the register-operand GEMM's activation wants them (a_order 3):
    within each 64, column 16 c + 8 h + 4 r1 + 2 r0 + p -> 32 h + 16 r1 + 8 r0 + 2 c + p."""
    m, kp = v.shape
    return v.reshape(m, kp // 64, 4, 2, 2, 2, 2).permute(0, 1, 3, 4, 5, 2, 6).reshape(m, kp)


@pytest.mark.parametrize("word_decode, a_order", [(True, 0), (False, 0), (True, 3)])
@pytest.mark.parametrize("m, k", [(37, 464), (5, 1368)])
def test_decode_is_exact(device, word_decode, a_order, m, k):
    """Every code in every nibble of a word, under scales from a wide-range input, and a NaN block."""
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).unsqueeze(1)).to(torch.bfloat16)
    x[1, 20] = float("nan")
    q = fp4linear.quantize(x.to(device), global_scale_of(x[x.isfinite()]).to(device), k_align=64)
    q.data.copy_(torch.randint(0, 256, q.data.shape, generator=g, dtype=torch.uint8))
    out = torch.full((m, q.kp), float("nan"), dtype=torch.float16, device=device)
    module = _interpreter.for_device(gemm, torch.device(device))
    module.dequantize_activation_kernel[(triton.cdiv(m, 32), q.kp // 64)](
        q.data, q.scale.view(torch.uint8), out, m, q.kp // 64, WORD_DECODE=word_decode, BLOCK_M=32, BLOCK_K=64,
        A_ORDER=a_order)
    want = expected_units(q, m)
    want = word_order(want) if word_decode else want
    assert_same_bits(out, rs_order(want) if a_order == 3 else want)


@triton.jit
def _decode_both_kernel(words_ptr, ptx_ptr, portable_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    words = tl.load(words_ptr + i)
    ptx = numerics._decode_words_ptx(words)  # (a0, a1, a2, a3, b0, b1, b2, b3)
    a0, b0 = numerics._half2_pair(words, 9)
    a1, b1 = numerics._half2_pair(words, 5)
    a2, b2 = numerics._half2_pair(words, 1)
    a3, b3 = numerics._half2_pair(words, -3)
    portable = (a0, a1, a2, a3, b0, b1, b2, b3)
    for j in tl.static_range(8):
        tl.store(ptx_ptr + j * N + i, ptx[j])
        tl.store(portable_ptr + j * N + i, portable[j])


@pytest.mark.cuda
def test_ptx_decode_equals_portable():
    """The inline-PTX word decode (GPUs) gives the portable form's bits (`_half2_pair`, the
    interpreter's): every 16-bit pattern in each half of a word, and random words."""
    n = 1 << 16
    pattern = torch.arange(n, dtype=torch.int64)
    high = torch.randint(0, n, (n,), generator=torch.Generator().manual_seed(0))
    words = torch.cat([pattern | (high << 16), (pattern << 16) | high,
                       torch.randint(0, 1 << 32, (n,), generator=torch.Generator().manual_seed(1))])
    words = (words - ((words >> 31) << 32)).to(torch.int32).cuda()  # as int32 bits
    ptx = torch.empty(8, words.numel(), dtype=torch.float16, device="cuda")
    portable = torch.full_like(ptx, float("nan"))
    for chunk in range(0, words.numel(), n):
        sl = slice(chunk, chunk + n)
        p, q = torch.empty(8, n, dtype=torch.float16, device="cuda"), torch.empty(8, n, dtype=torch.float16, device="cuda")
        _decode_both_kernel[(1,)](words[sl], p, q, N=n)
        ptx[:, sl], portable[:, sl] = p, q
    assert torch.equal(ptx.view(torch.int16), portable.view(torch.int16))
    # and both are the E2M1 values times 2^-14 (codes i and i + 4 of each word in pair j = i)
    codes = torch.stack([(words.cpu().to(torch.int64) >> (4 * i)) & 15 for i in range(8)])
    want = (reference.e2m1_decode(codes) * 2.0**-14).to(torch.float16)
    assert torch.equal(ptx.cpu().view(torch.int16), want.view(torch.int16))


def test_kernel_sources_survive_torch_compile():
    """torch.compile (Inductor) re-emits a triton_op's kernels from their source, with their global
    constants as literals and each called @triton.jit function under its own name: the result must
    still be valid Python (a multi-line PTX string was not), and every function it calls must be
    defined in it (a module-level alias under another name is not re-emitted)."""
    import ast
    import builtins

    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code as source

    from fp4linear.kernels import act_quantize, gemv, quant_dequant, quantize, scales, small_m_linear

    # every kernel a torch.compile'd Linear or GatedMLP launches through torch.library.wrap_triton
    for kernel in (gemm.nvfp4_gemm_kernel, gemm.dequantize_activation_kernel, small_m_linear.nvfp4_linear_small_m_kernel,
                   gemv.nvfp4_gemv_kernel, quant_dequant.fake_quantize_kernel, quant_dequant.dequantize_rows_kernel,
                   quant_dequant.cublas_operands_kernel, quant_dequant.alpha_epilogue_kernel,
                   quantize.nvfp4_pad_quantize_kernel, scales.dynamic_scale_kernel, act_quantize.activation_kernel,
                   act_quantize.act_amax_kernel, act_quantize.act_quantize_kernel, act_quantize.act_fake_quantize_kernel,
                   act_quantize.act_cublas_operands_kernel):
        text = source(kernel)
        text = text[0] if isinstance(text, tuple) else text
        tree = ast.parse(text, kernel.fn.__name__)
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        defined |= {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        local = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        missing = called - defined - local - set(dir(builtins))
        assert not missing, (kernel.fn.__name__, missing)
