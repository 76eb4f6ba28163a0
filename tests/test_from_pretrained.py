"""fp4linear.from_pretrained on real ModelOpt and llm-compressor (compressed-tensors) checkpoints of a
tiny Llama, made at test time on the CPU (tests/checkpoints.py)."""

import json
import shutil

import pytest
import torch
from torch import nn

import fp4linear
from fp4linear import reference
from fp4linear.load import load_checkpoint, main
from tests.checkpoints import (LiveBytes, emulated_model, largest_tensor_bytes, make_compressed_tensors, model_bytes,
                               stored_tensors, tiny_config)

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


def ids(batch=2, length=20, seed=7):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def nvfp4_names(model):
    return {n for n, m in model.named_modules() if isinstance(m, fp4linear.Linear)}


@pytest.mark.parametrize("fuse_mlp", [False, True], ids=["unfused", "fused"])
def test_logits_match_fp64_emulation(checkpoint_dir, fuse_mlp):
    model = fp4linear.from_pretrained(checkpoint_dir, backend="triton", device="cpu", dtype=torch.float32,
                                      fuse_mlp=fuse_mlp)
    emulated, quantized = emulated_model(checkpoint_dir)
    mlps = {n for n, m in model.named_modules() if isinstance(m, fp4linear.GatedMLP)}
    assert len(mlps) == (2 if fuse_mlp else 0)  # both formats give gate and up one scale: one GEMM
    assert all(model.get_submodule(n).fused for n in mlps)
    names = {n for n in nvfp4_names(model) if not n.startswith(tuple(mlps))} | {
        f"{n}.{c}_proj" for n in mlps for c in ("gate", "up", "down")}
    assert names == quantized and len(quantized) == 2 * 7  # q k v o gate up down, 2 layers
    assert type(model.lm_head) is nn.Linear and not model.training
    x = ids()
    with torch.no_grad():
        got, want = model(x).logits, emulated(x).logits
    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
    assert err < 1e-5, err  # fp32 model vs fp64 matmuls: accumulation order and rounding only


def test_non_quantized_tensors_stored_values_in_dtype(checkpoint_dir):
    model = fp4linear.from_pretrained(checkpoint_dir, backend="triton", device="cpu")  # bfloat16
    stored = stored_tensors(checkpoint_dir)
    for key in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.1.input_layernorm.weight"):
        got = model.get_parameter(key)
        assert got.dtype == torch.bfloat16 and torch.equal(got, stored[key].to(torch.bfloat16)), key
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    inv_freq = model.model.rotary_emb.inv_freq  # a buffer the model computes, not stored
    assert torch.equal(inv_freq, transformers.LlamaForCausalLM(tiny_config()).model.rotary_emb.inv_freq)


def test_compressed_tensors_weights_equal_its_own_decompression(compressed_tensors_dir):
    """Bit for bit: fp4linear's decode of each loaded layer == compressed-tensors' NVFP4PackedCompressor
    .decompress of the stored tensors (its unpack_fp4_from_uint8 nibble order, its E4M3 scales,
    weight = codes * weight_scale / weight_global_scale, bf16)."""
    from compressed_tensors.compressors.nvfp4 import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationConfig

    qc = json.loads((compressed_tensors_dir / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(qc).config_groups["group_0"]
    stored = stored_tensors(compressed_tensors_dir)
    model = fp4linear.from_pretrained(compressed_tensors_dir, backend="triton", device="cpu", fuse_mlp=False)
    for name in nvfp4_names(model):
        layer = model.get_submodule(name)
        n, k = layer.out_features, layer.in_features
        codes = reference.e2m1_decode(reference.unpack_nibbles(layer.weight[:n, : k // 2]))
        blocks = codes * layer.weight_scale[:n, : k // 16].view(torch.float8_e4m3fn).float().repeat_interleave(16, 1)
        t = {leaf: stored[f"{name}.{leaf}"] for leaf in ("weight_packed", "weight_scale", "weight_global_scale")}
        exact = NVFP4PackedCompressor.decompress({**t, "weight_global_scale": torch.ones(1)}, scheme)["weight"]
        assert exact.dtype == torch.bfloat16  # codes * block scale: exact in bf16
        assert blocks.to(torch.bfloat16).view(torch.int16).equal(exact.view(torch.int16)), name
        ct = NVFP4PackedCompressor.decompress(t, scheme)["weight"]
        ours = (blocks * layer.weight_scale_2).to(ct.dtype)
        assert ours.view(torch.int16).equal(ct.view(torch.int16)), name
        assert layer.input_global_scale.view(torch.int32).equal(stored[f"{name}.input_global_scale"].view(torch.int32))


def test_ignore_and_targets_match_like_compressed_tensors():
    from compressed_tensors.utils.match import is_match

    from fp4linear.load import _ct_matches

    model = transformers.LlamaForCausalLM(tiny_config())
    patterns = [["Linear"], ["lm_head"], ["re:.*mlp.*"], ["re:mlp"], ["re:.*proj$"], ["LlamaMLP"], ["model.layers.0.mlp"],
                ["re:model\\.layers\\.1\\..*_proj"], ["Embedding", "re:.*q_proj"], ["Module"], [], ["layers.0"]]
    for p in patterns:
        for name, module in model.named_modules():
            assert _ct_matches(name, module, p) == is_match(name, module, p), (p, name)


def test_peak_memory_within_bound_and_bf16_first_is_not(checkpoint_dir):
    """Peak live CPU tensor bytes while loading <= 1.25 x the loaded model + the largest checkpoint
    tensor; the old recipe (build the bf16 model, then replace its Linears) measured the same way
    exceeds that bound."""
    with LiveBytes() as new:
        model = fp4linear.from_pretrained(checkpoint_dir, backend="triton", device="cpu")
    loaded = model_bytes(model)
    assert abs(new.live - loaded) <= 0.02 * loaded, (new.live, loaded)  # the tracker saw the model being made
    bound = 1.25 * loaded + largest_tensor_bytes(checkpoint_dir)
    assert new.peak <= bound, (new.peak, loaded, bound)

    with LiveBytes() as old:
        config = transformers.AutoConfig.from_pretrained(checkpoint_dir)
        del config.quantization_config
        bf16_first = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        load_checkpoint(bf16_first, checkpoint_dir, backend="triton")
    assert model_bytes(bf16_first) == loaded
    assert old.peak > bound, (old.peak, bound)


def test_tied_embeddings(tmp_path):
    pytest.importorskip("llmcompressor")
    path = make_compressed_tensors(tmp_path / "tied", tiny_config(tie_word_embeddings=True))
    assert "lm_head.weight" not in stored_tensors(path)
    model = fp4linear.from_pretrained(path, backend="triton", device="cpu", dtype=torch.float32)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    emulated, _ = emulated_model(path)
    with torch.no_grad():
        got, want = model(ids()).logits, emulated(ids()).logits
    assert ((got - want).norm() / want.norm()).item() < 1e-5


def edit_config(src, dst, change):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    change(cfg["quantization_config"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def group(key, field, value):
    def change(qc):
        args = qc["config_groups"]["group_0"]
        if field is None:
            args[key] = value
        else:
            args[key][field] = value
    return change


@pytest.mark.parametrize("change, message", [
    (group("input_activations", "dynamic", True), r"input_activations.dynamic is True, fp4linear supports 'local'"),
    (group("input_activations", "strategy", "token"), r"input_activations.strategy is 'token'"),
    (group("input_activations", None, None), r"input_activations is missing: weight-only NVFP4 \(NVFP4A16\)"),
    (group("weights", "group_size", 32), r"weights.group_size is 32"),
    (group("weights", "symmetric", False), r"weights.symmetric is False"),
    (group("weights", "type", "int"), r"weights.type is 'int'"),
    (group("weights", "scale_dtype", "torch.bfloat16"), r"weights.scale_dtype is 'torch.bfloat16'"),
    (group("format", None, "float-quantized"), r"config_groups.group_0: format 'float-quantized' is not supported"),
    (group("output_activations", None, {"num_bits": 8}), r"output_activations is set"),
    (lambda qc: qc.update(quant_method="gptq"), r"quant_method 'gptq' is not supported"),
    (lambda qc: qc.update(sparsity_config={"format": "sparse-24-bitmask"}), r"sparsity_config is set"),
    (lambda qc: qc.update(quantization_status="frozen"), r"quantization_status 'frozen': the weights are not packed"),
])
def test_unsupported_compressed_tensors_config_raises(compressed_tensors_dir, tmp_path, change, message):
    bad = edit_config(compressed_tensors_dir, tmp_path / "bad", change)
    with pytest.raises(ValueError, match=message):
        fp4linear.from_pretrained(bad, device="cpu")


def edit_tensors(src, dst, change):
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    (f,) = sorted(dst.glob("*.safetensors"))
    tensors = stored_tensors(dst)
    change(tensors)
    save_file(tensors, f)
    return dst


def test_bad_tensors_raise_naming_module_and_tensor(compressed_tensors_dir, tmp_path):
    down = "model.layers.1.mlp.down_proj"
    bad = edit_tensors(compressed_tensors_dir, tmp_path / "missing", lambda t: t.pop(f"{down}.input_global_scale"))
    with pytest.raises(KeyError, match=f"module '{down}': tensor '{down}.input_global_scale' is missing"):
        fp4linear.from_pretrained(bad, device="cpu")

    q = "model.layers.0.self_attn.q_proj"  # in_features 128: 136 codes per row fit the module, not the blocks

    def mid_block(t):
        t[f"{q}.weight_packed"] = torch.cat([t[f"{q}.weight_packed"], t[f"{q}.weight_packed"][:, :4]], 1)
    bad = edit_tensors(compressed_tensors_dir, tmp_path / "k", mid_block)
    with pytest.raises(ValueError, match=f"module '{q}': weight_packed \\(128, 68\\) holds K = 136 codes per row"):
        fp4linear.from_pretrained(bad, device="cpu")

    def short_scale(t):
        t[f"{q}.weight_scale"] = t[f"{q}.weight_scale"][:, :7].contiguous()
    bad = edit_tensors(compressed_tensors_dir, tmp_path / "scale", short_scale)
    with pytest.raises(ValueError, match=f"module '{q}': weight_scale must have shape \\(128, 8\\)"):
        fp4linear.from_pretrained(bad, device="cpu")

    # ignore a layer the checkpoint quantized: its NVFP4 tensors have no taker
    bad = edit_config(compressed_tensors_dir, tmp_path / "ignored", lambda qc: qc["ignore"].append("re:.*down_proj$"))
    with pytest.raises(ValueError, match=r"module 'model.layers.0.mlp.down_proj': checkpoint tensor .* is NVFP4 data"):
        fp4linear.from_pretrained(bad, device="cpu")


def test_ignore_patterns_are_honoured(compressed_tensors_dir, tmp_path):
    # A checkpoint whose ignore names up_proj by regex and class-name targets: the loader must keep
    # those nn.Linear (and then finds NVFP4 tensors for them, which it refuses rather than guess).
    cfg_dir = edit_config(compressed_tensors_dir, tmp_path / "re", lambda qc: qc["ignore"].append("re:model.layers.1.mlp.up"))
    with pytest.raises(ValueError, match="module 'model.layers.1.mlp.up_proj'"):
        fp4linear.from_pretrained(cfg_dir, device="cpu")
    from fp4linear.load import read_scheme

    scheme = read_scheme(cfg_dir)
    model = transformers.LlamaForCausalLM(tiny_config())
    chosen = {n for n, m in model.named_modules() if scheme.quantizes(n, m)}
    assert "lm_head" not in chosen and "model.layers.1.mlp.up_proj" not in chosen and "model.layers.0.mlp.up_proj" in chosen
    assert len(chosen) == 13


def test_load_modelopt_refuses_other_formats(compressed_tensors_dir):
    with pytest.raises(ValueError, match="compressed-tensors checkpoint, not ModelOpt: use fp4linear.from_pretrained"):
        fp4linear.load_modelopt(transformers.LlamaForCausalLM(tiny_config()), compressed_tensors_dir)


def test_command_line_generates(checkpoint_dir, capsys):
    main([str(checkpoint_dir), "--prompt", "t5 t9 t17", "--max-new-tokens", "2", "--device", "cpu", "--backend", "triton"])
    words = capsys.readouterr().out.split()
    assert words[:3] == ["t5", "t9", "t17"] and len(words) == 5
