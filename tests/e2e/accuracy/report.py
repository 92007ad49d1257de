"""Judge evaluation results against their configs and write the Markdown report.

    python -m tests.e2e.accuracy.report RESULTS_DIR   # re-renders RESULTS_DIR/report.md

A row per (config, task, metric): value, lm-eval's stderr, items, the gate, what it was
held against, pass/fail.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.accuracy import gates
from tests.e2e.accuracy.config import Config, load_all


@dataclass(frozen=True)
class Row:
    config: str
    backend: str
    task: str
    metric: str
    value: float
    stderr: float
    n: int
    gate: str
    verdict: gates.Verdict


def _item_scores(result: dict, task: str, metric: str) -> dict[int, float]:
    key = metric.partition(",")[0]
    return {s["doc_id"]: s["scores"][key] for s in result["tasks"][task]["samples"]}


def _answers(result: dict, task: str) -> dict[int, str]:
    return {s["doc_id"]: s["answer"] for s in result["tasks"][task]["samples"]}


def judge(cfg: Config, result: dict, reference: dict | None = None) -> list[Row]:
    """Rows for ``cfg``'s metrics; ``reference`` is the reference config's result."""
    rows = []
    for task in cfg.tasks:
        got = result["tasks"][task.name]
        for metric in task.metrics:
            value = got["metrics"][metric.name]
            if cfg.gate != "expected" and reference is None:
                raise ValueError(f"{cfg.name}: gate {cfg.gate!r} needs the result of "
                                 f"{cfg.reference!r}")
            if cfg.gate == "expected":
                verdict = gates.check_expected(value, metric.value, metric.tolerance)
            elif cfg.gate == "equal":  # check_equal judges which items may be compared
                verdict = gates.check_equal(_answers(result, task.name),
                                            _answers(reference, task.name))
            else:
                mine = _item_scores(result, task.name, metric.name)
                theirs = _item_scores(reference, task.name, metric.name)
                if not mine or set(mine) != set(theirs):
                    verdict = gates.Verdict(False, value, float("nan"),
                                            f"items differ from {cfg.reference}")
                else:
                    ref_value = reference["tasks"][task.name]["metrics"][metric.name]
                    verdict = gates.check_reference([mine[d] for d in sorted(mine)],
                                                    ref_value, metric.tolerance)
            rows.append(Row(cfg.name, result["backend"], task.name, metric.name, value,
                            got["stderr"].get(metric.name, float("nan")), got["n"], cfg.gate,
                            verdict))
    return rows


def markdown(rows: list[Row], configs: dict[str, Config]) -> str:
    lines = ["# Accuracy gates", "",
             "| config | backend | task | metric | value | stderr | n | gate | held against "
             "| detail | result |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = configs.get(r.config)
        against = (f"{r.verdict.bound:.4f}" if r.gate != "equal" else
                   f"{cfg.reference if cfg else '?'} answers")
        if r.gate == "reference" and cfg:
            against = f"{cfg.reference} - tol = {r.verdict.bound:.4f}"
        lines.append(f"| {r.config} | {r.backend} | {r.task} | {r.metric} | {r.value:.4f} | "
                     f"{r.stderr:.4f} | {r.n} | {r.gate} | {against} | {r.verdict.detail} | "
                     f"{'pass' if r.verdict.passed else '**FAIL**'} |")
    return "\n".join(lines) + "\n"


def render(results_dir: Path) -> Path:
    """Judge every ``<config>.json`` in ``results_dir``; write ``report.md`` there."""
    configs = load_all()
    results = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))
               if p.stem in configs}
    rows = []
    for name, result in results.items():
        cfg = configs[name]
        ref = results.get(cfg.reference) if cfg.reference else None
        if cfg.gate != "expected" and ref is None:
            continue
        rows += judge(cfg, result, ref)
    eplb = [f"- {name}: {r['eplb']['slots_moved_max_rank']} slot(s) moved (most on one rank, "
            f"{r['eplb']['rebalance_lines']} rebalance line(s) over the ranks), "
            f"{r['eplb']['failed_transfers']} failed transfer(s)"
            for name, r in results.items() if "eplb" in r]
    out = results_dir / "report.md"
    out.write_text(markdown(rows, configs)
                   + ("\n## EPLB activity (engine logs)\n\n" + "\n".join(eplb) + "\n"
                      if eplb else ""))
    return out


if __name__ == "__main__":
    print(render(Path(sys.argv[1])))
