"""load_modelopt on a real ModelOpt export (made at test time, on CPU) of a tiny misaligned Llama."""

import json

import pytest
import torch
from torch import nn

import fp4linear
from fp4linear import reference

transformers = pytest.importorskip("transformers")
mtq = pytest.importorskip("modelopt.torch.quantization")
export = pytest.importorskip("modelopt.torch.export")


def tiny_config():
    # hidden 128, intermediate 464: 464 / 16 = 29 blocks, not a multiple of 32 or 64.
    return transformers.LlamaConfig(hidden_size=128, intermediate_size=464, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=64,
                                    architectures=["LlamaForCausalLM"], tie_word_embeddings=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(tiny_config()).eval()
    calib = torch.randint(0, 256, (4, 24))
    mtq.quantize(model, mtq.NVFP4_DEFAULT_CFG, lambda m: m(calib))
    path = tmp_path_factory.mktemp("tiny_nvfp4")
    export.export_hf_checkpoint(model, export_dir=str(path))
    return path


def fresh_model(path):
    config = transformers.AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch.manual_seed(123)  # different random init: everything must come from the checkpoint
    return transformers.LlamaForCausalLM(config).eval()


class EmulatedNVFP4Linear(nn.Module):
    """fp64: reference quantize of the input (gs = 1 / input_scale) times the dequantized weight."""

    def __init__(self, tensors):
        super().__init__()
        w, ws = tensors["weight"], tensors["weight_scale"].view(torch.uint8)
        n, k = w.shape[0], w.shape[1] * 2
        scale = reference.swizzle(torch.nn.functional.pad(ws, (0, -(-k // 64) * 4 - ws.shape[1], 0, -n % 128)),
                                  fp4linear.SWIZZLE_128x4).view(torch.float8_e4m3fn)
        q = fp4linear.NVFP4Tensor(w, scale, 1 / tensors["weight_scale_2"].reshape(1), torch.Size((n, k)), 16)
        self.w = fp4linear.dequantize(q).double()
        self.gs = (1 / tensors["input_scale"].float()).reshape(1)

    def forward(self, x):
        qx = reference.quantize(x.detach().float(), self.gs, k_align=16)
        return (fp4linear.dequantize(qx).double() @ self.w.T).to(x.dtype)


def test_load_matches_independent_emulation(exported):
    quant = json.loads((exported / "hf_quant_config.json").read_text())["quantization"]
    model = fp4linear.load_modelopt(fresh_model(exported), exported, backend="triton")
    swapped = {n for n, m in model.named_modules() if isinstance(m, fp4linear.Linear)}
    assert len(swapped) == 2 * 7  # q, k, v, o, gate, up, down per layer
    for pattern in quant["exclude_modules"]:  # lm_head stays an nn.Linear with its stored weight
        assert pattern not in swapped
    assert type(model.lm_head) is nn.Linear

    emulated = fresh_model(exported)
    from safetensors.torch import load_file

    stored = {}
    for f in sorted(exported.glob("*.safetensors")):
        stored.update(load_file(f))
    for name in swapped:
        tensors = {t: stored[f"{name}.{t}"] for t in ("weight", "weight_scale", "weight_scale_2", "input_scale")}
        parent, _, child = name.rpartition(".")
        setattr(emulated.get_submodule(parent), child, EmulatedNVFP4Linear(tensors))
    emulated.load_state_dict({k: v for k, v in stored.items() if k.rpartition(".")[0] not in swapped}, strict=False)

    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = model(ids).logits
        want = emulated(ids).logits
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-4, err  # fp32 model: only accumulation order differs


def test_errors_name_module_and_tensor(exported, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (f,) = sorted(bad.glob("*.safetensors"))
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(tensors, f)
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight_scale"):
        fp4linear.load_modelopt(fresh_model(exported), bad)

    cfg = json.loads((bad / "hf_quant_config.json").read_text())
    cfg["quantization"]["quant_algo"] = "FP8"
    (bad / "hf_quant_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quant_algo 'FP8' is not supported"):
        fp4linear.load_modelopt(fresh_model(exported), bad)

    config = tiny_config()
    config.intermediate_size = 480
    with pytest.raises(ValueError, match="module 'model.layers.0.mlp.gate_proj'"):
        fp4linear.load_modelopt(transformers.LlamaForCausalLM(config), exported)
