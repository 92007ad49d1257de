"""``bench moe --parts decode``: which children run, and the plugin / vanilla ratios."""

from __future__ import annotations

import pytest

from bench.moe import _decode_runs, decode_ratios


def test_runs_pair_vanilla_with_plugin_then_ep2():
    assert _decode_runs(["qwen3_moe", "deepseek_v3"]) == [
        ("qwen3_moe", "vanilla", 1), ("qwen3_moe", "plugin", 1),
        ("deepseek_v3", "vanilla", 1), ("deepseek_v3", "plugin", 1),
        ("deepseek_v3", "plugin", 2)]
    assert _decode_runs(["qwen3_moe"]) == [("qwen3_moe", "vanilla", 1),
                                           ("qwen3_moe", "plugin", 1)]


def _row(model, backend, ep, batch, tps):
    return {"part": "decode", "model": model, "backend": backend, "ep_size": ep,
            "batch_size": batch, "tokens_per_second": tps}


def test_ratios_are_plugin_over_vanilla_tok_s_single_process_only():
    rows = [_row("tiny-qwen3_moe", "plugin", 1, 1, 90.0),
            _row("tiny-qwen3_moe", "vanilla", 1, 1, 100.0),
            _row("tiny-qwen3_moe", "plugin", 1, 8, 330.0),
            _row("tiny-qwen3_moe", "vanilla", 1, 8, 300.0),
            _row("tiny-deepseek_v3", "plugin", 2, 1, 50.0),  # EP2: no vanilla to pair with
            {"part": "layer", "latency_ms": 1.0}]
    assert decode_ratios(rows) == {
        "decode_tiny-qwen3_moe_plugin_over_vanilla_batch_1": pytest.approx(0.9),
        "decode_tiny-qwen3_moe_plugin_over_vanilla_batch_8": pytest.approx(1.1)}
