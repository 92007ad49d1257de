"""Evaluate a config in fresh processes: ``run_eval`` in-process vLLM, or a server + client.

Each evaluation is its own process tree (the platform and the engine are chosen once per
process). Results are JSON (see ``run_eval``); :func:`evaluate` returns them parsed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.e2e.accuracy import models, server
from tests.e2e.accuracy.config import Config
from tests.e2e.conftest import REPO, vllm_env

EVAL_TIMEOUT_S = 3600
#: One core per rank on this 2-core machine (TP or DP ranks).
TWO_RANKS_BIND = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}


def engine_env(cfg: Config) -> dict[str, str]:
    extra = dict(TWO_RANKS_BIND) if cfg.world_size > 1 else {}
    return vllm_env(**{"VLLM_CPU_KVCACHE_SPACE": "1", **extra, **cfg.env_vars})


def evaluate(cfg: Config, workdir: Path) -> dict:
    """Run ``cfg`` once; its results (with ``log`` pointing at the run's log file)."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = engine_env(cfg)
    model = models.checkpoint(cfg, env)
    out, log_path = workdir / f"{cfg.name}.json", workdir / f"{cfg.name}.log"
    cmd = [sys.executable, "-m", "tests.e2e.accuracy.run_eval", "--config", cfg.name,
           "--model", str(model), "--out", str(out)]
    if cfg.backend == "local-completions":
        vllm_bin = str(Path(sys.executable).with_name("vllm"))
        with server.serving(cfg, model, env, workdir / f"{cfg.name}.serve.log",
                            vllm_bin) as base:
            _run(cmd + ["--base-url", base, "--served-model-name", server.SERVED_NAME],
                 env, log_path)
    else:
        _run(cmd, env, log_path)
    result = json.loads(out.read_text())
    result["log"] = str(log_path)
    return result


def _run(cmd: list[str], env: dict[str, str], log_path: Path) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=EVAL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({proc.returncode}):\n"
                           f"{log_path.read_text()[-6000:]}")
