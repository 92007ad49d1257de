"""Greedy generation of an MoE model in a chosen parallel layout; dumps tokens, logprobs and
which MoE classes ran.

    python -m tests.e2e.moe_generate --model DIR --out FILE.json [--eager] [--max-tokens 16]
        [--tp 2] [--ep] [--dp 2] [--additional-config JSON] [--rounds N] [--kill-planner]

TP and EP are vLLM's own flags (``tensor_parallel_size``, ``enable_expert_parallel``). DP
follows vLLM's offline data-parallel recipe: ``--dp N`` starts N copies of this script, one
per DP rank (``VLLM_DP_SIZE`` / ``VLLM_DP_RANK`` / master address), each generating its share
of the prompts (rank r takes prompts r, r+N, ...; the ranks' batches differ, the idle rank
runs vLLM's dummy batches), and merges their results in prompt order. The output has the
same layout as ``tests.e2e.generate`` (``platform``, ``layers``, ``results``) plus ``moe``:
the runner / quant-method class names of the MoE layers (rank 0).

On this machine vLLM CPU needs one ``VLLM_CPU_OMP_THREADS_BIND`` core list per local rank;
for 2 ranks the callers pass ``0|1`` (TP: per TP rank; DP: rank r takes the r-th entry).
With DP x TP vLLM gives DP rank r the entries ``[r * TP, (r + 1) * TP)``, so the list needs
DP * TP entries (``0|1|0|1`` for DP2 x TP2).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.procs import free_port
from tests.e2e.generate import PROMPTS, greedy_results, layer_classes


def moe_classes(model) -> tuple[list[str], list[str]]:
    """Qualified class names of the MoE layers' runners and quant methods, and the names of
    the plugin comm methods they ran (its runners keep one instance per method used)."""
    from vllm.model_executor.layers.fused_moe.runner.moe_runner_interface import (
        MoERunnerInterface,
    )

    names, comms = set(), set()
    for module in model.modules():
        if isinstance(module, MoERunnerInterface):
            for obj in (module, module._quant_method):
                cls = type(obj)
                names.add(f"{cls.__module__}.{cls.__qualname__}")
            comms.update(name for name, _ in getattr(module, "_comms", {}))
    return sorted(names), sorted(comms)


def _memory(model) -> dict:
    """This worker's live tensor bytes (model parameters / buffers and, when layer sharding
    is on, its ring buffers) and the process's resident set (VmRSS), in bytes."""
    from vllm_ascend.shared_weight.sharding import resident_bytes

    out = resident_bytes(model)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
    return out


def _probe(model) -> dict:
    moe, comms = moe_classes(model)
    return {"layers": layer_classes(model), "moe": moe, "comm_methods": comms,
            "memory": _memory(model)}


def _run_dp(args) -> int:
    """Start one copy of this script per DP rank; merge their outputs into ``args.out``."""
    port = free_port()
    procs, outs = [], []
    for rank in range(args.dp):
        out = Path(f"{args.out}.dp{rank}")
        outs.append(out)
        env = dict(os.environ, VLLM_DP_SIZE=str(args.dp), VLLM_DP_RANK=str(rank),
                   VLLM_DP_RANK_LOCAL=str(rank), VLLM_DP_MASTER_IP="127.0.0.1",
                   VLLM_DP_MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "tests.e2e.moe_generate", "--model", args.model,
               "--out", str(out), "--max-tokens", str(args.max_tokens), "--tp", str(args.tp),
               "--dp-rank", str(rank), "--dp-size", str(args.dp)]
        cmd += ["--eager"] * args.eager + ["--ep"] * args.ep
        cmd += ["--rounds", str(args.rounds)] + ["--kill-planner"] * args.kill_planner
        if args.additional_config:
            cmd += ["--additional-config", args.additional_config]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait(timeout=1500) for p in procs]
    if any(codes):
        print(f"DP ranks exited with {codes}", file=sys.stderr)
        return 1
    parts = [json.loads(o.read_text()) for o in outs]
    merged = dict(parts[0])
    by_prompt = {r["prompt"]: r for part in parts for r in part["results"]}
    merged["results"] = [by_prompt[p] for p in PROMPTS]
    merged["eplb"] = [w for part in parts for w in part.get("eplb") or []]
    merged["memory"] = [part["memory"] for part in parts]  # per DP rank
    merged["rounds"] = [[{r["prompt"]: r for part in parts for r in part["rounds"][i]}[p]
                         for p in PROMPTS] for i in range(len(parts[0]["rounds"]))]
    Path(args.out).write_text(json.dumps(merged))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--eager", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--ep", action="store_true", help="enable_expert_parallel")
    parser.add_argument("--dp", type=int, default=1, help="data-parallel ranks to launch")
    parser.add_argument("--dp-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dp-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--additional-config", default=None, help="JSON for additional_config")
    parser.add_argument("--rounds", type=int, default=1,
                        help="generate the prompts this many times (results: the last)")
    parser.add_argument("--kill-planner", action="store_true",
                        help="SIGKILL the EPLB planner process after the first round")
    args = parser.parse_args()
    if args.dp > 1:
        return _run_dp(args)

    from vllm import LLM
    from vllm.platforms import current_platform

    prompts = PROMPTS
    if args.dp_rank is not None:
        prompts = PROMPTS[args.dp_rank::args.dp_size]
    llm = LLM(
        args.model,
        dtype="float32",
        max_model_len=512,
        seed=0,
        enforce_eager=args.eager,
        tensor_parallel_size=args.tp,
        enable_expert_parallel=args.ep,
        additional_config=json.loads(args.additional_config) if args.additional_config else {},
    )
    # Run as __main__, pickle would name this module "__main__", which the workers lack.
    from tests.e2e.moe_generate import _probe as probe
    from vllm_ascend.eplb.runtime import worker_stats as eplb_stats

    rounds = []
    for i in range(args.rounds):
        rounds.append(greedy_results(llm, prompts, args.max_tokens))
        if i == 0 and args.kill_planner:
            import signal

            for stats in llm.collective_rpc(eplb_stats):
                if stats and stats["planner_pid"]:
                    os.kill(stats["planner_pid"], signal.SIGKILL)
                    print(f"killed EPLB planner pid {stats['planner_pid']}", file=sys.stderr)
    results = rounds[-1]

    platform = type(current_platform)
    report = {"platform": f"{platform.__module__}.{platform.__qualname__}",
              **llm.apply_model(probe)[0], "results": results, "rounds": rounds,
              "eplb": [w for w in llm.collective_rpc(eplb_stats) if w is not None]}
    Path(args.out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
