"""Decode throughput of the default model: vllm-ascend (plugin) vs vanilla vLLM on CPU.

``python -m bench decode`` runs each backend in a fresh ``python -m bench.decode --child``
(vLLM picks its platform once per process; ``VLLM_ASCEND_PLATFORM=off`` is vanilla). A child
builds an offline ``LLM``, warms up, times ``repeats`` greedy generates of exactly
``output_len`` tokens per request per batch size; the parent pools, writes JSON, prints a
table. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, csv_choices, csv_list, git_commit, machine_info, run_logged
from bench.fingerprint import config_from_args, fingerprint

BACKENDS = ("vanilla", "plugin")
#: The platform class each backend must run on (checked in the child: no silent fallback).
EXPECTED_PLATFORM = {"plugin": "AscendCPUPlatform", "vanilla": "CpuPlatform"}
DTYPE, MAX_MODEL_LEN, SEED = "float32", 512, 0
#: Short fixed prompts (15-18 tokens with the SmolLM2 tokenizer); batches cycle through them.
PROMPTS = [
    "Write a short story about a robot who learns to paint landscapes in the mountains.",
    "Explain in simple words how a steam engine turns heat into motion for a train.",
    "List some good reasons to learn a second language when you are already an adult.",
    "Describe the city of Paris in the spring to someone who has never been there.",
    "What are the main differences between a violin and a cello in sound and size?",
    "Give me a recipe for a quick vegetarian dinner that uses rice and fresh beans.",
    "Summarise the rules of chess for a child who is playing the game for the first time.",
    "Why is the sky blue during the day but red and orange at sunset and sunrise?",
]


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _median(xs: list[float], nd: int) -> float | None:
    return round(statistics.median(xs), nd) if xs else None


# --- child: one backend in this process ---------------------------------------------------
def child_main(argv: list[str]) -> int:
    """One backend in this process: build the LLM, time generates, write samples."""
    p = argparse.ArgumentParser(prog="python -m bench.decode --child")
    p.add_argument("--child", action="store_true")
    p.add_argument("--backend", choices=BACKENDS, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--batch-sizes", type=csv_list(int), required=True)
    for name in ("--output-len", "--repeats"):
        p.add_argument(name, type=int, required=True)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--result", required=True)
    a = p.parse_args(argv)

    t0 = time.perf_counter()
    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    import vllm_ascend

    platform = type(current_platform).__name__  # resolved now, as the engine will
    if platform != EXPECTED_PLATFORM[a.backend]:
        raise SystemExit(
            f"backend {a.backend!r} runs on vLLM platform {platform}, expected "
            f"{EXPECTED_PLATFORM[a.backend]} (check VLLM_ASCEND_PLATFORM and the plugin install)"
        )
    # disable_log_stats=False: per-request timestamps (TTFT, TPOT) in RequestOutput.metrics.
    llm = LLM(model=a.model, dtype=DTYPE, max_model_len=MAX_MODEL_LEN, seed=SEED,
              enforce_eager=a.enforce_eager, disable_log_stats=False)
    startup_s = time.perf_counter() - t0
    _log(f"{a.backend}: engine ready in {startup_s:.0f} s on {platform}")
    params = SamplingParams(temperature=0.0, max_tokens=a.output_len, ignore_eos=True)

    runs = []
    for bs in a.batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(bs)]
        llm.generate(prompts, params, use_tqdm=False)  # warm-up, untimed
        tps, ttft, tpot = [], [], []
        for r in range(a.repeats):
            start = time.perf_counter()
            outs = llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start
            got = [len(o.outputs[0].token_ids) for o in outs]
            if got != [a.output_len] * bs:
                raise SystemExit(f"expected {a.output_len} tokens per request, got {got}")
            tps.append(bs * a.output_len / elapsed)
            for o in outs:
                m = o.metrics
                if m is not None and m.first_token_ts and m.num_generation_tokens > 1:
                    ttft.append(m.first_token_latency * 1e3)
                    n = m.num_generation_tokens - 1
                    tpot.append((m.last_token_ts - m.first_token_ts) / n * 1e3)
            _log(f"{a.backend}: batch {bs} repeat {r + 1}/{a.repeats}: {tps[-1]:.1f} tok/s")
        runs.append({
            "batch_size": bs,
            "input_len": round(statistics.mean(len(o.prompt_token_ids) for o in outs)),
            "samples": tps, "ttft_ms": ttft, "tpot_ms": tpot,
        })

    info = {
        "backend": a.backend, "platform": platform, "startup_s": round(startup_s, 1),
        "vllm_version": vllm.__version__, "torch_version": torch.__version__,
        "plugin_version": vllm_ascend.__version__,
        "runs": runs,
    }
    Path(a.result).write_text(json.dumps(info))
    return 0


# --- parent: python -m bench decode ----------------------------------------------------------
def _child_env(backend: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    if backend == "vanilla":
        env["VLLM_ASCEND_PLATFORM"] = "off"
    elif env.get("VLLM_ASCEND_PLATFORM", "").strip().lower() == "off":
        del env["VLLM_ASCEND_PLATFORM"]  # the plugin run must not inherit "off"
    # vLLM's torch.compile AOT cache key does not depend on the platform: with a shared
    # cache, plugin and vanilla (and concurrent vLLM runs) overwrite each other's artifacts.
    from vllm_ascend.tools.prepare_model import cache_dir

    env["VLLM_CACHE_ROOT"] = str(cache_dir() / "bench" / f"vllm-cache-{backend}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _run_child(backend: str, args, log, result: Path) -> dict:
    cmd = [
        sys.executable, "-m", "bench.decode", "--child", "--backend", backend,
        "--model", str(args.model), "--batch-sizes", ",".join(map(str, args.batch_sizes)),
        "--output-len", str(args.output_len), "--repeats", str(args.repeats),
        "--result", str(result),
    ] + (["--enforce-eager"] if args.enforce_eager else [])
    log.write(f"\n===== {backend}: {' '.join(cmd)}\n")
    rc, tail = run_logged(cmd, _child_env(backend), log, args.verbose)
    if rc != 0 or not result.is_file():
        sys.stderr.write("".join(tail))
        raise SystemExit(f"the {backend} run failed (exit {rc}); full log: {log.name}")
    return json.loads(result.read_text())


def _results(children: list[dict], args) -> list[dict]:
    """One entry per (backend, batch size), samples pooled over rounds."""
    out = []
    for backend in [b for b in BACKENDS if b in args.which]:
        mine = [c for c in children if c["backend"] == backend]
        for bs in args.batch_sizes:
            runs = [r for c in mine for r in c["runs"] if r["batch_size"] == bs]
            samples = [round(x, 2) for r in runs for x in r["samples"]]
            ttft = [x for r in runs for x in r["ttft_ms"]]
            tpot = [x for r in runs for x in r["tpot_ms"]]
            out.append({
                "backend": backend, "model": Path(args.model).name, "dtype": DTYPE,
                "max_model_len": MAX_MODEL_LEN, "seed": SEED,
                "enforce_eager": args.enforce_eager, "batch_size": bs,
                "input_len": runs[0]["input_len"], "output_len": args.output_len,
                "tokens_per_second": _median(samples, 2), "samples": samples,
                "best_tokens_per_second": max(samples),  # least disturbed by other jobs
                "median_ttft_ms": _median(ttft, 2), "median_tpot_ms": _median(tpot, 3),
            })
    return out


def _table(results: list[dict], ratios: dict) -> str:
    rows = ["backend   batch  tok/s (median)  min..max         TTFT ms  TPOT ms"]
    for r in results:
        s = r["samples"]
        rows.append(
            f"{r['backend']:<9} {r['batch_size']:>5}  {r['tokens_per_second']:>14.1f}  "
            f"{min(s):>7.1f}..{max(s):<7.1f}  {r['median_ttft_ms'] or float('nan'):>7.1f}  "
            f"{r['median_tpot_ms'] or float('nan'):>7.2f}"
        )
    for k, v in ratios.items():
        rows.append(f"plugin/vanilla {k}: {v:.3f}")
    return "\n".join(rows)


def run(args) -> int:
    from vllm_ascend.tools.prepare_model import default_model_dir, is_prepared

    args.model = Path(args.model) if args.model else default_model_dir()
    if not is_prepared(args.model):
        raise SystemExit(
            f"model checkpoint not found at {args.model}; run `make setup` "
            "(or `python -m vllm_ascend.tools.prepare_model`) first"
        )
    if min(args.repeats, args.rounds, args.output_len, *args.batch_sizes) < 1:
        raise SystemExit("--repeats, --rounds, --output-len and batch sizes must be >= 1")
    if args.output_len + 32 > MAX_MODEL_LEN:
        raise SystemExit(f"--output-len must be <= {MAX_MODEL_LEN - 32} (max_model_len)")
    args.batch_sizes = list(dict.fromkeys(args.batch_sizes))
    if args.min_ratio is not None and set(args.which) != set(BACKENDS):
        raise SystemExit("--min-ratio needs both backends (--which plugin,vanilla)")
    stamp = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else RESULTS_DIR / f"decode-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log")
    machine = machine_info()
    # Rounds alternate the order (A B, B A, ...) so slow drift hits both backends alike.
    order = [b for b in BACKENDS if b in args.which]
    schedule = [b for i in range(args.rounds) for b in (order if i % 2 == 0 else order[::-1])]
    _log(f"{len(schedule)} process(es): {', '.join(schedule)}; child logs: {log_path}")
    t0 = time.perf_counter()
    children = []
    with open(log_path, "w", encoding="utf-8") as log, tempfile.TemporaryDirectory() as tmp:
        for i, backend in enumerate(schedule):
            _log(f"process {i + 1}/{len(schedule)}: {backend} (fresh vLLM: start-up 1-2 min)")
            children.append(_run_child(backend, args, log, Path(tmp) / f"{i}.json"))
    results = _results(children, args)
    ratios = {}
    if set(order) == set(BACKENDS):
        tps = {(r["backend"], r["batch_size"]): r["tokens_per_second"] for r in results}
        ratios = {f"batch_{bs}": round(tps["plugin", bs] / tps["vanilla", bs], 3)
                  for bs in args.batch_sizes}
    first = children[0]
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = {
        "benchmark": "decode",
        "date": stamp.isoformat(timespec="seconds"),
        "vllm_version": first["vllm_version"], "torch_version": first["torch_version"],
        "plugin_version": first["plugin_version"], "plugin_commit": git_commit(),
        "machine": machine,
        "repeats": args.repeats, "rounds": args.rounds,
        "primary_metric": "tokens_per_second", "higher_is_better": True,
        "processes": [{k: c[k] for k in ("backend", "platform", "startup_s")}
                      for c in children],
        "total_runtime_s": round(time.perf_counter() - t0, 1),
        "results": results, "ratios": ratios,
        "fingerprint": fingerprint(config_from_args(args)),
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(_table(results, ratios))
    print(f"wrote {out} ({doc['total_runtime_s']:.0f} s)")
    load = (machine["loadavg_start"] or [0])[0]
    if load > 0.5 * (machine["cpus_usable"] or 1):
        _log(f"warning: the machine was already busy at start (load {load}): noisy numbers")
    if args.min_ratio is not None:
        low = {k: v for k, v in ratios.items() if v < args.min_ratio}
        if low:
            print(f"FAIL: plugin/vanilla below {args.min_ratio}: {low}", file=sys.stderr)
            return 3
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("decode", help="decode throughput, plugin vs vanilla vLLM (CPU)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--out", help="result JSON (default: bench/results/decode-<UTC time>.json)")
    p.add_argument("--batch-sizes", type=csv_list(int), default=[1, 8], help="default 1,8")
    p.add_argument("--output-len", type=int, default=128, help="tokens per request (128)")
    p.add_argument("--repeats", type=int, default=4, help="timed generates per batch size (4: `bench compare` needs >= 4 samples)")
    p.add_argument("--rounds", type=int, default=1,
                   help="processes per backend, order alternated ABBA (1; 2 cancels drift)")
    p.add_argument("--which", type=csv_choices(BACKENDS, "backend"), default=list(BACKENDS), help="plugin,vanilla")
    p.add_argument("--model", help="checkpoint dir (default: the prepared SmolLM2-135M)")
    p.add_argument("--enforce-eager", action="store_true", help="no torch.compile (faster start)")
    p.add_argument("--min-ratio", type=float, default=None,
                   help="exit 3 if plugin/vanilla tokens/s is below this for any batch size")
    p.add_argument("-v", "--verbose", action="store_true", help="show the children's vLLM logs")
    p.set_defaults(run=run)


if __name__ == "__main__":
    if "--child" not in sys.argv[1:]:
        raise SystemExit("run `python -m bench decode` (this module's own entry is for children)")
    sys.exit(child_main(sys.argv[1:]))
