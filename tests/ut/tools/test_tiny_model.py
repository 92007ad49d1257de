"""``vllm_ascend.tools.tiny_model``: the tiny random-weight checkpoints (no vLLM started here).

- config.json per arch: architecture, experts, top-k, MLA sizes (kv_lora_rank 512 + rope 64),
  noaux_tc routing, first dense layer, shared expert;
- determinism: same seed -> byte-identical model.safetensors, other seed -> other tensors;
- tensor names/shapes: what transformers itself writes for the same config (the per-expert
  checkpoint layout vLLM's loaders map from), plus explicit spot checks (router bias, experts);
- the CLI: stdout is the directory, unknown --arch / non-empty --out / bad --layers fail clearly.

A stand-in tokenizer.json keeps these hermetic; the real SmolLM2 one is checked if prepared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vllm_ascend.tools import tiny_model
from vllm_ascend.tools.tiny_model import ARCHS, VOCAB_SIZE, build_config, generate, main

LAYERS = 2


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    (d / "tokenizer.json").write_text('{"stand-in": true}\n')
    (d / "tokenizer_config.json").write_text('{"eos_token": "<|im_end|>"}\n')
    return d


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """One checkpoint per arch, seed 0, 2 layers."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        a: generate(a, root / a, seed=0, layers=LAYERS, tokenizer_dir=tokenizer_dir) for a in ARCHS
    }


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(path / "model.safetensors", "pt") as f:
        names = f.keys()  # safe_open is not iterable
        return {k: tuple(f.get_slice(k).get_shape()) for k in names}


# --- files and config ---------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_files(checkpoints, tokenizer_dir, arch):
    d = checkpoints[arch]
    names = {p.name for p in d.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors"} <= names
    assert (d / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()
    gen = json.loads((d / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_model.EOS_ID and gen["bos_token_id"] == tiny_model.BOS_ID
    # No temp directory left next to the result.
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_config_common(checkpoints, arch):
    c = _config(checkpoints[arch])
    assert c["architectures"] == [tiny_model.ARCHITECTURES[arch]]
    assert c["model_type"] == arch
    assert c["vocab_size"] == VOCAB_SIZE
    assert c["num_hidden_layers"] == LAYERS
    assert 128 <= c["hidden_size"] <= 256
    assert c["dtype"] == "float32"
    assert c["hidden_act"] == "silu"


def test_config_qwen3(checkpoints):
    c = _config(checkpoints["qwen3"])
    assert c["num_key_value_heads"] < c["num_attention_heads"]  # GQA
    assert c["head_dim"] == 64
    assert "num_experts" not in c and "num_local_experts" not in c


def test_config_qwen3_moe(checkpoints):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(checkpoints["qwen3_moe"])  # how vLLM reads it
    assert c.num_experts == 16
    assert c.num_experts_per_tok == 4
    assert c.norm_topk_prob is True
    assert c.decoder_sparse_step == 1 and c.mlp_only_layers == []
    assert c.moe_intermediate_size <= 128
    assert c.num_key_value_heads < c.num_attention_heads


def test_config_deepseek_v3(checkpoints):
    c = _config(checkpoints["deepseek_v3"])
    # MLA: the 576-wide latent head (512 + 64) is the only size vLLM's CPU MLA supports.
    assert c["kv_lora_rank"] == 512 and c["qk_rope_head_dim"] == 64
    assert c["q_lora_rank"] is not None and c["q_lora_rank"] <= 128
    assert c["qk_nope_head_dim"] <= 64 and c["v_head_dim"] <= 64
    # MoE routing as in DeepSeek-V3.
    assert c["topk_method"] == "noaux_tc" and c["scoring_func"] == "sigmoid"
    assert c["n_group"] == 8 and c["topk_group"] == 4 and c["num_experts_per_tok"] == 8
    assert c["n_routed_experts"] % 8 == 0 and c["n_routed_experts"] >= 32
    assert c["routed_scaling_factor"] == 2.5 and c["norm_topk_prob"] is True
    assert c["first_k_dense_replace"] == 1 and c["n_shared_experts"] == 1
    assert c["num_nextn_predict_layers"] == 0


# --- weights ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_names_and_shapes_match_transformers(checkpoints, tmp_path, arch):
    """transformers' own save_pretrained of the same config (small vocab) writes the same
    tensor names and shapes: the standard checkpoint layout vLLM's weight loaders expect."""
    from transformers import AutoModelForCausalLM

    config = build_config(arch, LAYERS)
    ours = _shapes(checkpoints[arch])
    assert ours == tiny_model.weight_shapes(arch, config)
    config.vocab_size = 512
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    theirs = _shapes(tmp_path)
    small = {k: (512, *s[1:]) if s[0] == VOCAB_SIZE else s for k, s in ours.items()}
    assert small == theirs


def test_qwen3_weights(checkpoints):
    s = _shapes(checkpoints["qwen3"])
    assert "lm_head.weight" not in s  # tied, as in the small real Qwen3 models
    assert s["model.embed_tokens.weight"] == (VOCAB_SIZE, 128)
    assert s["model.layers.1.self_attn.q_norm.weight"] == (64,)
    assert s["model.layers.1.self_attn.k_proj.weight"] == (2 * 64, 128)
    assert not any(".experts." in k for k in s)


def test_qwen3_moe_weights(checkpoints):
    s = _shapes(checkpoints["qwen3_moe"])
    for i in range(LAYERS):
        m = f"model.layers.{i}.mlp"
        assert s[f"{m}.gate.weight"] == (16, 128)
        experts = {k.split(".")[5] for k in s if k.startswith(f"{m}.experts.")}
        assert experts == {str(e) for e in range(16)}
        assert s[f"{m}.experts.15.down_proj.weight"] == (128, 64)
        assert f"{m}.gate_proj.weight" not in s and f"{m}.shared_experts.up_proj.weight" not in s
    assert s["lm_head.weight"] == (VOCAB_SIZE, 128)


def test_deepseek_v3_weights(checkpoints):
    d = checkpoints["deepseek_v3"]
    s = _shapes(d)
    c = _config(d)
    e, h = c["n_routed_experts"], c["hidden_size"]
    # Layer 0 dense, layer 1 MoE with router bias, routed and shared experts.
    assert s["model.layers.0.mlp.gate_proj.weight"] == (c["intermediate_size"], h)
    assert not any(k.startswith("model.layers.0.mlp.experts.") for k in s)
    assert "model.layers.0.mlp.gate.e_score_correction_bias" not in s
    m = "model.layers.1.mlp"
    assert s[f"{m}.gate.weight"] == (e, h)
    assert s[f"{m}.gate.e_score_correction_bias"] == (e,)
    assert s[f"{m}.experts.{e - 1}.gate_proj.weight"] == (c["moe_intermediate_size"], h)
    assert s[f"{m}.shared_experts.down_proj.weight"] == (h, c["moe_intermediate_size"])
    # MLA projections.
    a = "model.layers.1.self_attn"
    assert s[f"{a}.kv_a_proj_with_mqa.weight"] == (512 + 64, h)
    assert s[f"{a}.kv_a_layernorm.weight"] == (512,)
    heads = c["num_attention_heads"]
    assert s[f"{a}.kv_b_proj.weight"] == (heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), 512)
    assert s[f"{a}.q_b_proj.weight"] == (heads * (c["qk_nope_head_dim"] + 64), c["q_lora_rank"])
    assert s[f"{a}.o_proj.weight"] == (h, heads * c["v_head_dim"])

    bias = load_file(d / "model.safetensors")[f"{m}.gate.e_score_correction_bias"]
    assert bias.dtype == torch.float32 and bias.abs().max() < 0.2 and bias.std() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_values_are_sane(checkpoints, arch):
    w = load_file(checkpoints[arch] / "model.safetensors")
    for name, t in w.items():
        assert t.dtype == torch.float32 and torch.isfinite(t).all(), name
        if name.endswith("norm.weight"):
            assert torch.equal(t, torch.ones_like(t)), name
        elif t.numel() > 1000:
            assert abs(t.std().item() - 0.02) < 0.002, name


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_same_seed_is_byte_identical(checkpoints, tokenizer_dir, tmp_path, arch):
    again = generate(arch, tmp_path / arch, seed=0, layers=LAYERS, tokenizer_dir=tokenizer_dir)
    for f in ("model.safetensors", "config.json", "generation_config.json"):
        assert (again / f).read_bytes() == (checkpoints[arch] / f).read_bytes(), f


@pytest.mark.parametrize("arch", ARCHS)
def test_other_seed_other_weights(checkpoints, arch):
    seed0 = load_file(checkpoints[arch] / "model.safetensors")
    seed1 = tiny_model.build_weights(arch, build_config(arch, LAYERS), seed=1)
    assert seed0.keys() == seed1.keys()
    for name in seed0:
        if name.endswith("norm.weight"):
            assert torch.equal(seed0[name], seed1[name])
        else:
            assert not torch.equal(seed0[name], seed1[name]), name


def test_safetensors_writer_round_trips(tmp_path):
    """The reproducible writer's files read back exactly through safetensors (mixed dtypes)."""
    tensors = {
        "b.weight": torch.randn(3, 5).to(torch.bfloat16),
        "a.bias": torch.randn(7),
        "c.half": torch.randn(2, 3).to(torch.float16),
        "d.scalar": torch.tensor(1.5),
    }
    path = tmp_path / "t.safetensors"
    tiny_model.write_safetensors(tensors, path, {"format": "pt", "k": "v"})
    back = load_file(path)
    assert back.keys() == tensors.keys()
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t), name
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "k": "v"}
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    assert (8 + header_len) % 8 == 0


def test_tensor_depends_on_name_not_order():
    a = tiny_model.init_tensor("x.weight", (4, 8), seed=3)
    assert torch.equal(a, tiny_model.init_tensor("x.weight", (4, 8), seed=3))
    assert not torch.equal(a, tiny_model.init_tensor("y.weight", (4, 8), seed=3))


def test_bfloat16_keeps_router_bias_float32():
    config = build_config("deepseek_v3", 2, "bfloat16")
    w = tiny_model.build_weights("deepseek_v3", config, dtype="bfloat16")
    bias = w.pop("model.layers.1.mlp.gate.e_score_correction_bias")
    assert bias.dtype == torch.float32
    assert {t.dtype for t in w.values()} == {torch.bfloat16}


# --- CLI ----------------------------------------------------------------------------------


def test_cli_prints_dir_and_refuses_non_empty_out(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "m"
    args = ["--arch", "qwen3", "--out", str(out), "--layers", "2"]
    args += ["--tokenizer", str(tokenizer_dir)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    first = (out / "model.safetensors").read_bytes()

    with pytest.raises(SystemExit) as e:
        main(args + ["--seed", "1"])
    assert "not empty" in str(e.value) and "--force" in str(e.value)
    assert (out / "model.safetensors").read_bytes() == first  # untouched

    assert main(args + ["--seed", "1", "--force"]) == 0
    assert (out / "model.safetensors").read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_force_never_deletes_a_non_checkpoint_dir(tokenizer_dir, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("precious")
    with pytest.raises(SystemExit, match="no config.json"):
        generate("qwen3", tmp_path, force=True, tokenizer_dir=tokenizer_dir)
    assert keep.read_text() == "precious"


def test_cli_accepts_existing_empty_out(tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    main(["--arch", "qwen3", "--out", str(out), "--tokenizer", str(tokenizer_dir)])
    assert (out / "config.json").is_file()


def test_cli_unknown_arch_lists_choices(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--arch", "llama", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'llama'" in err
    assert all(a in err for a in ARCHS)
    assert not (tmp_path / "x").exists()


def test_cli_rejects_deepseek_without_moe_layer(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--arch", "deepseek_v3", "--out", str(tmp_path / "x"), "--layers", "1"])
    assert e.value.code == 2
    assert "--layers >= 2" in capsys.readouterr().err


def test_default_tokenizer_is_smollm2():
    """The SmolLM2 tokenizer's vocabulary is the embedding size (if prepared on this machine)."""
    from vllm_ascend.tools.prepare_model import default_model_dir, is_prepared

    if not is_prepared(default_model_dir()):
        pytest.skip("default checkpoint not prepared (python -m vllm_ascend.tools.prepare_model)")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))
    assert tok.get_vocab_size() == VOCAB_SIZE
    config = json.loads((default_model_dir() / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (
        tiny_model.BOS_ID,
        tiny_model.EOS_ID,
    )
