"""Compile the quantize kernel for a GPU target offline (no GPU needed) and count its SASS.

    python benchmarks/kernel_asm.py [--arch 90] [--block-m 16 --block-k 256 --warps 4] [--dump DIR]

Prints the instruction mix of the kernel and instructions per quantized element: benchmarks/NOTES.md's lead
is that the per-element instruction count, not the memory pattern, limits the kernel.
"""

from __future__ import annotations

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
from kernels import quantize as quantize_module  # noqa: E402


def compile_quant(arch, block_m, block_k, warps, k_mult=16, xm_mult=16, sf_row_tile=128):
    fn = quantize_module.nvfp4_pad_quantize_kernel
    sig = {"x_ptr": "*bf16", "global_scale_ptr": "*fp32", "data_ptr": "*u8", "scale_ptr": "*u8"}
    for name in ("M", "K_div", "stride_xm_div", "Kp_div16"):
        sig[name] = "i32"
    consts = dict(K_MULT=k_mult, XM_MULT=xm_mult, SF_ROW_TILE=sf_row_tile, BLOCK_M=block_m, BLOCK_K=block_k)
    for name in consts:
        sig[name] = "constexpr"
    aligned = [["tt.divisibility", 16]]
    attrs = {(i,): aligned for i in range(4)}  # 16-byte aligned pointers, as torch allocates
    src = ASTSource(fn, sig, {(list(sig).index(k),): v for k, v in consts.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "enable_fp_fusion": False})


def sass_of(kernel) -> str:
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([str(tools / "cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--block-m", type=int, default=16)
    p.add_argument("--block-k", type=int, default=256)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--dump", type=Path)
    a = p.parse_args()
    kernel = compile_quant(a.arch, a.block_m, a.block_k, a.warps)
    sass = sass_of(kernel)
    ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)
    mix = collections.Counter(op.split(".")[0] for op in ops)
    elems_per_thread = a.block_m * a.block_k / (32 * a.warps)
    print(f"sm_{a.arch} BLOCK_M={a.block_m} BLOCK_K={a.block_k} warps={a.warps}: {len(ops)} SASS instructions "
          f"(straight-line, per thread) for {elems_per_thread:.0f} elements per thread = "
          f"{len(ops) / elems_per_thread:.1f} per element; shared {kernel.metadata.shared} B")
    print("  " + ", ".join(f"{k} {v}" for k, v in mix.most_common(24)))
    if a.dump:
        a.dump.mkdir(parents=True, exist_ok=True)
        (a.dump / "quant.ptx").write_text(kernel.asm["ptx"])
        (a.dump / "quant.sass").write_text(sass)


if __name__ == "__main__":
    main()
