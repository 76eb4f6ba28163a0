"""load_modelopt (into a model you built) on a real ModelOpt export made at test time on the CPU."""

import json
import shutil

import pytest
import torch
from torch import nn

import fp4linear
from tests.checkpoints import emulated_model, tiny_config

transformers = pytest.importorskip("transformers")


def fresh_model(path):
    config = transformers.AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch.manual_seed(123)  # different random init: everything must come from the checkpoint
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("fuse_mlp", [False, True], ids=["unfused", "fused"])
def test_load_matches_independent_emulation(modelopt_dir, fuse_mlp):
    quant = json.loads((modelopt_dir / "hf_quant_config.json").read_text())["quantization"]
    model = fp4linear.load_modelopt(fresh_model(modelopt_dir), modelopt_dir, backend="triton", fuse_mlp=fuse_mlp)
    swapped = {n for n, m in model.named_modules() if isinstance(m, fp4linear.Linear)}
    mlps = {n for n, m in model.named_modules() if isinstance(m, fp4linear.GatedMLP)}
    if fuse_mlp:  # gate and up one GEMM (the export shares their scales), down after the fused activation
        assert mlps == {"model.layers.0.mlp", "model.layers.1.mlp"}
        assert all(model.get_submodule(n).fused for n in mlps)
        swapped = {n for n in swapped if not n.startswith(tuple(mlps))}
        swapped |= {f"{n}.{c}_proj" for n in mlps for c in ("gate", "up", "down")}
    else:
        assert not mlps
    assert len(swapped) == 2 * 7  # q, k, v, o, gate, up, down per layer
    for pattern in quant["exclude_modules"]:  # lm_head stays an nn.Linear with its stored weight
        assert pattern not in swapped
    assert type(model.lm_head) is nn.Linear

    emulated, quantized = emulated_model(modelopt_dir)
    assert quantized == swapped
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = model(ids).logits
        want = emulated(ids).logits
    err = ((got - want).norm() / want.norm()).item()
    assert err < 1e-5, err  # fp32 model: only accumulation order differs


def test_errors_name_module_and_tensor(modelopt_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(modelopt_dir, bad)
    (f,) = sorted(bad.glob("*.safetensors"))
    tensors = load_file(f)
    del tensors["model.layers.1.mlp.up_proj.weight_scale"]
    save_file(tensors, f)
    with pytest.raises(KeyError, match="model.layers.1.mlp.up_proj.weight_scale"):
        fp4linear.load_modelopt(fresh_model(modelopt_dir), bad)

    cfg = json.loads((bad / "hf_quant_config.json").read_text())
    cfg["quantization"]["quant_algo"] = "FP8"
    (bad / "hf_quant_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="quant_algo 'FP8' is not supported"):
        fp4linear.load_modelopt(fresh_model(modelopt_dir), bad)
    cfg["quantization"].update(quant_algo="NVFP4", group_size=32)
    (bad / "hf_quant_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="group_size 32 is not NVFP4's 16"):
        fp4linear.from_pretrained(bad, device="cpu")

    config = tiny_config(intermediate_size=480)
    with pytest.raises(ValueError, match="module 'model.layers.0.mlp.gate_proj'"):
        fp4linear.load_modelopt(transformers.LlamaForCausalLM(config), modelopt_dir)


def test_config_json_alone_is_read(modelopt_dir, tmp_path):
    # Newer exports also describe themselves in config.json (quant_method "modelopt", "ignore").
    only = tmp_path / "config_only"
    shutil.copytree(modelopt_dir, only)
    (only / "hf_quant_config.json").unlink()
    model = fp4linear.from_pretrained(only, backend="triton", device="cpu")
    assert type(model.lm_head) is nn.Linear
    assert sum(isinstance(m, fp4linear.Linear) for m in model.modules()) == 12  # 2 x (q, k, v, o, gate_up, down)
    assert sum(isinstance(m, fp4linear.GatedMLP) for m in model.modules()) == 2


def test_model_on_meta(modelopt_dir):
    config = transformers.AutoConfig.from_pretrained(modelopt_dir)
    del config.quantization_config
    with torch.device("meta"):  # buffers too: the rotary table computed in __init__ has no values
        model = transformers.LlamaForCausalLM(config)
    with pytest.raises(ValueError, match="'model.rotary_emb.inv_freq' of the model is on the meta device"):
        fp4linear.load_modelopt(model, modelopt_dir)
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = transformers.LlamaForCausalLM(config)
    fp4linear.load_modelopt(model, modelopt_dir, backend="triton")
    assert not any(t.is_meta for t in model.state_dict().values())
