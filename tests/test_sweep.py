"""benchmarks/sweep.py, the main job: its analytic part runs anywhere and gives the plan's numbers."""

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_sweep_runs_without_gpu_and_writes_csv_and_plots(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} >= {"sweep.csv", "weight_pad_vs_tp.png", "activation_pad_vs_tp.png"}
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    # MiniLM hidden 384 at TP=8: the attention out-projection's K is 48 per rank.
    o = [r for r in rows if r["model"] == "all-MiniLM-L6-v2" and r["layer"] == "attn.o" and r["tp"] == "8"
         and r["m"] == "1"]
    by_backend = {r["backend"]: (int(r["n_padded"]), int(r["k_padded"])) for r in o}
    assert by_backend == {"triton": (384, 64), "flashinfer_cutlass": (384, 64), "flashinfer_cudnn": (384, 64),
                          "flashinfer_trtllm": (384, 64)}
    aligned = [r for r in rows if r["model"].startswith("Llama")]
    assert all(float(r["weight_pad_pct"]) == 0 for r in aligned)  # the control: nothing to pad
