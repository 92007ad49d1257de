"""``tiny_model --hot-experts``: the first MoE layer's router really favours those experts."""

from __future__ import annotations

import pytest
import torch

from vllm_ascend.tools.tiny_model import build_config, build_weights, main


def routed_counts(arch: str, hot: int, bias: float, tokens: int = 512) -> torch.Tensor:
    """Top-k selections per expert of the first MoE layer for random tokens' embeddings
    (the residual stream there is the embedding plus a small attention output)."""
    config = build_config(arch)
    w = build_weights(arch, config, seed=0, hot_experts=hot, router_bias=bias)
    layer = 1 if arch == "deepseek_v3" else 0  # DeepSeek-V3's layer 0 is dense
    m = f"model.layers.{layer}.mlp"
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(1))
    x = w["model.embed_tokens.weight"][ids].double()
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))  # RMSNorm, weight 1
    logits = h @ w[f"{m}.gate.weight"].double().T
    scores = logits
    if arch == "deepseek_v3":  # selection uses sigmoid scores plus the correction bias
        scores = logits.sigmoid() + w[f"{m}.gate.e_score_correction_bias"].double()
    top = scores.topk(config.num_experts_per_tok, dim=-1).indices
    return torch.bincount(top.reshape(-1), minlength=scores.shape[-1])


@pytest.mark.parametrize("arch, hot", [("qwen3_moe", 3), ("deepseek_v3", 8)])
def test_hot_experts_are_hot(arch, hot):
    plain = routed_counts(arch, 0, 0.0).double()
    counts = routed_counts(arch, hot, 3.0).double()
    assert counts[:hot].mean() > 3 * counts[hot:].mean(), counts.tolist()
    assert plain[:hot].mean() < 2 * plain[hot:].mean(), plain.tolist()  # not hot by chance


def test_no_bias_is_the_plain_model():
    config = build_config("qwen3_moe")
    a = build_weights("qwen3_moe", config, seed=0)
    b = build_weights("qwen3_moe", config, seed=0, hot_experts=0, router_bias=5.0)
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("argv, match", [
    (["--arch", "qwen3", "--hot-experts", "2"], "needs an MoE architecture"),
    (["--arch", "qwen3_moe", "--hot-experts", "16"], "--hot-experts must be in 1..15"),
    (["--arch", "qwen3_moe", "--hot-experts", "2", "--router-bias", "0"], "--router-bias > 0"),
])
def test_bad_hot_arguments_rejected(argv, match, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--out", str(tmp_path / "m")])
    assert match in capsys.readouterr().err
