"""Swap a model's nn.Linear layers for NVFP4 `fp4linear.Linear`, with static activation scales.

`calibrate` runs a few batches through the BF16 model and records each layer's activation amax
(ModelOpt's static `input_scale` = amax / (448 * 6)); `swap` replaces the layers in place, and
Llama-style gated MLPs as a whole by `fp4linear.GatedMLP` (`fuse_mlp`). calibrate's scales are
what GatedMLP needs: gate_proj and up_proj see the same input (the same scale), down_proj's input
is the activation act(gate) * up.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from .format import abs_amax, decode_scale
from .linear import Linear
from .mlp import GatedMLP, fusable_mlps, same_scalar

log = logging.getLogger(__name__)

Skip = None | Iterable[str] | Callable[[str, nn.Module], bool]


def _skipper(skip: Skip) -> Callable[[str, nn.Module], bool]:
    if skip is None:
        return lambda name, module: False
    if callable(skip):
        return skip
    patterns = [skip] if isinstance(skip, str) else list(skip)
    return lambda name, module: any(fnmatch.fnmatchcase(name, p) for p in patterns)


def linear_layers(model: nn.Module, skip: Skip = None) -> dict[str, nn.Linear]:
    """The nn.Linear modules of `model` (by qualified name) that `skip` does not exclude."""
    skipped = _skipper(skip)
    return {name: m for name, m in model.named_modules() if type(m) is nn.Linear and not skipped(name, m)}


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, *, skip: Skip = None) -> dict[str, torch.Tensor]:
    """Run `batches` through `model` and return each Linear's static input_scale (amax / 2688).

    A batch is passed as `model(**batch)` when it is a mapping, `model(*batch)` when a tuple, else
    `model(batch)`. Scales stay on the model's device (no host sync while running).
    """
    layers = linear_layers(model, skip)
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(module, args):
            a = abs_amax(args[0].detach())
            amax[name] = torch.maximum(amax[name], a) if name in amax else a

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        for batch in batches:
            if isinstance(batch, Mapping):
                model(**batch)
            elif isinstance(batch, tuple):
                model(*batch)
            else:
                model(batch)
    finally:
        for h in handles:
            h.remove()
    missing = sorted(set(layers) - set(amax))
    if missing:
        log.warning("calibrate: %d Linear layers saw no input (e.g. %s); they get no input_scale", len(missing), missing[0])
    # (a layer that only ever saw zeros gets the smallest positive scale instead of 0)
    return {name: decode_scale(a).reshape(()) for name, a in amax.items()}


def swap(model: nn.Module, *, backend="auto", skip: Skip = None,
         input_scales: Mapping[str, torch.Tensor | float] | None = None, fuse_mlp: bool = True) -> nn.Module:
    """Replace every nn.Linear of `model` (in place) by `fp4linear.Linear.from_linear`; returns model.

    input_scales: {layer name: static activation decode scale}, e.g. from `calibrate`; when given,
    every swapped layer needs one. None: every layer scales its activations dynamically (per call,
    on the device; one extra reduction per layer). skip: layer names or fnmatch patterns ("*.lm_head"), or a callable
    (name, module) -> bool, for layers to keep as they are.

    fuse_mlp: each Llama/Qwen/Mistral-style MLP (children gate_proj, up_proj, down_proj, act_fn;
    act_fn SiLU or tanh GELU; none of the three skipped) becomes one `fp4linear.GatedMLP`: gate and
    up one GEMM on a shared weight global scale, the activation fused with the quantization of
    down's input. Other MLPs keep their module, with each Linear swapped (logged). False: every
    Linear is swapped on its own, as before.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = linear_layers(model, skip)
    dynamic = input_scales is None
    input_scales = dict(input_scales or {})
    missing = sorted(set(layers) - set(input_scales))
    if missing and not dynamic:
        raise KeyError(f"no input_scale for {len(missing)} Linear layer(s), e.g. {missing[0]!r}: run "
                       "fp4linear.calibrate(model, batches) and pass its result as input_scales, or skip them")
    if "" in layers:
        raise ValueError("model is itself an nn.Linear: use fp4linear.Linear.from_linear")
    mlps = fusable_mlps(model, layers, caller="fp4linear.swap") if fuse_mlp else {}
    fused = set()
    for name, act in mlps.items():
        mlp = model.get_submodule(name)
        parts = [f"{name}.{c}" for c in ("gate_proj", "up_proj", "down_proj")]
        gate_scale, up_scale, down_scale = (input_scales.get(p) for p in parts)
        try:
            if same_scalar(gate_scale, up_scale):
                new = GatedMLP.from_linear(mlp.gate_proj, mlp.up_proj, mlp.down_proj, act=act, input_scale=gate_scale,
                                           down_input_scale=down_scale, backend=backend)
            else:  # exact: two GEMMs on their own scales (calibrate gives both the same; these were given apart)
                log.info("fp4linear.swap: %s: gate_proj and up_proj have different input scales: two GEMMs", name)
                new = GatedMLP((Linear.from_linear(mlp.gate_proj, input_scale=gate_scale, backend=backend),
                                Linear.from_linear(mlp.up_proj, input_scale=up_scale, backend=backend)),
                               Linear.from_linear(mlp.down_proj, input_scale=down_scale, backend=backend), act)
        except (TypeError, ValueError) as e:
            raise type(e)(f"MLP {name!r}: {e}") from e
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
        fused.update(parts)
    for name, module in layers.items():
        if name in fused:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        try:
            layer = Linear.from_linear(module, input_scale=input_scales.get(name), backend=backend)
        except (TypeError, ValueError) as e:
            raise type(e)(f"layer {name!r}: {e}") from e
        setattr(parent, child, layer)
    log.info("fp4linear.swap: replaced %d Linear layers, %d of them in %d GatedMLPs (backend=%s, %s activation "
             "scales)", len(layers), len(fused), len(mlps), backend, "dynamic" if dynamic else "static")
    return model


__all__ = ["calibrate", "linear_layers", "swap"]
