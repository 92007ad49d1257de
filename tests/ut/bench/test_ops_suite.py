"""``bench ops``: pytest-benchmark JSON -> a bench result file that ``bench compare`` takes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from bench import compare
from bench.__main__ import build_parser, main
from bench.fingerprint import fingerprint
from bench.ops import pytest_command
from bench.ops.convert import ConversionError, convert

FIXTURE = Path(__file__).parent / "data" / "pytest_benchmark_small.json"


@pytest.fixture
def raw() -> dict:
    return json.loads(FIXTURE.read_text())


def _scaled(raw: dict, factor: float) -> dict:
    """``raw`` with every raw timing multiplied by ``factor`` (another run of the file)."""
    out = copy.deepcopy(raw)
    for b in out["benchmarks"]:
        b["stats"]["data"] = [x * factor for x in b["stats"]["data"]]
    return out


def test_one_result_per_op_and_shape_with_ms_samples(raw):
    doc = convert([raw], fingerprint={"config": {"rounds": 5}})
    assert doc["benchmark"] == "ops" and doc["primary_metric"] == "latency_ms"
    assert doc["higher_is_better"] is False and doc["fingerprint"] == {"config": {"rounds": 5}}
    first, second = doc["results"]
    assert (first["op"], first["shape"], first["variant"]) == (
        "npu_dynamic_quant", "16x2048 fp32", "kernel")
    # one run: one sample, its minimum (1.0 1.0 1.1 1.2 1.3 ms)
    assert first["latency_ms_samples"] == pytest.approx([1.0])
    assert first["latency_ms"] == pytest.approx(1.0)
    assert first["stats"]["test"] == "test_dynamic_quant[16]"
    assert first["stats"]["rounds"] == [5]
    assert first["stats"]["rounds_ms"] == [pytest.approx([1.1, 1.0, 1.2, 1.0, 1.3])]
    # no extra_info: the test's name and parameter id
    assert (second["op"], second["shape"], second["variant"]) == (
        "test_gating", "256", "default")
    assert second["latency_ms"] == pytest.approx(1.9)


@pytest.mark.parametrize("per_run, value", [("min", 1.0), ("median", 1.1)])
def test_samples_are_one_statistic_per_run(raw, per_run, value):
    factors = [1.0, 2.0, 0.5, 1.5]
    doc = convert([_scaled(raw, f) for f in factors], per_run=per_run)
    first = doc["results"][0]
    assert first["latency_ms_samples"] == pytest.approx([value * f for f in factors])
    assert first["latency_ms"] == pytest.approx(value * 1.25)  # median of x0.5 x1 x1.5 x2
    assert first["stats"]["runs"] == 4 and first["stats"]["rounds"] == [5] * 4
    assert doc["samples_are"] == f"per-run {per_run}"


def test_unknown_per_run_statistic(raw):
    with pytest.raises(ConversionError, match="per_run 'mean' is not one of min, median"):
        convert([raw], per_run="mean")


def test_runs_with_different_benchmarks_are_refused(raw):
    other = copy.deepcopy(raw)
    other["benchmarks"].pop()
    with pytest.raises(ConversionError, match="run 2 does not hold the same benchmarks"):
        convert([raw, other])


def test_a_single_document_is_not_a_list_of_runs(raw):
    with pytest.raises(ConversionError, match="list of pytest-benchmark documents"):
        convert(raw)


def test_configuration_is_op_shape_variant_only(raw):
    doc = convert([raw])
    key = dict(compare.config_key(doc["results"][0], set()))
    assert key == {"op": "npu_dynamic_quant", "shape": "16x2048 fp32", "variant": "kernel"}
    assert "fingerprint" not in doc


def test_missing_raw_timings_name_the_option(raw):
    del raw["benchmarks"][1]["stats"]["data"]
    with pytest.raises(ConversionError, match="--benchmark-save-data"):
        convert([raw])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("benchmarks"), "no 'benchmarks' list"),
    (lambda d: d["benchmarks"].clear(), "has no benchmarks"),
    (lambda d: d["benchmarks"][1].update(extra_info=d["benchmarks"][0]["extra_info"]),
     "same op/shape/variant"),
])
def test_unconvertible_input(raw, mutate, message):
    mutate(raw)
    with pytest.raises(ConversionError, match=message):
        convert([raw])


def _write(tmp_path: Path, name: str, doc: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return str(path)


def test_compare_accepts_ops_files(raw, tmp_path, capsys):
    fp = fingerprint({"rounds": 5})
    wobble = [1.0, 1.01, 0.99, 1.02, 0.98]  # five runs a few per cent apart
    base = convert([_scaled(raw, f) for f in wobble], fingerprint=fp)
    head = convert([_scaled(raw, 1.5 * f) for f in wobble], fingerprint=fp)
    b, h = _write(tmp_path, "base.json", base), _write(tmp_path, "head.json", head)
    assert main(["compare", b, b]) == 0
    out = capsys.readouterr().out
    assert "op=npu_dynamic_quant" in out and "latency_ms" in out and "noise" in out
    assert main(["compare", b, h, "--json", str(tmp_path / "cmp.json")]) == 1
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert [r["verdict"] for r in rows] == ["regression", "regression"]
    assert all(r["ratio"] == pytest.approx(1.5) for r in rows)


def test_compare_refuses_ops_files_of_another_config(raw, tmp_path, capsys):
    b = _write(tmp_path, "a.json", convert([raw], fingerprint=fingerprint({"rounds": 5})))
    h = _write(tmp_path, "b.json", convert([raw], fingerprint=fingerprint({"rounds": 9})))
    assert main(["compare", b, h]) == 2
    assert "config.rounds" in capsys.readouterr().err


def test_pytest_command_keeps_raw_timings_and_filters(tmp_path):
    args = build_parser().parse_args(["ops", "--rounds", "4", "-k", "dynamic_quant"])
    cmd = pytest_command(args, tmp_path / "pb.json")
    assert "--benchmark-save-data" in cmd and f"--benchmark-json={tmp_path / 'pb.json'}" in cmd
    assert "--benchmark-min-rounds=4" in cmd
    assert cmd[cmd.index("-k") + 1] == "dynamic_quant"
    assert cmd[3].endswith("bench/ops/test_kernels.py")
    no_warmup = pytest_command(build_parser().parse_args(["ops", "--warmup", "0"]), tmp_path)
    assert "--benchmark-warmup=off" in no_warmup
