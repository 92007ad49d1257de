"""EPLB policies on trace-driven loads: balancedness, slots/bytes moved, planner time.

``python -m bench eplb [--traces A.json,B.json,...] [--out bench/results/eplb.json]``

Per-step loads come from the traces (default: every ``*.json`` in ``../shared/eplb-traces``
relative to the repository root) with drift, jitter, hot bursts and a workload switch
halfway (see ``bench/eplb_loads.py``). For each shape (experts, EP ranks, slots) and
policy, the simulation keeps the placement in force; every ``--step-interval`` steps the
policy re-plans from the last ``--window`` steps' loads (``current`` = the placement in
force), estimated as serving does (``--load-estimate``: the window's per-expert trend a
quarter interval ahead, or its sum); balancedness (mean over layers of mean/max rank load) is measured on each
following step's loads. ``no-eplb`` (E slots round-robin, never changed) is the floor;
``vllm-deepseek`` is vLLM 0.32's ``DefaultEplbPolicy`` (global, with its slot-preserving
pass) on the same loads.

Reported per policy and shape: balancedness per step (mean, 5th percentile; over the drift
phase and after the switch), slots moved per rebalance (fraction of all slots; drift phase
and the rebalances right after the switch), bytes moved (``EXPERT_BYTES`` per slot; network
bytes exclude copies within a rank), the balancedness of each new placement on the loads it
was planned from ("planned": the policy's own quality, without the forecast error of the
drifting loads), planner wall time per rebalance (all layers; the minimum of
``--timing-repeats`` calls; also its CPU time, which other work on the machine inflates
less) p50/p99 over the rebalances that have a ``current`` (the first, from scratch, is
reported apart as ``initial_planner_ms``).
Writes JSON with the raw samples and a PNG plot next to it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench import REPO_ROOT, RESULTS_DIR, csv_choices, csv_list, git_commit, machine_info
from bench.fingerprint import config_from_args, fingerprint
from bench.eplb_loads import LoadConfig, fold, popularity, read_trace, step_loads

#: DeepSeek-V3 routed expert in W8A8: gate, up (7168 -> 2048 each) and down (2048 -> 7168)
#: int8 weights, plus one float32 scale per output channel (2048 + 2048 + 7168).
EXPERT_BYTES = 3 * 7168 * 2048 + 4 * (2048 + 2048 + 7168)
#: (experts, EP ranks, redundant slots).
SHAPES = {"E256-EP32-R32": (256, 32, 32), "E256-EP64-R64": (256, 64, 64),
          "E128-EP16-R16": (128, 16, 16)}
POLICIES = ("no-eplb", "deepseek", "incremental", "vllm-deepseek")
#: The shape the planner-time target is about.
TIMED_SHAPE = "E256-EP64-R64"
DEFAULT_TRACES = REPO_ROOT.parent / "shared" / "eplb-traces"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _planner(name: str):
    """``plan(loads, num_ranks, num_slots, current) -> (L, S)`` for a policy name."""
    if name == "vllm-deepseek":
        import torch
        from vllm.distributed.eplb.policy.default import DefaultEplbPolicy

        def plan(loads, num_ranks, num_slots, current):
            old = None if current is None else torch.from_numpy(current)
            return DefaultEplbPolicy.rebalance_experts(
                torch.from_numpy(loads), num_slots, 1, 1, num_ranks, old).numpy()
        return plan
    from vllm_ascend.eplb.policies import get_policy

    return get_policy(name)


def _network_slots(old: np.ndarray, new: np.ndarray, num_experts: int, num_ranks: int) -> int:
    """Moved slots whose expert the destination rank did not hold before (need a send)."""
    from vllm_ascend.eplb.policies._common import holds_table

    holds = holds_table(old, num_experts, num_ranks)
    rank = np.arange(old.shape[1]) // (old.shape[1] // num_ranks)
    local = holds[np.arange(old.shape[0])[:, None], new, rank[None, :]]
    return int(((old != new) & ~local).sum())


def simulate(policy: str, loads: np.ndarray, num_ranks: int, redundant: int, args) -> dict:
    """One policy on one shape: ``loads`` ``(steps, L, E)`` -> raw samples."""
    from vllm_ascend.eplb.forecast import estimate_loads, horizon_for
    from vllm_ascend.eplb.metrics import balancedness
    from vllm_ascend.eplb.placement import round_robin_placement, validate_placement

    steps, num_layers, num_experts = loads.shape
    num_slots = num_experts + (0 if policy == "no-eplb" else redundant)
    plan = None if policy == "no-eplb" else _planner(policy)
    placement = round_robin_placement(num_layers, num_experts, num_ranks)
    current = None
    bal, rebalances = [], []
    first = args.window
    for t in range(first, steps):
        if plan is not None and (t - first) % args.step_interval == 0:
            window = estimate_loads(loads[t - args.window:t], args.load_estimate,
                                    horizon_for(args.step_interval))
            times, cpu = [], []
            for _ in range(args.timing_repeats):
                start, start_cpu = time.perf_counter(), time.thread_time()
                new = np.asarray(plan(window, num_ranks, num_slots, current), dtype=np.int64)
                cpu.append((time.thread_time() - start_cpu) * 1e3)
                times.append((time.perf_counter() - start) * 1e3)
            problems = validate_placement(new, num_experts, num_ranks)
            rec = {"step": t, "planner_ms": round(min(times), 3),
                   "planner_ms_samples": [round(x, 3) for x in times],
                   "planner_cpu_ms": round(min(cpu), 3),
                   "planned_balancedness": round(float(
                       balancedness(new, window, num_ranks).mean()), 5),
                   "guard_problems": len(problems)}
            if current is None:
                rec["phase"] = "initial"
            else:
                moved = int((current != new).sum())
                rec["phase"] = ("drift" if t <= args.switch_step else
                                "switch" if t <= args.switch_step + args.window + args.step_interval
                                else "settled")
                rec.update(slots_moved=moved, moved_fraction=round(moved / new.size, 5),
                           bytes_moved=moved * EXPERT_BYTES,
                           network_bytes=_network_slots(current, new, num_experts, num_ranks)
                           * EXPERT_BYTES)
            rebalances.append(rec)
            placement = current = new
        bal.append(float(balancedness(placement, loads[t], num_ranks).mean()))
    return {"balancedness": bal, "first_step": first, "rebalances": rebalances,
            "num_slots": num_slots}


def _q(xs, q):
    return round(float(np.percentile(xs, q)), 5) if len(xs) else None


def summarize(raw: dict, args) -> dict:
    """Means, percentiles and per-phase figures of one simulation."""
    bal = np.asarray(raw["balancedness"])
    steps = np.arange(raw["first_step"], raw["first_step"] + bal.size)
    recs = raw["rebalances"]
    post = [r["step"] for r in recs if r["step"] > args.switch_step]
    after = bal[steps >= (post[0] if post else args.switch_step)]
    drift = bal[steps < args.switch_step]

    def of(phase, key):
        return [r[key] for r in recs if r["phase"] == phase]

    def mean(xs, nd=5):
        return round(float(np.mean(xs)), nd) if len(xs) else None

    times = [r["planner_ms"] for r in recs if r["phase"] != "initial"]
    cpu = [r["planner_cpu_ms"] for r in recs if r["phase"] != "initial"]
    return {
        "balancedness_mean": mean(bal), "balancedness_p5": _q(bal, 5),
        "drift_balancedness_mean": mean(drift), "drift_balancedness_p5": _q(drift, 5),
        "post_switch_balancedness_mean": mean(after), "post_switch_balancedness_p5": _q(after, 5),
        "drift_moved_fraction_mean": mean(of("drift", "moved_fraction")),
        "drift_moved_fraction_max": max(of("drift", "moved_fraction"), default=None),
        "switch_moved_fraction_max": max(of("switch", "moved_fraction"), default=None),
        "switch_moved_fraction_sum": round(sum(of("switch", "moved_fraction")), 5)
        if of("switch", "moved_fraction") else None,
        "drift_bytes_per_rebalance": mean(of("drift", "bytes_moved"), 0),
        "drift_network_bytes_per_rebalance": mean(of("drift", "network_bytes"), 0),
        "switch_bytes_max": max(of("switch", "bytes_moved"), default=None),
        "drift_planned_balancedness_mean": mean(of("drift", "planned_balancedness")),
        "switch_planned_balancedness_mean": mean(of("switch", "planned_balancedness")),
        "planner_ms_p50": _q(times, 50), "planner_ms_p99": _q(times, 99),
        "planner_cpu_ms_p50": _q(cpu, 50), "planner_cpu_ms_p99": _q(cpu, 99),
        "initial_planner_ms": mean(of("initial", "planner_ms"), 3),
        "guard_failures": sum(r["guard_problems"] > 0 for r in recs),
    }


def check_targets(results: list[dict], default: str) -> list[dict]:
    """The brief's targets, evaluated on this run."""
    by = {(r["shape"], r["policy"]): r["summary"] for r in results}
    out = []
    for shape in sorted({r["shape"] for r in results}):
        inc, ds = by.get((shape, default)), by.get((shape, "deepseek"))
        if inc and ds:
            gap = round(ds["drift_balancedness_mean"] - inc["drift_balancedness_mean"], 5)
            out.append({"shape": shape, "target": f"{default} within 0.005 of deepseek "
                        "(drift phase), <= 10% slots moved per drift rebalance",
                        "value": {"gap": gap, "moved_max": inc["drift_moved_fraction_max"]},
                        "met": gap <= 0.005 and (inc["drift_moved_fraction_max"] or 0) <= 0.10})
        if inc:
            b, m = inc["post_switch_balancedness_mean"], inc["switch_moved_fraction_max"]
            out.append({"shape": shape, "target": f"{default} >= 0.97 after the switch, <= 25% "
                        "slots moved per rebalance", "value": {"balancedness": b, "moved_max": m},
                        "met": b is not None and b >= 0.97 and (m or 0) <= 0.25})
            b = inc["switch_planned_balancedness_mean"]
            out.append({"shape": shape, "target": f"{default} >= 0.97 after the switch on the "
                        "loads it planned from (no forecast error), <= 25% slots moved",
                        "value": {"planned_balancedness": b, "moved_max": m},
                        "met": b is not None and b >= 0.97 and (m or 0) <= 0.25})
        if inc and shape == TIMED_SHAPE:
            out.append({"shape": shape, "target": f"{default} planner <= 5 ms (58 layers, p50 "
                        "and p99 wall)", "value": {"p50": inc["planner_ms_p50"],
                                                   "p99": inc["planner_ms_p99"],
                                                   "cpu_p50": inc["planner_cpu_ms_p50"],
                                                   "cpu_p99": inc["planner_cpu_ms_p99"]},
                        "met": inc["planner_ms_p99"] <= 5.0})
    return out


def _table(results: list[dict]) -> str:
    head = (f"{'shape':<14} {'policy':<14} {'bal':>6} {'plan-d':>6} {'plan-s':>6} {'p5':>6} "
            f"{'drift':>6} {'post':>6} "
            f"{'mv%drift':>9} {'mv%sw':>6} {'GB/rb':>6} {'p50ms':>7} {'p99ms':>7}")
    lines = [head, "-" * len(head)]

    def f(x, fmt, scale=1.0):
        return format(x * scale, fmt) if x is not None else "-"

    for r in results:
        s = r["summary"]
        lines.append(
            f"{r['shape']:<14} {r['policy']:<14} {f(s['balancedness_mean'], '.4f'):>6} "
            f"{f(s['drift_planned_balancedness_mean'], '.4f'):>6} "
            f"{f(s['switch_planned_balancedness_mean'], '.4f'):>6} "
            f"{f(s['balancedness_p5'], '.4f'):>6} {f(s['drift_balancedness_mean'], '.4f'):>6} "
            f"{f(s['post_switch_balancedness_mean'], '.4f'):>6} "
            f"{f(s['drift_moved_fraction_mean'], '.1f', 100):>4}/"
            f"{f(s['drift_moved_fraction_max'], '.1f', 100):<4} "
            f"{f(s['switch_moved_fraction_max'], '.1f', 100):>6} "
            f"{f(s['drift_bytes_per_rebalance'], '.1f', 1e-9):>6} "
            f"{f(s['planner_ms_p50'], '.2f'):>7} {f(s['planner_ms_p99'], '.2f'):>7}")
    return "\n".join(lines)


def _plot(results: list[dict], path: Path, switch_step: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in results))
    fig, axes = plt.subplots(len(shapes), 1, figsize=(10, 3.2 * len(shapes)), squeeze=False)
    for ax, shape in zip(axes[:, 0], shapes):
        for r in results:
            if r["shape"] == shape:
                bal = r["raw"]["balancedness"]
                ax.plot(range(r["raw"]["first_step"], r["raw"]["first_step"] + len(bal)), bal,
                        label=r["policy"], lw=0.9)
        ax.axvline(switch_step, color="grey", ls="--", lw=0.8)
        ax.set_title(shape)
        ax.set_ylabel("balancedness")
        ax.set_ylim(0.3, 1.0)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1, 0].set_xlabel("step (dashed: workload switch)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    import vllm

    import vllm_ascend
    from vllm_ascend.eplb.policies import DEFAULT_POLICY

    traces = args.traces or sorted(DEFAULT_TRACES.glob("*.json"))
    if not traces:
        raise SystemExit(f"no traces: {DEFAULT_TRACES} has no *.json; pass --traces")
    if args.window < 1 or args.step_interval < 1 or not 0 < args.switch_step < args.steps:
        raise SystemExit("--window and --step-interval must be >= 1, 0 < --switch-step < --steps")
    out = Path(args.out) if args.out else RESULTS_DIR / "eplb.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    machine, t0 = machine_info(), time.perf_counter()
    pop, moe_layers = popularity([read_trace(p) for p in traces])
    cfg = LoadConfig(steps=args.steps, switch_step=args.switch_step,
                     tokens_per_step=args.tokens_per_step, jitter=args.jitter,
                     burst_rate=args.burst_rate, burst_factor=args.burst_factor, seed=args.seed)
    _log(f"{len(traces)} traces, {len(moe_layers)} MoE layers x {pop.shape[2]} experts; "
         f"sampling {cfg.steps} steps of {cfg.tokens_per_step} tokens x top-{cfg.top_k}")
    loads256 = step_loads(pop, cfg, progress=lambda t: _log(f"  loads: step {t}/{cfg.steps}"))
    results = []
    for shape in args.shapes:
        num_experts, num_ranks, redundant = SHAPES[shape]
        loads = loads256 if num_experts == loads256.shape[2] else fold(loads256, num_experts)
        for policy in args.policies:
            start = time.perf_counter()
            raw = simulate(policy, loads, num_ranks, redundant, args)
            summary = summarize(raw, args)
            row = {"shape": shape, "policy": policy, "num_experts": num_experts,
                   "num_ranks": num_ranks, "num_slots": raw["num_slots"]}
            if raw["rebalances"]:  # top level, where `bench compare` looks for samples
                row["planner_ms_samples"] = [r["planner_ms"] for r in raw["rebalances"]]
            results.append(row | {"summary": summary, "raw": raw})
            _log(f"{shape} {policy}: balancedness {summary['balancedness_mean']:.4f}, "
                 f"{len(raw['rebalances'])} rebalances, planner p50 "
                 f"{summary['planner_ms_p50']} ms ({time.perf_counter() - start:.0f} s)")
    targets = check_targets(results, DEFAULT_POLICY)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    stamp = dt.datetime.now(dt.timezone.utc)
    doc = {
        "benchmark": "eplb", "date": stamp.isoformat(timespec="seconds"),
        "vllm_version": vllm.__version__, "plugin_version": vllm_ascend.__version__,
        "plugin_commit": git_commit(), "machine": machine,
        "traces": [str(p) for p in traces], "moe_layers": moe_layers.tolist(),
        "config": {"steps": args.steps, "switch_step": args.switch_step,
                   "step_interval": args.step_interval, "window": args.window,
                   "load_estimate": args.load_estimate,
                   "tokens_per_step": args.tokens_per_step, "top_k": cfg.top_k,
                   "seed": args.seed, "load_model": cfg.__dict__},
        "expert_bytes": EXPERT_BYTES, "default_policy": DEFAULT_POLICY,
        "primary_metric": "balancedness_mean", "higher_is_better": True,
        "total_runtime_s": round(time.perf_counter() - t0, 1),
        "results": results, "targets": targets,
        "fingerprint": fingerprint(config_from_args(args)),
    }
    out.write_text(json.dumps(doc) + "\n")
    _plot(results, out.with_suffix(".png"), args.switch_step)
    print(_table(results))
    print(f"bal: mean balancedness per step (mean over layers); plan-d/plan-s: balancedness "
          f"of the new placement on its own window loads, drift rebalances / right after the "
          f"switch; p5: 5th percentile of bal; "
          f"drift/post: before the switch / after the first rebalance past it; mv%: slots "
          f"moved per rebalance, drift mean/max and max right after the switch; GB/rb: bytes "
          f"per drift rebalance at {EXPERT_BYTES} B per expert")
    for t in targets:
        print(f"[{'met' if t['met'] else 'NOT met'}] {t['shape']}: {t['target']}: {t['value']}")
    print(f"wrote {out} and {out.with_suffix('.png')} ({doc['total_runtime_s']:.0f} s)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("eplb", help="EPLB policies on trace-driven loads: balancedness, slots "
                       "moved, planner time", description=__doc__.splitlines()[0])
    p.add_argument("--traces", type=csv_list(Path), default=None,
                   help=f"trace files (default: every *.json in {DEFAULT_TRACES})")
    p.add_argument("--out", help="result JSON (default: bench/results/eplb.json; the plot goes "
                   "next to it as .png)")
    p.add_argument("--shapes", type=csv_choices(list(SHAPES), "shape"), default=list(SHAPES),
                   help=",".join(SHAPES))
    p.add_argument("--policies", type=csv_choices(POLICIES, "policy"), default=list(POLICIES),
                   help=",".join(POLICIES))
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--switch-step", type=int, default=300, help="workload switch (300)")
    p.add_argument("--step-interval", type=int, default=20, help="steps between rebalances (20)")
    p.add_argument("--window", type=int, default=20, help="steps of loads a rebalance sees (20)")
    from vllm_ascend.eplb.config import EplbConfig
    from vllm_ascend.eplb.forecast import ESTIMATES

    default_estimate = EplbConfig().load_estimate
    p.add_argument("--load-estimate", choices=ESTIMATES, default=default_estimate,
                   help=f"what a rebalance plans for, from its window (eplb/forecast.py; the "
                   f"serving default: {default_estimate})")
    defaults = LoadConfig()
    p.add_argument("--tokens-per-step", type=int, default=defaults.tokens_per_step,
                   help=f"tokens per step ({defaults.tokens_per_step}: one load-recording "
                   "period of many forwards)")
    p.add_argument("--jitter", type=float, default=defaults.jitter,
                   help=f"per-step sd of each expert's log-popularity walk ({defaults.jitter})")
    p.add_argument("--burst-rate", type=float, default=defaults.burst_rate,
                   help=f"hot bursts per layer per step ({defaults.burst_rate})")
    p.add_argument("--burst-factor", type=float, default=defaults.burst_factor,
                   help=f"a burst multiplies one expert's share by this ({defaults.burst_factor})")
    p.add_argument("--timing-repeats", type=int, default=3,
                   help="planner calls per rebalance; its time is their minimum (3: other work "
                   "on the machine inflates single calls)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)
