"""``bench ops``: per-operator microbenchmarks (``bench/ops/test_kernels.py``) through
pytest-benchmark, converted into a bench result file (``bench/ops/convert.py``).

Runs ``python -m pytest`` on the benchmark file ``--runs`` times, each in a fresh child
process with pytest-benchmark's JSON output (raw timings kept), then writes
``{"benchmark": "ops", ...}`` with one result per (op, shape, variant) whose samples are one
value per run, its minimum or median (``bench/ops/convert.py`` says why the rounds of one
run are not independent samples) and the fingerprint. Exit status: pytest's when a run fails (1 tests
failed, 4 usage error, 5 nothing selected), else 0.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import RESULTS_DIR, machine_info
from bench.fingerprint import config_from_args, fingerprint
from bench.ops.convert import ConversionError, convert

BENCH_FILE = Path(__file__).resolve().parent / "test_kernels.py"
#: The directory holding the ``bench`` package (the repository root, or site-packages).
PACKAGE_PARENT = BENCH_FILE.parents[2]


def pytest_command(args, json_path: Path) -> list[str]:
    """The child's command line: the benchmark file, pytest-benchmark's options from ``args``."""
    cmd = [sys.executable, "-m", "pytest", str(BENCH_FILE), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(PACKAGE_PARENT), "-o", "addopts=",
           f"--benchmark-json={json_path}", "--benchmark-save-data",
           f"--benchmark-min-rounds={args.rounds}", f"--benchmark-max-time={args.max_time}",
           "--benchmark-sort=name"]
    cmd += (["--benchmark-warmup=on", f"--benchmark-warmup-iterations={args.warmup}"]
            if args.warmup else ["--benchmark-warmup=off"])
    if args.filter:
        cmd += ["-k", args.filter]
    return cmd


def run(args) -> int:
    if args.runs < 1 or args.rounds < 1 or args.max_time <= 0 or args.warmup < 0:
        raise SystemExit("bench ops: --runs and --rounds must be >= 1, --max-time > 0, "
                         "--warmup >= 0")
    stamp = dt.datetime.now(dt.timezone.utc)
    out = Path(args.out) if args.out else RESULTS_DIR / f"ops-{stamp:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")])))
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        raws = [Path(tmp) / f"pytest-benchmark-{i}.json" for i in range(args.runs)]
        for i, raw in enumerate(raws):
            cmd = pytest_command(args, raw)
            shown = f": {' '.join(cmd[1:])}" if i == 0 or args.verbose else ""
            print(f"[bench] ops: run {i + 1}/{args.runs}{shown}", file=sys.stderr, flush=True)
            code = subprocess.run(cmd, env=env, cwd=PACKAGE_PARENT,
                                  stdout=None if args.verbose else subprocess.DEVNULL).returncode
            if code:
                print(f"bench ops: pytest exited with status {code} in run {i + 1} "
                      "(-v shows its output)", file=sys.stderr)
                return code
        try:
            doc = convert([json.loads(raw.read_text()) for raw in raws],
                          fingerprint=fingerprint(config_from_args(args)), per_run=args.per_run)
        except (OSError, json.JSONDecodeError, ConversionError) as e:
            print(f"bench ops: cannot convert pytest-benchmark's output: {e}", file=sys.stderr)
            return 2
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    doc["machine"] = machine
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out} ({len(doc['results'])} results)")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("ops", help="per-operator microbenchmarks (reference backend, csrc "
                       "kernels) via pytest-benchmark", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="result JSON (default: bench/results/ops-<UTC time>.json)")
    p.add_argument("--runs", type=int, default=5,
                   help="pytest processes, one sample per benchmark each "
                   "(5; `bench compare` needs >= 4)")
    p.add_argument("--per-run", choices=("min", "median"), default="min",
                   help="a run's sample: the minimum (default: other jobs only slow rounds "
                   "down) or the median of its rounds")
    p.add_argument("--rounds", type=int, default=5,
                   help="minimum timed rounds per benchmark and run (5)")
    p.add_argument("--max-time", type=float, default=0.2,
                   help="seconds per benchmark and run beyond the minimum rounds (0.2)")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed warm-up calls per benchmark (2: first calls build caches)")
    p.add_argument("-k", dest="filter", metavar="EXPR",
                   help="pytest -k expression selecting benchmarks (e.g. grouped_matmul)")
    p.add_argument("-v", "--verbose", action="store_true", help="show pytest's output")
    p.set_defaults(run=run)
