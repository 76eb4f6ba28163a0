"""Real NVFP4 checkpoints made at test time on the CPU (nvidia-modelopt, llm-compressor), their fp64
emulation from `fp4linear.reference` alone, and a tracker of live CPU tensor bytes."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fp4linear import reference

VOCAB = 256


def tiny_config(**overrides):
    """A tiny Llama; intermediate 464 = 29 blocks of 16, not a multiple of 32 or 64."""
    import transformers

    kw = dict(hidden_size=128, intermediate_size=464, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=VOCAB, max_position_embeddings=64, architectures=["LlamaForCausalLM"], tie_word_embeddings=False)
    return transformers.LlamaConfig(**{**kw, **overrides})


def tiny_model(config, seed=0):
    import transformers

    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


def save_tokenizer(path: Path) -> None:
    """A word-level tokenizer over "t0" .. "t255", built offline (the CLI and llm-compressor load one)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0").save_pretrained(path)


def calibration_ids(batch=4, length=24):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(11))


def make_modelopt(path: Path, config, *, dtype=torch.float32, calib=None) -> Path:
    """nvidia-modelopt: NVFP4_DEFAULT_CFG calibrated on random tokens, exported as a HF checkpoint."""
    import modelopt.torch.export as export
    import modelopt.torch.quantization as mtq

    model = tiny_model(config).to(dtype)
    calib = calibration_ids() if calib is None else calib
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(calib))
    export.export_hf_checkpoint(model, export_dir=str(path))
    save_tokenizer(path)
    return path


def make_compressed_tensors(path: Path, config, *, dtype=torch.float32, calib=None, base: Path | None = None) -> Path:
    """llm-compressor: oneshot QuantizationModifier(scheme="NVFP4", targets="Linear", ignore=["lm_head"])
    on random tokens, saved as compressed-tensors nvfp4-pack-quantized. `base`: where the unquantized
    model it reads is saved (default: next to `path`)."""
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier

    base = base or path.parent / f"{path.name}_base"
    tiny_model(config).to(dtype).save_pretrained(base)
    save_tokenizer(base)
    ids = calibration_ids() if calib is None else calib
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    oneshot(model=str(base), dataset=data, output_dir=str(path), num_calibration_samples=len(ids),
            max_seq_length=ids.shape[1],
            recipe=QuantizationModifier(targets="Linear", scheme="NVFP4", ignore=["lm_head"]))
    return path


def stored_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


class EmulatedNVFP4Linear(nn.Module):
    """fp64 emulation of a checkpoint layer: the weight decoded from its codes, block scales and
    global scale; the input quantized by reference.quantize with the static global scale."""

    def __init__(self, codes, block_scale, weight_decode: float, input_encode: torch.Tensor):
        super().__init__()
        values = reference.e2m1_decode(reference.unpack_nibbles(codes)).double()
        self.w = values * block_scale.view(torch.float8_e4m3fn).double().repeat_interleave(16, dim=1) * weight_decode
        self.gs = input_encode.float().reshape(1)

    def forward(self, x):
        k = x.shape[-1]
        qx = reference.quantize(x.detach().float(), self.gs, k_align=16)
        out = reference.dequantize(qx).double() @ self.w[:, :k].T
        return out.to(x.dtype)


def emulated_model(path: Path):
    """The checkpoint as an fp32 transformers model whose NVFP4 layers are EmulatedNVFP4Linear;
    which layers are NVFP4 is read from the tensors (a weight_scale next to them), not the config."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    ct = json.loads((Path(path) / "config.json").read_text()).get("quantization_config", {}).get(
        "quant_method") == "compressed-tensors"
    del config.quantization_config
    model = tiny_model(config, seed=123)  # a different random init: everything must come from the checkpoint
    stored = stored_tensors(path)
    quantized = {k.rpartition(".")[0] for k in stored if k.endswith(".weight_scale")}
    for name in quantized:
        t = {k.rpartition(".")[2]: v for k, v in stored.items() if k.rpartition(".")[0] == name}
        if ct:  # encode scales (2688 / amax)
            layer = EmulatedNVFP4Linear(t["weight_packed"], t["weight_scale"], 1 / t["weight_global_scale"].double().item(),
                                        t["input_global_scale"])
        else:  # ModelOpt: decode scales (amax / 2688)
            layer = EmulatedNVFP4Linear(t["weight"], t["weight_scale"], t["weight_scale_2"].double().item(),
                                        1 / t["input_scale"].float())
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    rest = {k: v for k, v in stored.items() if k.rpartition(".")[0] not in quantized}
    missing, unexpected = model.load_state_dict(rest, strict=False)
    assert not unexpected and all(k.rpartition(".")[0] in quantized or k == "lm_head.weight" for k in missing), missing
    if config.tie_word_embeddings:
        model.tie_weights()
    return model, quantized


class LiveBytes(TorchDispatchMode):
    """Bytes of CPU tensor storages allocated inside the context and still alive, and their peak.

    Every op's output storage that is not one of its inputs' (views, set_ onto a storage) is counted
    until the storage is freed. Storages safetensors maps from a file are set_ onto a tensor: they
    are file-backed pages, not allocated memory, and not counted.
    """

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = set()

    def _free(self, key, nbytes):
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() if isinstance(x, torch.Tensor) else x.data_ptr()
                  for x in tree_leaves((args, kwargs)) if isinstance(x, (torch.Tensor, torch.UntypedStorage))
                  and x.device.type == "cpu"}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                s = t.untyped_storage()
                key, nbytes = s.data_ptr(), s.nbytes()
                if nbytes and key not in inputs and key not in self._seen:
                    self._seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(s, self._free, key, nbytes)
        return out


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (each storage once)."""
    storages = {}
    for t in [*model.parameters(), *model.buffers()]:
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values())


def largest_tensor_bytes(path: Path) -> int:
    from safetensors import safe_open

    sizes = []
    for f in Path(path).glob("*.safetensors"):
        with safe_open(f, "pt") as h:
            sizes += [h.get_tensor(k).nbytes for k in h.keys()]  # mapped, not read
    return max(sizes)
