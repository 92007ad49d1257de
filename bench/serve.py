"""``bench serve``: vLLM's own serving benchmark (``vllm bench serve``) against the plugin's
OpenAI-compatible server, offline.

The server is the README's (``ci/serve.sh``'s flags): ``vllm serve`` of the prepared
SmolLM2-135M-Instruct, float32, max_model_len 2048, an explicit KV cache, on 127.0.0.1 at a
free port; its log must show the plugin active (``platform=AscendCPUPlatform``). The client
is ``vllm bench serve --dataset-name random`` with the checkpoint's local tokenizer (random
token ids: no dataset, no hub; ``HF_HUB_OFFLINE=1``), ``--ignore-eos`` so every request
produces exactly ``--output-len`` tokens, ``--save-detailed`` for the per-request timings.
It runs ``--repeats`` times per ``--max-concurrency`` value against the one server (after one
untimed warm-up run), in the order the values are given.

A result per concurrency carries vLLM's field names (``request_throughput``,
``output_throughput``, ``mean_/median_/p50_/p90_/p99_`` + ``ttft/tpot/itl/e2el`` + ``_ms``)
over the requests of all repeats pooled; ``<field>_samples`` for
``request_throughput``, ``output_throughput`` and the medians and p99s hold one value per
repeat (what ``bench compare`` tests: the requests of one run share its moment of machine
load, so they are not independent samples); ``raw`` holds every request's TTFT, TPOT, E2E
latency and ITLs in ms, per repeat.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bench import RESULTS_DIR, csv_list, machine_info, run_logged
from bench.fingerprint import config_from_args, fingerprint
from bench.procs import free_port, stop_group

SERVED_NAME = "SmolLM2-135M-Instruct"
STARTUP_TIMEOUT_S = 900
PLUGIN_ACTIVE = "active: platform=AscendCPUPlatform"
METRICS = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (50, 90, 99)
#: Per-repeat values kept as ``<field>_samples`` (the fields ``bench compare`` tests).
SAMPLED = ("request_throughput", "output_throughput",
           *(f"median_{m}_ms" for m in METRICS), *(f"p99_{m}_ms" for m in METRICS))


def _log(msg: str) -> None:
    print(f"[bench] serve: {msg}", file=sys.stderr, flush=True)


def vllm_cli() -> list[str]:
    """The ``vllm`` command of this interpreter's environment."""
    script = Path(sys.executable).with_name("vllm")
    return [str(script)] if script.exists() else [sys.executable, "-m",
                                                  "vllm.entrypoints.cli.main"]


def server_command(args, port: int) -> list[str]:
    cmd = vllm_cli() + ["serve", str(args.model), "--served-model-name", SERVED_NAME,
                        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
                        "--max-model-len", "2048", "--kv-cache-memory-bytes", args.kv_cache,
                        "--seed", "0"]
    return cmd + (["--enforce-eager"] if args.enforce_eager else [])


def client_command(args, port: int, concurrency: int, num_prompts: int,
                   result: Path) -> list[str]:
    return vllm_cli() + [
        "bench", "serve", "--backend", "openai", "--base-url", f"http://127.0.0.1:{port}",
        "--endpoint", "/v1/completions", "--model", SERVED_NAME,
        "--tokenizer", str(args.model), "--dataset-name", "random",
        "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
        "--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency),
        "--request-rate", "inf", "--ignore-eos", "--seed", "0", "--disable-tqdm",
        "--percentile-metrics", ",".join(METRICS),
        "--metric-percentiles", ",".join(map(str, PERCENTILES)),
        "--save-result", "--save-detailed", "--result-dir", str(result.parent),
        "--result-filename", result.name,
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if env.get("VLLM_ASCEND_PLATFORM", "").strip().lower() == "off":
        del env["VLLM_ASCEND_PLATFORM"]  # this suite measures the plugin
    return env


def wait_healthy(proc: subprocess.Popen, port: int, log_path: Path, timeout: float) -> float:
    """Seconds until ``/health`` answered 200; SystemExit when the server died or timed out."""
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode} before it was "
                             f"healthy; log: {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the server was not healthy within {timeout:.0f} s; log: {log_path}")
        time.sleep(2)


stop = stop_group  # SIGTERM the server's process group, SIGKILL after 60 s


def per_request_ms(raw: dict) -> dict[str, list]:
    """One ``vllm bench serve --save-detailed`` result -> per-request timings in ms of the
    successful requests: ttft, tpot ((latency - ttft) / (output tokens - 1)), e2el, and the
    ITLs (a list per request)."""
    ok = [not e for e in raw.get("errors") or [""] * len(raw["ttfts"])]
    out: dict[str, list] = {"ttft": [], "tpot": [], "e2el": [], "itl": []}
    for good, ttft, itl, lat, n in zip(ok, raw["ttfts"], raw["itls"], raw["latencies"],
                                       raw["output_lens"]):
        if not good:
            continue
        out["ttft"].append(round(ttft * 1e3, 4))
        out["e2el"].append(round(lat * 1e3, 4))
        out["itl"].append([round(x * 1e3, 4) for x in itl])
        if n > 1:
            out["tpot"].append(round((lat - ttft) / (n - 1) * 1e3, 4))
    return out


def summarise(values: list[float], metric: str) -> dict[str, float]:
    """vLLM's summary fields of one metric (ms): mean, median, std, p50/p90/p99."""
    a = np.asarray(values or [0.0], dtype=np.float64)
    out = {f"mean_{metric}_ms": float(a.mean()), f"median_{metric}_ms": float(np.median(a)),
           f"std_{metric}_ms": float(a.std())}
    for p in PERCENTILES:
        out[f"p{p}_{metric}_ms"] = float(np.percentile(a, p))
    return {k: round(v, 4) for k, v in out.items()}


def repeat_summary(raw: dict) -> dict:
    """The fields of one repeat: throughputs and each metric's summary."""
    req = per_request_ms(raw)
    values = {"ttft": req["ttft"], "tpot": req["tpot"], "e2el": req["e2el"],
              "itl": [x for r in req["itl"] for x in r]}
    out = {"request_throughput": round(raw["request_throughput"], 4),
           "output_throughput": round(raw["output_throughput"], 4),
           "completed": raw["completed"], "failed": raw.get("failed", 0)}
    for m in METRICS:
        out.update(summarise(values[m], m))
    return out | {"per_request": req}


def result_row(args, concurrency: int, num_prompts: int, repeats: list[dict]) -> dict:
    """One result: the configuration, the pooled summaries, per-repeat samples, raw."""
    pooled = {m: [x for r in repeats for x in r["per_request"][m]] for m in ("ttft", "tpot", "e2el")}
    pooled["itl"] = [x for r in repeats for req in r["per_request"]["itl"] for x in req]
    row = {"backend": "plugin", "model": SERVED_NAME, "dtype": "float32",
           "dataset_name": "random", "input_len": args.input_len, "output_len": args.output_len,
           "num_prompts": num_prompts, "max_concurrency": concurrency,
           "enforce_eager": args.enforce_eager,
           "requests": {"completed": sum(r["completed"] for r in repeats),
                        "failed": sum(r["failed"] for r in repeats)},
           "request_throughput": round(float(np.median(
               [r["request_throughput"] for r in repeats])), 4),
           "output_throughput": round(float(np.median(
               [r["output_throughput"] for r in repeats])), 4)}
    for m in METRICS:
        row.update(summarise(pooled[m], m))
    for f in SAMPLED:
        row[f"{f}_samples"] = [r[f] for r in repeats]
    row["raw"] = [{"ttft_ms": r["per_request"]["ttft"], "tpot_ms": r["per_request"]["tpot"],
                   "e2el_ms": r["per_request"]["e2el"], "itl_ms": r["per_request"]["itl"]}
                  for r in repeats]
    return row


def _client(args, port, concurrency, num_prompts, tmp: Path, name: str, log) -> dict:
    result = tmp / f"{name}.json"
    cmd = client_command(args, port, concurrency, num_prompts, result)
    log.write(f"\n===== client {name}: {' '.join(cmd)}\n")
    log.flush()
    code, tail = run_logged(cmd, _env(), log, args.verbose)
    if code or not result.is_file():
        sys.stderr.write("".join(tail[-20:]))
        raise SystemExit(f"vllm bench serve failed (exit {code}); log: {log.name}")
    raw = json.loads(result.read_text())
    if raw.get("failed"):
        raise SystemExit(f"{raw['failed']} of {raw['failed'] + raw['completed']} requests "
                         f"failed in {name}; log: {log.name}")
    return raw


def run(args) -> int:
    from vllm_ascend.tools.prepare_model import default_model_dir, is_prepared

    args.model = Path(args.model) if args.model else default_model_dir()
    if not is_prepared(args.model):
        raise SystemExit(f"model checkpoint not found at {args.model}; run `make setup` first")
    if min(args.repeats, args.input_len, args.output_len, *args.max_concurrency) < 1:
        raise SystemExit("bench serve: --repeats, --input-len, --output-len and "
                         "--max-concurrency values must be >= 1")
    if args.input_len + args.output_len > 2048:
        raise SystemExit("bench serve: --input-len + --output-len must be <= 2048 "
                         "(the server's max_model_len)")
    stamp = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else RESULTS_DIR / f"serve-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    machine = machine_info()
    port = free_port()
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log, tempfile.TemporaryDirectory() as tmp:
        cmd = server_command(args, port)
        log.write(f"===== server: {' '.join(cmd)}\n")
        log.flush()
        start = "eager: ~30 s" if args.enforce_eager else "compiles first: 1-3 min"
        _log(f"starting the server on 127.0.0.1:{port} ({start}); log: {log_path}")
        proc = subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            startup_s = wait_healthy(proc, port, log_path, STARTUP_TIMEOUT_S)
            log.flush()
            if PLUGIN_ACTIVE not in log_path.read_text(errors="replace"):
                raise SystemExit(f"the server does not run on the plugin ({PLUGIN_ACTIVE!r} "
                                 f"not in its log {log_path}): check VLLM_ASCEND_PLATFORM")
            _log(f"server healthy in {startup_s:.0f} s")
            results = []
            for c in args.max_concurrency:
                n = args.num_prompts or 4 * c
                _client(args, port, c, min(n, 2 * c), Path(tmp), f"warmup-c{c}", log)
                reps = []
                for r in range(args.repeats):
                    raw = _client(args, port, c, n, Path(tmp), f"c{c}-r{r}", log)
                    reps.append(repeat_summary(raw))
                    _log(f"concurrency {c} repeat {r + 1}/{args.repeats}: "
                         f"{reps[-1]['request_throughput']:.2f} req/s, median TPOT "
                         f"{reps[-1]['median_tpot_ms']:.1f} ms")
                results.append(result_row(args, c, n, reps))
        finally:
            stop(proc)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {"benchmark": "serve", "date": stamp.isoformat(timespec="seconds"),
           "machine": machine, "repeats": args.repeats, "startup_s": round(startup_s, 1),
           "primary_metric": "request_throughput",
           "higher_is_better": {"request_throughput": True, "output_throughput": True},
           "total_runtime_s": round(time.perf_counter() - t0, 1),
           "results": results, "fingerprint": fingerprint(config_from_args(args))}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(results))
    print(f"wrote {out} ({doc['total_runtime_s']:.0f} s)")
    return 0


def table(results: list[dict]) -> str:
    rows = ["concurrency  req/s   out tok/s  TTFT p50/p99 ms   TPOT p50/p99 ms  ITL p50/p99 ms"
            "   E2EL p50/p99 ms"]
    for r in results:
        rows.append(
            f"{r['max_concurrency']:>11}  {r['request_throughput']:>5.2f}  "
            f"{r['output_throughput']:>9.1f}  "
            + "  ".join(f"{r[f'median_{m}_ms']:>7.1f}/{r[f'p99_{m}_ms']:<7.1f}" for m in METRICS))
    return "\n".join(rows)


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="vllm bench serve against the plugin's OpenAI server "
                       "(TTFT, TPOT, ITL, E2E latency, request throughput)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", help="result JSON (default: bench/results/serve-<UTC time>.json)")
    p.add_argument("--max-concurrency", type=csv_list(int), default=[1, 4],
                   help="concurrent requests, one result each (default 1,4)")
    p.add_argument("--num-prompts", type=int, default=None,
                   help="requests per repeat (default 4 x the concurrency)")
    p.add_argument("--input-len", type=int, default=64, help="prompt tokens (64)")
    p.add_argument("--output-len", type=int, default=64, help="generated tokens (64)")
    p.add_argument("--repeats", type=int, default=4,
                   help="timed runs per concurrency (4: `bench compare` needs >= 4)")
    p.add_argument("--model", help="checkpoint dir (default: the prepared SmolLM2-135M)")
    p.add_argument("--kv-cache", default="1G", help="--kv-cache-memory-bytes of the server (1G)")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile (faster start)")
    p.add_argument("-v", "--verbose", action="store_true", help="echo the clients' output")
    p.set_defaults(run=run)
