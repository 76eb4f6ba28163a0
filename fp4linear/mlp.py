"""`fp4linear.GatedMLP`: a Llama-style gated MLP, down(act(gate(x)) * up(x)), as two NVFP4 GEMMs and
one activation pass (docs/nvfp4.md, "GatedMLP").

- gate and up are one `fp4linear.Linear` with the weight [gate; up] (N = 2I), so its output is
  [..., 2I] = [gate, up], the layout the gated acts read. One GEMM needs one weight global scale
  and one input scale for both: ModelOpt exports gate/up that way, and `from_linear` quantizes the
  concatenated weight (amax over both) the same way. A checkpoint whose gate and up scales differ
  keeps two Linears whose outputs are concatenated: the exact result, one more GEMM and a copy.
- the activation is fused into the quantization of the down projection's input
  (`ops.triton_act_linear`): act(h) is computed in fp32, rounded once to h's dtype and quantized
  with the down layer's input scale (static, or dynamic: its amax taken on the device), and is
  never written out; on eager calls whose time is the host's the down GEMM computes act(h) itself
  (one launch), elsewhere it reads what a pass writes.

The numerics are those of the unfused modules `down(activation(gate_up(x), act))` built from the
same tensors, bit for bit wherever the down layer would take the same GEMM (`triton_act_linear`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Container, Mapping

import torch
from torch import nn

from . import kernels, ops
from .act import GATED_ACTS
from .checkpoint import COMPRESSED_TENSORS, MODELOPT, Format, check_packed
from .format import BLOCK_SIZE, SWIZZLE_128x4
from .linear import Linear, quantize_weight

log = logging.getLogger(__name__)

MLP_CHILDREN = frozenset(("gate_proj", "up_proj", "down_proj", "act_fn"))


def _check_act(act) -> str:
    if act not in GATED_ACTS:
        raise ValueError(f"act must be one of {GATED_ACTS} (a gated activation, act(gate) * up), got {act!r}")
    return act


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)) in NVFP4. Build with `from_modelopt`, `from_compressed_tensors` or
    `from_linear` (or `fp4linear.swap` / `from_pretrained`, which do it for Llama-style MLPs).

    gate_up: the fused `Linear` ([gate; up], out_features 2I), or a pair (gate, up) of Linears with
    different scales (run as two GEMMs, outputs concatenated). down: the `Linear` [H, I].
    act: "silu_mul" or "gelu_tanh_mul".
    """

    def __init__(self, gate_up: Linear | tuple[Linear, Linear], down: Linear, act: str = "silu_mul"):
        super().__init__()
        self.act = _check_act(act)
        if isinstance(gate_up, (tuple, list)):
            if len(gate_up) != 2 or not all(isinstance(m, Linear) for m in gate_up):
                raise TypeError("gate_up must be an fp4linear.Linear or a pair (gate, up) of them")
            gate, up = gate_up
            if (gate.in_features, gate.out_features) != (up.in_features, up.out_features):
                raise ValueError(f"gate ({gate.out_features} x {gate.in_features}) and up ({up.out_features} x "
                                 f"{up.in_features}) must have the same shape")
            self.gate_up, self.gate, self.up = None, gate, up
            hidden, inter = gate.in_features, gate.out_features
        elif isinstance(gate_up, Linear):
            if gate_up.out_features % 2:
                raise ValueError(f"gate_up must have 2I outputs ([gate; up]), got out_features={gate_up.out_features}")
            self.gate_up, self.gate, self.up = gate_up, None, None
            hidden, inter = gate_up.in_features, gate_up.out_features // 2
        else:
            raise TypeError("gate_up must be an fp4linear.Linear or a pair (gate, up) of them, got "
                            f"{type(gate_up).__name__}")
        if not isinstance(down, Linear):
            raise TypeError(f"down must be an fp4linear.Linear, got {type(down).__name__}")
        if down.in_features != inter:
            raise ValueError(f"down takes {down.in_features} inputs but gate/up give I = {inter}")
        first = self.gate_up if self.gate_up is not None else self.gate
        if down.weight.device != first.weight.device:
            raise ValueError(f"down is on {down.weight.device} but gate/up are on {first.weight.device}")
        self.down = down
        self.hidden_size, self.intermediate_size = hidden, inter

    @property
    def fused(self) -> bool:
        """gate and up run as one GEMM (they share their scales)."""
        return self.gate_up is not None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_modelopt(cls, gate: Mapping, up: Mapping, down: Mapping, *, act: str = "silu_mul", backend="auto",
                      in_features: int | None = None, intermediate_size: int | None = None) -> "GatedMLP":
        """From the three layers' ModelOpt NVFP4 tensors as stored, each a mapping of
        `Linear.from_modelopt`'s arguments (weight, weight_scale, weight_scale_2, input_scale, bias).

        gate and up become one GEMM when their weight_scale_2 and input_scale are equal (ModelOpt
        exports them so), else two. in_features / intermediate_size: the hidden and intermediate
        sizes when the checkpoint padded them to the 16-element block (default: as stored).
        """
        return cls._from_checkpoint(MODELOPT, gate, up, down, act=act, backend=backend, in_features=in_features,
                                    intermediate_size=intermediate_size)

    @classmethod
    def from_compressed_tensors(cls, gate: Mapping, up: Mapping, down: Mapping, *, act: str = "silu_mul",
                                backend="auto", in_features: int | None = None,
                                intermediate_size: int | None = None) -> "GatedMLP":
        """As `from_modelopt`, from compressed-tensors tensors (weight_packed, weight_scale,
        weight_global_scale, input_global_scale, bias)."""
        return cls._from_checkpoint(COMPRESSED_TENSORS, gate, up, down, act=act, backend=backend,
                                    in_features=in_features, intermediate_size=intermediate_size)

    @classmethod
    def _from_checkpoint(cls, fmt: Format, gate, up, down, *, act, backend, in_features, intermediate_size):
        _check_act(act)
        parts = {"gate": gate, "up": up, "down": down}
        for name, t in parts.items():
            if not isinstance(t, Mapping):
                raise TypeError(f"{name} must be a mapping of {fmt.name} tensors ({', '.join(fmt.tensors)}), "
                                f"got {type(t).__name__}")
            absent = [k for k in (fmt.weight, fmt.weight_scale, fmt.weight_global) if k not in t]
            if absent:
                raise ValueError(f"{name} has no {absent[0]!r} ({fmt.name} tensors: {', '.join(fmt.tensors)})")
        # a missing input scale is a dynamic one, as Linear's input_scale=None
        gate, up, down = ({**t, fmt.input_global: t.get(fmt.input_global)} for t in (gate, up, down))
        parts = {"gate": gate, "up": up, "down": down}
        shapes = {}
        for name, t in parts.items():
            try:
                shapes[name] = check_packed(t[fmt.weight], t[fmt.weight_scale], t.get("bias"), fmt=fmt)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{name}: {e}") from e
        if shapes["gate"] != shapes["up"]:
            raise ValueError(f"up's {fmt.weight} holds [N, K] = {list(shapes['up'])} but gate's "
                             f"{list(shapes['gate'])}: gate and up must have the same shape")
        inter = shapes["gate"][0] if intermediate_size is None else intermediate_size
        if inter != shapes["gate"][0]:
            raise ValueError(f"intermediate_size={inter} but gate and up have N = {shapes['gate'][0]}")
        k_down = shapes["down"][1]
        if not (k_down - BLOCK_SIZE < inter <= k_down):
            raise ValueError(f"down's {fmt.weight} holds K = {k_down} codes per row, which does not fit the "
                             f"I = {inter} outputs of gate and up")
        make = getattr(Linear, fmt.constructor)
        kw = dict(backend=backend, in_features=in_features)
        scalars = (fmt.weight_global, fmt.input_global)
        if all(same_scalar(gate.get(s), up.get(s)) for s in scalars):
            gate_up = make(**_concat_rows(fmt, gate, up), **kw)
        else:
            log.info("GatedMLP: gate and up have different %s / %s: two GEMMs, outputs concatenated", *scalars)
            gate_up = (make(**gate, **kw), make(**up, **kw))
        return cls(gate_up, make(**down, backend=backend, in_features=inter), act)

    @classmethod
    def from_linear(cls, gate_proj: nn.Linear, up_proj: nn.Linear, down_proj: nn.Linear, *, act: str = "silu_mul",
                    input_scale=None, down_input_scale=None, backend="auto") -> "GatedMLP":
        """Quantize three nn.Linear layers (the fused kernel, ModelOpt's recipe): gate and up as one
        weight [gate; up] with one global scale from the amax over both, as ModelOpt exports them.
        input_scale: the static decode scale (amax / 2688) of x, shared by gate and up; down_input_scale:
        that of act(gate(x)) * up(x) (`calibrate` records both); None: dynamic, per call, on the device."""
        _check_act(act)
        for name, layer in (("gate_proj", gate_proj), ("up_proj", up_proj), ("down_proj", down_proj)):
            if not isinstance(layer, nn.Linear):
                raise TypeError(f"{name} must be a torch.nn.Linear, got {type(layer).__name__}")
        if gate_proj.weight.shape != up_proj.weight.shape:
            raise ValueError(f"up_proj's weight {tuple(up_proj.weight.shape)} does not match gate_proj's "
                             f"{tuple(gate_proj.weight.shape)}")
        if down_proj.in_features != gate_proj.out_features:
            raise ValueError(f"down_proj takes {down_proj.in_features} inputs but gate_proj gives "
                             f"{gate_proj.out_features}")
        w = torch.cat([gate_proj.weight.detach(), up_proj.weight.detach()])  # load time: one [2I, H] temporary
        bias = _concat_bias(gate_proj.bias, up_proj.bias, gate_proj.out_features)
        gate_up = Linear.from_modelopt(**quantize_weight(w), input_scale=input_scale, bias=bias, backend=backend,
                                       in_features=w.shape[1])
        return cls(gate_up, Linear.from_linear(down_proj, input_scale=down_input_scale, backend=backend), act)

    # -- forward ------------------------------------------------------------------------------
    # Host time as in Linear.forward: the down layer's buffers in one C call, no reshapes of 2-D tensors.
    @ops.on_device_of(1)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            h = self.gate_up(x)  # checks x; [..., 2I] = [gate, up] in x's dtype
        else:
            h = torch.cat([self.gate(x), self.up(x)], dim=-1)
        if h.dim() != 2:
            h = h.reshape(-1, 2 * self.intermediate_size)
        d = self.down
        compiling = torch.compiler.is_compiling()
        weight, weight_scale, gs, alpha, weight_scale_2, bias = d._forward_buffers(compiling)
        n = d.out_features
        if d._triton:
            out = (ops.act_linear if compiling else ops.triton_act_linear)(
                h, self.act, weight, weight_scale, gs, alpha, weight_scale_2, bias, n, d.dynamic_input_scale,
                d._alpha_host)
        else:  # a packed activation for the backend's GEMM, as Linear.forward
            d.backend.check_available(h.device)
            if d.dynamic_input_scale:
                gs, alpha = kernels.dynamic_gs_alpha(h, weight_scale_2, act=self.act)
            a_data, a_scale = ops.act_quantize(h, self.act, gs, d.k_padded, SWIZZLE_128x4.row_tile)
            out = d.backend.gemm(a_data, a_scale, weight, weight_scale, alpha, bias, n, h.dtype)
        return out if x.dim() == 2 else out.reshape(*x.shape[:-1], n)

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, intermediate_size={self.intermediate_size}, act={self.act}"
                + ("" if self.fused else ", fused=False (gate/up scales differ)"))


def same_scalar(a, b) -> bool:
    """Equal decode/encode scalars (both absent: a dynamic input scale). Load time: read on the host."""
    if a is None or b is None:
        return a is None and b is None
    return torch.equal(torch.as_tensor(a).detach().float().reshape(-1).cpu(),
                       torch.as_tensor(b).detach().float().reshape(-1).cpu())


def _concat_bias(gate_bias, up_bias, n: int):
    if gate_bias is None and up_bias is None:
        return None
    like = gate_bias if gate_bias is not None else up_bias
    parts = [b.detach() if b is not None else torch.zeros(n, dtype=like.dtype, device=like.device)
             for b in (gate_bias, up_bias)]
    return torch.cat(parts)


def _concat_rows(fmt: Format, gate: Mapping, up: Mapping) -> dict:
    """One layer's tensors from gate's and up's (equal scalars): codes and block scales stacked [gate; up]."""
    out = {name: torch.cat([gate[name].view(torch.uint8), up[name].view(torch.uint8)])
           for name in (fmt.weight, fmt.weight_scale)}
    out.update({fmt.weight_global: gate[fmt.weight_global], fmt.input_global: gate.get(fmt.input_global)})
    out["bias"] = _concat_bias(gate.get("bias"), up.get("bias"), gate[fmt.weight].shape[0])
    return out


# ---- finding the MLPs of a model ----------------------------------------------------------------


def mlp_act(act_fn) -> str | None:
    """The gated act of an MLP's `act_fn` module: SiLU -> "silu_mul", tanh-approximated GELU
    (transformers' gelu_pytorch_tanh) -> "gelu_tanh_mul"; None for anything else."""
    hf = sys.modules.get("transformers.activations")  # loaded if the model uses its classes
    silu = (nn.SiLU, *((getattr(hf, "SiLUActivation"),) if hasattr(hf, "SiLUActivation") else ()))
    gelu_tanh = tuple(getattr(hf, c) for c in ("GELUTanh", "PytorchGELUTanh") if hasattr(hf, c))
    if isinstance(act_fn, silu):
        return "silu_mul"
    if (isinstance(act_fn, nn.GELU) and act_fn.approximate == "tanh") or isinstance(act_fn, gelu_tanh):
        return "gelu_tanh_mul"
    return None


def fusable_mlps(model: nn.Module, linears: Container[str], *, caller: str) -> dict[str, str]:
    """{module name: act} of the Llama/Qwen/Mistral-style MLPs of `model` to build as GatedMLP:
    modules whose children are exactly gate_proj, up_proj, down_proj and act_fn (their forward is
    taken to be down_proj(act_fn(gate_proj(x)) * up_proj(x)), as transformers' LlamaMLP,
    Qwen2MLP and MistralMLP compute it), whose three projections are all in `linears` (the layers
    being made NVFP4) and whose act_fn has a fused kernel. Logs why other such modules stay unfused."""
    found = {}
    for name, module in model.named_modules():
        if {c for c, _ in module.named_children()} != MLP_CHILDREN:
            continue
        projections = [f"{name}.{c}" if name else c for c in ("gate_proj", "up_proj", "down_proj")]
        left_out = [p for p in projections if p not in linears]
        act = mlp_act(module.act_fn)
        if not name:
            why = "it is the model itself (use fp4linear.GatedMLP.from_linear)"
        elif left_out:
            why = f"{left_out[0]} is not an nn.Linear made NVFP4 here (skipped, excluded or another class)"
        elif act is None:
            why = f"act_fn {type(module.act_fn).__name__} has no fused kernel (SiLU and tanh GELU do)"
        else:
            found[name] = act
            continue
        log.info("%s: MLP %r not fused: %s; its projections are handled one by one", caller, name or "<model>", why)
    return found


__all__ = ["GatedMLP", "fusable_mlps", "mlp_act"]
