"""The GPU benchmarks' CPU dry runs: the code paths a GPU run takes (shapes, variants, the
unfused pipelines, the bit checks) walk on tiny shapes, so the one GPU run does not die on them."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [["act_quant_bench.py", "--dry-run"], ["act_quant_bench.py", "--dry-run", "--configs"],
                                  ["act_quant_bench.py", "--dry-run", "--fake-configs"], ["breakdown.py", "--dry-run"],
                                  ["quant_bench.py", "--dry-run", "--configs"], ["mlp_bench.py", "--dry-run"],
                                  ["mlp_bench.py", "--dry-run", "--ab-act-operands"],
                                  ["linear_bench.py", "--dry-run"], ["linear_bench.py", "--dry-run", "--ab-dynamic"],
                                  ["linear_bench.py", "--dry-run", "--ab-operands"],
                                  ["linear_bench.py", "--dry-run", "--ab-alpha"],
                                  ["linear_bench.py", "--dry-run", "--ab-maxima"],
                                  ["linear_bench.py", "--dry-run", "--tune-fused"],
                                  ["linear_bench.py", "--dry-run", "--tune-operand"],
                                  ["linear_bench.py", "--dry-run", "--tune-operands"],
                                  ["linear_bench.py", "--dry-run", "--ab-decode"],
                                  ["linear_bench.py", "--dry-run", "--ab-bias"],
                                  ["linear_bench.py", "--dry-run", "--ab-align"],
                                  ["linear_bench.py", "--dry-run", "--tune-chunks"],
                                  ["linear_bench.py", "--dry-run", "--tune-pass"],
                                  ["linear_bench.py", "--dry-run", "--tune-pass-tiles"],
                                  ["linear_bench.py", "--dry-run", "--tune-dynamic-pass-tiles"],
                                  ["linear_bench.py", "--dry-run", "--tune-split"],
                                  ["linear_bench.py", "--dry-run", "--ab-pass-barrier"],
                                  ["linear_bench.py", "--dry-run", "--tune-small"],
                                  ["linear_bench.py", "--dry-run", "--tune-gemv"],
                                  ["linear_bench.py", "--dry-run", "--tune-scale"],
                                  ["linear_bench.py", "--dry-run", "--ab-eager"],
                                  ["linear_bench.py", "--dry-run", "--ab-fused", "--host-bound-tiles"],
                                  ["host_overhead.py", "--dry-run"]],
                         ids=" ".join)
def test_dry_run(argv, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / argv[0]), *argv[1:], "--results-dir", str(tmp_path),
                          "--results-md", str(tmp_path / "RESULTS.md")],
                         capture_output=True, text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "bit-exact=False" not in out.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")
                                           if "__main__" in p.read_text()))
def test_help_prints(script):
    # argparse formats every help string with %: a bare "%" in one (e.g. "K % 16") breaks --help only
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True,
                         timeout=120, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "usage:" in out.stdout


def test_forced_functions_patch_once_a_round_and_put_back():
    """`common.Forced`: its patches are in force for its calls and only for them (a plain function timed
    beside it sees the module as it was), entered once a round of eager calls, outside the timed loop,
    not once a call; and put back afterwards."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    class Module:  # counts the patches' sets
        sets = 0

        def __setattr__(self, name, value):
            type(self).sets += 1
            object.__setattr__(self, name, value)

    module = Module()
    object.__setattr__(module, "rule", "routed")
    seen_forced, seen_plain = [], []
    forced = common.Forced(lambda: seen_forced.append(module.rule), ((module, {"rule": "forced"}),))
    common.eager_us_interleaved([forced, lambda: seen_plain.append(module.rule)], calls=5, rounds=3)
    assert set(seen_forced) == {"forced"} and set(seen_plain) == {"routed"}
    assert len(seen_forced) == 5 * 4  # a warm-up round and three timed ones
    assert Module.sets == 2 * 4  # set and put back once a round
    assert module.rule == "routed"
    forced()  # a single call (a graph capture) is patched around itself
    assert seen_forced[-1] == "forced" and module.rule == "routed"


def test_linear_table_from_several_runs_csvs(tmp_path):
    """`linear_bench.py --from-csv`: one table from runs split over GPUs; a row measured in two files
    takes the later file's figures, the others all stay; a missing file is an error naming it."""
    header = ("m,n,k,input_scale,bf16_graph_us,fp4_graph_us,bf16_eager_us,fp4_eager_us,temp_bytes,bf16_compile_us,"
              "fp4_compile_us,read_floor_us\n")
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text(header + "1,8192,8192,static,47.0,18.25,50.0,33.0,0,nan,nan,12.3\n"
                              "16,8192,8192,static,47.5,22.75,50.0,47.0,0,nan,nan,12.3\n")
    second.write_text(header + "16,8192,8192,static,47.5,21.5,50.0,47.0,0,nan,nan,12.3\n"
                               "2048,2688,464,dynamic,11.25,18.5,33.0,85.0,4096,nan,nan,nan\n")
    run = [sys.executable, str(ROOT / "benchmarks" / "linear_bench.py"), "--results-dir", str(tmp_path / "out"),
           "--results-md", str(tmp_path / "RESULTS.md"), "--from-csv"]
    out = subprocess.run(run + [str(first), str(second)], capture_output=True, text=True, timeout=300,
                         env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[:6] for row in rows] == [["| 1", "8192", "8192", "static", "47.0", "18.2"],
                                                       ["| 16", "8192", "8192", "static", "47.5", "21.5"],
                                                       ["| 2048", "2688", "464", "dynamic", "11.2", "18.5"]]
    missing = subprocess.run(run + [str(first), str(tmp_path / "none.csv")], capture_output=True, text=True,
                             timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""})
    assert missing.returncode != 0 and "none.csv" in missing.stderr
