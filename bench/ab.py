"""``bench ab BASE_REF [HEAD_REF] SUITE``: the per-PR check. Both commits are built in git
worktrees (``bench/worktrees.py``: csrc included, cached per commit), the suite runs on
each, interleaved in one job (base, head, base, head, ...: ``--rounds`` runs per side), each
side's runs are pooled into one result file (``bench/pool.py``), and the two are compared
by ``bench compare`` (Markdown on stdout and in ``compare.md``, JSON in ``compare.json``).

HEAD_REF defaults to ``HEAD`` (the current commit; uncommitted edits are not part of it).
Each run is the commit's own ``python -m bench SUITE --out FILE [--suite-args]``, run from
its worktree with the worktree's ``src`` and root first on PYTHONPATH, so both the plugin
and the suite's code are that commit's. ``--base-env`` / ``--head-env VAR=VALUE`` set a
variable for one side's runs only (the regression demo uses the test-only
``VLLM_ASCEND_TEST_DECODE_SLOWDOWN``).

The output directory (``--out``, default ``bench/results/ab-<suite>-<UTC time>/``) gets
``base-<i>.json`` / ``head-<i>.json`` and their logs, the pooled ``base.json`` and
``head.json``, ``compare.md`` and ``compare.json``.

Exit status: 0 no regression; 1 a regression; 2 invalid input (a ref that is not a commit,
an unknown suite, a bad ``VAR=VALUE``, or results ``bench compare`` cannot decide on);
3 a build or a suite run failed (the message names its log).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import sys
import time
from pathlib import Path

from bench import REPO_ROOT, RESULTS_DIR, compare, pool, run_logged, worktrees
from bench.run import SUITES
from bench.worktrees import AbError, Checkout

SIDES = ("base", "head")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RunFailed(Exception):
    """A build or a suite run failed (exit status 3)."""


def _log(msg: str) -> None:
    print(f"[bench] ab: {msg}", file=sys.stderr, flush=True)


def split_refs(items: list[str]) -> tuple[str, str, str]:
    """``BASE_REF [HEAD_REF] SUITE`` -> (base ref, head ref, suite); the suite is checked."""
    if len(items) == 2:
        base, head, suite = items[0], "HEAD", items[1]
    elif len(items) == 3:
        base, head, suite = items
    else:
        raise AbError(f"expected BASE_REF [HEAD_REF] SUITE, got {len(items)} argument(s): "
                      f"{' '.join(items) or '(none)'}")
    if suite not in SUITES:
        raise AbError(f"unknown suite {suite!r}; accepted: {', '.join(SUITES)}")
    return base, head, suite


def parse_env(items: list[str] | None, option: str) -> dict[str, str]:
    """``VAR=VALUE`` items -> {VAR: VALUE}; AbError naming ``option`` and the bad item."""
    env = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise AbError(f"{option} {item!r} is not VAR=VALUE (VAR a variable name)")
        env[name] = value
    return env


def schedule(rounds: int) -> list[tuple[str, int]]:
    """The runs in order: (side, round number from 1), base and head alternating."""
    if rounds < 1:
        raise AbError(f"--rounds must be >= 1, got {rounds}")
    return [(side, r) for r in range(1, rounds + 1) for side in SIDES]


def suite_command(suite: str, out: Path, suite_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench", suite, "--out", str(out), *suite_args]


def run_suite(checkout: Checkout, suite: str, out: Path, suite_args: list[str],
              env_extra: dict[str, str], label: str, verbose: bool) -> None:
    """One run of ``suite`` on ``checkout`` writing ``out`` (its log next to it); RunFailed
    when it exits non-zero or writes nothing."""
    cmd = suite_command(suite, out, suite_args)
    log_path = out.with_suffix(".run.log")
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# cwd {checkout.path}\n# {' '.join(cmd)}\n")
        code, tail = run_logged(cmd, worktrees.side_env(checkout.path, env_extra), log,
                                verbose, rename=lambda line: f"[bench] {label}: {line[8:]}"
                                if line.startswith("[bench] ") else line, cwd=checkout.path)
    if code or not out.is_file():
        sys.stderr.write("".join(tail[-15:]))
        raise RunFailed(f"{label}: `bench {suite}` exited with status {code} on "
                        f"{checkout.ref} ({checkout.short}); log: {log_path}")


def checkouts(base_ref: str, head_ref: str, workdir: Path,
              repo: Path | None = None) -> dict[str, Checkout]:
    """Both refs resolved in ``repo`` (default: this checkout) before anything is built,
    then built (once when they name the same commit)."""
    repo = repo or REPO_ROOT
    commits = {"base": worktrees.resolve(repo, base_ref, "BASE_REF"),
               "head": worktrees.resolve(repo, head_ref, "HEAD_REF")}
    refs = {"base": base_ref, "head": head_ref}
    built: dict[str, Checkout] = {}
    out = {}
    for side in SIDES:
        c = commits[side]
        if c not in built:
            try:
                built[c] = worktrees.build(repo, refs[side], c, workdir, log=_log)
            except AbError as e:
                raise RunFailed(str(e)) from None
        out[side] = Checkout(refs[side], c, built[c].path)
    if commits["base"] == commits["head"]:
        _log(f"BASE_REF and HEAD_REF are the same commit ({commits['base'][:7]}): an A/A run, "
             "both sides on one build")
    return out


def ab(args) -> int:
    base_ref, head_ref, suite = split_refs(args.refs)
    envs = {"base": parse_env(args.base_env, "--base-env"),
            "head": parse_env(args.head_env, "--head-env")}
    suite_args = shlex.split(args.suite_args or "")
    if "--out" in suite_args:
        raise AbError("--suite-args must not contain --out: bench ab names the result files")
    order = schedule(args.rounds)
    workdir = Path(args.workdir) if args.workdir else worktrees.default_workdir()
    stamp = dt.datetime.now(dt.timezone.utc)
    out_dir = Path(args.out) if args.out else RESULTS_DIR / f"ab-{suite}-{stamp:%Y%m%d-%H%M%S}"
    sides = checkouts(base_ref, head_ref, workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {s: [] for s in SIDES}
    t0 = time.perf_counter()
    for i, (side, rnd) in enumerate(order, 1):
        c = sides[side]
        label = f"{i}/{len(order)} {side} {c.short}"
        extra = f" with {' '.join(f'{k}={v}' for k, v in envs[side].items())}" if envs[side] else ""
        _log(f"run {label}: bench {suite} {' '.join(suite_args)}{extra} "
             f"({time.perf_counter() - t0:.0f} s so far)")
        path = out_dir / f"{side}-{rnd}.json"
        run_suite(c, suite, path, suite_args, envs[side], label, args.verbose)
        files[side].append(path)
    pooled = {}
    for side in SIDES:
        docs = [compare.load(str(p)) for p in files[side]]
        doc = pool.pool(docs, [p.name for p in files[side]])
        doc["ab"] = {"side": side, "ref": sides[side].ref, "commit": sides[side].commit,
                     "env": envs[side], "rounds": args.rounds, "order": [
                         f"{s}-{r}" for s, r in order], "suite_args": suite_args}
        pooled[side] = out_dir / f"{side}.json"
        pooled[side].write_text(json.dumps(doc, indent=2) + "\n")
    cmp_args = argparse.Namespace(old=str(pooled["base"]), new=str(pooled["head"]),
                                  metric=args.metric, ignore=args.ignore,
                                  thresholds=args.thresholds, force=False, json=None)
    lines, cmp_doc, status = compare.report(cmp_args)
    header = (f"bench ab {suite}: base {base_ref} ({sides['base'].short}) vs head {head_ref} "
              f"({sides['head'].short}), {args.rounds} run(s) per side interleaved "
              f"({', '.join(f'{s}-{r}' for s, r in order)}), {time.perf_counter() - t0:.0f} s")
    env_lines = [f"{side} env: {' '.join(f'{k}={v}' for k, v in envs[side].items())}"
                 for side in SIDES if envs[side]]
    text = "\n".join([header, *env_lines, "", *lines])
    print(text)
    (out_dir / "compare.md").write_text(text + "\n")
    cmp_doc["ab"] = {"suite": suite, "rounds": args.rounds, "suite_args": suite_args,
                     **{side: {"ref": sides[side].ref, "commit": sides[side].commit,
                               "env": envs[side], "runs": [p.name for p in files[side]]}
                        for side in SIDES}}
    (out_dir / "compare.json").write_text(json.dumps(cmp_doc, indent=2) + "\n")
    _log(f"results in {out_dir}")
    return status


def run(args) -> int:
    try:
        return ab(args)
    except (AbError, compare.InvalidInput) as e:
        print(f"bench ab: {e}", file=sys.stderr)
        return 2
    except RunFailed as e:
        print(f"bench ab: {e}", file=sys.stderr)
        return 3


def add_parser(sub) -> None:
    p = sub.add_parser("ab", help="build two commits in worktrees, run a suite on them "
                       "interleaved, compare", description=__doc__.split("\n\n")[0],
                       usage="%(prog)s BASE_REF [HEAD_REF] SUITE [options]")
    p.add_argument("refs", nargs="+", metavar="BASE_REF [HEAD_REF] SUITE",
                   help=f"two commits (HEAD_REF default HEAD) and one of: {', '.join(SUITES)}")
    p.add_argument("--rounds", type=int, default=2,
                   help="runs per side, interleaved base, head, base, head, ... (2)")
    p.add_argument("--suite-args", metavar="'ARGS'",
                   help="options for every run of the suite, one string: "
                   "--suite-args='--which plugin --enforce-eager'")
    p.add_argument("--base-env", action="append", metavar="VAR=VALUE",
                   help="environment variable for the base runs only (repeatable)")
    p.add_argument("--head-env", action="append", metavar="VAR=VALUE",
                   help="environment variable for the head runs only (repeatable)")
    p.add_argument("--out", metavar="DIR",
                   help="output directory (default bench/results/ab-<suite>-<UTC time>/)")
    p.add_argument("--workdir", metavar="DIR", help="where the per-commit worktrees are "
                   "built and kept (default ~/.cache/vllm-ascend/ab)")
    p.add_argument("--metric", action="append", metavar="FIELD",
                   help="passed to bench compare (repeatable)")
    p.add_argument("--ignore", action="append", metavar="FIELD",
                   help="passed to bench compare (repeatable)")
    p.add_argument("--thresholds", metavar="FILE", help="passed to bench compare")
    p.add_argument("-v", "--verbose", action="store_true", help="echo the runs' whole output")
    p.set_defaults(run=run)
