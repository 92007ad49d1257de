"""Compare two result files of the same benchmark: per-configuration change of a metric.

Generic over ``{"benchmark": ..., "results": [ {...}, ... ]}`` files: a result's
*configuration* is every field holding a string, integer or boolean (backend, batch_size,
model, ...); floats, lists, objects and nulls are measurements. Results of OLD and NEW
are matched on their whole configuration (``--ignore FIELD`` drops a field from it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def is_config(value) -> bool:
    return isinstance(value, (str, int, bool)) and not isinstance(value, float)


def config_key(result: dict, ignore: set[str]) -> tuple:
    return tuple(sorted((k, v) for k, v in result.items() if k not in ignore and is_config(v)))


def load(path: str) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"cannot read result file {path}: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise SystemExit(f"{path} is not a bench result file (no 'results' list)")
    return doc


def _label(key: tuple, varying: list[str]) -> str:
    d = dict(key)
    return " ".join(f"{k}={d[k]}" for k in varying if k in d) or "(all)"


def compare(old: dict, new: dict, metric: str, ignore: set[str]) -> tuple[list[str], int]:
    """Table lines and the number of configurations found in both files."""
    if old.get("benchmark") != new.get("benchmark"):
        raise SystemExit(
            f"different benchmarks: {old.get('benchmark')!r} vs {new.get('benchmark')!r}"
        )
    olds = {config_key(r, ignore): r for r in old["results"]}
    news = {config_key(r, ignore): r for r in new["results"]}
    keys = list(dict.fromkeys([*olds, *news]))
    # Label rows by the fields that tell configurations apart (e.g. backend, batch_size):
    # a varying field is kept only if it separates rows the earlier ones do not.
    varying: list[str] = []
    for f in dict.fromkeys(k for key in keys for k, _ in key):
        if len({_label(k, varying + [f]) for k in keys}) > len({_label(k, varying) for k in keys}):
            varying.append(f)
    if metric == new.get("primary_metric"):
        higher = new.get("higher_is_better", True)
    else:  # latencies (..._ms, ..._s) go down when things improve
        higher = not metric.endswith(("_ms", "_s"))
    w = max([len("configuration")] + [len(_label(k, varying)) for k in keys])
    lines = [f"{'configuration':<{w}} {'old':>10} {'new':>10} {'change':>8}   ({metric})"]
    both = 0
    for key in keys:
        o, n = olds.get(key, {}).get(metric), news.get(key, {}).get(metric)
        if o is None or n is None:
            where = "NEW only" if key not in olds else "OLD only" if key not in news else "no value"
            lines.append(f"{_label(key, varying):<{w}} {where:>10}")
            continue
        both += 1
        change = (n - o) / o * 100 if o else float("nan")
        worse = change < 0 if higher else change > 0
        flag = "  (worse)" if worse and abs(change) >= 3 else ""
        lines.append(f"{_label(key, varying):<{w}} {o:>10.2f} {n:>10.2f} {change:>+7.1f}%{flag}")
    ratios = set(old.get("ratios") or {}) & set(new.get("ratios") or {})
    for name in sorted(ratios) if metric == new.get("primary_metric") else []:
        o, n = old["ratios"][name], new["ratios"][name]
        lines.append(f"{'ratio ' + name:<{w}} {o:>10.3f} {n:>10.3f} {(n - o) * 100:>+6.1f}pt")
    return lines, both


def run(args) -> int:
    old, new = load(args.old), load(args.new)
    metric = args.metric or new.get("primary_metric") or "tokens_per_second"
    lines, both = compare(old, new, metric, set(args.ignore or []))
    for tag, doc, path in (("OLD", old, args.old), ("NEW", new, args.new)):
        versions = ", ".join(
            f"{k.removesuffix('_version')} {doc[k]}"
            for k in ("plugin_version", "vllm_version", "torch_version") if k in doc
        )
        busy = (doc.get("machine") or {}).get("loadavg_start") or ["?"]
        print(f"{tag} {path}: {doc.get('date', '?')}  {versions}  (load at start {busy[0]})")
    print("\n".join(lines))
    if both == 0:
        print(f"nothing compared: no configuration has {metric!r} in both files (configurations "
              "match on every string/int/bool field; see --ignore)", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="change between two result files of one benchmark",
                       description=__doc__.splitlines()[0])
    p.add_argument("old", metavar="OLD.json")
    p.add_argument("new", metavar="NEW.json")
    p.add_argument("--metric", help="result field to compare (default: the file's "
                   "primary_metric, else tokens_per_second)")
    p.add_argument("--ignore", action="append", metavar="FIELD",
                   help="leave FIELD out of the configuration match (repeatable)")
    p.set_defaults(run=run)
