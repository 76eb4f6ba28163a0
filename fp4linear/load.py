"""Load a Hugging Face NVFP4 checkpoint, ModelOpt or compressed-tensors, into a transformers model.

    model = fp4linear.from_pretrained(path)      # quantized Linears are fp4linear.Linear
    python -m fp4linear.load PATH --prompt "..."

The format comes from `hf_quant_config.json` or config.json's `quantization_config`
(docs/checkpoints.md). The model is built with its parameters on the meta device, so no
full-precision copy of a quantized weight is ever allocated; the safetensors tensors are then read
one at a time: each quantized nn.Linear becomes an `fp4linear.Linear` on `device`, every other
tensor is converted to the model's dtype and placed on `device`; Llama-style gated MLPs whose three
projections are all quantized become one `fp4linear.GatedMLP` (`fuse_mlp`). Whatever the loader cannot honour
(another algorithm or scheme, a missing or malformed tensor) raises an error naming the module and
the tensor. `load_modelopt(model, path)` loads a ModelOpt checkpoint into a model you built.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .checkpoint import COMPRESSED_TENSORS, MODELOPT, Format
from .linear import Linear
from .mlp import GatedMLP, fusable_mlps

log = logging.getLogger(__name__)

# KV-cache quantization scales (ModelOpt's kv_cache_quant_algo, compressed-tensors' kv_cache_scheme):
# transformers' attention keeps its cache in the model dtype, so these are skipped, with a warning.
KV_CACHE_TENSORS = ("k_scale", "v_scale")


@dataclass(frozen=True)
class Scheme:
    """How a checkpoint maps onto a model: its tensor format and which modules it quantized."""

    fmt: Format
    source: str  # the file that said so, for messages
    quantizes: Callable[[str, nn.Module], bool] = field(repr=False)


# ---- reading the quantization config ----------------------------------------------------------


def read_scheme(checkpoint_dir) -> Scheme:
    """The checkpoint's Scheme, from hf_quant_config.json (ModelOpt) or config.json's
    quantization_config (quant_method "modelopt" or "compressed-tensors")."""
    d = Path(checkpoint_dir)
    hf_quant, config = d / "hf_quant_config.json", d / "config.json"
    if hf_quant.is_file():
        return _modelopt_scheme(json.loads(hf_quant.read_text()).get("quantization", {}), hf_quant)
    if not config.is_file():
        raise FileNotFoundError(f"{d} has neither hf_quant_config.json nor config.json")
    qc = json.loads(config.read_text()).get("quantization_config")
    if not qc:
        raise ValueError(f"{config} has no quantization_config (and {d} no hf_quant_config.json): "
                         "not a quantized checkpoint")
    method = qc.get("quant_method")
    if method == "compressed-tensors":
        return _compressed_tensors_scheme(qc, config)
    if method == "modelopt" or (method is None and "quant_algo" in qc):
        return _modelopt_scheme(qc, config)
    raise ValueError(f"{config}: quant_method {method!r} is not supported (fp4linear reads ModelOpt NVFP4 and "
                     "compressed-tensors nvfp4-pack-quantized checkpoints)")


def _modelopt_scheme(cfg: dict, source: Path) -> Scheme:
    algo = cfg.get("quant_algo")
    if algo != "NVFP4":
        raise ValueError(f"{source}: quant_algo {algo!r} is not supported (fp4linear loads NVFP4 checkpoints)")
    if cfg.get("group_size", 16) != 16:
        raise ValueError(f"{source}: group_size {cfg.get('group_size')} is not NVFP4's 16")
    if cfg.get("kv_cache_quant_algo"):
        log.warning("%s: kv_cache_quant_algo %s is not applied: the KV cache stays in the model dtype",
                    source, cfg["kv_cache_quant_algo"])
    # hf_quant_config.json says exclude_modules, config.json's quantization_config says ignore;
    # both are fnmatch patterns over module names (as vLLM matches them).
    exclude = cfg.get("exclude_modules") or cfg.get("ignore") or []
    return Scheme(MODELOPT, str(source), lambda name, module: isinstance(module, nn.Linear)
                  and not any(fnmatch.fnmatchcase(name, p) for p in exclude))


# What one NVFP4 quantization args entry of a compressed-tensors config must say; "dynamic" differs:
# weights are static, activations "local" (static input_global_scale, per-block scales computed
# per call: exactly what fp4linear.Linear does with a static input scale).
_CT_NVFP4 = dict(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True)
_CT_ABSENT = ("actorder", "block_structure")


def _check_ct_args(where: str, args: dict | None, dynamic) -> None:
    if args is None:
        raise ValueError(f"{where} is missing" + (": weight-only NVFP4 (NVFP4A16) is not supported, "
                         "fp4linear.Linear quantizes activations to NVFP4 too" if "input" in where else ""))
    for key, want in {**_CT_NVFP4, "dynamic": dynamic}.items():
        if args.get(key) != want:
            raise ValueError(f"{where}.{key} is {args.get(key)!r}, fp4linear supports {want!r} only "
                             "(NVFP4: 4-bit float, symmetric, one E4M3 scale per 16 elements and one fp32 global "
                             "scale, activations with a static global scale)")
    for key in _CT_ABSENT:
        if args.get(key) is not None:
            raise ValueError(f"{where}.{key} is {args[key]!r}: not supported")
    if args.get("scale_dtype") not in (None, "torch.float8_e4m3fn"):
        raise ValueError(f"{where}.scale_dtype is {args['scale_dtype']!r}, NVFP4 block scales are torch.float8_e4m3fn")


def _compressed_tensors_scheme(qc: dict, source: Path) -> Scheme:
    if qc.get("quantization_status", "compressed") != "compressed":
        raise ValueError(f"{source}: quantization_status {qc['quantization_status']!r}: the weights are not packed")
    for key in ("sparsity_config", "transform_config"):
        if qc.get(key):
            raise ValueError(f"{source}: {key} is set: sparse or transformed weights are not supported")
    if qc.get("kv_cache_scheme"):
        log.warning("%s: kv_cache_scheme is not applied: the KV cache stays in the model dtype", source)
    groups = qc.get("config_groups") or {}
    if not groups:
        raise ValueError(f"{source}: quantization_config has no config_groups")
    targets = []
    for name, group in groups.items():
        where = f"{source}: config_groups.{name}"
        fmt = group.get("format") or qc.get("format")
        if fmt != "nvfp4-pack-quantized":
            raise ValueError(f"{where}: format {fmt!r} is not supported (fp4linear reads nvfp4-pack-quantized)")
        _check_ct_args(f"{where}.weights", group.get("weights"), dynamic=False)
        _check_ct_args(f"{where}.input_activations", group.get("input_activations"), dynamic="local")
        if group.get("output_activations"):
            raise ValueError(f"{where}.output_activations is set: output quantization is not supported")
        targets += group.get("targets") or []
    ignore = qc.get("ignore") or []
    return Scheme(COMPRESSED_TENSORS, str(source), lambda name, module: isinstance(module, nn.Linear)
                  and _ct_matches(name, module, targets) and not _ct_matches(name, module, ignore))


def _ct_matches(name: str, module: nn.Module, patterns) -> bool:
    """compressed-tensors' module matching (its utils.match.is_match, which tests compare against):
    a pattern is an exact module name, "re:" + a regex that re.match-es the name from its start, or
    the name of a class in the module's MRO ("Linear" also matching vLLM's LinearBase). Written
    here because compressed-tensors is not a dependency of fp4linear."""
    classes = {c.__name__ for c in type(module).__mro__ if issubclass(c, nn.Module)}
    if "LinearBase" in classes:
        classes.add("Linear")
    return any(re.match(p[3:], name) is not None if p.startswith("re:") else (p == name or p in classes)
               for p in patterns)


# ---- reading tensors ---------------------------------------------------------------------------


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
        """The stored tensor, backed by the memory-mapped file (nothing read until it is used)."""
        f = self.where[name]
        if f != self._file:
            self._file, self._handle = f, self._open(f, "pt")
        return self._handle.get_tensor(name)


# ---- loading ----------------------------------------------------------------------------------


def _place(model: nn.Module, key: str, value: torch.Tensor, device) -> None:
    """Put a checkpoint tensor into the model's parameter/buffer `key`, in that tensor's dtype (the
    model dtype, or what the model keeps in fp32), on `device` (or where it is, if not meta); always
    a copy, so the model never holds memory of the mapped file."""
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name)
    current = getattr(module, leaf)
    if tuple(current.shape) != tuple(value.shape):
        raise ValueError(f"tensor {key!r} has shape {tuple(value.shape)} in the checkpoint, "
                         f"{tuple(current.shape)} in the model")
    target = device or (current.device if current.device.type != "meta" else "cpu")
    new = value.to(device=target, dtype=current.dtype, copy=True)
    if isinstance(current, nn.Parameter):
        setattr(module, leaf, nn.Parameter(new, requires_grad=current.requires_grad))
    else:
        module.register_buffer(leaf, new, persistent=leaf not in module._non_persistent_buffers_set)


def _layer_tensors(name: str, module: nn.Linear, shards: _Shards, scheme: Scheme, device) -> tuple[dict, list]:
    """(the checkpoint tensors of the quantized nn.Linear `name` by their format's names, on the
    target device, bias included if stored; the keys used), checked against the module's shape."""
    fmt = scheme.fmt
    target = device or (module.weight.device if module.weight.device.type != "meta" else "cpu")
    tensors, used = {}, []
    for t in fmt.tensors:
        key = f"{name}.{t}"
        if key not in shards:
            raise KeyError(f"module {name!r}: tensor {key!r} is missing from the checkpoint ({scheme.source} "
                           f"quantizes it as {fmt.name}: {', '.join(fmt.tensors)})")
        tensors[t] = shards.get(key).to(target)
        used.append(key)
    if f"{name}.bias" in shards:
        tensors["bias"] = shards.get(f"{name}.bias").to(target)
        used.append(f"{name}.bias")
    w = tensors[fmt.weight]
    if w.dim() != 2 or w.shape[0] != module.out_features or not (0 <= w.shape[1] * 2 - module.in_features < 16):
        raise ValueError(f"module {name!r}: tensor {name}.{fmt.weight} has shape {tuple(w.shape)}, which does not "
                         f"hold an NVFP4 [{module.out_features}, {module.in_features}] weight")
    return tensors, used


def _quantized_layer(name: str, module: nn.Linear, shards: _Shards, scheme: Scheme, backend, device) -> tuple:
    """(fp4linear.Linear, checkpoint keys it used) for the nn.Linear `name`."""
    fmt = scheme.fmt
    tensors, used = _layer_tensors(name, module, shards, scheme, device)
    try:
        layer = getattr(Linear, fmt.constructor)(**tensors, backend=backend, in_features=module.in_features)
    except (ValueError, TypeError) as e:
        raise type(e)(f"module {name!r}: {e}") from e
    return layer, used


def _gated_mlp(name: str, act: str, model: nn.Module, shards: _Shards, scheme: Scheme, backend, device) -> tuple:
    """(fp4linear.GatedMLP, checkpoint keys it used) for the MLP `name` whose three projections the
    checkpoint quantized."""
    mlp = model.get_submodule(name)
    parts, used = {}, []
    for part in ("gate", "up", "down"):
        tensors, keys = _layer_tensors(f"{name}.{part}_proj", getattr(mlp, f"{part}_proj"), shards, scheme, device)
        parts[part] = tensors
        used += keys
    make = GatedMLP.from_modelopt if scheme.fmt is MODELOPT else GatedMLP.from_compressed_tensors
    try:
        layer = make(**parts, act=act, backend=backend, in_features=mlp.gate_proj.in_features,
                     intermediate_size=mlp.gate_proj.out_features)
    except (ValueError, TypeError) as e:
        raise type(e)(f"module {name!r}: {e}") from e
    return layer, used


@torch.no_grad()
def load_checkpoint(model: nn.Module, checkpoint_dir, scheme: Scheme | None = None, *, backend="auto",
                    device=None, fuse_mlp: bool = True) -> nn.Module:
    """Replace each nn.Linear the checkpoint quantized with an fp4linear.Linear and load every other
    tensor, streaming the safetensors one tensor at a time. `model` may live on the meta device
    (what from_pretrained builds); `device=None` keeps each tensor where the model has it (CPU for
    meta). Non-quantized tensors take the model's dtype. fuse_mlp: a Llama-style MLP whose gate,
    up and down projections are all quantized becomes one fp4linear.GatedMLP (`fp4linear.swap`
    says which MLPs qualify). Returns the model."""
    scheme = scheme or read_scheme(checkpoint_dir)
    fmt = scheme.fmt
    shards = _Shards(checkpoint_dir)
    used = set()
    # names only: each replaced nn.Linear (and a full-precision weight it may hold) is freed at once
    fp4_names = [n for n, m in model.named_modules() if scheme.quantizes(n, m)]
    fp4_set = set(fp4_names)
    replaced = []  # (module name, its fp4linear module)
    mlps = fusable_mlps(model, fp4_set, caller="load") if fuse_mlp else {}
    for name, act in mlps.items():
        layer, keys = _gated_mlp(name, act, model, shards, scheme, backend, device)
        used.update(keys)
        replaced.append((name, layer))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    in_mlps = {f"{name}.{c}_proj" for name in mlps for c in ("gate", "up", "down")}
    for name in fp4_names:
        if name in in_mlps:
            continue
        layer, keys = _quantized_layer(name, model.get_submodule(name), shards, scheme, backend, device)
        used.update(keys)
        replaced.append((name, layer))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)

    own = {k for k, _ in model.named_parameters()} | {k for k, _ in model.named_buffers()}
    loaded, unexpected, kv_scales = set(), [], []
    for key in shards.where:
        if key in used:
            continue
        owner, _, leaf = key.rpartition(".")
        nvfp4 = leaf in fmt.tensors and f"{owner}.{fmt.weight_scale}" in shards
        if leaf in KV_CACHE_TENSORS:
            kv_scales.append(key)
        elif owner in fp4_set or nvfp4:
            # an extra tensor of a quantized layer, or NVFP4 data of a module that is not a quantized
            # nn.Linear here (excluded, or not a Linear in this model, e.g. MoE experts that
            # transformers fuses into one parameter)
            raise ValueError(f"module {owner!r}: checkpoint tensor {key!r} is NVFP4 data, but the model has no "
                             f"quantized nn.Linear {owner!r} to take it ({scheme.source})")
        elif key in own:
            _place(model, key, shards.get(key), device)
            loaded.add(key)
        else:
            unexpected.append(key)
    _tie(model)
    if device is not None:
        _move_buffers(model, device)
    fp4_buffers = {f"{n}.{b}" for n, layer in replaced for b, _ in layer.named_buffers()}
    missing = [k for k in model.state_dict() if k not in loaded and k not in fp4_buffers and not _is_tied(model, k)]
    if kv_scales:
        log.warning("load: %d KV-cache scales skipped (e.g. %s): the KV cache stays in the model dtype",
                    len(kv_scales), kv_scales[0])
    if unexpected:
        log.warning("load: %d checkpoint tensors match no model parameter (e.g. %s)", len(unexpected), unexpected[0])
    if missing:
        raise KeyError(f"tensor {missing[0]!r} of the model is missing from the checkpoint ({len(missing)} missing)")
    still_meta = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if still_meta:  # e.g. a rotary table the model computes in __init__, built on meta
        raise ValueError(f"tensor {still_meta[0]!r} of the model is on the meta device and not in the checkpoint: "
                         "build the model with only its parameters on meta (accelerate's "
                         "init_empty_weights(include_buffers=False))")
    log.info("load: %s checkpoint, %d NVFP4 Linear layers, %d of them in %d GatedMLPs (backend=%s), %d other tensors",
             fmt.name, len(fp4_names), len(in_mlps), len(mlps), backend, len(loaded))
    return model


def _tie(model: nn.Module) -> None:
    """Tie the output embedding to the input one where the config says so (the checkpoint then
    usually stores one of them)."""
    if not hasattr(model, "tie_weights"):
        return
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "tie_word_embeddings", False) and isinstance(model.get_output_embeddings(), Linear):
        raise ValueError("module for the output embedding is NVFP4 in the checkpoint but the config ties it to "
                         "the input embedding (tie_word_embeddings): an NVFP4 layer cannot share an embedding")
    model.tie_weights()


def _move_buffers(model: nn.Module, device) -> None:
    """Buffers the model computed itself (e.g. rotary inv_freq, built on the CPU) -> device."""
    device = torch.device(device)
    for name, buf in list(model.named_buffers()):
        if buf is not None and not buf.is_meta and buf.device != device:
            module_name, _, leaf = name.rpartition(".")
            module = model.get_submodule(module_name)
            module.register_buffer(leaf, buf.to(device), persistent=leaf not in module._non_persistent_buffers_set)


def _is_tied(model, key) -> bool:
    """A parameter shared with another one that was loaded (tied embeddings)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and not p.is_meta and any(q is p for k, q in params.items() if k != key)


def load_modelopt(model: nn.Module, checkpoint_dir, *, backend="auto", device=None, fuse_mlp: bool = True) -> nn.Module:
    """Load a ModelOpt NVFP4 checkpoint into `model` (built by you, on any device or meta): quantized
    nn.Linears become fp4linear.Linear (Llama-style MLPs one fp4linear.GatedMLP, unless
    fuse_mlp=False), modules in `exclude_modules` keep their class and get their
    stored weights. A missing tensor, a shape that disagrees with the model or an unsupported
    quant_algo raises an error naming the module and the tensor. Returns the model."""
    scheme = read_scheme(checkpoint_dir)
    if scheme.fmt is not MODELOPT:
        raise ValueError(f"{scheme.source} describes a {scheme.fmt.name} checkpoint, not ModelOpt: "
                         "use fp4linear.from_pretrained (or fp4linear.load.load_checkpoint)")
    return load_checkpoint(model, checkpoint_dir, scheme, backend=backend, device=device, fuse_mlp=fuse_mlp)


def from_pretrained(checkpoint_dir, *, backend="auto", device=None, dtype=torch.bfloat16,
                    fuse_mlp: bool = True) -> nn.Module:
    """A transformers causal LM from an NVFP4 checkpoint directory (ModelOpt or compressed-tensors),
    its quantized Linears as fp4linear.Linear (Llama-style MLPs as fp4linear.GatedMLP unless
    fuse_mlp=False), in eval mode.

    device: where everything goes (default: CUDA if available, else CPU). dtype: the dtype of every
    non-quantized tensor (converted from the stored one) and of the model's activations. The model
    is built with parameters on the meta device (accelerate's init_empty_weights), so peak memory
    is the loaded model plus one layer in flight.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    d = Path(checkpoint_dir)
    scheme = read_scheme(d)
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.from_pretrained(d)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # fp4linear builds the quantized layers, not a transformers quantizer
    # Parameters on meta, buffers (rotary tables and the like, computed in __init__) real.
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    load_checkpoint(model, d, scheme, backend=backend, device=device, fuse_mlp=fuse_mlp)
    if (d / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(d)
    return model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fp4linear.load", description="Load an NVFP4 checkpoint (ModelOpt "
                                "or compressed-tensors) into transformers with fp4linear and generate from a prompt.")
    p.add_argument("checkpoint")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--no-fuse-mlp", action="store_true", help="keep gate, up and down as separate Linears")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from transformers import AutoTokenizer

    model = from_pretrained(a.checkpoint, backend=a.backend, device=a.device, dtype=getattr(torch, a.dtype),
                            fuse_mlp=not a.no_fuse_mlp)
    tok = AutoTokenizer.from_pretrained(a.checkpoint)
    ids = tok(a.prompt, return_tensors="pt").to(a.device)
    out = model.generate(**ids, max_new_tokens=a.max_new_tokens, do_sample=False)
    print(tok.decode(out[0], skip_special_tokens=True))  # the command's output, not a log line


if __name__ == "__main__":
    main()
