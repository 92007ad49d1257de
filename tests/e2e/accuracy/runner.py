"""Evaluate a config in fresh processes: ``run_eval`` in-process vLLM, or a server + client.

Each evaluation is its own process tree (the platform and the engine are chosen once per
process). Results are JSON (see ``run_eval``); :func:`evaluate` returns them parsed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.accuracy import models, server
from tests.e2e.accuracy.config import Config
from tests.e2e.conftest import REPO, vllm_env

EVAL_TIMEOUT_S = 3600
#: the EPLB runtime's line per rebalance (``vllm_ascend.eplb.runtime``) and the mover's
#: warning when a transfer failed (its layers then keep their placement)
_REBALANCE = re.compile(r"EPLB: rebalance (\d+) at step (\d+): (\d+) layer\(s\), "
                        r"(\d+) slot\(s\) to move")
_TRANSFER_FAILED = "EPLB: expert transfer for layer(s)"
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
    if eplb_enabled(cfg):
        engine_log = workdir / f"{cfg.name}.serve.log" if cfg.backend == "local-completions" \
            else log_path
        result["eplb"] = eplb_activity(engine_log.read_text(errors="replace"))
        out.write_text(json.dumps(result))  # kept for the report and a reused run
    return result


def eplb_enabled(cfg: Config) -> bool:
    return bool(cfg.additional_config.get("ascend", {}).get("eplb", {}).get("enabled"))


def eplb_activity(log: str) -> dict:
    """What the engine's log says EPLB did: rebalance lines (one per EP rank: every rank
    logs its own), the most slots one rank's rebalances planned to move, failed transfers."""
    slots: dict[str, int] = {}  # logging process -> slots its rebalances moved
    lines = failed = 0
    for line in log.splitlines():
        failed += _TRANSFER_FAILED in line
        m = _REBALANCE.search(line)
        if m:
            lines += 1
            # the logging process: the innermost of the prefixes vLLM puts before the
            # message, e.g. "(EngineCore_DP0 pid=7) (Worker_TP1 pid=9)"
            pids = re.findall(r"pid=(\d+)", line[:m.start()])
            who = pids[-1] if pids else ""
            slots[who] = slots.get(who, 0) + int(m.group(4))
    return {"rebalance_lines": lines, "slots_moved_max_rank": max(slots.values(), default=0),
            "failed_transfers": failed}


def _run(cmd: list[str], env: dict[str, str], log_path: Path) -> None:
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=EVAL_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed ({proc.returncode}):\n"
                           f"{log_path.read_text()[-6000:]}")
