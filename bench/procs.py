"""Stopping a child process started in its own process group (``start_new_session=True``):
bench serve's and the accuracy gate's servers, the server e2e test, nightly steps over their limit."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_group(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM ``proc``'s process group, SIGKILL after ``grace_s`` seconds; then reap it."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
