"""``bench moe --parts quant`` plumbing on a tiny shape (no timing asserted)."""

from __future__ import annotations

import pytest

from bench.moe_quant import SCHEMES, run_quant, w4a8_group


def test_w4a8_group_is_the_largest_that_divides():
    assert w4a8_group(2048, 2048) == 256
    assert w4a8_group(2048, 1408) == 128
    assert w4a8_group(128, 64) == 0


def test_run_quant_rows_and_ratios():
    shape = {"hidden": 128, "intermediate": 64, "experts": 4, "top_k": 2}
    rows, ratios = run_quant({"t": shape}, [1, 3], iters=1, repeats=2, log=lambda m: None)
    assert [(r["backend"], r["tokens"]) for r in rows] == [
        (b, t) for t in (1, 3) for b in ("float",) + SCHEMES]
    assert all(len(r["samples"]) == 2 and r["latency_ms"] > 0 for r in rows)
    assert set(ratios) == {f"quant_t_{q}_speedup_vs_float_tokens_{t}"
                           for q in SCHEMES for t in (1, 3)}
    assert all(v > 0 for v in ratios.values())


@pytest.mark.parametrize("parts", [["quant"]])
def test_moe_parser_accepts_the_quant_part(parts):
    import argparse

    from bench import moe

    p = argparse.ArgumentParser()
    moe.add_parser(p.add_subparsers())
    args = p.parse_args(["moe", "--parts", ",".join(parts), "--quant-tokens", "1,2"])
    assert args.parts == parts and args.quant_tokens == [1, 2]
