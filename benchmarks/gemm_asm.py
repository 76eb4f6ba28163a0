"""Compile the NVFP4 GEMM for sm_90 offline (no GPU) and print its SASS instruction mix.

    python benchmarks/gemm_asm.py 16x64x256w4s3 128x64x64w4s4 --word-decode --predequant-a [--w-operand-b [--a-mma16 --dot-m 16]] [--dump DIR]

With --dump, grep the SASS for STS/LDSM/BAR and HGMMA/HMMA to see how the decoded weight reaches the
MMA (benchmarks/NOTES.md, session 8: through shared memory as the left operand, straight from the
decode as the right one with 16-token tiles).
The "K loop" line counts the main loop's instructions per thread per K tile and per weight element
(benchmarks/NOTES.md, session 9: 4.7 for the routed 16x64x256 decode tile).
"""

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_asm import sass_of  # noqa: E402
from kernels import gemm  # noqa: E402

SIG = {"a_ptr": "*u8", "a_scale_ptr": "*u8", "w_ptr": "*u8", "w_scale_ptr": "*u8", "alpha_ptr": "*fp32",
       "bias_ptr": "*bf16", "out_ptr": "*bf16", "part_ptr": "*fp32", "ticket_ptr": "*i32", "M": "i32", "N": "i32",
       "Kp_div64": "i32", "k_tiles_per_split": "i32", "stride_om": "i32", "K": "i32", "stride_xm": "i32"}


def compile_gemm(bm, bn, bk, warps, stages, split=1, arch=90, word_decode=False, predequant_a=False, w_operand_b=False,
                 a_mma16=False, dot_m=0):
    consts = dict(HAS_BIAS=False, SPLIT_K=split, EVEN_K=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                  WORD_DECODE=word_decode, PREDEQUANT_A=predequant_a, QUANTIZE_X=False, DYNAMIC=False, AMAX_ROWS=1,
                  AMAX_BLOCK=1, AMAX_CHUNKS=1, W_OPERAND_B=w_operand_b, A_ORDER=(1 if w_operand_b else 2) if a_mma16 else 0,
                  RS_ORDER=False, ACT=-1, GATED=0, BF16_BITS=0, FMA_EPILOGUE=0, DOT_M=dot_m)
    sig = {**SIG, **{k: "constexpr" for k in consts}}
    src = ASTSource(gemm.nvfp4_gemm_kernel, sig, {(list(sig).index(k),): v for k, v in consts.items()},
                    {(i,): [["tt.divisibility", 16]] for i in range(9)})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages})


def registers(kernel) -> int:
    """Registers a thread of the compiled kernel uses (cuobjdump's resource usage of the cubin)."""
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([str(tools / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    return int(re.search(r"REG:(\d+)", out).group(1))


def main_loop(sass: str) -> list[str]:
    """The opcodes of the longest loop (a backward branch and the instructions it jumps over): the K loop."""
    lines = re.findall(r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*)$", sass, re.M)
    best = []
    for addr, op, rest in lines:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < int(addr, 16):
            body = [o for a_, o, _ in lines if int(target.group(1), 16) <= int(a_, 16) <= int(addr, 16)]
            best = max(best, body, key=len)
    return best


def main():
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="+", help="BMxBNxBKwWARPSsSTAGES, e.g. 16x64x128w4s4")
    p.add_argument("--dump", type=Path)
    p.add_argument("--word-decode", action="store_true")
    p.add_argument("--predequant-a", action="store_true")
    p.add_argument("--w-operand-b", action="store_true", help="the decoded weight as the MMA's right operand")
    p.add_argument("--a-mma16", action="store_true", help="pre-dequantized A in the MMA fragment order (GemmConfig.a_mma16)")
    p.add_argument("--dot-m", type=int, default=0, help="GemmConfig.dot_m: the rows as dots of this many rows")
    a = p.parse_args()
    for spec in a.configs:
        bm, bn, bk, w, st = map(int, re.fullmatch(r"(\d+)x(\d+)x(\d+)w(\d+)s(\d+)", spec).groups())
        k = compile_gemm(bm, bn, bk, w, st, word_decode=a.word_decode, predequant_a=a.predequant_a,
                         w_operand_b=a.w_operand_b, a_mma16=a.a_mma16, dot_m=a.dot_m)
        sass = sass_of(k)
        ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass, re.M)
        mix = collections.Counter(o.split(".")[0] for o in ops)
        mma = sorted({o for o in ops if "MMA" in o})
        print(f"{spec}: {len(ops)} SASS, smem {k.metadata.shared} B, {registers(k)} registers, MMA {mma}")
        print("   " + ", ".join(f"{x} {n}" for x, n in mix.most_common(20)))
        loop = main_loop(sass)
        if loop:  # per thread per K tile; x threads / tile elements = SASS per weight element
            moves = sum(o.startswith(("IMAD.MOV", "MOV")) for o in loop)
            print(f"   K loop: {len(loop)} SASS a thread per K tile = {len(loop) * w * 32 / (bn * bk):.2f} per weight "
                  f"element; register moves {moves}; " +
                  ", ".join(f"{x} {n}" for x, n in collections.Counter(o.split(".")[0] for o in loop).most_common(8)))
        if a.dump:
            a.dump.mkdir(parents=True, exist_ok=True)
            (a.dump / f"gemm_{spec}.sass").write_text(sass)
            (a.dump / f"gemm_{spec}.ttgir").write_text(k.asm["ttgir"])


if __name__ == "__main__":
    main()
