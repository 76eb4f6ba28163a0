"""NVFP4 checkpoints of both formats -> fp4linear.from_pretrained: load time, peak memory, and the
loaded model's decode and prefill speed against the same network in bf16.

Two steps, because the GPU machine has neither nvidia-modelopt nor llm-compressor: make a ModelOpt
and a compressed-tensors (llm-compressor) checkpoint of one random Llama on the CPU, carry them
over, load and time them there.

    # CPU, with the dev extra: hidden 2048, 2 layers, 55 MiB; accelerate for the GPU (gpu_wheels.sh does it too)
    python benchmarks/load_bench.py --make-checkpoints .carry/load_bench
    python -m pip download -q --no-deps -d .whl accelerate
    # GPU, carrying [".whl", ".carry/load_bench"]: load, measure, publish (RESULTS.md, results/load_bench.csv)
    python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python benchmarks/load_bench.py --checkpoints .carry/load_bench
    # CPU: both steps on a tiny model, print only
    python benchmarks/load_bench.py --dry-run

Per format: load_s (from_pretrained wall time, second of two loads), peak_load_MiB (the device's
max_memory_allocated during the load, over what was allocated before) against the bound
1.25 x model + largest checkpoint tensor, the model's bytes against the bf16 twin's, and whole-model
forwards at batch 1 without a KV cache (decode: 1 token; prefill: --prefill tokens): CUDA-graph
replay medians (device time, `median_us`), eager wall time per call and the same for
`torch.compile(model)` (the two models alternating, `eager_us_interleaved`). The bf16 twin
is the same network with every NVFP4 weight decoded (`fp4linear.reference`) and the stored
non-quantized tensors: `logits_rel_err` against it is the cost of quantizing activations.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fp4linear  # noqa: E402
from common import add_output_args, eager_us, eager_us_interleaved, median_us, publish  # noqa: E402
from fp4linear import reference  # noqa: E402
from fp4linear.checkpoint import linear_scales  # noqa: E402
from fp4linear.load import read_scheme  # noqa: E402

FORMATS = ("modelopt", "compressed-tensors")
MIB = 2**20


def llama_config(hidden, inter, layers, vocab):
    from transformers import LlamaConfig

    heads = max(1, hidden // 128)
    return LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=max(1, heads // 4), head_dim=min(128, hidden), vocab_size=vocab,
                       max_position_embeddings=2048, architectures=["LlamaForCausalLM"], tie_word_embeddings=False)


def make_checkpoints(out: Path, config, dtype=torch.bfloat16) -> None:
    """Both formats' checkpoints of one random model, calibrated on the same random tokens (here,
    where nvidia-modelopt and llmcompressor are installed: the `dev` extra)."""
    from tests.checkpoints import make_compressed_tensors, make_modelopt

    out.mkdir(parents=True, exist_ok=True)
    calib = torch.randint(0, config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(1))
    make_modelopt(out / "modelopt", config, dtype=dtype, calib=calib)
    with tempfile.TemporaryDirectory() as base:  # llm-compressor reads the model from a directory: not carried
        make_compressed_tensors(out / "compressed-tensors", config, dtype=dtype, calib=calib, base=Path(base) / "bf16")
    for fmt in FORMATS:
        size = sum(f.stat().st_size for f in (out / fmt).iterdir())
        print(f"{out / fmt}: {size / MIB:.1f} MiB")
    print(f"total {sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / MIB:.1f} MiB (a device call carries 64 MiB)")


def stored(path: Path) -> dict:
    """Checkpoint tensor name -> tensor, memory-mapped."""
    from safetensors import safe_open

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        h = safe_open(f, "pt")
        out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


def bf16_twin(model, path: Path, device):
    """The loaded network in bf16 with each NVFP4 weight decoded from the checkpoint."""
    from transformers import AutoModelForCausalLM

    fmt = read_scheme(path).fmt
    tensors = stored(path)
    with torch.device(device):
        twin = AutoModelForCausalLM.from_config(model.config, dtype=torch.bfloat16)
    fp4 = {k.rpartition(".")[0] for k in tensors if k.endswith(f".{fmt.weight_scale}")}  # the checkpoint's NVFP4 layers
    # the loaded model's fp4linear modules (Linear, GatedMLP) hold those layers under their own names
    ours = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, (fp4linear.Linear, fp4linear.GatedMLP)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(ours)}
    for name in fp4:
        codes = reference.e2m1_decode(reference.unpack_nibbles(tensors[f"{name}.{fmt.weight}"].to(device)))
        blocks = tensors[f"{name}.{fmt.weight_scale}"].to(device).float().repeat_interleave(16, dim=1)
        decode = linear_scales(fmt, tensors[f"{name}.{fmt.weight_global}"], None, device)["weight_scale_2"]
        k = twin.get_submodule(name).in_features
        state[f"{name}.weight"] = (codes * blocks * decode)[:, :k].to(torch.bfloat16)
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("inv_freq")], (missing, unexpected)
    return twin.eval()


def model_mib(model) -> float:
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in [*model.parameters(), *model.buffers()]}.values()) / MIB


def measure(path: Path, fmt: str, device: torch.device, backend: str, prefill: int) -> dict:
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for attempt in range(2):  # the first load pays imports and cold file reads
        model = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.perf_counter()
        model = fp4linear.from_pretrained(path, backend=backend, device=device)
        sync()
        load_s = time.perf_counter() - t
    peak = (torch.cuda.max_memory_allocated() - before) / MIB if cuda else float("nan")
    largest = max(v.nbytes for v in stored(path).values()) / MIB
    twin = bf16_twin(model, path, device)
    cfg = model.config
    row = dict(format=fmt, hidden=cfg.hidden_size, inter=cfg.intermediate_size, layers=cfg.num_hidden_layers,
               backend=model.get_submodule(next(n for n, m in model.named_modules()
                                                if isinstance(m, fp4linear.Linear))).backend.name,
               load_s=load_s, peak_load_MiB=peak, bound_MiB=1.25 * model_mib(model) + largest,
               model_MiB=model_mib(model), bf16_MiB=model_mib(twin))
    g = torch.Generator().manual_seed(3)
    inputs = {"decode": torch.randint(0, cfg.vocab_size, (1, 1), generator=g).to(device),
              "prefill": torch.randint(0, cfg.vocab_size, (1, prefill), generator=g).to(device)}
    with torch.no_grad():
        got, want = model(inputs["prefill"]).logits.float(), twin(inputs["prefill"]).logits.float()
        row["logits_rel_err"] = ((got - want).norm() / want.norm()).item()
        models = (("nvfp4", model), ("bf16", twin))
        for phase, x in inputs.items():
            fns = [lambda m=m, x=x: m(x, use_cache=False) for _, m in models]
            for (label, _), fn in zip(models, fns):
                if cuda:
                    try:
                        row[f"{phase}_{label}_graph_us"] = median_us(fn, graph=True)
                    except Exception as e:  # a host sync inside the model makes capture fail: say so, go on
                        print(f"{fmt} {phase} {label}: no CUDA graph ({type(e).__name__}: {str(e)[:160]})")
                        row[f"{phase}_{label}_graph_us"] = float("nan")
            # eager and torch.compile: host-bound, so the two models alternate (the host's speed drifts)
            walls = (eager_us_interleaved(fns, calls=100, rounds=5) if cuda
                     else [eager_us(fn, calls=1, repeats=1) for fn in fns])
            for (label, _), w in zip(models, walls):
                row[f"{phase}_{label}_eager_us"] = w
            walls = [float("nan")] * len(models)
            if cuda:
                try:
                    compiled = [torch.compile(m) for _, m in models]
                    cfns = [lambda c=c, x=x: c(x, use_cache=False) for c in compiled]
                    for fn in cfns:
                        for _ in range(3):
                            fn()
                    walls = eager_us_interleaved(cfns, calls=100, rounds=5)
                except Exception as e:
                    print(f"{fmt} {phase}: torch.compile failed ({type(e).__name__}: {str(e)[:200]})")
            for (label, _), w in zip(models, walls):
                row[f"{phase}_{label}_compile_us"] = w
    return row


def run(checkpoints: Path, args) -> list[dict]:
    device = torch.device(args.device)
    rows = [measure(checkpoints / fmt, fmt, device, args.backend, args.prefill) for fmt in FORMATS]
    header = list(rows[0])
    intro = (f"`fp4linear.from_pretrained` of a random Llama's ModelOpt and compressed-tensors (llm-compressor) "
             f"NVFP4 checkpoints, made on a CPU, loaded on {device} (dtype bfloat16). Peak = max_memory_allocated during "
             "the load; bound = 1.25 x model + largest checkpoint tensor. Whole-model forwards, batch 1, no KV cache: "
             "decode 1 token, prefill "
             f"{args.prefill} tokens; graph = CUDA-graph replay medians (device time), eager = wall time per call with "
             "the host's launch cost, compile = the same for `torch.compile(model)` (eager and compile: the two "
             "models in alternating rounds, median of 5). bf16 = the same network with the NVFP4 weights decoded; logits_rel_err is the "
             "NVFP4 model against it (activation quantization).")
    publish(args, "NVFP4 checkpoints -> from_pretrained (benchmarks/load_bench.py)", intro, header,
            [[r.get(k, float("nan")) for k in header] for r in rows], csv_name="load_bench.csv")
    return rows


def main(argv=None) -> list[dict] | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    step = p.add_mutually_exclusive_group(required=True)
    step.add_argument("--make-checkpoints", type=Path, metavar="DIR", help="CPU: write DIR/modelopt and "
                      "DIR/compressed-tensors")
    step.add_argument("--checkpoints", type=Path, metavar="DIR", help="load and time DIR/<format> (made by "
                      "--make-checkpoints)")
    step.add_argument("--dry-run", action="store_true", help="both steps on a tiny model, on the CPU, print only")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--inter", type=int, default=1856, help="MLP width (1856 = 116 blocks of 16)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_output_args(p)
    a = p.parse_args(argv)
    if a.make_checkpoints:
        make_checkpoints(a.make_checkpoints, llama_config(a.hidden, a.inter, a.layers, a.vocab))
    elif a.checkpoints:
        return run(a.checkpoints, a)
    else:
        a.no_write, a.device, a.prefill = True, "cpu", min(a.prefill, 16)
        with tempfile.TemporaryDirectory() as d:
            make_checkpoints(Path(d), llama_config(128, 464, 2, 256), dtype=torch.float32)
            return run(Path(d), a)


if __name__ == "__main__":
    main()
