"""``bench serve``: the commands it runs (offline, vLLM's flags) and how a ``vllm bench serve
--save-detailed`` result becomes a bench result row, checked against float64 math on
synthetic per-request timings. No server is started."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import compare, serve
from bench.__main__ import build_parser, main


def detailed(ttfts, latencies, itls, output_len=4) -> dict:
    """A minimal ``vllm bench serve --save-detailed`` document (seconds)."""
    n = len(ttfts)
    return {"completed": n, "failed": 0, "request_throughput": n / max(latencies),
            "output_throughput": n * output_len / max(latencies), "ttfts": ttfts,
            "itls": itls, "latencies": latencies, "output_lens": [output_len] * n,
            "errors": [""] * n}


def args_of(*argv):
    a = build_parser().parse_args(["serve", *argv])
    a.model = Path("/models/smol")
    return a


def test_commands_are_offline_and_use_vllms_flags():
    a = args_of("--max-concurrency", "2", "--input-len", "32", "--output-len", "16")
    client = serve.client_command(a, 1234, 2, 8, Path("/tmp/x/r.json"))
    joined = " ".join(client)
    for flag in ("bench serve", "--dataset-name random", "--tokenizer /models/smol",
                 "--random-input-len 32", "--random-output-len 16", "--num-prompts 8",
                 "--max-concurrency 2", "--ignore-eos", "--save-detailed",
                 "--percentile-metrics ttft,tpot,itl,e2el", "--metric-percentiles 50,90,99",
                 "--base-url http://127.0.0.1:1234", "--result-filename r.json"):
        assert flag in joined, flag
    server = " ".join(serve.server_command(a, 1234))
    assert "serve /models/smol" in server and "--host 127.0.0.1 --port 1234" in server
    assert "--enforce-eager" not in server
    assert "--enforce-eager" in serve.server_command(args_of("--enforce-eager"), 1)
    env = serve._env()
    assert env["HF_HUB_OFFLINE"] == "1"


def test_per_request_ms_and_tpot():
    raw = detailed([0.1, 0.2], [0.4, 0.8], [[0.1, 0.1, 0.1], [0.2, 0.2, 0.2]])
    req = serve.per_request_ms(raw)
    assert req["ttft"] == [100.0, 200.0] and req["e2el"] == [400.0, 800.0]
    assert req["tpot"] == pytest.approx([100.0, 200.0])  # (lat - ttft) / 3
    assert req["itl"] == [[100.0] * 3, [200.0] * 3]


def test_failed_requests_are_left_out():
    raw = detailed([0.1, 0.2], [0.4, 0.8], [[0.1], [0.2]])
    raw["errors"] = ["", "boom"]
    assert serve.per_request_ms(raw)["ttft"] == [100.0]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.floats(0.01, 2.0), min_size=2, max_size=6), min_size=4,
                max_size=6))
def test_row_pools_requests_and_keeps_one_sample_per_repeat(ttft_sets):
    a = args_of("--output-len", "4")
    repeats = []
    for ttfts in ttft_sets:
        lat = [t + 0.3 for t in ttfts]
        repeats.append(serve.repeat_summary(detailed(ttfts, lat, [[0.1] * 3] * len(ttfts))))
    row = serve.result_row(a, 2, 8, repeats)
    all_ttft = np.array([t for s in ttft_sets for t in s], dtype=np.float64) * 1e3
    assert row["median_ttft_ms"] == pytest.approx(np.median(all_ttft), abs=1e-3)
    assert row["p99_ttft_ms"] == pytest.approx(np.percentile(all_ttft, 99), abs=1e-3)
    assert row["mean_tpot_ms"] == pytest.approx(100.0, abs=1e-3)
    assert row["median_ttft_ms_samples"] == pytest.approx(
        [np.median(np.array(s) * 1e3) for s in ttft_sets], abs=1e-3)
    assert len(row["request_throughput_samples"]) == len(ttft_sets)
    assert [len(r["ttft_ms"]) for r in row["raw"]] == [len(s) for s in ttft_sets]
    # the configuration bench compare matches on
    key = dict(compare.config_key(row, set()))
    assert key == {"backend": "plugin", "model": "SmolLM2-135M-Instruct", "dtype": "float32",
                   "dataset_name": "random", "input_len": 64, "output_len": 4,
                   "num_prompts": 8, "max_concurrency": 2, "enforce_eager": False}


def _doc(row):
    return {"benchmark": "serve", "primary_metric": "request_throughput",
            "higher_is_better": {"request_throughput": True, "output_throughput": True},
            "results": [row]}


def test_compare_reads_directions_and_per_repeat_samples(tmp_path, capsys):
    a = args_of("--output-len", "4")

    def run_of(scale):
        reps = [serve.repeat_summary(detailed([0.1 * scale * w] * 4, [0.5 * scale * w] * 4,
                                              [[0.13 * scale * w] * 3] * 4))
                for w in (1.0, 1.01, 0.99, 1.02)]
        return _doc(serve.result_row(a, 1, 4, reps))

    base, slow = tmp_path / "b.json", tmp_path / "h.json"
    base.write_text(json.dumps(run_of(1.0)))
    slow.write_text(json.dumps(run_of(1.3)))
    assert main(["compare", str(base), str(slow), "--json", str(tmp_path / "c.json")]) == 1
    rows = {r["metric"]: r for r in json.loads((tmp_path / "c.json").read_text())["rows"]}
    assert rows["request_throughput"]["higher_is_better"] is True
    assert rows["median_ttft_ms"]["higher_is_better"] is False
    assert {r["verdict"] for r in rows.values()} == {"regression"}
    assert set(rows) == set(serve.SAMPLED)
    assert all(r["n_base"] == 4 for r in rows.values())
    capsys.readouterr()


def test_bad_options_are_refused(monkeypatch, tmp_path):
    import vllm_ascend.tools.prepare_model as pm

    monkeypatch.setattr(pm, "is_prepared", lambda p: True)
    with pytest.raises(SystemExit, match="must be >= 1"):
        serve.run(build_parser().parse_args(["serve", "--repeats", "0", "--model", "x"]))
    with pytest.raises(SystemExit, match="<= 2048"):
        serve.run(build_parser().parse_args(["serve", "--input-len", "2000", "--model", "x"]))
