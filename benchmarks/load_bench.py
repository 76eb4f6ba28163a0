"""ModelOpt NVFP4 export -> fp4linear.load_modelopt, against ModelOpt's own fake-quantized model.

For a tiny Llama (hidden 128, intermediate 464) and a larger one (hidden 2688, intermediate 1856:
TP=8 shards of 232 are not multiples of 16... of 32/64), on the device: quantize with ModelOpt
(NVFP4_DEFAULT_CFG), keep its fake-quantized logits, export, load the export with fp4linear and
compare logits; time the load and decode (1 token) / prefill (512 tokens) forwards against the
BF16 model. Appends to RESULTS.md on a GPU.

    python benchmarks/load_bench.py [--device cuda] [--layers 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import fp4linear  # noqa: E402


def build(hidden, inter, layers, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 128),
                      num_key_value_heads=3 if hidden // 128 == 21 else 1,  # 2688: 21 heads, GQA groups of 7
                      head_dim=128 if hidden >= 128 else hidden, vocab_size=1024, max_position_embeddings=1024,
                      architectures=["LlamaForCausalLM"], tie_word_embeddings=False)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval(), cfg


def modelopt_layer_outputs(model, ids):
    """Per quantized Linear: its input, ModelOpt's fake-quantized input and weight (one forward)."""
    seen = {}
    quantized = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                 and getattr(getattr(m, "weight_quantizer", None), "is_enabled", False)
                 and getattr(getattr(m, "input_quantizer", None), "is_enabled", False)]
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, args[0].detach()))
             for name, m in quantized]
    with torch.no_grad():
        model(ids)
        for h in hooks:
            h.remove()
        return {name: (x, model.get_submodule(name).input_quantizer(x).float(),
                       model.get_submodule(name).weight_quantizer(model.get_submodule(name).weight).float())
                for name, x in seen.items()}


def compare_layers(fake_layers, export_dir):
    """Layer by layer, no error propagation: the fraction of elements where ModelOpt's fake-quantized
    weight / input differ (beyond bf16 rounding) from the exported tensors decoded by our reference."""
    from safetensors.torch import load_file

    from fp4linear import reference

    stored = {}
    for f in sorted(Path(export_dir).glob("*.safetensors")):
        stored.update(load_file(f))
    w_diff, x_diff = [], []
    for name, (x, x_fq, w_fq) in fake_layers.items():
        if f"{name}.weight_scale" not in stored:  # exported unquantized (exclude_modules)
            continue
        t = {k: stored[f"{name}.{k}"].to(x.device) for k in ("weight", "weight_scale", "weight_scale_2", "input_scale")}
        codes = reference.unpack_nibbles(t["weight"])
        w = (reference.e2m1_decode(codes) * t["weight_scale"].float().repeat_interleave(16, dim=1)
             * t["weight_scale_2"].float())
        qx = reference.quantize(x.float().reshape(-1, x.shape[-1]), (1 / t["input_scale"].float()).reshape(1), k_align=16)
        xd = reference.dequantize(qx).reshape(x_fq.shape)

        def differ(a, b):
            return ((a - b).abs() > 2**-7 * b.abs().clamp(min=1e-30)).float().mean().item()

        w_diff.append(differ(w_fq, w))
        x_diff.append(differ(x_fq, xd))
    return {"layers_compared": len(w_diff), "weight_elems_differ_max_%": 100 * max(w_diff),
            "input_elems_differ_max_%": 100 * max(x_diff)}


def run(hidden, inter, layers, device, dtype, prefill_len):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import LlamaForCausalLM

    model, cfg = build(hidden, inter, layers, device, dtype)
    bf16, _ = build(hidden, inter, layers, device, dtype)  # same seed: the unquantized twin
    calib = torch.randint(0, 1024, (4, 64), device=device)
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(calib))
    ids = torch.randint(0, 1024, (2, 48), device=device, generator=torch.Generator(device).manual_seed(1))
    fake = None
    with torch.no_grad():
        ref = bf16(ids).logits.float()
    if device == "cuda":  # ModelOpt's fake quantization of NVFP4 runs on CUDA only
        # export_hf_checkpoint first unifies, in the model, the input and weight amax of layers that
        # share an input (q/k/v, gate/up) and then writes those scales: run that step before taking
        # the fake-quantized logits so that both sides quantize with the same scales.
        from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers

        requantize_resmooth_fused_llm_layers(model)
        with torch.no_grad():
            fake = model(ids).logits.float()
        fake_layers = modelopt_layer_outputs(model, ids)
    with tempfile.TemporaryDirectory() as d:
        export_hf_checkpoint(model, export_dir=d)
        layer_diff = compare_layers(fake_layers, d) if device == "cuda" else {}
        del model
        torch.manual_seed(5)
        fresh = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fp4linear.load_modelopt(fresh, d, backend="auto")
        if device == "cuda":
            torch.cuda.synchronize()
        load_s = time.perf_counter() - t
    with torch.no_grad():
        ours = fresh(ids).logits.float()
    def rel(a, b):
        return ((a - b).norm() / b.norm()).item() if a is not None and b is not None else float("nan")

    agree = (ours.argmax(-1) == fake.argmax(-1)).float().mean().item() if fake is not None else float("nan")
    row = dict(hidden=hidden, inter=inter, layers=layers, rel_err_vs_modelopt=rel(ours, fake), top1_agree=agree,
               modelopt_vs_bf16=rel(fake, ref), ours_vs_bf16=rel(ours, ref), **layer_diff, load_s=load_s)
    if device == "cuda" and dtype == torch.bfloat16:  # speed: the dtype models are served in
        from common import median_us

        for name, length in (("decode", 1), ("prefill", prefill_len)):
            x = torch.randint(0, 1024, (1, length), device=device)
            with torch.no_grad():
                for graph, tag in ((False, "eager"), (True, "graph")):
                    for label, m in (("", fresh), ("_bf16", bf16)):
                        try:
                            row[f"{name}{label}_{tag}_us"] = median_us(lambda m=m: m(x, use_cache=False), graph=graph)
                        except Exception as e:  # e.g. a host sync inside the model makes capture fail
                            print(f"{name}{label} {tag}: {type(e).__name__}: {str(e)[:200]}")
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tiny-only", action="store_true")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], help="model dtype (default: bfloat16 on CUDA)")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype) if a.dtype else torch.bfloat16 if a.device == "cuda" else torch.float32
    shapes = [(128, 464, 2)] + ([] if a.tiny_only else [(2688, 1856, a.layers)])
    rows = [run(h, i, n, a.device, dtype, prefill_len=512) for h, i, n in shapes]
    from common import publish

    header = list(dict.fromkeys(k for r in rows for k in r))
    intro = (f"ModelOpt {__import__('modelopt').__version__} NVFP4_DEFAULT_CFG export loaded with fp4linear "
             f"(backend auto) on {a.device}, {dtype}; logits vs ModelOpt's fake-quantized model; forwards of "
             "the whole model, batch 1, no KV cache: 'eager' = do_bench medians with the host's launch cost "
             "(this machine's CPU), 'graph' = CUDA-graph replay medians (device time).")
    publish("ModelOpt export -> load_modelopt (benchmarks/load_bench.py)", intro, header,
            [[r.get(k, float("nan")) for k in header] for r in rows], append=a.device == "cuda")


if __name__ == "__main__":
    main()
