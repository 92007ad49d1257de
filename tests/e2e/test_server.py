"""The README's serve command starts an OpenAI-compatible server through the plugin.

Starts `make serve` (which runs ci/serve.sh: set-up, then `vllm serve` on 127.0.0.1), waits
for /health, and checks completions, chat completions, and that bad requests get vLLM's
normal 4xx answers while the server stays up.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
import requests

from bench.procs import free_port, stop_group
from tests.e2e.conftest import REPO, vllm_env

pytestmark = pytest.mark.e2e

MODEL = "SmolLM2-135M-Instruct"
STARTUP_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    env = vllm_env(PORT=str(port))
    # Serve with the script's own KV-cache default, as a user does (vllm_env sizes it for
    # the other e2e tests).
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    log_path = tmp_path_factory.mktemp("server") / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "serve"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so the whole process tree can be stopped
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                if requests.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-5000:]}")
            time.sleep(2)
        yield base, log_path
    finally:
        stop_group(proc)
        log.close()


def test_plugin_is_active_in_every_server_process(server):
    """The README's promise: each vLLM process (API server, engine core, worker) logs it."""
    _, log_path = server
    text = log_path.read_text()
    line = ("vllm-ascend 0.1.0 active: platform=AscendCPUPlatform (cpu-hosted), "
            "device backend=reference")
    processes = re.findall(r"^\((\w+?)(?:_DP\d+)?(?:-\d+)? pid=(\d+)\).*" + re.escape(line),
                           text, flags=re.M)
    kinds = {kind for kind, _ in processes}
    # The front end logs before vLLM names it "APIServer".
    front, workers = {"APIServer", "MainProcess"}, {"Worker", "VllmWorker"}
    assert kinds & front and "EngineCore" in kinds and kinds & workers, (processes, text[-3000:])
    assert len(kinds) == 3, processes
    assert len(processes) == len(set(processes)), "logged more than once in a process"


def test_serve_sizes_the_kv_cache_itself(server):
    """ci/serve.sh's default (2 GiB) replaces vLLM's 92%-of-node-0 claim."""
    _, log_path = server
    assert "Explicitly set (2.0/" in log_path.read_text()


def test_completions(server):
    base, _ = server
    r = requests.post(
        f"{base}/v1/completions",
        json={"model": MODEL, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].strip()
    assert body["usage"]["completion_tokens"] == 8


def test_chat_completions(server):
    base, _ = server
    r = requests.post(
        f"{base}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]


@pytest.mark.parametrize(
    "path, payload, status",
    [
        ("/v1/completions", {"model": "no-such-model", "prompt": "x"}, 404),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": -2}, 400),
        ("/v1/completions", {"model": MODEL}, 400),
        ("/v1/chat/completions", {"model": MODEL, "messages": "not a list"}, 400),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400),
    ],
    ids=["unknown-model", "negative-max-tokens", "bad-temperature", "no-prompt", "bad-messages", "too-long"],
)
def test_bad_requests_get_4xx(server, path, payload, status):
    base, _ = server
    r = requests.post(f"{base}{path}", json=payload, timeout=60)
    assert r.status_code == status, (r.status_code, r.text)
    assert "error" in r.json()
    # ... and the server is still serving.
    assert requests.get(f"{base}/health", timeout=5).status_code == 200


def test_malformed_json_gets_4xx(server):
    base, _ = server
    r = requests.post(
        f"{base}/v1/completions",
        data="{not json",
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert requests.get(f"{base}/health", timeout=5).status_code == 200
