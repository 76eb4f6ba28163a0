"""`kernels/` installs as `fp4linear.kernels`, never as a top-level `kernels` module."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_resolves_fp4linear_kernels(tmp_path):
    code = "import fp4linear.kernels as k, fp4linear; print(k.__file__); print(fp4linear.kernels is k)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "True"


def test_wheel_maps_kernels_under_fp4linear(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # build from a copy: a build/ folder left in the checkout goes stale
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", ".carry", "__pycache__"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-500:]}")
    (wheel,) = tmp_path.glob("fp4linear-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fp4linear/kernels/quantize.py" in names
    assert not any(n.startswith("kernels/") for n in names), "a top-level kernels package would be installed"

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import importlib.util, fp4linear.kernels as k; "
        "assert k.__file__.startswith(%r), k.__file__; "
        "assert importlib.util.find_spec('kernels') is None; print('ok')" % str(site)
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
