"""benchmarks/load_bench.py's load-and-time path, walked on the CPU with the session's tiny checkpoints
(its GPU run gets checkpoints that --make-checkpoints writes with the same functions)."""

import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_load_bench_walks_both_formats_on_cpu(modelopt_dir, compressed_tensors_dir, tmp_path):
    pytest.importorskip("accelerate")
    spec = importlib.util.spec_from_file_location("load_bench", ROOT / "benchmarks" / "load_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "modelopt").symlink_to(modelopt_dir)
    (tmp_path / "compressed-tensors").symlink_to(compressed_tensors_dir)
    rows = bench.main(["--checkpoints", str(tmp_path), "--device", "cpu", "--backend", "triton", "--prefill", "8",
                       "--no-write"])
    assert [r["format"] for r in rows] == ["modelopt", "compressed-tensors"]
    for r in rows:
        assert r["model_MiB"] < 0.4 * r["bf16_MiB"] and r["model_MiB"] < r["bound_MiB"]
        assert math.isnan(r["peak_load_MiB"])  # max_memory_allocated is CUDA's
        assert 0.01 < r["logits_rel_err"] < 0.5  # activation quantization, nothing broken
        assert r["decode_nvfp4_eager_us"] > 0 and r["prefill_bf16_eager_us"] > 0
