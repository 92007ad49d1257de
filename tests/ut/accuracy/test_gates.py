"""The accuracy gates' statistics and config loading (no engine, no lm-eval)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import optimize, stats

from tests.e2e.accuracy import config, gates
from tests.e2e.accuracy.tiny_adder import data, tokenizer


def _wilson_root(k: int, n: int, z: float, lower: bool) -> float:
    """The Wilson bound as the root of (p_hat - p)^2 = z^2 p (1 - p) / n (brentq)."""
    p_hat = k / n
    f = lambda p: (p_hat - p) ** 2 - z * z * p * (1 - p) / n  # noqa: E731
    # f > 0 at 0 and 1 (unless p_hat is there), f < 0 just inside p_hat: one root each side.
    inside = min(max(p_hat, 1e-12), 1 - 1e-12)
    if lower:
        return 0.0 if k == 0 else optimize.brentq(f, 0.0, inside, xtol=1e-14)
    return 1.0 if k == n else optimize.brentq(f, inside, 1.0, xtol=1e-14)


@given(n=st.integers(1, 2000), frac=st.floats(0, 1))
def test_wilson_matches_the_quadratic_root(n, frac):
    k = round(frac * n)
    lo, hi = gates.wilson_interval(k, n)
    assert lo == pytest.approx(_wilson_root(k, n, gates.Z_ONE_SIDED_95, True), abs=1e-9)
    assert hi == pytest.approx(_wilson_root(k, n, gates.Z_ONE_SIDED_95, False), abs=1e-9)
    assert lo <= k / n <= hi


def test_z_is_the_one_sided_95_quantile():
    assert gates.Z_ONE_SIDED_95 == pytest.approx(stats.norm.ppf(0.95), abs=1e-12)


@pytest.mark.parametrize("n, k", [(0, 0), (10, 11), (10, -1)])
def test_wilson_rejects_bad_counts(n, k):
    with pytest.raises(ValueError, match="must be"):
        gates.wilson_interval(k, n)


@given(st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=300))
def test_stderr_is_the_sample_sd_over_sqrt_n(scores):
    n = len(scores)
    want = stats.tstd(scores) / math.sqrt(n) if len(set(scores)) > 1 else 0.0
    assert gates.stderr(scores) == pytest.approx(want, abs=1e-12)


def test_reference_gate_is_one_sided():
    # 490/500 = 0.98: Wilson lower ~0.9668; fp32 0.99 - 0.03 = 0.96 -> pass.
    assert gates.check_reference([1.0] * 490 + [0.0] * 10, 0.99, 0.03).passed
    # Better than the reference always passes; 450/500 (lower ~0.8755) fails against 0.96.
    assert gates.check_reference([1.0] * 500, 0.9, 0.0).passed
    assert not gates.check_reference([1.0] * 450 + [0.0] * 50, 0.99, 0.03).passed


def test_expected_and_equal_gates():
    assert gates.check_expected(0.97, 0.99, 0.02).passed
    assert not gates.check_expected(0.96, 0.99, 0.02).passed
    assert gates.check_equal({0: "a", 1: "b"}, {0: "a", 1: "b"}).passed
    verdict = gates.check_equal({0: "a", 1: "c"}, {0: "a", 1: "b"})
    assert not verdict.passed and verdict.value == 0.5 and "[1]" in verdict.detail
    # A smaller limit: the first docs of the reference's; never docs it lacks, never none.
    assert gates.check_equal({0: "a"}, {0: "a", 1: "b"}).passed
    assert not gates.check_equal({0: "a", 2: "c"}, {0: "a", 1: "b"}).passed
    assert not gates.check_equal({}, {0: "a"}).passed


def test_every_committed_config_loads():
    configs = config.load_all()
    assert {"tiny-adder-fp32", "tiny-adder-w8a8-dynamic"} <= set(configs)
    fast = sorted(n for n, c in configs.items() if not c.slow)
    assert fast == ["tiny-adder-fp32", "tiny-adder-w8a8-dynamic"]
    assert all(c.backend in config.BACKENDS for c in configs.values())


@pytest.mark.parametrize("text, message", [
    ("model_name: m\ntasks: []\nbogus: 1\n", "unknown keys \\['bogus'\\]"),
    ("tasks: [{name: t, metrics: [{name: acc, value: 1}]}]\n", "missing 'model_name'"),
    ("model_name: m\nbackend: hf\ntasks: [{name: t, metrics: [{name: acc, value: 1}]}]\n",
     "backend 'hf'; accepted: vllm, local-completions"),
    ("model_name: m\ngate: equal\ntasks: [{name: t, metrics: [{name: acc, value: 1}]}]\n",
     "gate 'equal' needs a 'reference'"),
    ("model_name: m\ntasks: [{name: t, metrics: [{name: acc, value: 1, tolerance: 2}]}]\n",
     "tolerance 2.0 must be in"),
])
def test_bad_configs_name_the_field(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message):
        config.load(path)


@given(st.integers(0, 999), st.integers(0, 999))
def test_addition_documents(a, b):
    doc = data.document(a, b)
    assert int(doc["target"][::-1]) == a + b
    assert doc["prompt"] == f"{a:03d}+{b:03d}=" and len(doc["target"]) == 4


def test_heldout_split_is_the_generator_output_and_disjoint_from_training():
    docs = data.load_heldout()
    pairs = [(d["a"], d["b"]) for d in docs]
    assert pairs == data.heldout_pairs() and len(set(pairs)) == data.HELDOUT_SIZE
    assert all(d == data.document(a, b) for d, (a, b) in zip(docs, pairs))
    stream = data.training_pairs(0, set(pairs))
    assert not {next(stream) for _ in range(5000)} & set(pairs)


def test_tokenizer_adds_bos():
    """Without BOS the tiny adder's scores collapse: the saved tokenizer must add it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(data.HELDOUT_PATH.with_name("model")))
    ids = tok("123+456=").input_ids
    assert ids == [tokenizer.BOS_ID, *tokenizer.encode("123+456=")]
    assert tok.bos_token_id == tokenizer.BOS_ID and tok.eos_token_id == tokenizer.EOS_ID
    assert tok.decode(tokenizer.encode("9750") + [tokenizer.EOS_ID],
                      skip_special_tokens=True) == "9750"


def test_both_backends_encode_with_the_tokenizers_special_tokens():
    """local-completions needs add_bos_token=True (its default drops special tokens); the
    vllm backend must not get it (vLLM's tokenizer would then force a BOS)."""
    from tests.e2e.accuracy import run_eval

    cfg = config.load(config.CONFIG_DIR / "tiny-adder-fp32.yaml")
    kind, args = run_eval.model_args(cfg, "/m", None, None)
    assert kind == "vllm" and "add_bos_token" not in args
    kind, args = run_eval.model_args(cfg, "/m", "http://127.0.0.1:1", "x")
    assert kind == "local-completions" and args["add_bos_token"] is True
    assert args["base_url"] == "http://127.0.0.1:1/v1/completions" and args["tokenizer"] == "/m"
