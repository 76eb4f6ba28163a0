"""Shared benchmark plumbing: timing, ceilings, the RESULTS.md appender."""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def median_us(fn, *, graph: bool = False, rep_ms: int = 100) -> float:
    """Median time of fn in microseconds (events; L2 flushed between reps by do_bench).

    graph=True captures fn in a CUDA graph and times replays: the device time alone, without
    the host-side launch cost that dominates tiny kernels.
    """
    if graph:
        return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median") * 1e3


def copy_ceiling_tbps(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    a = torch.empty(nbytes, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    t = median_us(lambda: b.copy_(a))
    return 2 * nbytes / (t * 1e-6) / 1e12


@triton.jit
def _empty_kernel(x_ptr, n, BLOCK: tl.constexpr):
    pass


def empty_launch_us() -> tuple[float, float]:
    """(do_bench median, CUDA-graph replay median) of an empty Triton launch."""
    x = torch.empty(16, device="cuda")
    fn = lambda: _empty_kernel[(1,)](x, 16, BLOCK=16)  # noqa: E731
    fn()
    return median_us(fn), median_us(fn, graph=True)


def card() -> str:
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} (SM{props.major}{props.minor}, {props.multi_processor_count} SMs)"


def append_results(title: str, lines: list[str]) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    versions = f"torch {torch.__version__}, triton {triton.__version__}"
    block = [f"\n## {title}\n", f"{card()} · {stamp} · {versions} · `{' '.join(sys.argv)}`\n", *lines, ""]
    with RESULTS.open("a") as f:
        f.write("\n".join(block) + "\n")
    out = os.environ.get("OUT")
    if out:  # the device machine's results folder
        (Path(out) / RESULTS.name).write_text(RESULTS.read_text())


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return out


def publish(title: str, intro: str, header: list[str], rows: list[list], *, append: bool = True) -> list[str]:
    """Print a result table (intro paragraph + markdown) and append it to RESULTS.md."""
    lines = [intro, "", *markdown_table(header, rows)]
    print("\n".join(lines))
    if append:
        append_results(title, lines)
    return lines
