"""``bench compare``: the statistics (bench/stats.py) and the command's decisions."""

from __future__ import annotations

import argparse
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import compare, stats

# ---------------------------------------------------------------- Mann-Whitney U


def test_fully_separated_five_vs_five_is_exact_2_over_252():
    u, p, method = stats.mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert (u, method) == (25.0, "exact")
    assert p == pytest.approx(2 / 252)
    _, p_rev, _ = stats.mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert p_rev == pytest.approx(2 / 252)


def test_interleaved_samples_give_large_p():
    # U = 10 of 25: P(U <= 10) = 0.3452 (hand count of the 252 orderings: 87/252)
    _, p, _ = stats.mann_whitney_u([1, 3, 5, 7, 9], [2, 4, 6, 8, 10])
    assert p == pytest.approx(2 * 87 / 252)
    _, p_same, method = stats.mann_whitney_u([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert method == "normal" and p_same == 1.0  # ties -> normal approximation


def test_all_values_tied_is_p_one():
    assert stats.mann_whitney_u([5.0] * 4, [5.0] * 4)[1] == 1.0


def test_normal_approximation_for_large_samples():
    x = np.arange(30, dtype=float)
    _, p, method = stats.mann_whitney_u(x + 100, x)
    assert method == "normal" and p < 1e-9
    # U = 900, mean 450, var = 30*30*61/12; z = (450 - 0.5) / sd
    z = 449.5 / math.sqrt(900 * 61 / 12)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_ranks_average_ties():
    assert stats.rankdata([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]


def test_exact_distribution_sums_to_one_and_is_symmetric():
    d = stats.exact_u_distribution(4, 6)
    assert d.sum() == pytest.approx(1.0)
    assert np.allclose(d, d[::-1])
    assert d[0] == pytest.approx(1 / math.comb(10, 4))


def _permutation_p(x, y) -> float:
    """Oracle: two-sided p over every split of the pooled values."""
    pooled = list(x) + list(y)
    u_obs = stats.u_statistic(x, y)
    us = []
    for idx in itertools.combinations(range(len(pooled)), len(x)):
        xs = [pooled[i] for i in idx]
        ys = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(stats.u_statistic(xs, ys))
    us = np.array(us)
    return min(1.0, 2 * min((us <= u_obs).mean(), (us >= u_obs).mean()))


@settings(derandomize=True, max_examples=40, deadline=None)
@given(st.lists(st.integers(-1000, 1000), min_size=2, max_size=12, unique=True),
       st.integers(1, 6))
def test_exact_p_matches_permutation_oracle(values, m):
    m = min(m, len(values) - 1)
    x, y = values[:m], values[m:]
    _, p, method = stats.mann_whitney_u(x, y)
    assert method == "exact"
    assert p == pytest.approx(_permutation_p(x, y))


# ---------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_contains_one_for_a_a():
    rng = np.random.default_rng(7)
    a, b = rng.normal(100, 3, 10), rng.normal(100, 3, 10)
    lo, hi = stats.bootstrap_ratio_ci(a, b)
    assert lo < 1 < hi
    assert (lo, hi) == stats.bootstrap_ratio_ci(a, b)  # seeded: deterministic


def test_bootstrap_ci_excludes_one_for_a_20_percent_shift():
    rng = np.random.default_rng(8)
    a, b = rng.normal(100, 3, 10), rng.normal(120, 3.6, 10)
    lo, hi = stats.bootstrap_ratio_ci(a, b)
    assert 1 < lo < 1.2 < hi


# ---------------------------------------------------------------- direction, thresholds


@pytest.mark.parametrize("metric,higher", [
    ("median_tpot_ms", False), ("startup_s", False), ("p99_latency", False),
    ("request_throughput", True), ("output_tok_s", True), ("speedup", True),
    ("tokens_per_second", True),
])
def test_direction_by_name(metric, higher):
    assert compare.higher_is_better(metric, {}) is higher


def test_direction_declared_in_file():
    assert compare.higher_is_better("latency_ms", {"higher_is_better": {"latency_ms": True}})
    doc = {"primary_metric": "balancedness", "higher_is_better": False}
    assert compare.higher_is_better("balancedness", doc) is False
    assert compare.higher_is_better("other", doc) is True  # the bool is the primary metric's


def test_verdict_needs_threshold_and_significance():
    assert compare.verdict(0.90, 0.01, True, 0.05) == "regression"
    assert compare.verdict(0.90, 0.20, True, 0.05) == "noise"  # not significant
    assert compare.verdict(0.97, 0.001, True, 0.05) == "noise"  # within threshold
    assert compare.verdict(1.10, 0.01, False, 0.05) == "regression"  # latency up
    assert compare.verdict(0.90, 0.01, False, 0.05) == "improvement"


def test_thresholds_from_checked_in_toml():
    default, per_metric = compare.load_thresholds()
    assert default == 0.05
    assert per_metric["median_tpot_ms"] == 0.05


def test_thresholds_from_another_toml(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text("[default]\nthreshold = 0.2\n[metrics]\nlatency_ms = 0.5\n")
    assert compare.load_thresholds(f) == (0.2, {"latency_ms": 0.5})


# ---------------------------------------------------------------- the command

BASE = [100.0, 101.0, 99.0, 102.0, 98.0, 100.5]


def _doc(samples, benchmark="decode", fingerprint=None, **extra):
    result = {"backend": "plugin", "batch_size": 1, "tokens_per_second": float(np.median(samples)),
              "samples": [float(s) for s in samples], **extra}
    doc = {"benchmark": benchmark, "primary_metric": "tokens_per_second",
           "higher_is_better": True, "results": [result]}
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint
    return doc


def _run(tmp_path, base, head, *flags):
    paths = []
    for name, doc in (("base.json", base), ("head.json", head)):
        p = tmp_path / name
        p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
        paths.append(str(p))
    parser = argparse.ArgumentParser()
    compare.add_parser(parser.add_subparsers())
    args = parser.parse_args(["compare", *paths, *flags])
    return args.run(args)


def test_exit_1_on_significant_regression(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert _run(tmp_path, _doc(BASE), _doc([x * 0.8 for x in BASE]), "--json", str(out)) == 1
    table = capsys.readouterr().out
    assert "| configuration | metric | base median |" in table and "regression" in table
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["verdict"] == "regression" and rows[0]["ratio"] == pytest.approx(0.8)


def test_exit_0_on_noise(tmp_path, capsys):
    head = [100.5, 99.5, 101.0, 98.5, 101.5, 100.0]
    assert _run(tmp_path, _doc(BASE), _doc(head)) == 0
    assert "noise" in capsys.readouterr().out


def test_exit_0_on_improvement(tmp_path, capsys):
    assert _run(tmp_path, _doc(BASE), _doc([x * 1.2 for x in BASE])) == 0
    assert "improvement" in capsys.readouterr().out


def test_metric_samples_list_and_latency_direction(tmp_path, capsys):
    base = _doc(BASE, latency_ms_samples=[10.0, 10.2, 9.9, 10.1, 10.05])
    head = _doc(BASE, latency_ms_samples=[12.0, 12.2, 11.9, 12.1, 12.05])
    assert _run(tmp_path, base, head, "--metric", "latency_ms") == 1


def test_generic_samples_belong_to_the_rows_own_metric():
    doc = {"benchmark": "moe", "primary_metric": "latency_ms", "results": []}
    layer = {"part": "layer", "latency_ms": 2.0, "samples": [2.0, 2.1, 1.9]}
    decode = {"part": "decode", "tokens_per_second": 50.0, "samples": [50.0, 51.0, 49.0]}
    assert compare.samples_of(layer, "latency_ms", doc) == [2.0, 2.1, 1.9]
    assert compare.samples_of(decode, "tokens_per_second", doc) == [50.0, 51.0, 49.0]
    assert compare.metrics_of(decode, doc) == {"tokens_per_second": True}


def _error(tmp_path, capsys, base, head, *flags) -> str:
    assert _run(tmp_path, base, head, *flags) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    return err


def test_exit_2_unreadable_file(tmp_path, capsys):
    err = _error(tmp_path, capsys, "{not json", _doc(BASE))
    assert "cannot read result file" in err and "base.json" in err


def test_exit_2_not_a_result_file(tmp_path, capsys):
    err = _error(tmp_path, capsys, _doc(BASE), {"benchmark": "decode"})
    assert "head.json is not a bench result file" in err


def test_exit_2_different_benchmarks(tmp_path, capsys):
    err = _error(tmp_path, capsys, _doc(BASE), _doc(BASE, benchmark="moe"))
    assert "different benchmarks" in err and "'decode'" in err and "'moe'" in err


def test_exit_2_no_common_configuration(tmp_path, capsys):
    head = _doc(BASE)
    head["results"][0]["batch_size"] = 8
    assert "no common configuration" in _error(tmp_path, capsys, _doc(BASE), head)


def test_exit_2_no_common_metric(tmp_path, capsys):
    err = _error(tmp_path, capsys, _doc(BASE), _doc(BASE), "--metric", "median_tpot_ms")
    assert "metric median_tpot_ms not in any configuration" in err


def test_exit_2_too_few_samples(tmp_path, capsys):
    err = _error(tmp_path, capsys, _doc([100.0, 101.0]), _doc(BASE))
    assert "too few samples" in err and "tokens_per_second" in err
    assert "has 2 in" in err and "need at least 4" in err


def test_single_float_is_one_sample(tmp_path, capsys):
    base, head = _doc(BASE, median_tpot_ms=20.0), _doc(BASE, median_tpot_ms=21.0)
    err = _error(tmp_path, capsys, base, head, "--metric", "median_tpot_ms")
    assert "median_tpot_ms" in err and "has 1 in" in err


FP = {"cpu_model": "Xeon", "cpu_flags": "avx2", "cores": 2, "torch_version": "2.13",
      "git_commit": "abc", "config": {"output_len": 128}}


def test_fingerprint_machine_difference_refused(tmp_path, capsys):
    other = {**FP, "cores": 4, "config": {"output_len": 64}}
    err = _error(tmp_path, capsys, _doc(BASE, fingerprint=FP), _doc(BASE, fingerprint=other))
    assert "cores" in err and "config.output_len" in err and "--force" in err


def test_fingerprint_force_is_shown(tmp_path, capsys):
    other = {**FP, "cpu_model": "EPYC"}
    assert _run(tmp_path, _doc(BASE, fingerprint=FP), _doc(BASE, fingerprint=other),
                "--force") == 0
    out = capsys.readouterr().out
    assert "forced" in out and "cpu_model" in out


def test_fingerprint_version_difference_printed_not_refused(tmp_path, capsys):
    other = {**FP, "git_commit": "def", "torch_version": "2.14"}
    assert _run(tmp_path, _doc(BASE, fingerprint=FP), _doc(BASE, fingerprint=other)) == 0
    out = capsys.readouterr().out
    assert "git_commit" in out and "torch_version" in out and "forced" not in out


def test_exit_2_no_metric_at_all(tmp_path, capsys):
    bare = {"benchmark": "decode", "results": [{"backend": "plugin"}]}
    assert "no common metric" in _error(tmp_path, capsys, bare, bare)


def test_exit_2_unreadable_thresholds(tmp_path, capsys):
    err = _error(tmp_path, capsys, _doc(BASE), _doc(BASE),
                 "--thresholds", str(tmp_path / "missing.toml"))
    assert "cannot read thresholds file" in err and "missing.toml" in err


def test_python_m_bench_compare_entry_point(tmp_path, capsys):
    from bench.__main__ import main

    base, head = tmp_path / "b.json", tmp_path / "h.json"
    base.write_text(json.dumps(_doc(BASE)))
    head.write_text(json.dumps(_doc([x * 0.8 for x in BASE])))
    assert main(["compare", str(base), str(head)]) == 1
    assert main(["compare", str(base), str(base)]) == 0
    assert "tokens_per_second" in capsys.readouterr().out
