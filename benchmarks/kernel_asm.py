"""Compile the quantize kernel for a GPU target offline (no GPU needed) and count its SASS.

    python benchmarks/kernel_asm.py [--arch 90] [--block-m 16 --block-k 256 --warps 4] [--baseline]
                                    [--no-grid-2d] [--no-words] [--recipe 1|2] [--persistent N] [--halves]
                                    [--dump DIR]
    python benchmarks/kernel_asm.py --variants      # the table of variants x tiles (bf16, K % 16 == 0)
    python benchmarks/kernel_asm.py --act silu_mul --block-m 8 --block-k 512 --warps 2 [--dynamic]

Prints the instruction mix of the kernel and instructions per quantized element: benchmarks/NOTES.md's lead
is that the per-element instruction count, not the memory pattern, limits the kernel. Counts are
static (straight-line SASS of the whole kernel, the division slow path and the padding-row branch
included); 'main' leaves out the code after the last EXIT (the division slow-path subroutine).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import quantize as quantize_module  # noqa: E402
from kernels.quantize_launch import BASELINE, MEASURED_VARIANTS, QuantConfig, kernel_meta  # noqa: E402


def compile_quant(arch, config: QuantConfig, *, k=8192, stride=8192, m=4096, sf_row_tile=128, dtype="bf16"):
    import torch

    fn = quantize_module.nvfp4_pad_quantize_kernel
    sig = {"x_ptr": f"*{dtype}", "global_scale_ptr": "*fp32", "data_ptr": "*u8", "scale_ptr": "*u8"}
    for name in ("M", "K_div", "stride_xm_div", "Kp_div16"):
        sig[name] = "i32"
    tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    consts = kernel_meta(config, k=k, stride=stride, m=m, dtype=tdtype, sf_row_tile=sf_row_tile)
    for name in consts:
        sig[name] = "constexpr"
    aligned = [["tt.divisibility", 16]]
    attrs = {(i,): aligned for i in range(4)}  # 16-byte aligned pointers, as torch allocates
    src = ASTSource(fn, sig, {(list(sig).index(k),): v for k, v in consts.items()}, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "enable_fp_fusion": False})


def compile_act(arch, act: str, config: QuantConfig, *, i=4096, dynamic=False, sf_row_tile=128, dtype="bf16"):
    """kernels/act_quantize.py's fused kernel for `act` (output width i, x row stride 2i or i)."""
    from kernels import act_quantize as act_module
    from kernels.act_quantize_launch import ACTS

    code, gated = ACTS[act]
    sig = {"x_ptr": f"*{dtype}", "global_scale_ptr": "*fp32", "partial_ptr": "*fp32", "data_ptr": "*u8",
           "scale_ptr": "*u8"}
    for name in ("M", "I_div", "stride_xm_div", "Ip_div16", "n_partials"):
        sig[name] = "i32"
    meta = kernel_meta(config, k=i, stride=2 * i, m=4096, sf_row_tile=sf_row_tile)
    consts = dict(I_MULT=16, XM_MULT=16, SF_ROW_TILE=sf_row_tile, ACT=code, GATED=gated, BF16_BITS=False,
                  DYNAMIC=dynamic, PARTIALS=256, BLOCK_M=config.block_m, BLOCK_K=config.block_k,
                  ONE_PAD_TILE=meta["ONE_PAD_TILE"], HALVES=meta["HALVES"])
    for name in consts:
        sig[name] = "constexpr"
    src = ASTSource(act_module.act_quantize_kernel, sig, {(list(sig).index(k),): v for k, v in consts.items()},
                    {(i,): [["tt.divisibility", 16]] for i in range(5)})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "enable_fp_fusion": False})


def sass_of(kernel) -> str:
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        return subprocess.run([str(tools / "cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout


def sass_ops(sass: str) -> list[str]:
    return re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", sass, re.M)


def counts(config: QuantConfig, arch: int = 90, **kw) -> tuple[int, int, collections.Counter, object, str]:
    """(all SASS, main SASS, opcode mix of all, compiled kernel, sass) of one variant."""
    kernel = compile_quant(arch, config, **kw)
    sass = sass_of(kernel)
    ops = sass_ops(sass)
    last_exit = max((i for i, op in enumerate(ops) if op == "EXIT"), default=len(ops) - 1)
    main = sum(1 for op in ops[: last_exit + 1] if op != "NOP")
    return len(ops), main, collections.Counter(ops), kernel, sass


VARIANTS = {
    "baseline (as first benchmarked)": BASELINE,
    "recipe 2": dict(BASELINE, recipe=2),
    "recipe 2 + words": dict(BASELINE, recipe=2, words=True),
    "recipe 2 + 2-D grid": dict(BASELINE, recipe=2, grid_2d=True),
    "default: recipe 2 + words + 2-D grid": dict(recipe=2, words=True, grid_2d=True, persistent=0),
    "default, recipe 4 (a word's two signs at once)": dict(recipe=4, words=True, grid_2d=True, persistent=0),
    "default + persistent": dict(recipe=2, words=True, grid_2d=True, persistent=4),
    "default + halves (whole blocks per thread)": dict(recipe=2, words=True, grid_2d=True, persistent=0, halves=True),
}
TILES = [(8, 512, 2), (16, 128, 2), (8, 128, 4), (2, 4096, 4), (4, 2048, 4), (16, 512, 4)]


def variants_table(arch: int) -> None:
    print(f"sm_{arch}, bf16 x, K and row stride multiples of 16; SASS per quantized element, all / main "
          "(main: without the division slow-path subroutine)")
    print("| variant | " + " | ".join(f"{bm}x{bk} w{w}" for bm, bk, w in TILES) + " |")
    print("|---|" + "---|" * len(TILES))
    for name, flags in VARIANTS.items():
        cells = []
        for bm, bk, w in TILES:
            total, main, _, _, _ = counts(QuantConfig(bm, bk, w, **flags), arch)
            per = bm * bk / (32 * w)
            cells.append(f"{total / per:.1f} / {main / per:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--block-m", type=int, default=16)
    p.add_argument("--block-k", type=int, default=256)
    p.add_argument("--warps", type=int, default=4)
    p.add_argument("--baseline", action="store_true", help="the kernel as first benchmarked (all variant flags off)")
    p.add_argument("--no-grid-2d", action="store_true")
    p.add_argument("--no-words", action="store_true")
    p.add_argument("--recipe", type=int, choices=(1, 2, 4))
    p.add_argument("--persistent", type=int, help="programs per SM (0: off)")
    p.add_argument("--halves", action="store_true", help="whole blocks per thread (two 16-byte half loads)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    p.add_argument("--variants", action="store_true", help="print the variants x tiles table")
    p.add_argument("--act", help="count kernels/act_quantize.py's fused kernel for this act instead (silu_mul, ...)")
    p.add_argument("--dynamic", action="store_true", help="with --act: the dynamic-scale variant")
    p.add_argument("--dump", type=Path)
    a = p.parse_args()
    if a.variants:
        variants_table(a.arch)
        return
    # the variants the GPU defaults take (kernels/quantize_launch.py), which the --no-* flags switch off
    cfg = QuantConfig(a.block_m, a.block_k, a.warps, **(BASELINE if a.baseline else MEASURED_VARIANTS))
    if a.no_grid_2d:
        cfg = replace(cfg, grid_2d=False)
    if a.no_words:
        cfg = replace(cfg, words=False)
    if a.recipe:
        cfg = replace(cfg, recipe=a.recipe)
    if a.persistent is not None:
        cfg = replace(cfg, persistent=a.persistent)
    if a.halves:
        cfg = replace(cfg, halves=True)
    if a.act:
        kernel = compile_act(a.arch, a.act, cfg, dynamic=a.dynamic, dtype=a.dtype)
        sass = sass_of(kernel)
        ops = sass_ops(sass)
        last_exit = max((i for i, op in enumerate(ops) if op == "EXIT"), default=len(ops) - 1)
        total, main, mix = len(ops), sum(1 for op in ops[: last_exit + 1] if op != "NOP"), collections.Counter(ops)
        cfg_label = f"act_quantize {a.act}{' dynamic' if a.dynamic else ''} {a.block_m}x{a.block_k}w{a.warps}"
    else:
        total, main, mix, kernel, sass = counts(cfg, a.arch, dtype=a.dtype)
        cfg_label = cfg.label
    elems_per_thread = a.block_m * a.block_k / (32 * a.warps)
    print(f"sm_{a.arch} {cfg_label} {a.dtype}: {total} SASS instructions (straight-line, per thread; {main} main) "
          f"for {elems_per_thread:.0f} elements per thread = {total / elems_per_thread:.1f} per element "
          f"({main / elems_per_thread:.1f} main); shared {kernel.metadata.shared} B")
    print("  " + ", ".join(f"{k} {v}" for k, v in mix.most_common(24)))
    if a.dump:
        a.dump.mkdir(parents=True, exist_ok=True)
        (a.dump / "quant.ptx").write_text(kernel.asm["ptx"])
        (a.dump / "quant.sass").write_text(sass)


if __name__ == "__main__":
    main()
