"""``vllm serve`` through the plugin for the ``local-completions`` backend.

:func:`serving` starts the server in its own process group on a free 127.0.0.1 port with the
config's engine flags, waits for ``/health``, yields the base URL and stops the whole tree.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from bench.procs import free_port, stop_group
from tests.e2e.accuracy.config import Config

STARTUP_TIMEOUT_S = 900
SERVED_NAME = "accuracy-model"


def serve_command(cfg: Config, model: Path, port: int, vllm_bin: str) -> list[str]:
    cmd = [vllm_bin, "serve", str(model), "--served-model-name", SERVED_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", str(cfg.max_model_len), "--seed", "0"]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if cfg.max_num_seqs:
        cmd += ["--max-num-seqs", str(cfg.max_num_seqs)]
    if cfg.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel_size)]
    if cfg.data_parallel_size > 1:
        cmd += ["--data-parallel-size", str(cfg.data_parallel_size)]
    if cfg.enable_expert_parallel:
        cmd.append("--enable-expert-parallel")
    if cfg.additional_config:
        cmd += ["--additional-config", json.dumps(cfg.additional_config)]
    return cmd


@contextlib.contextmanager
def serving(cfg: Config, model: Path, env: dict[str, str], log_path: Path,
            vllm_bin: str) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT``) of a healthy server for ``cfg``."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(serve_command(cfg, model, port, vllm_bin), env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n"
                                       f"{log_path.read_text()[-5000:]}")
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve not healthy in {STARTUP_TIMEOUT_S}s:\n"
                                       f"{log_path.read_text()[-5000:]}")
                time.sleep(1)
            yield base
        finally:
            stop_group(proc)
