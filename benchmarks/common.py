"""Shared benchmark plumbing: timers, ceilings, the model-shape table, and where results go.

Every benchmark prints its table, writes a CSV under `--results-dir` (default
`benchmarks/results/`) and replaces its one section in `--results-md` (default
`benchmarks/RESULTS.md`): one current table per benchmark, history in git.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

import torch
import triton
import triton.language as tl

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_DIR = BENCH / "results"


# ---- timers ---------------------------------------------------------------------------------


def median_us(fn, *, graph: bool = False, rep_ms: int = 100) -> float:
    """Median device time of fn in microseconds (CUDA events, via triton.testing).

    graph=True captures fn in a CUDA graph and times replays: the device time alone, without
    the host-side launch cost that dominates tiny kernels.
    """
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median") * 1e3


def eager_us(fn, *, calls: int = 300, repeats: int = 5) -> float:
    """Eager wall time per call as a user sees it: a loop of `calls` calls and one synchronize,
    median over `repeats` loops (after a warm-up loop). Host launch cost included."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(min(calls, 20)):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return sorted(times)[len(times) // 2]


L2_ROTATE_BYTES = 256 << 20  # decode rows: rotate copies of a layer until their bf16 weights pass this


def cold_copies(bf16_weight_bytes: int) -> int:
    """How many copies of a layer (at most 32) a decode-sized timing chains so that every copy's
    weights come from DRAM, as in a model, not from the 50 MB L2."""
    return max(1, min(32, -(-L2_ROTATE_BYTES // bf16_weight_bytes)))


COLD_ROWS = 64  # decode-sized rows (batched decode included): timed over `cold_copies`, the read floor beside them


def chain_copies(m: int, bf16_weight_bytes: int, gpu: bool = True) -> int:
    """Copies of a layer a timing of M = m rows chains: `cold_copies` up to COLD_ROWS rows on the GPU,
    else one (past decode the weights stay hot, as in a prefill whose layers each take longer)."""
    return cold_copies(bf16_weight_bytes) if gpu and m <= COLD_ROWS else 1


@dataclass(frozen=True)
class Forced:
    """fn with module attributes forced (a route, a routing rule, a constant), each patch a (module,
    {name: value}) for `unittest.mock.patch.multiple`. Called, it patches around the one call (a CUDA
    graph's capture: replays run no Python); `eager_us_interleaved` enters `patched()` around a whole
    round of calls instead, so no timed eager call pays for the patching."""
    fn: Callable
    patches: tuple

    def patched(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        for module, values in self.patches:
            stack.enter_context(mock.patch.multiple(module, **values))
        return stack

    def __call__(self):
        with self.patched():
            return self.fn()


def eager_us_interleaved(fns, *, calls: int = 300, rounds: int = 7) -> list[float]:
    """`eager_us` of several functions measured in alternation (round r times each of them once),
    median per function: drift in the host's speed (other processes, clocks) then hits every
    function alike, so same-run ratios stay meaningful. A `Forced` function's patches are in force
    for its rounds, entered outside the timed loop."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def round_of(fn, n):
        with fn.patched() if isinstance(fn, Forced) else contextlib.nullcontext():
            call = fn.fn if isinstance(fn, Forced) else fn
            t = time.perf_counter()
            for _ in range(n):
                call()
            sync()
            return (time.perf_counter() - t) / n * 1e6

    for fn in fns:
        round_of(fn, min(calls, 20))
    times = [[] for _ in fns]
    for _ in range(rounds):
        for fn, ts in zip(fns, times):
            ts.append(round_of(fn, calls))
    return [sorted(ts)[len(ts) // 2] for ts in times]


def copy_ceiling_tbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = median_us(lambda: b.copy_(a))
    return 2 * nbytes / (t * 1e-6) / 1e12


def matmul_ceiling_tflops(n: int = 8192) -> float:
    """cuBLAS bf16 n^3 on random data, CUDA-graph replays."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / (median_us(lambda: a @ b, graph=True) * 1e-6) / 1e12


@triton.jit
def empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
    pass


@triton.jit
def read_kernel(src_ptr, out_ptr, n_words, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Read int32 words [pid * UNROLL * BLOCK, ...) (all UNROLL loads in flight at once), write one
    word per program: a kernel that only streams its input."""
    base = tl.program_id(0) * UNROLL * BLOCK
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for i in tl.static_range(UNROLL):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc ^= tl.load(src_ptr + offs, mask=offs < n_words, other=0)
    tl.store(out_ptr + tl.program_id(0), tl.xor_sum(acc, 0))


READ_CONFIGS = ((1024, 1, 4), (1024, 4, 4), (2048, 4, 8), (4096, 2, 8))  # (BLOCK words, UNROLL, warps)


def read_floor_us(buffers, timer) -> float:
    """Device time per buffer of the fastest `read_kernel` config reading each of `buffers` (one
    launch per buffer, in turn: with enough buffers they come from DRAM, as a chained layer's weights
    do). What one kernel that only streams those bytes takes, launch, ramp-up and tail included."""
    words = [b.view(torch.int32).reshape(-1) for b in buffers]
    sink = torch.empty(max(w.numel() for w in words) // 1024 + 1, dtype=torch.int32, device=words[0].device)
    best = float("inf")
    for block, unroll, warps in READ_CONFIGS:
        def run(block=block, unroll=unroll, warps=warps):
            for w in words:
                read_kernel[(triton.cdiv(w.numel(), block * unroll),)](w, sink, w.numel(), BLOCK=block, UNROLL=unroll,
                                                                      num_warps=warps)
        run()
        best = min(best, timer(run) / len(words))
    return best


def empty_launch_us() -> tuple[float, float]:
    """(do_bench median, CUDA-graph replay median) of an empty Triton launch."""
    x = torch.empty(16, device="cuda")
    fn = lambda: empty_kernel[(1,)](x, 16, BLOCK=16)  # noqa: E731
    fn()
    return median_us(fn), median_us(fn, graph=True)


def card() -> str:
    if not torch.cuda.is_available():
        return "CPU"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} (SM{props.major}{props.minor}, {props.multi_processor_count} SMs)"


def gpu_slug() -> str:
    """A short file-name tag for the card: 'h100', 'h200', ..., or 'cpu'."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name(0).lower()
    m = re.search(r"\b([a-z]{1,2}\d{2,4}[a-z]?)\b", name)
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "_", name).strip("_")


# ---- real model shapes (per layer, whole model; tensor parallelism splits them) --------------


class Layer:
    __slots__ = ("model", "name", "n", "k", "split")

    def __init__(self, model: str, name: str, n: int, k: int, split: str):
        self.model, self.name, self.n, self.k, self.split = model, name, n, k, split  # split: "column" (N) or "row" (K)


def _mlp(model, hidden, inter, prefix="mlp"):
    return [Layer(model, f"{prefix}.up", inter, hidden, "column"), Layer(model, f"{prefix}.down", hidden, inter, "row")]


def _attn(model, hidden, q, kv):
    return [Layer(model, "attn.qkv", q + 2 * kv, hidden, "column"), Layer(model, "attn.o", hidden, q, "row")]


MODELS: dict[str, list[Layer]] = {
    "Nemotron-3-Nano-30B-A3B": [Layer("Nemotron-3-Nano-30B-A3B", "mamba.in_proj", 10304, 2688, "column"),
                                *_mlp("Nemotron-3-Nano-30B-A3B", 2688, 3712, "shared_expert")],
    "GLM-4.5-Air": [*_attn("GLM-4.5-Air", 4096, 12288, 1024), *_mlp("GLM-4.5-Air", 4096, 10944, "dense"),
                    *_mlp("GLM-4.5-Air", 4096, 1408, "shared_expert")],
    "Qwen2.5-72B": [*_attn("Qwen2.5-72B", 8192, 8192, 1024), *_mlp("Qwen2.5-72B", 8192, 29568)],
    "Llama-3.1-8B": [*_attn("Llama-3.1-8B", 4096, 4096, 1024), *_mlp("Llama-3.1-8B", 4096, 14336)],
    "Llama-3.1-70B": [*_attn("Llama-3.1-70B", 8192, 8192, 1024), *_mlp("Llama-3.1-70B", 8192, 28672)],
    "all-MiniLM-L6-v2": [*_attn("all-MiniLM-L6-v2", 384, 384, 384), *_mlp("all-MiniLM-L6-v2", 384, 1536)],
}

# (N, K) of single linear layers the Linear benchmarks time: square controls, Llama-3.1-70B's MLP,
# and per-rank shapes tensor parallelism makes (Nemotron in_proj at TP 4/8, Qwen2.5-72B down at
# TP 8, Nemotron shared-expert down at TP 8).
LINEAR_SHAPES = [(8192, 8192), (4096, 4096), (8192, 3696), (28672, 8192), (8192, 28672), (2576, 2688),
                 (1288, 2688), (2688, 464)]


# ---- where results go -------------------------------------------------------------------------


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="CSV folder (default %(default)s)")
    p.add_argument("--results-md", type=Path, default=RESULTS_MD, help="markdown file whose section this "
                   "benchmark replaces (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print only")


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def merge_rows(path: Path, rows: list[list], key_len: int, parse) -> list[list]:
    """The rows of an earlier CSV at `path` whose first key_len columns this run did not measure,
    then `rows` (benchmarks run piecemeal keep one file per card). parse: a CSV row of strings -> a
    row like those of `rows`."""
    if not path.is_file():
        return rows
    measured = {tuple(r[:key_len]) for r in rows}
    with path.open() as f:
        old = [parse(r) for r in list(csv.reader(f))[1:]]
    return [r for r in old if tuple(r[:key_len]) not in measured] + rows


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        if v != v:
            return "-"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return out


def replace_section(md: Path, title: str, body: list[str]) -> None:
    """Put `## title` + body into md, replacing the section of that title if there is one."""
    text = md.read_text() if md.is_file() else "# Benchmark results\n"
    section = f"## {title}\n\n" + "\n".join(body).rstrip() + "\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)


def publish(args, title: str, intro: str, header: list[str], rows: list[list], *, csv_name: str,
            md_rows: list[list] | None = None, md_header: list[str] | None = None) -> None:
    """Print the table, write the CSV (all columns) and replace this benchmark's RESULTS.md section
    (md_header/md_rows: a narrower view for the markdown, default the same table)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    meta = f"{card()} · {stamp} · torch {torch.__version__}, triton {triton.__version__} · `{' '.join(sys.argv)}`"
    table = markdown_table(md_header or header, md_rows if md_rows is not None else rows)
    print("\n".join([meta, intro, "", *table]))
    if getattr(args, "no_write", False):
        return
    csv_path = args.results_dir / csv_name
    write_csv(csv_path, header, rows)
    rel = csv_path.relative_to(ROOT) if csv_path.is_relative_to(ROOT) else csv_path
    replace_section(args.results_md, title, [meta, "", intro, "", *table, "", f"CSV: `{rel}`"])
