"""The reference backend's modules import each other without a cycle (module-level and
function-level imports alike: a lazy import inside a function is a cycle all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import vllm_ascend.device.reference as reference

PACKAGE = "vllm_ascend.device.reference"


def imports_of(path: Path) -> set[str]:
    """Sibling modules ``path`` imports (``from PACKAGE import x`` / ``from PACKAGE.x ...``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == PACKAGE:
                found |= {a.name for a in node.names}
            elif node.module.startswith(PACKAGE + "."):
                found.add(node.module[len(PACKAGE) + 1:].split(".")[0])
    return found


def test_reference_modules_form_no_import_cycle():
    root = Path(reference.__file__).parent
    graph = {p.stem: imports_of(p) for p in root.glob("*.py") if p.stem != "__init__"}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
