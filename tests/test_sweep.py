"""benchmarks/sweep.py, the main job: its analytic part runs anywhere and gives the plan's numbers."""

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fp4linear

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_runs_without_gpu_and_writes_csv_and_plots(tmp_path):
    results = tmp_path / "results"
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--out", str(tmp_path),
                          "--results-dir", str(results), "--results-md", str(tmp_path / "R.md")],
                         capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == {"sweep.csv", "weight_pad_vs_tp.png", "activation_pad_vs_tp.png"}
    assert not results.exists()  # a CPU run leaves the GPU timings alone
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    # MiniLM hidden 384 at TP=8: the attention out-projection's K is 48 per rank.
    o = [r for r in rows if r["model"] == "all-MiniLM-L6-v2" and r["layer"] == "attn.o" and r["tp"] == "8"
         and r["m"] == "1"]
    by_backend = {r["backend"]: (int(r["n_padded"]), int(r["k_padded"])) for r in o}
    assert by_backend == {"triton": (384, 64), "flashinfer_cutlass": (384, 64), "flashinfer_cudnn": (384, 64),
                          "flashinfer_trtllm": (384, 64)}
    aligned = [r for r in rows if r["model"].startswith("Llama")]
    assert all(float(r["weight_pad_pct"]) == 0 for r in aligned)  # the control: nothing to pad


def _sweep_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("sweep", ROOT / "benchmarks" / "sweep.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sweep"] = mod  # its dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("m,k,kp", [(16, 48, 64), (3, 232, 256), (5, 1368, 1376)])
def test_separate_pipeline_writes_the_fused_kernels_bytes(m, k, kp):
    """The baseline the sweep times is the same work: its padded bytes equal the fused kernel's."""
    sweep = _sweep_module()
    x = torch.randn(m, k, dtype=torch.bfloat16) * 3
    gs = fp4linear.encode_scale(x.float().abs().amax())
    fused = fp4linear.quantize(x, gs, k_align=kp)
    y = torch.randn(m, 256, dtype=torch.bfloat16)
    data, scale, sliced = sweep.separate_pipeline(x, gs, kp, y)
    assert torch.equal(data, fused.data)
    assert torch.equal(scale, fused.scale.view(torch.uint8))
    assert torch.equal(sliced, y[:, :k])


def test_gpu_timing_path_walks_on_cpu(tmp_path):
    """The sweep's GPU-only path (timings, summary, fused-vs-separate plot) on a CPU stand-in."""
    sweep = _sweep_module()
    rows = [r for r in sweep.analytic_rows() if r["model"] == "all-MiniLM-L6-v2" and r["tp"] == 8]
    calls = []

    def timer(fn):
        fn()
        calls.append(fn)
        return float(len(calls))

    sweep.gpu_timings(rows, argparse.Namespace(all_m=False), timer=timer, device="cpu")
    timed = [r for r in rows if r["m"] in (16, 4096)]
    assert all("fused_us" in r and "separate_us" in r for r in timed)
    assert all("linear_us" in r for r in timed if r["backend"] == "triton")
    assert not any("fused_us" in r for r in rows if r["m"] not in (16, 4096))
    header, table = sweep.timing_summary(rows)
    assert [row[:3] for row in table if row[0] == "all-MiniLM-L6-v2" and row[1] == 8] == [
        ["all-MiniLM-L6-v2", 8, 16], ["all-MiniLM-L6-v2", 8, 4096]]
    sweep.plot(rows, tmp_path, True, "cpu")
    assert (tmp_path / "fused_vs_separate.png").stat().st_size > 0
