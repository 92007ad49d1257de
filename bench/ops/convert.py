"""pytest-benchmark's JSON of R separate runs (``--benchmark-json`` with
``--benchmark-save-data``, one pytest process each) -> a bench result file
``{"benchmark": "ops", "results": [...], "fingerprint": ...}``.

One result per benchmark: its configuration is ``op``, ``shape`` and ``variant`` (the
benchmark's ``extra_info``; without them ``op`` is the test's name and ``shape`` its
parameter id). Its samples ``latency_ms_samples`` are **one statistic per run** (one
per pytest process, ms per call: the run's minimum by default, or its median) and
``latency_ms`` their median. The rounds of one run follow each other within milliseconds:
a neighbour's burst or a frequency change moves them together, so they are not
independent samples and a Mann-Whitney test on them would call such a burst significant.
One value per run is one sample; runs are separate processes started seconds apart. The
minimum is the default because other jobs only ever slow a round down: on the shared
2-core machine a run's median moved between 0.127 and 0.175 ms with its neighbours' load
while its minimum stayed within 0.125-0.134 ms. Every run's raw rounds stay in
``stats.rounds_ms``.
Round and iteration counts vary with pytest-benchmark's calibration and a test's name may
change, so they sit in the nested ``stats`` object, outside the configuration.
"""

from __future__ import annotations

import statistics

#: How one run's rounds become its sample.
PER_RUN = {"min": min, "median": statistics.median}


class ConversionError(ValueError):
    """pytest-benchmark output that cannot become a result file."""


def _timings(bench: dict) -> tuple[str, dict, list[float]]:
    """(test name, its extra_info-derived configuration, raw rounds in ms)."""
    name = bench.get("name") or bench.get("fullname") or "?"
    stats = bench.get("stats")
    if not isinstance(stats, dict):
        raise ConversionError(f"benchmark {name!r} has no 'stats' object")
    data = stats.get("data")
    if not isinstance(data, list) or not data:
        raise ConversionError(f"benchmark {name!r} has no raw timings ('stats.data'): run "
                              "pytest with --benchmark-save-data")
    extra = bench.get("extra_info") or {}
    row = {
        "op": str(extra.get("op") or name.split("[", 1)[0]),
        "shape": str(extra.get("shape") or bench.get("param") or ""),
        "variant": str(extra.get("variant") or "default"),
    }
    for k, v in extra.items():  # further string labels a benchmark chose to add
        if k not in row and isinstance(v, str):
            row[k] = v
    return name, row, [round(float(s) * 1e3, 6) for s in data]


def _one_run(pytest_json: dict, index: int) -> dict[tuple, tuple[str, dict, list[float]]]:
    benches = pytest_json.get("benchmarks") if isinstance(pytest_json, dict) else None
    if not isinstance(benches, list):
        raise ConversionError(f"run {index + 1}: not pytest-benchmark JSON: no 'benchmarks' list")
    if not benches:
        raise ConversionError(f"run {index + 1}: pytest-benchmark JSON has no benchmarks "
                              "(all skipped or deselected?)")
    seen: dict[tuple, tuple[str, dict, list[float]]] = {}
    for b in benches:
        name, row, rounds = _timings(b)
        key = (row["op"], row["shape"], row["variant"])
        if key in seen:
            raise ConversionError(f"benchmarks {seen[key][0]!r} and {name!r} have the same "
                                  f"op/shape/variant {key}: give them distinct extra_info")
        seen[key] = (name, row, rounds)
    return seen


def convert(runs: list[dict], *, fingerprint: dict | None = None,
            per_run: str = "min") -> dict:
    """The bench result document of R pytest-benchmark JSON documents (one per run, R >= 1);
    every run must hold the same benchmarks. ``per_run``: "min" or "median" of a run's
    rounds is its sample."""
    if per_run not in PER_RUN:
        raise ConversionError(f"per_run {per_run!r} is not one of {', '.join(PER_RUN)}")
    if isinstance(runs, dict) or not runs:
        raise ConversionError("convert takes a non-empty list of pytest-benchmark documents "
                              "(one per run)")
    parsed = [_one_run(doc, i) for i, doc in enumerate(runs)]
    first = parsed[0]
    for i, other in enumerate(parsed[1:], 2):
        if other.keys() != first.keys():
            diff = sorted(map(str, other.keys() ^ first.keys()))
            raise ConversionError(f"run {i} does not hold the same benchmarks as run 1: "
                                  f"{', '.join(diff)}")
    results = []
    for key, (name, row, _) in first.items():
        rounds = [run[key][2] for run in parsed]
        samples = [round(PER_RUN[per_run](r), 6) for r in rounds]
        results.append({
            **row,
            "latency_ms": round(statistics.median(samples), 6),
            "latency_ms_samples": samples,
            "stats": {"test": name, "runs": len(rounds),
                      "rounds": [len(r) for r in rounds], "rounds_ms": rounds},
        })
    doc = {
        "benchmark": "ops",
        "date": runs[0].get("datetime"),
        "pytest_benchmark_version": runs[0].get("version"),
        "primary_metric": "latency_ms", "higher_is_better": False,
        "samples_are": f"per-run {per_run}",
        "results": results,
    }
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint
    return doc
