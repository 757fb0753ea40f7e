"""The layout is the architecture: stages import only down the pipeline, never in a cycle; notebooks hold no logic."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "coinlib"
#: Stage packages, lowest first: a module may import its own stage or a lower one, never a higher one.
LAYERS = ["core", "perturb", "data", "train", "evaluate", "results", "study", "pipeline"]
#: Beyond the order (docs/stages.md, "Architecture"): stage -> module prefixes it never imports. Evaluation never needs
#: training; results only read outputs and draw: no training, no model inference or loading, no study driver.
FORBIDDEN = {
    "evaluate": ("coinlib.train",),
    "results": ("coinlib.train", "coinlib.study", "coinlib.pipeline", "coinlib.evaluate.runner",
                "coinlib.evaluate.represent", "coinlib.evaluate.lmeval", "coinlib.evaluate.scoring",
                "coinlib.evaluate.__main__", "coinlib.core.models"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every ``coinlib`` import of every module, wherever it stands (top level, in functions, under TYPE_CHECKING)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("coinlib"):
                for alias in node.names:  # `from coinlib.x import y` may name a module y
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.startswith("coinlib")}
        graph[name] = {t for t in targets if t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_imports_point_down_the_pipeline():
    upward = [(src, dst) for src, dsts in import_graph().items() for dst in dsts
              if _layer(src) is not None and _layer(dst) is not None and _layer(dst) > _layer(src)]
    assert upward == []


def forbidden_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """``(module, import)`` pairs that break :data:`FORBIDDEN`."""
    return sorted((src, dst) for src, dsts in graph.items() for dst in dsts
                  if len(src.split(".")) > 1 and any(dst == f or dst.startswith(f + ".")
                                                     for f in FORBIDDEN.get(src.split(".")[1], ())))


def test_evaluate_never_imports_train_and_results_only_read_outputs():
    assert forbidden_imports(import_graph()) == []


def test_forbidden_imports_are_found():
    graph = {"coinlib.evaluate.represent": {"coinlib.train.pooling"}, "coinlib.results.report": {
        "coinlib.evaluate.runner", "coinlib.evaluate.metrics", "coinlib.study.driver"}, "coinlib.study.driver": {
        "coinlib.train.trainer"}}
    assert forbidden_imports(graph) == [("coinlib.evaluate.represent", "coinlib.train.pooling"),
                                        ("coinlib.results.report", "coinlib.evaluate.runner"),
                                        ("coinlib.results.report", "coinlib.study.driver")]


def test_perturb_is_a_leaf_over_core():
    graph = import_graph()
    outside = {(m, d) for m, ds in graph.items() if m.startswith("coinlib.perturb") for d in ds
               if not d.startswith(("coinlib.perturb", "coinlib.core"))}
    assert outside == set()


def test_top_level_holds_at_most_nine_entries():
    entries = [p.name for p in PKG.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 9, entries
    assert {"core", "data", "perturb", "train", "evaluate", "results", "study"} <= set(entries)


def _code(cell: dict) -> str:
    """A code cell's Python, without IPython magics and shell lines."""
    return "".join(line for line in "".join(cell["source"]).splitlines(True)
                   if not line.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebooks_define_no_functions_or_classes(notebook):
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    defined = [node.name for cell in cells for node in ast.walk(ast.parse(_code(cell)))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    assert defined == []
