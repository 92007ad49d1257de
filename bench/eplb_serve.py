"""Decode step latency under dynamic EPLB: off, on (rebalancing), stop-the-world, in one run.

    python -m bench eplb-serve [--arch qwen3_moe] [--batch 8] [--output-len 384]
        [--step-interval 8] [--policy deepseek] [--modes off,layerwise,stop_the_world]
        [--repeats 3] [--out FILE]

Each mode is a fresh vLLM engine (TP2 + expert parallel on gloo, eager, one core per rank)
serving a tiny hot-expert MoE checkpoint (``tiny_model --hot-experts``). The child adds
``--batch`` requests and drives ``LLMEngine.step()`` itself, timing every step from the
client: a step's latency includes whatever EPLB does in the worker (recording, the interval
all-gather and broadcast, posting and waiting for expert transfers, and in stop-the-world
mode the planner wait and the all-layer move). The first ``--warmup`` decode steps and the
prefill step are dropped. ``--policy deepseek`` (default) re-plans from scratch at every
interval, so experts move at nearly every rebalance: the worst case for the per-step cost.

Modes run interleaved (off, layerwise, stop-the-world, off, ...) ``--repeats`` times and
their samples are pooled; each repeat's p50 is kept to show the run-to-run noise. Steps
during which an expert transfer was in flight (layerwise) or that were blocked by the
all-layer move (stop-the-world) are also reported apart (``move_step_latencies_ms``).
The JSON keeps every step's latency (``step_latencies_ms``), p50 / p99 and mean per mode
(the names ``vllm bench`` uses: ``p50_itl_ms``, ``p99_itl_ms``, ``mean_itl_ms``), the ratios
to "off", and each worker's EPLB counters (rebalances, layers moved).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, csv_choices, git_commit, machine_info, run_logged
from bench.fingerprint import config_from_args, fingerprint

MODES = ("off", "layerwise", "stop_the_world")
HOT = {"qwen3_moe": 3, "deepseek_v3": 8}
PROMPT = "The history of the printing press begins"


def _model(arch: str) -> Path:
    from vllm_ascend.tools.prepare_model import cache_dir
    from vllm_ascend.tools.tiny_model import generate

    out = cache_dir() / "bench" / f"eplb-serve-{arch}-hot{HOT[arch]}"
    if not (out / "config.json").is_file():
        generate(arch, out, seed=0, hot_experts=HOT[arch], router_bias=3.0, force=True)
    return out


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def child_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true")
    p.add_argument("--model", required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--output-len", type=int, required=True)
    p.add_argument("--eplb", required=True, help="JSON eplb section (mode off: ignored)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from vllm import LLM, SamplingParams

    extra = {} if a.mode == "off" else {"ascend": {"eplb": json.loads(a.eplb)}}
    llm = LLM(a.model, dtype="float32", max_model_len=512, seed=0, enforce_eager=True,
              tensor_parallel_size=2, enable_expert_parallel=True, additional_config=extra)
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.0, max_tokens=a.output_len, ignore_eos=True)
    for i in range(a.batch):
        engine.add_request(f"r{i}", f"{PROMPT} ({i})", params)
    latencies, finished = [], 0
    print(f"[bench] {a.mode}: {a.batch} requests x {a.output_len} tokens", flush=True)
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        outs = engine.step()
        latencies.append((time.perf_counter() - t0) * 1e3)
        finished += sum(o.finished for o in outs)
    from vllm_ascend.eplb.runtime import worker_stats as eplb_stats

    stats = [s for s in llm.collective_rpc(eplb_stats) if s is not None]
    for s in stats:
        s.pop("placements", None)
    Path(a.out).write_text(json.dumps({"step_latencies_ms": latencies, "finished": finished,
                                       "eplb": stats}))
    return 0


def run(args) -> int:
    out = Path(args.out) if args.out else RESULTS_DIR / (
        "eplb-serve-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = _model(args.arch)
    eplb = {"enabled": True, "num_redundant_experts": args.redundant,
            "step_interval": args.step_interval, "window_size": args.step_interval,
            "policy": args.policy}
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=os.environ.get(
        "VLLM_CPU_OMP_THREADS_BIND", "0|1"), VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ALLOW_INSECURE_SERIALIZATION="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    modes: dict[str, dict] = {m: {"step_latencies_ms": [], "move_step_latencies_ms": [],
                                  "repeat_p50_ms": [], "eplb": []} for m in args.modes}
    log_path = out.with_suffix(".log")
    order = [m for _ in range(args.repeats) for m in args.modes]  # interleaved: A B C A B C
    with open(log_path, "w") as log:
        for i, mode in enumerate(order):
            print(f"[bench] run {i + 1}/{len(order)}: {mode}", file=sys.stderr, flush=True)
            part = out.with_suffix(f".{mode}.json")
            cfg = dict(eplb, mode=mode) if mode != "off" else eplb
            env["VLLM_CACHE_ROOT"] = str(out.parent / f".vllm-cache-eplb-serve-{mode}")
            cmd = [sys.executable, "-m", "bench.eplb_serve", "--child", "--model", str(model),
                   "--mode", mode, "--batch", str(args.batch), "--output-len",
                   str(args.output_len), "--eplb", json.dumps(cfg), "--out", str(part)]
            code, tail = run_logged(cmd, env, log, args.verbose)
            if code:
                sys.stderr.write("".join(tail))
                print(f"eplb-serve: mode {mode} failed (exit {code}); log: {log_path}",
                      file=sys.stderr)
                return 1
            raw = json.loads(part.read_text())
            part.unlink()
            first = 1 + args.warmup  # the prefill step and the warm-up are dropped
            lat = raw["step_latencies_ms"]
            moved = set()
            for s in raw["eplb"]:
                moved.update(s.get("move_steps", []))
            m = modes[mode]
            m["step_latencies_ms"] += lat[first:]
            m["move_step_latencies_ms"] += [lat[k] for k in sorted(moved) if first <= k < len(lat)]
            m["repeat_p50_ms"].append(_percentile(lat[first:], 0.5))
            m["eplb"] += raw["eplb"]
    for m in modes.values():
        steps = m["step_latencies_ms"]
        m.update(n_steps=len(steps), p50_itl_ms=_percentile(steps, 0.50),
                 p99_itl_ms=_percentile(steps, 0.99), mean_itl_ms=sum(steps) / len(steps),
                 max_itl_ms=max(steps))
        if m["move_step_latencies_ms"]:
            m["mean_move_step_ms"] = sum(m["move_step_latencies_ms"]) / len(
                m["move_step_latencies_ms"])
    base = modes.get("off")
    for name, m in modes.items():
        if base is not None:
            m["p50_vs_off"] = m["p50_itl_ms"] / base["p50_itl_ms"]
            m["p99_vs_off"] = m["p99_itl_ms"] / base["p99_itl_ms"]
    result = {"benchmark": "eplb-serve", "commit": git_commit(), "machine": machine_info(),
              "config": {"arch": args.arch, "batch": args.batch, "output_len": args.output_len,
                         "warmup": args.warmup, "repeats": args.repeats, "layout": "TP2+EP",
                         "eplb": eplb},
              "primary_metric": "itl_ms", "higher_is_better": False,
              # per mode: every decode step's latency is a sample (`bench compare`)
              "results": [{"mode": name, "p50_itl_ms": m["p50_itl_ms"],
                           "p99_itl_ms": m["p99_itl_ms"],
                           "itl_ms_samples": m["step_latencies_ms"]}
                          for name, m in modes.items()],
              "modes": modes,
              "fingerprint": fingerprint(config_from_args(args))}
    out.write_text(json.dumps(result, indent=1))
    print(f"{'mode':<16}{'steps':>6}{'p50 ms':>9}{'p99 ms':>9}{'mean':>8}{'p50/off':>9}"
          f"{'p99/off':>9}{'repeat p50s':>22}{'moves':>7}{'move-step ms':>13}")
    for name, m in modes.items():
        rank0 = [s for s in m["eplb"] if s["ep_rank"] == 0]
        moves = sum(s["committed"] for s in rank0)
        reps = "/".join(f"{x:.1f}" for x in m["repeat_p50_ms"])
        print(f"{name:<16}{m['n_steps']:>6}{m['p50_itl_ms']:>9.2f}{m['p99_itl_ms']:>9.2f}"
              f"{m['mean_itl_ms']:>8.2f}{m.get('p50_vs_off', float('nan')):>9.3f}"
              f"{m.get('p99_vs_off', float('nan')):>9.3f}{reps:>22}{moves:>7}"
              f"{m.get('mean_move_step_ms', float('nan')):>13.2f}")
    print(f"wrote {out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eplb-serve", help="decode step latency with EPLB off / on / "
                       "stop-the-world (TP2+EP, tiny hot-expert MoE)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=sorted(HOT), default="qwen3_moe")
    p.add_argument("--modes", type=csv_choices(MODES, "mode"), default=list(MODES))
    p.add_argument("--batch", type=int, default=8, help="concurrent requests (8)")
    p.add_argument("--output-len", type=int, default=384,
                   help="tokens per request (384: ~1100 steps per mode over 3 repeats, so "
                   "p99 is not one slow step)")
    p.add_argument("--warmup", type=int, default=8, help="decode steps dropped (8)")
    p.add_argument("--repeats", type=int, default=3,
                   help="engine runs per mode, interleaved off/on/stw (3)")
    p.add_argument("--step-interval", type=int, default=8, help="EPLB step_interval (8)")
    p.add_argument("--redundant", type=int, default=2, help="num_redundant_experts (2)")
    p.add_argument("--policy", default="deepseek", help="EPLB policy (deepseek: moves often)")
    p.add_argument("--out", help="result JSON (default: bench/results/eplb-serve-<UTC>.json)")
    p.add_argument("--verbose", action="store_true", help="show the children's output")
    p.set_defaults(run=run)


if __name__ == "__main__":
    if "--child" not in sys.argv[1:]:
        raise SystemExit("run `python -m bench eplb-serve` (this entry is for its children)")
    sys.exit(child_main(sys.argv[1:]))
