"""Where a decode step's time goes: torch.profiler around greedy decoding, ops grouped.

``python -m bench.step_profile --model DIR [--batch 1] [--tokens 64] [--enforce-eager]``

Runs vLLM in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and the ``uni`` executor:
the profiler sees the model's ops; vLLM's OMP core binding is not applied), warms up, then profiles one ``generate`` of ``--batch``
prompts x ``--tokens`` new tokens. Per decode step it reports the wall time and the ops'
self CPU time by group (int8 / int4 GEMMs of the quantized schemes, activation quantization,
float matmuls, which include the lm_head, attention, everything else), and the remainder:
wall time no op accounts for (Python, vLLM's scheduler, sampler bookkeeping). Prints a table,
the top ops, and writes JSON (``--out``, default ``bench/results/step-profile-<time>.json``).
A profile, not a benchmark: the profiler adds its own overhead per op.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path

from bench import RESULTS_DIR

#: Group -> op-name pattern (first match wins; op names as torch.profiler reports them).
GROUPS = [
    ("int8 GEMM (W8A8)", r"onednn_scaled_mm|i8_matmul|ref_int8_mm"),
    ("int4/int8 weight-only GEMM", r"wq_matmul|ref_wq|wq_dequant"),
    ("activation quant", r"dynamic_quant"),
    ("float matmul (incl. lm_head)", r"^aten::(mm|addmm|bmm|matmul|linear)$|^_C::onednn_mm$"),
    ("attention", r"attn|attention|paged|cpu_attention"),
]


def _group(name: str) -> str:
    for group, pattern in GROUPS:
        if re.search(pattern, name):
            return group
    return "other ops"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.step_profile",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # Engine core and worker in this process (vLLM CPU otherwise forces the mp executor).
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import torch
    from torch.profiler import ProfilerActivity, profile
    from vllm import LLM, SamplingParams

    llm = LLM(args.model, dtype="float32", max_model_len=512, seed=0,
              enforce_eager=args.enforce_eager, distributed_executor_backend="uni")
    prompts = ["The quick brown fox"] * args.batch
    params = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        wall = time.perf_counter() - start
    steps = args.tokens
    groups: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        if event.self_cpu_time_total <= 0:
            continue
        group = _group(event.key)
        groups[group] = groups.get(group, 0.0) + event.self_cpu_time_total / 1e3
        ops.append((event.self_cpu_time_total / 1e3, event.count, event.key, group))
    ops.sort(reverse=True)
    step_ms = wall * 1e3 / steps
    rows = {g: round(ms / steps, 3) for g, ms in sorted(groups.items(), key=lambda kv: -kv[1])}
    accounted = sum(rows.values())
    print(f"{args.model}: batch {args.batch}, {steps} steps, {step_ms:.2f} ms per step "
          f"(torch threads {torch.get_num_threads()})")
    print(f"{'group':<32} {'ms/step':>8} {'share':>6}")
    for g, ms in rows.items():
        print(f"{g:<32} {ms:8.3f} {ms / step_ms:6.1%}")
    print(f"{'(not in any op: Python, vLLM)':<32} {step_ms - accounted:8.3f} "
          f"{(step_ms - accounted) / step_ms:6.1%}")
    print(f"\ntop {args.top} ops by self CPU time:")
    for ms, count, key, group in ops[:args.top]:
        print(f"  {ms / steps:8.3f} ms/step  {count // steps:5d} calls/step  {key}  [{group}]")
    out = args.out or RESULTS_DIR / f"step-profile-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": str(args.model), "batch": args.batch, "steps": steps,
        "enforce_eager": args.enforce_eager, "step_ms": round(step_ms, 3),
        "groups_ms_per_step": rows, "unaccounted_ms_per_step": round(step_ms - accounted, 3),
        "top_ops": [{"op": k, "ms_per_step": round(ms / steps, 4), "calls": c, "group": g}
                    for ms, c, k, g in ops[:50]],
    }, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
