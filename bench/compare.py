"""Compare two result files of one benchmark: per configuration and metric, is HEAD a
regression, an improvement or noise against BASE?

Files are ``{"benchmark": ..., "results": [ {...}, ... ]}``. A result's *configuration* is
every field holding a string, integer or boolean (backend, batch_size, model, ...);
results of BASE and HEAD are matched on their whole configuration (``--ignore FIELD``
drops a field from it). Every other number is a *measurement*, and its raw samples are:

1. the list ``<metric>_samples`` if present (``planner_ms_samples`` -> ``planner_ms``);
2. else the list ``samples``, which belongs to the file's ``primary_metric`` when the
   result has that field, otherwise to the result's first float field (``bench moe``'s
   decode rows: ``tokens_per_second``);
3. else the metric's own value: a list of numbers is the samples, a single float is ONE
   sample (too few to decide; a median stored next to its ``samples`` is not re-counted).

By default the metrics compared are those with a samples list (rules 1-3) in both files,
else the ``primary_metric``; ``--metric`` (repeatable) picks others.

Per (configuration, metric): the base and head medians, ratio head/base, a seeded
bootstrap 95% confidence interval of the median ratio (2000 resamples), and a two-sided
Mann-Whitney U p-value (``bench/stats.py``: exact when both sides have <= 20 samples and
no ties, else normal approximation with tie and continuity corrections).

Direction: ``higher_is_better`` in the file, either a map ``{metric: bool}`` or a bool
for the ``primary_metric``; else by name: a name containing ``throughput``, ``tok_s``,
``per_second`` or ``speedup`` is higher-is-better; else ``_ms``, ``_s`` (suffixes),
``latency``, ``ttft``, ``tpot``, ``itl`` are lower-is-better; anything else higher-is-better.

Thresholds: ``bench/thresholds.toml`` (``[default] threshold`` = 0.05, ``[metrics]
name = fraction``; ``--thresholds FILE`` for another). A change is a **regression** when
it is worse than its threshold AND p < 0.05, an **improvement** when better than its
threshold AND p < 0.05, otherwise **noise**.

Fingerprints: when both files carry a ``fingerprint`` object, a difference in machine
fields (``cpu_model``, ``cpu_flags``, ``cores``) or in ``config`` is refused (exit 2)
unless ``--force`` (then the report says so); other differences (versions, commit) are
printed.

Output: a Markdown table on stdout, ``--json FILE`` the same as JSON. Exit status 0 no
regression, 1 at least one regression, 2 invalid input (one line on stderr).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np

from bench import stats

THRESHOLDS_FILE = Path(__file__).resolve().parent / "thresholds.toml"
DEFAULT_THRESHOLD = 0.05
ALPHA = 0.05
# With 3 samples per side even fully separated runs give an exact two-sided Mann-Whitney
# p of 2/20 = 0.1, so nothing could ever be significant at ALPHA; 4 per side reach 2/70.
MIN_SAMPLES = 4
MACHINE_FIELDS = ("cpu_model", "cpu_flags", "cores")
LOWER_IS_BETTER_SUFFIXES = ("_ms", "_s")
LOWER_IS_BETTER_WORDS = ("latency", "ttft", "tpot", "itl")
#: Checked first: ``tok_s`` ends with ``_s`` but is a rate.
HIGHER_IS_BETTER_WORDS = ("throughput", "tok_s", "per_second", "speedup")


class InvalidInput(Exception):
    """Input ``bench compare`` cannot decide on (exit status 2)."""


def is_config(value) -> bool:
    return isinstance(value, (str, int, bool)) and not isinstance(value, float)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_samples(v) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_number(x) for x in v)


def config_key(result: dict, ignore: set[str]) -> tuple:
    return tuple(sorted((k, v) for k, v in result.items() if k not in ignore and is_config(v)))


def load(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInput(f"cannot read result file {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not all(
            isinstance(r, dict) for r in doc["results"]):
        raise InvalidInput(f"{path} is not a bench result file (no 'results' list of objects)")
    return doc


def load_thresholds(path: Path | str | None = None) -> tuple[float, dict[str, float]]:
    """(default threshold, per-metric thresholds) from the toml file."""
    path = Path(path) if path else THRESHOLDS_FILE
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"cannot read thresholds file {path}: {e}") from None
    default = float((doc.get("default") or {}).get("threshold", DEFAULT_THRESHOLD))
    return default, {k: float(v) for k, v in (doc.get("metrics") or {}).items()}


def higher_is_better(metric: str, doc: dict) -> bool:
    declared = doc.get("higher_is_better")
    if isinstance(declared, dict) and isinstance(declared.get(metric), bool):
        return declared[metric]
    if isinstance(declared, bool) and metric == doc.get("primary_metric"):
        return declared
    name = metric.lower()
    if any(w in name for w in HIGHER_IS_BETTER_WORDS):
        return True
    if name.endswith(LOWER_IS_BETTER_SUFFIXES) or any(w in name for w in LOWER_IS_BETTER_WORDS):
        return False
    return True


def samples_owner(result: dict, doc: dict) -> str | None:
    """The metric a result's generic ``samples`` list belongs to (module docstring)."""
    primary = doc.get("primary_metric")
    if primary in result:
        return primary
    return next((k for k, v in result.items() if isinstance(v, float)), primary)


def samples_of(result: dict, metric: str, doc: dict) -> list[float] | None:
    """The raw samples of ``metric`` in one result (module docstring), None if absent."""
    own = result.get(f"{metric}_samples")
    if _is_samples(own):
        return [float(x) for x in own]
    if metric == samples_owner(result, doc) and _is_samples(result.get("samples")):
        return [float(x) for x in result["samples"]]
    value = result.get(metric)
    if _is_samples(value):
        return [float(x) for x in value]
    if isinstance(value, float):
        return [value]
    return None


def metrics_of(result: dict, doc: dict) -> dict[str, bool]:
    """Metric name -> whether it has a samples list, for one result."""
    out: dict[str, bool] = {}
    for k, v in result.items():
        if k == "samples":
            if _is_samples(v) and samples_owner(result, doc):
                out[samples_owner(result, doc)] = True
        elif k.endswith("_samples") and _is_samples(v):
            out[k.removesuffix("_samples")] = True
        elif _is_samples(v):
            out[k] = True
        elif isinstance(v, float):
            out.setdefault(k, False)
    return out


def fingerprint_diff(base: dict, head: dict) -> tuple[list[str], list[str]]:
    """(refused differences: machine fields and config, informational ones)."""
    fb, fh = base.get("fingerprint"), head.get("fingerprint")
    if not isinstance(fb, dict) or not isinstance(fh, dict):
        return [], []
    refused, info = [], []
    for k in sorted(set(fb) | set(fh)):
        if fb.get(k) == fh.get(k):
            continue
        if k in MACHINE_FIELDS or k == "config":
            if k == "config" and isinstance(fb.get(k), dict) and isinstance(fh.get(k), dict):
                cb, ch = fb[k], fh[k]
                refused += [f"config.{c}" for c in sorted(set(cb) | set(ch))
                            if cb.get(c) != ch.get(c)]
            else:
                refused.append(k)
        else:
            info.append(f"{k}: {fb.get(k)!r} -> {fh.get(k)!r}")
    return refused, info


def _label(key: tuple, varying: list[str]) -> str:
    d = dict(key)
    return " ".join(f"{k}={d[k]}" for k in varying if k in d) or "(all)"


def _varying(keys: list[tuple]) -> list[str]:
    """Fields that tell the configurations apart, each kept only if it separates rows the
    earlier ones do not."""
    varying: list[str] = []
    for f in dict.fromkeys(k for key in keys for k, _ in key):
        if len({_label(k, varying + [f]) for k in keys}) > len({_label(k, varying) for k in keys}):
            varying.append(f)
    return varying


def verdict(ratio: float, p: float, higher: bool, threshold: float) -> str:
    change = ratio - 1 if higher else 1 - ratio  # > 0: better
    if p < ALPHA and change < -threshold:
        return "regression"
    if p < ALPHA and change > threshold:
        return "improvement"
    return "noise"


def check_same_benchmark(base: dict, head: dict, names: tuple[str, str]) -> None:
    if base.get("benchmark") != head.get("benchmark"):
        raise InvalidInput(f"different benchmarks: {names[0]} is {base.get('benchmark')!r}, "
                           f"{names[1]} is {head.get('benchmark')!r}")


def compare(base: dict, head: dict, *, metrics: list[str] | None = None,
            ignore: set[str] = frozenset(), thresholds: tuple[float, dict] | None = None,
            names: tuple[str, str] = ("BASE", "HEAD")) -> list[dict]:
    """One row per (common configuration, metric); raises InvalidInput."""
    check_same_benchmark(base, head, names)
    default_t, per_metric = thresholds or load_thresholds()
    bases = {config_key(r, ignore): r for r in base["results"]}
    heads = {config_key(r, ignore): r for r in head["results"]}
    common = [k for k in bases if k in heads]
    if not common:
        raise InvalidInput(f"no common configuration in {names[0]} and {names[1]} "
                           "(configurations match on every string/int/bool field; see --ignore)")
    found: dict[str, bool] = {}
    for k in common:
        mb, mh = metrics_of(bases[k], base), metrics_of(heads[k], head)
        for m in mb.keys() & mh.keys():
            found[m] = found.get(m, False) or (mb[m] and mh[m])
    if metrics:
        missing = [m for m in metrics if m not in found]
        if missing:
            raise InvalidInput(f"metric {', '.join(missing)} not in any configuration common "
                               f"to {names[0]} and {names[1]}")
        chosen = list(metrics)
    else:
        chosen = [m for m in found if found[m]]
        if not chosen:
            primary = head.get("primary_metric")
            chosen = [primary] if primary in found else sorted(found)
    if not chosen:
        raise InvalidInput(f"no common metric in {names[0]} and {names[1]}")
    varying = _varying(common)
    rows = []
    for key in common:
        for m in chosen:
            sb = samples_of(bases[key], m, base)
            sh = samples_of(heads[key], m, head)
            if sb is None or sh is None:
                continue
            label = _label(key, varying)
            if len(sb) < MIN_SAMPLES or len(sh) < MIN_SAMPLES:
                raise InvalidInput(
                    f"too few samples to decide: {m} at {label} has {len(sb)} in {names[0]} "
                    f"and {len(sh)} in {names[1]}; need at least {MIN_SAMPLES} per side")
            mb, mh = float(np.median(sb)), float(np.median(sh))
            ratio = mh / mb if mb else float("nan")
            lo, hi = stats.bootstrap_ratio_ci(sb, sh)
            _, p, method = stats.mann_whitney_u(sh, sb)
            higher = higher_is_better(m, head)
            threshold = per_metric.get(m, default_t)
            rows.append({
                "configuration": label, "metric": m, "base_median": mb, "head_median": mh,
                "ratio": ratio, "ci_low": lo, "ci_high": hi, "p_value": p, "test": method,
                "n_base": len(sb), "n_head": len(sh), "higher_is_better": higher,
                "threshold": threshold, "verdict": verdict(ratio, p, higher, threshold),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| configuration | metric | base median | head median | ratio | 95% CI | p "
             "| verdict |", "|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        v = f"**{r['verdict']}**" if r["verdict"] == "regression" else r["verdict"]
        lines.append(f"| {r['configuration']} | {r['metric']} | {r['base_median']:.4g} | "
                     f"{r['head_median']:.4g} | {r['ratio']:.3f} | "
                     f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['p_value']:.3g} | {v} |")
    return "\n".join(lines)


def _describe(tag: str, doc: dict, path: str) -> str:
    versions = ", ".join(f"{k.removesuffix('_version')} {doc[k]}"
                         for k in ("plugin_version", "vllm_version", "torch_version") if k in doc)
    busy = (doc.get("machine") or {}).get("loadavg_start") or ["?"]
    return f"{tag} `{path}`: {doc.get('date', '?')}  {versions}  (load at start {busy[0]})"


def report(args) -> tuple[list[str], dict, int]:
    """Markdown lines, the JSON document and the exit status; raises InvalidInput."""
    names = (args.old, args.new)
    base, head = load(args.old), load(args.new)
    check_same_benchmark(base, head, names)  # before fingerprints: the clearer message
    refused, info = fingerprint_diff(base, head)
    if refused and not args.force:
        raise InvalidInput(f"fingerprints of {args.old} and {args.new} differ in "
                           f"{', '.join(refused)} (machine/configuration); --force to compare")
    thresholds = load_thresholds(args.thresholds)
    rows = compare(base, head, metrics=args.metric, ignore=set(args.ignore or []),
                   thresholds=thresholds, names=names)
    if not rows:
        raise InvalidInput(f"no configuration has the compared metric(s) in both {args.old} "
                           f"and {args.new}")
    lines = [_describe("BASE", base, args.old) + "  ", _describe("HEAD", head, args.new)]
    if refused:
        lines.append(f"\n**forced** (`--force`): fingerprints differ in {', '.join(refused)}")
    if info:
        lines.append("\nfingerprint differences (not refused): " + "; ".join(info))
    lines += ["", markdown(rows)]
    ratios = sorted(set(base.get("ratios") or {}) & set(head.get("ratios") or {}))
    for name in ratios:
        o, n = base["ratios"][name], head["ratios"][name]
        if _is_number(o) and _is_number(n):
            lines.append(f"\nratio {name}: {o:.3f} -> {n:.3f} ({(n - o) * 100:+.1f} pt)")
    regressions = [r for r in rows if r["verdict"] == "regression"]
    status = 1 if regressions else 0
    doc = {"base": args.old, "head": args.new, "benchmark": head.get("benchmark"),
           "forced": bool(refused), "fingerprint_refused_fields": refused,
           "fingerprint_info": info, "rows": rows, "regressions": len(regressions),
           "exit_status": status}
    return lines, doc, status


def run(args) -> int:
    try:
        lines, doc, status = report(args)
    except InvalidInput as e:
        print(f"bench compare: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return status


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="regression / improvement / noise between two result "
                       "files of one benchmark", description=__doc__.splitlines()[0])
    p.add_argument("old", metavar="BASE.json")
    p.add_argument("new", metavar="HEAD.json")
    p.add_argument("--metric", action="append", metavar="FIELD",
                   help="measurement to compare (repeatable; default: those with samples, "
                   "else the file's primary_metric)")
    p.add_argument("--ignore", action="append", metavar="FIELD",
                   help="leave FIELD out of the configuration match (repeatable)")
    p.add_argument("--thresholds", metavar="FILE",
                   help=f"thresholds toml (default {THRESHOLDS_FILE.name} next to this module)")
    p.add_argument("--json", metavar="FILE", help="also write the comparison as JSON")
    p.add_argument("--force", action="store_true",
                   help="compare even when the fingerprints' machine/config differ")
    p.set_defaults(run=run)
