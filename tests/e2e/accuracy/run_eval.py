"""Run one accuracy config through lm-eval in this process and dump scores per item.

    python -m tests.e2e.accuracy.run_eval --config NAME --model DIR --out FILE.json
        [--base-url http://127.0.0.1:PORT --served-model-name NAME]

Without ``--base-url``: lm-eval's in-process ``vllm`` backend (one engine in this process
tree, through the plugin). With it: lm-eval's ``local-completions`` backend, an OpenAI
client over HTTP against a running ``vllm serve`` (token-id prompts, tokenized by
lm-eval with the checkpoint's tokenizer). Both encode with the tokenizer's own special
tokens, as ``vllm serve`` does for a text prompt: the tiny adder's tokenizer prepends BOS
(its model collapses without it), SmolLM2's adds none. ``local-completions`` needs
``add_bos_token=True`` for that (its default encodes without special tokens); the ``vllm``
backend must *not* get it (it would make vLLM's tokenizer force a BOS, ``<|im_start|>`` for
SmolLM2, and the two backends' prompts would differ).

The JSON: ``{"config", "backend", "seconds", "tasks": {task: {"metrics": {key: value},
"stderr": {key: value}, "n": items, "samples": [{"doc_id", "scores": {metric: value},
"answer": str, "logliks": [float] | null}]}}}``. Tasks come from ``tasks/`` (local JSONL,
no hub access).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tests.e2e.accuracy import config as cfg_mod

TASK_DIR = Path(__file__).with_name("tasks")
REPO = Path(__file__).resolve().parents[3]


def model_args(cfg: cfg_mod.Config, model: str, base_url: str | None,
               served_name: str | None) -> tuple[str, dict]:
    """(lm-eval model type, its model_args) for ``cfg``."""
    if base_url:
        return "local-completions", {
            "model": served_name or model, "base_url": f"{base_url}/v1/completions",
            "tokenizer": model, "tokenizer_backend": "huggingface", "add_bos_token": True,
            "num_concurrent": 4, "max_retries": 2, "timeout": 600,
            "max_length": cfg.max_model_len, "seed": 0,
        }
    args = {
        "pretrained": model, "dtype": "float32", "seed": 0,
        "max_model_len": cfg.max_model_len, "enforce_eager": cfg.enforce_eager,
        "tensor_parallel_size": cfg.tensor_parallel_size,
    }
    if cfg.enable_expert_parallel:
        args["enable_expert_parallel"] = True
    if cfg.max_num_seqs:
        args["max_num_seqs"] = cfg.max_num_seqs
    if cfg.additional_config:
        args["additional_config"] = cfg.additional_config
    # One rank: the worker runs in the engine's process ("uni"); a separate worker process
    # costs ~30 s of start-up here (it imports torch and vLLM again).
    args["distributed_executor_backend"] = "mp" if cfg.tensor_parallel_size > 1 else "uni"
    return "vllm", args


def _answer(sample: dict) -> tuple[str, list[float] | None]:
    """A sample's answer: the generated text, or the chosen option for loglikelihood tasks."""
    resps = sample["filtered_resps"]
    if resps and isinstance(resps[0], (list, tuple)):  # [(loglik, is_greedy), ...]
        logliks = [float(r[0]) for r in resps]
        return str(max(range(len(logliks)), key=logliks.__getitem__)), logliks
    return str(resps[0] if resps else ""), None


def summarize(results: dict, cfg: cfg_mod.Config) -> dict:
    tasks = {}
    for task in cfg.tasks:
        row = results["results"][task.name]
        wanted = {m.name for m in task.metrics}
        metrics = {k: float(v) for k, v in row.items() if k in wanted}
        errs = {}
        for key in wanted:
            metric, _, filt = key.partition(",")
            value = row.get(f"{metric}_stderr,{filt}")
            errs[key] = float(value) if isinstance(value, (int, float)) else float("nan")
        samples = []
        for s in sorted(results["samples"][task.name], key=lambda s: s["doc_id"]):
            answer, logliks = _answer(s)
            scores = {k.partition(",")[0]: float(s[k.partition(",")[0]]) for k in wanted
                      if isinstance(s.get(k.partition(",")[0]), (int, float, bool))}
            samples.append({"doc_id": s["doc_id"], "scores": scores, "answer": answer,
                            "logliks": logliks})
        tasks[task.name] = {"metrics": metrics, "stderr": errs, "n": len(samples),
                            "samples": samples}
    return tasks


def run(cfg: cfg_mod.Config, model: str, base_url: str | None = None,
        served_name: str | None = None) -> dict:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import lm_eval
    from lm_eval.tasks import TaskManager

    kind, args = model_args(cfg, model, base_url, served_name)
    start = time.monotonic()
    os.chdir(REPO)  # task YAMLs name their JSONL files relative to the repository root
    results = lm_eval.simple_evaluate(
        model=kind, model_args=args, tasks=[t.name for t in cfg.tasks],
        num_fewshot=cfg.num_fewshot, limit=cfg.limit, log_samples=True,
        task_manager=TaskManager(include_path=str(TASK_DIR)), bootstrap_iters=1000,
        random_seed=0, numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
        batch_size="auto" if kind == "vllm" else 8,
    )
    return {"config": cfg.name, "backend": kind, "model": model,
            "seconds": round(time.monotonic() - start, 1), "tasks": summarize(results, cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a configs/*.yaml name (no suffix)")
    parser.add_argument("--model", required=True, help="checkpoint directory")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base-url", default=None, help="a running server: local-completions")
    parser.add_argument("--served-model-name", default=None)
    args = parser.parse_args(argv)
    cfg = cfg_mod.load(cfg_mod.CONFIG_DIR / f"{args.config}.yaml")
    report = run(cfg, args.model, args.base_url, args.served_model_name)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
