"""``bench ab``'s checkouts: resolve git refs to commits, build each commit once in its own
git worktree (the C++ extensions in ``csrc/`` included), reuse it afterwards.

A worktree lives at ``<workdir>/<commit>`` (``workdir`` default ``$VLLM_ASCEND_CACHE/ab``,
i.e. ``~/.cache/vllm-ascend/ab``). A commit never changes, so a worktree whose build
finished (the stamp file :data:`STAMP` holds the commit) is reused as it is; one without
the stamp (an interrupted build) is removed and made again. The build is the one of
``setup.py``: ``python setup.py build_ext --inplace`` with this interpreter, which puts
``_C*.so`` (x86 only) and ``_eplb*.so`` into the worktree's ``src/vllm_ascend``; its output
goes to ``<worktree>/.bench-ab-build.log``. With ``VLLM_ASCEND_SKIP_CSRC=1`` setup.py builds
nothing and no library is required.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

STAMP = ".bench-ab-built"
BUILD_LOG = ".bench-ab-build.log"


class AbError(Exception):
    """A ``bench ab`` input or step that cannot go on (bad ref, failed build); the message
    says which."""


@dataclass(frozen=True)
class Checkout:
    """One side's code: the ref as given, its full commit, its worktree."""

    ref: str
    commit: str
    path: Path

    @property
    def short(self) -> str:
        return self.commit[:7]


def default_workdir() -> Path:
    from vllm_ascend.tools.prepare_model import cache_dir

    return cache_dir() / "ab"


def _git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise AbError(f"git {' '.join(args)} failed in {repo}: {e}") from None
    if check and proc.returncode:
        raise AbError(f"git {' '.join(args)} failed in {repo}: "
                      f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def resolve(repo: Path, ref: str, what: str) -> str:
    """The full commit ``ref`` names in ``repo``; AbError naming ``what`` (BASE_REF,
    HEAD_REF) and the ref when it is not a commit."""
    if not ref or ref.startswith("-"):
        raise AbError(f"{what} {ref!r} is not a git ref")
    proc = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    commit = proc.stdout.strip()
    if proc.returncode or not commit:
        raise AbError(f"{what} {ref!r} is not a commit in {repo} (try `git log --oneline` "
                      "for commits, `git branch -a` for branches)")
    return commit


def required_libraries() -> list[str]:
    """Glob patterns of the extensions setup.py builds on this machine (module docstring)."""
    if os.environ.get("VLLM_ASCEND_SKIP_CSRC", "") in ("1", "true", "yes"):
        return []
    libs = ["_eplb*.so"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        libs.insert(0, "_C*.so")
    return libs


def is_built(path: Path, commit: str) -> bool:
    stamp = path / STAMP
    return stamp.is_file() and stamp.read_text().strip() == commit


def _remove(repo: Path, path: Path) -> None:
    _git(repo, "worktree", "remove", "--force", str(path), check=False)
    if path.exists():
        shutil.rmtree(path)
    _git(repo, "worktree", "prune", check=False)


def build(repo: Path, ref: str, commit: str, workdir: Path, log=print) -> Checkout:
    """The built worktree of ``commit`` under ``workdir`` (made and built unless it already
    is). AbError when the checkout or the build fails, naming the log."""
    path = workdir / commit
    if is_built(path, commit):
        log(f"{ref} ({commit[:7]}): reusing the built worktree {path}")
        return Checkout(ref, commit, path)
    if path.exists():
        log(f"{ref} ({commit[:7]}): removing an unfinished worktree {path}")
        _remove(repo, path)
    workdir.mkdir(parents=True, exist_ok=True)
    _git(repo, "worktree", "add", "--detach", "--force", str(path), commit)
    if not (path / "setup.py").is_file():
        raise AbError(f"{ref} ({commit[:7]}) has no setup.py: not a vllm-ascend commit "
                      "bench ab can build")
    log(f"{ref} ({commit[:7]}): building csrc/ in {path} (a minute or two)")
    with open(path / BUILD_LOG, "w", encoding="utf-8") as out:
        code = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                              cwd=path, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        raise AbError(f"building {ref} ({commit[:7]}) failed (exit {code}); log: "
                      f"{path / BUILD_LOG}")
    pkg = path / "src" / "vllm_ascend"
    missing = [g for g in required_libraries() if not list(pkg.glob(g))]
    if missing:
        raise AbError(f"building {ref} ({commit[:7]}) left no {', '.join(missing)} in {pkg}; "
                      f"log: {path / BUILD_LOG}")
    (path / STAMP).write_text(commit + "\n")
    return Checkout(ref, commit, path)


def side_env(checkout: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a suite run on ``checkout``: its ``src`` and root first on
    PYTHONPATH (ahead of any installed vllm_ascend / bench), no torch.compile cache shared
    between the sides, then ``extra`` (``--base-env`` / ``--head-env``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [
        str(checkout / "src"), str(checkout), os.environ.get("PYTHONPATH")]))
    # Both sides compile the same model files: vLLM's cache key would not tell their
    # plugin code apart.
    env["VLLM_DISABLE_COMPILE_CACHE"] = "1"
    env.update(extra)
    return env
