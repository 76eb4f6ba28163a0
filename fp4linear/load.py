"""Load a Hugging Face NVFP4 checkpoint exported by ModelOpt into a transformers model.

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt))   # or on "meta"
    fp4linear.load_modelopt(model, ckpt)

Reads `hf_quant_config.json` (or `quantization_config` in config.json), then the safetensors
shards one at a time through `safe_open` (tensors are read one by one; no BF16 copy of any
quantized weight is made), replaces every quantized nn.Linear by `fp4linear.Linear.from_modelopt`
and loads the remaining tensors. Command line: `python -m fp4linear.load CHECKPOINT --prompt ...`.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
from pathlib import Path

import torch
from torch import nn

from .linear import Linear

log = logging.getLogger(__name__)

QUANT_TENSORS = ("weight", "weight_scale", "weight_scale_2", "input_scale")


def read_quant_config(checkpoint_dir) -> dict:
    """The checkpoint's quantization section: quant_algo, group_size, exclude_modules."""
    d = Path(checkpoint_dir)
    if (d / "hf_quant_config.json").is_file():
        cfg = json.loads((d / "hf_quant_config.json").read_text()).get("quantization", {})
    elif (d / "config.json").is_file():
        cfg = json.loads((d / "config.json").read_text()).get("quantization_config", {})
    else:
        raise FileNotFoundError(f"{d} has neither hf_quant_config.json nor config.json")
    algo = cfg.get("quant_algo")
    if algo != "NVFP4":
        raise ValueError(f"{d}: quant_algo {algo!r} is not supported (fp4linear loads NVFP4 checkpoints)")
    if cfg.get("group_size", 16) != 16:
        raise ValueError(f"{d}: group_size {cfg.get('group_size')} is not NVFP4's 16")
    return cfg


class _Shards:
    """Tensor name -> shard file, opened lazily (one open safetensors file at a time)."""

    def __init__(self, checkpoint_dir):
        from safetensors import safe_open

        self._open = safe_open
        d = Path(checkpoint_dir)
        index = d / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self.where = {name: d / f for name, f in weight_map.items()}
        else:
            files = sorted(d.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no safetensors files in {d}")
            self.where = {}
            for f in files:
                with safe_open(f, "pt") as h:
                    self.where.update({name: f for name in h.keys()})
        self._file, self._handle = None, None

    def __contains__(self, name):
        return name in self.where

    def get(self, name) -> torch.Tensor:
        f = self.where[name]
        if f != self._file:
            self._file, self._handle = f, self._open(f, "pt")
        return self._handle.get_tensor(name)


def _excluded(name: str, patterns) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


@torch.no_grad()
def load_modelopt(model: nn.Module, checkpoint_dir, *, backend="auto", device=None) -> nn.Module:
    """Replace every quantized nn.Linear of `model` with fp4linear.Linear and load all tensors.

    Modules listed in `exclude_modules` keep their class and get their stored (unquantized)
    weights. A missing tensor, a shape that disagrees with the model or an unsupported
    quant_algo raises an error naming the module and the tensor. Returns the model.
    """
    cfg = read_quant_config(checkpoint_dir)
    exclude = cfg.get("exclude_modules") or []
    shards = _Shards(checkpoint_dir)
    used = set()
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear and not _excluded(n, exclude)]
    for name, module in linears:
        target = device or (module.weight.device if module.weight.device.type != "meta" else "cpu")
        tensors = {}
        for t in QUANT_TENSORS:
            key = f"{name}.{t}"
            if key not in shards:
                raise KeyError(f"module {name!r}: tensor {key!r} is missing from the checkpoint "
                               f"(quantized Linears need {', '.join(QUANT_TENSORS)})")
            tensors[t] = shards.get(key).to(target)
            used.add(key)
        if f"{name}.bias" in shards:
            tensors["bias"] = shards.get(f"{name}.bias").to(target)
            used.add(f"{name}.bias")
        w = tensors["weight"]
        if w.dim() != 2 or w.shape[0] != module.out_features or w.shape[1] * 2 < module.in_features \
                or w.shape[1] * 2 - module.in_features >= 16:
            raise ValueError(f"module {name!r}: tensor {name}.weight has shape {tuple(w.shape)}, which does not "
                             f"hold an NVFP4 [{module.out_features}, {module.in_features}] weight")
        try:
            layer = Linear.from_modelopt(**tensors, backend=backend, in_features=module.in_features)
        except (ValueError, TypeError) as e:
            raise type(e)(f"module {name!r}: {e}") from e
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)

    # Everything else (embeddings, norms, excluded Linears) as stored.
    fp4_names = {n for n, m in model.named_modules() if isinstance(m, Linear)}
    rest = {}
    for key in shards.where:
        if key in used:
            continue
        owner = key.rpartition(".")[0]
        if owner in fp4_names:
            raise ValueError(f"module {owner!r}: unexpected tensor {key!r} in the checkpoint")
        rest[key] = shards.get(key)
    missing, unexpected = _assign(model, rest, device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
        missing = [k for k in missing if not _is_tied(model, k)]
    if unexpected:
        log.warning("load_modelopt: %d checkpoint tensors match no model parameter (e.g. %s)", len(unexpected), unexpected[0])
    if missing:
        raise KeyError(f"tensor {missing[0]!r} of the model is missing from the checkpoint ({len(missing)} missing)")
    log.info("load_modelopt: %d NVFP4 Linear layers (backend=%s), %d other tensors", len(linears), backend, len(rest))
    return model


def _assign(model, tensors, device):
    """Load non-quantized tensors into the model's parameters/buffers (materialising meta ones)."""
    own = dict(model.named_parameters())
    own.update(dict(model.named_buffers()))
    fp4 = {f"{n}.{b}" for n, m in model.named_modules() if isinstance(m, Linear) for b, _ in m.named_buffers()}
    unexpected = [k for k in tensors if k not in own]
    persistent = set(model.state_dict())
    for key, value in tensors.items():
        if key not in own:
            continue
        current = own[key]
        if tuple(current.shape) != tuple(value.shape):
            raise ValueError(f"tensor {key!r} has shape {tuple(value.shape)} in the checkpoint, "
                             f"{tuple(current.shape)} in the model")
        module_name, _, leaf = key.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        target = device or (current.device if current.device.type != "meta" else "cpu")
        new = value.to(device=target, dtype=current.dtype)
        if isinstance(current, nn.Parameter):
            setattr(module, leaf, nn.Parameter(new, requires_grad=current.requires_grad))
        else:
            module.register_buffer(leaf, new, persistent=key in persistent)
    missing = [k for k in persistent if k not in tensors and k not in fp4]
    return missing, unexpected


def _is_tied(model, key) -> bool:
    """A parameter shared with another one that was loaded (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and any(q is p for k, q in params.items() if k != key)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fp4linear.load", description="Load a ModelOpt NVFP4 checkpoint "
                                "into transformers with fp4linear and generate from a prompt.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(a.checkpoint)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # fp4linear does the quantized layers, not a transformers quantizer
    # Built on the device (its BF16 Linear weights are random init, replaced and freed by the load).
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    load_modelopt(model, a.checkpoint, backend=a.backend, device=a.device)
    model.eval()
    tok = AutoTokenizer.from_pretrained(a.checkpoint)
    ids = tok(a.prompt, return_tensors="pt").to(a.device)
    out = model.generate(**ids, max_new_tokens=a.max_new_tokens, do_sample=False)
    print(tok.decode(out[0], skip_special_tokens=True))


if __name__ == "__main__":
    main()
