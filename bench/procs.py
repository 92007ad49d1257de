"""Child processes: a free local port for a server or a process group's rendezvous
(:func:`free_port`), and stopping a child started in its own process group
(``start_new_session=True``: bench serve's and the accuracy gate's servers, the server e2e
test, nightly steps over their limit)."""

from __future__ import annotations

import os
import signal
import socket
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
