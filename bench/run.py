"""``bench run [--profile NAME] SUITE... [--out PATH]``: run suites one after another with a
profile's options (``default``: each suite's defaults), a progress line per suite on stderr.

Profiles (``PROFILES``): ``default``; ``nightly``, the options ``make nightly`` runs with to
stay in its 90 minutes: decode, quant-decode and serve eager (no compile at each engine
start; the compiled path's speed is the default profile's, e.g. ``bench ab``), moe's comm
part on 1 and 2 ranks (not 4: two ranks per core here) and its decode part on DeepSeek-V3
only (plugin, vanilla, EP2), eplb-serve two engine runs per mode instead of three, 256
tokens each (~500 decode steps per mode instead of ~1100). The options are part of each
result file's configuration, so ``bench compare`` refuses to compare across profiles.

One suite: PATH is its result file. Several: PATH is a directory that gets ``<suite>.json``
each. Without ``--out`` every suite writes where it does by default (``bench/results/``).
Every suite runs even when an earlier one failed; the exit status is the first non-zero
one (0 when all succeeded).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

#: Suites ``bench run`` accepts, in the order of ``bench --help``.
SUITES = ("decode", "quant-decode", "serve", "moe", "eplb", "eplb-serve", "ops", "shared-weight")
#: Profile -> suite -> extra options (a suite not named runs with its defaults).
PROFILES: dict[str, dict[str, list[str]]] = {
    "default": {},
    "nightly": {
        "decode": ["--enforce-eager"],
        "quant-decode": ["--enforce-eager"],
        "serve": ["--enforce-eager"],
        "moe": ["--worlds", "1,2", "--decode-models", "deepseek_v3"],
        "eplb-serve": ["--repeats", "2", "--output-len", "256"],
    },
}


def suite_list(items: list[str]) -> list[str]:
    """The suites to run, checked: unknown or repeated names raise ArgumentTypeError."""
    bad = [s for s in items if s not in SUITES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown suite(s) {', '.join(bad)}; accepted: {', '.join(SUITES)}")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise argparse.ArgumentTypeError(f"suite(s) given twice: {', '.join(dup)}")
    return items


def out_paths(suites: list[str], out: str | None) -> dict[str, Path | None]:
    """Suite -> its result file (None: the suite's default)."""
    if out is None:
        return dict.fromkeys(suites)
    path = Path(out)
    if len(suites) == 1:
        if path.is_dir():
            raise argparse.ArgumentTypeError(
                f"--out {out} is a directory; with one suite --out is the result file")
        return {suites[0]: path}
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"--out {out} is a file; with several suites --out is a directory")
    return {s: path / f"{s}.json" for s in suites}


def suite_argv(suite: str, out: Path | None, profile: str = "default") -> list[str]:
    return [suite, *PROFILES[profile].get(suite, [])] + ([] if out is None else
                                                         ["--out", str(out)])


def run(args) -> int:
    from bench.__main__ import build_parser  # here: __main__ imports this module

    try:
        suites = suite_list(args.suites)
        outs = out_paths(suites, args.out)
    except argparse.ArgumentTypeError as e:
        print(f"bench run: {e}", file=sys.stderr)
        return 2
    for path in outs.values():
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    parser, status = build_parser(), 0
    for i, suite in enumerate(suites, 1):
        dest = outs[suite] or "its default result file"
        argv = suite_argv(suite, outs[suite], args.profile)
        print(f"[bench] run {i}/{len(suites)}: {' '.join(argv[:-2] if outs[suite] else argv)}"
              f" -> {dest}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        sub = parser.parse_args(argv)
        try:
            code = sub.run(sub)
        except SystemExit as e:  # a suite's own argument / precondition error
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int):
                print(f"bench run: {suite}: {e.code}", file=sys.stderr)
        code = code or 0
        print(f"[bench] {suite}: exit {code} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        status = status or code
    return status


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run suites in sequence with their default options",
                       description=__doc__.splitlines()[0])
    p.add_argument("suites", nargs="+", metavar="SUITE",
                   help=f"one or more of: {', '.join(SUITES)}")
    p.add_argument("--out", metavar="PATH", help="one suite: the result file; several: a "
                   "directory receiving <suite>.json each")
    p.add_argument("--profile", choices=sorted(PROFILES), default="default",
                   help="suite options: default (each suite's own) or nightly (lighter: "
                   "see bench/run.py)")
    p.set_defaults(run=run)
