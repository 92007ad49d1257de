"""Pool several result files of one suite (one side of ``bench ab``: the same code run R
times) into one result file that ``bench compare`` takes.

Results are matched on their configuration (``compare.config_key``: every string / int /
bool field); every run must hold the same configurations. Per configuration:

- a list of numbers (``samples``, ``<metric>_samples``, ``latency_ms_samples``, ...) is
  the concatenation over the runs, in run order;
- a number that summarises a samples list (``<metric>`` next to ``<metric>_samples``, the
  ``primary_metric`` next to ``samples``) is the median of the pooled list;
- any other number is the median of its per-run values;
- everything else (strings, nested objects) is the first run's.

The document is the first run's, with ``results`` pooled, ``ratios`` (a ``{name: number}``
map) the median per name, and ``pooled_from`` the run files.
"""

from __future__ import annotations

import statistics

from bench import compare


def _median(values: list):
    nums = [v for v in values if compare._is_number(v)]
    if not nums:
        return values[0]
    m = statistics.median(nums)
    return round(m, 6) if isinstance(m, float) else m


def _pool_result(rows: list[dict], doc: dict) -> dict:
    first = rows[0]
    out = dict(first)
    summarised = set()
    for k, v in first.items():
        if compare._is_samples(v):
            pooled = [x for r in rows for x in (r.get(k) or [])]
            out[k] = pooled
            if k == "samples":
                owner = compare.samples_owner(first, doc)
                if owner and compare._is_number(first.get(owner)):
                    summarised.add(owner)
                    out[owner] = _median(pooled)
            elif k.endswith("_samples"):
                name = k.removesuffix("_samples")
                if compare._is_number(first.get(name)):
                    summarised.add(name)
                    out[name] = _median(pooled)
    for k, v in first.items():
        if k not in summarised and compare._is_number(v) and not compare.is_config(v):
            out[k] = _median([r.get(k) for r in rows])
    return out


def pool(docs: list[dict], names: list[str]) -> dict:
    """One result document from the run documents ``docs`` (file names ``names`` for the
    messages); raises compare.InvalidInput when they are not runs of one configuration."""
    if not docs:
        raise compare.InvalidInput("nothing to pool: no result files")
    first = docs[0]
    for doc, name in zip(docs[1:], names[1:]):
        compare.check_same_benchmark(first, doc, (names[0], name))
    keyed = []
    for doc, name in zip(docs, names):
        rows = {compare.config_key(r, set()): r for r in doc["results"]}
        if len(rows) != len(doc["results"]):
            raise compare.InvalidInput(f"{name} has two results with the same configuration")
        keyed.append(rows)
    for rows, name in zip(keyed[1:], names[1:]):
        if rows.keys() != keyed[0].keys():
            raise compare.InvalidInput(f"{name} does not hold the same configurations as "
                                       f"{names[0]}")
    out = dict(first)
    out["results"] = [_pool_result([rows[key] for rows in keyed], first) for key in keyed[0]]
    ratios = [d.get("ratios") for d in docs]
    if all(isinstance(r, dict) for r in ratios) and ratios[0]:
        out["ratios"] = {k: _median([r.get(k) for r in ratios]) for k in ratios[0]}
    out["pooled_from"] = list(names)
    return out
