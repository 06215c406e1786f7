"""The shape of the house, checked: one reader, one comparison module, no import cycle, only the UI
adapter imports streamlit. Each would otherwise drift back one convenient shortcut at a time."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "subnetviz"


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every subnetviz module ``path`` imports, at top level or inside functions (from-imports of a
    name that is itself a module count as that module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("subnetviz")}
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("subnetviz") and node.level == 0
        ):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m in known}


def test_no_import_cycle_inside_the_package():
    mods = _modules()
    graph = {m: _imports(p, set(mods)) - {m} for m, p in mods.items()}
    # A package's __init__ re-exporting its submodules is not a cycle of the code's own dependencies.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d) :] + [d])
            elif d not in state:
                visit(d, [*stack, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_only_the_ui_adapter_imports_streamlit():
    offenders = [
        str(p.relative_to(PKG.parent))
        for m, p in _modules().items()
        if re.search(r"^\s*(import streamlit|from streamlit)", p.read_text(), re.M)
        # the adapter, and the web app's launcher (streamlit run after warming the pages' imports)
        and not (m in ("subnetviz.ui", "subnetviz.serve") or m.startswith("subnetviz.ui."))
    ]
    assert not offenders, offenders


def test_one_safetensors_reader_and_one_bit_comparison():
    readers = {str(p.relative_to(PKG)) for p in PKG.rglob("*.py") if "safe_open" in p.read_text()}
    # weights through checkpoints/; mask files (their own format) through masks.py and their headers in selection.py
    assert readers <= {"checkpoints/sources.py", "masks.py", "selection.py"}, readers
    int_views = {
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if re.search(r"view\(torch\.int(16|32)\)|INT_VIEW = ", p.read_text())
    }
    assert int_views == {"analysis/bits.py"}, int_views
    # the thresholds and ULP bins: one definition, torch-free (bits.py re-exports them)
    numbers = {
        str(p.relative_to(PKG))
        for p in PKG.rglob("*.py")
        if re.search(r"DEFAULT_TOLERANCES = |ULP_EDGES = ", p.read_text())
    }
    assert numbers == {"analysis/thresholds.py"}, numbers
