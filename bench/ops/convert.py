"""pytest-benchmark's JSON (``--benchmark-json`` with ``--benchmark-save-data``) -> a bench
result file ``{"benchmark": "ops", "results": [...], "fingerprint": ...}``.

One result per benchmark: its configuration is ``op``, ``shape`` and ``variant`` (the
benchmark's ``extra_info``; without them ``op`` is the test's name and ``shape`` its
parameter id), its samples ``latency_ms_samples`` (every timed round, ms per call) and
``latency_ms`` their median. Round and iteration counts vary with pytest-benchmark's
calibration and a test's name may change, so they sit in the nested ``stats`` object,
outside the configuration.
"""

from __future__ import annotations

import statistics


class ConversionError(ValueError):
    """pytest-benchmark output that cannot become a result file."""


def _result(bench: dict) -> dict:
    name = bench.get("name") or bench.get("fullname") or "?"
    stats = bench.get("stats")
    if not isinstance(stats, dict):
        raise ConversionError(f"benchmark {name!r} has no 'stats' object")
    data = stats.get("data")
    if not isinstance(data, list) or not data:
        raise ConversionError(f"benchmark {name!r} has no raw timings ('stats.data'): run "
                              "pytest with --benchmark-save-data")
    samples = [round(float(s) * 1e3, 6) for s in data]
    extra = bench.get("extra_info") or {}
    row = {
        "op": str(extra.get("op") or name.split("[", 1)[0]),
        "shape": str(extra.get("shape") or bench.get("param") or ""),
        "variant": str(extra.get("variant") or "default"),
    }
    for k, v in extra.items():  # further string labels a benchmark chose to add
        if k not in row and isinstance(v, str):
            row[k] = v
    row["latency_ms"] = round(statistics.median(samples), 6)
    row["latency_ms_samples"] = samples
    row["stats"] = {"test": name, "rounds": stats.get("rounds"),
                    "iterations": stats.get("iterations")}
    return row


def convert(pytest_json: dict, *, fingerprint: dict | None = None) -> dict:
    """The bench result document of one pytest-benchmark JSON document."""
    benches = pytest_json.get("benchmarks") if isinstance(pytest_json, dict) else None
    if not isinstance(benches, list):
        raise ConversionError("not pytest-benchmark JSON: no 'benchmarks' list")
    if not benches:
        raise ConversionError("pytest-benchmark JSON has no benchmarks (all skipped or "
                              "deselected?)")
    results = [_result(b) for b in benches]
    seen: dict[tuple, str] = {}
    for r in results:
        key = (r["op"], r["shape"], r["variant"])
        if key in seen:
            raise ConversionError(f"benchmarks {seen[key]!r} and {r['stats']['test']!r} have the same "
                                  f"op/shape/variant {key}: give them distinct extra_info")
        seen[key] = r["stats"]["test"]
    doc = {
        "benchmark": "ops",
        "date": pytest_json.get("datetime"),
        "pytest_benchmark_version": pytest_json.get("version"),
        "primary_metric": "latency_ms", "higher_is_better": False,
        "results": results,
    }
    if fingerprint is not None:
        doc["fingerprint"] = fingerprint
    return doc
