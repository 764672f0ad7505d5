"""The package's structure: no file-level import cycle, the model above nothing of ours but
itself, the report package layered one way, no file over 400 lines.

Every import statement counts, wherever it stands (module top, inside a function, under
TYPE_CHECKING): a lazy import still ties two files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "torchgpt"


def _module_file(name: str) -> Path | None:
    """torchgpt.a.b -> its file (a/b.py or a/b/__init__.py), None outside the package."""
    parts = name.split(".")
    if parts[0] != "torchgpt":
        return None
    base = PKG.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_graph() -> dict[Path, set[Path]]:
    graph: dict[Path, set[Path]] = {}
    for path in sorted(PKG.rglob("*.py")):
        edges: set[Path] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` names a submodule when pkg/sub.py exists.
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
                targets = [t if _module_file(t) else node.module for t in targets]
            for target in targets:
                file = _module_file(target)
                if file is not None and file != path:
                    edges.add(file)
        graph[path] = edges
    return graph


def cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """Strongly connected components with more than one file (Tarjan)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on_stack: set[Path] = set()
    found: list[list[Path]] = []

    def visit(v: Path) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _rel(paths) -> list[str]:
    return sorted(str(p.relative_to(PKG.parent)) for p in paths)


def test_no_import_cycle_between_files():
    assert [_rel(c) for c in cycles(import_graph())] == []


def test_the_cycle_finder_finds_a_cycle():
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert [sorted(map(str, x)) for x in cycles({a: {b}, b: {c}, c: {a}})] == [
        ["a.py", "b.py", "c.py"]
    ]
    assert cycles({a: {b}, b: {c}, c: set()}) == []


def test_model_imports_only_itself():
    graph = import_graph()
    model = PKG / "model"
    outside = {
        str(t.relative_to(PKG.parent))
        for f, targets in graph.items()
        if model in f.parents
        for t in targets
        if model not in t.parents
    }
    assert outside == set()


def test_report_package_is_layered_one_way():
    layers = {
        "data.py": 0,
        "formatting.py": 1,
        "documents.py": 2,
        "model_card.py": 2,
        "plot.py": 2,
        "build.py": 3,
        "__init__.py": 4,
    }
    report = PKG / "report"
    graph = import_graph()
    assert {p.name for p in report.glob("*.py")} == set(layers)
    for f in report.glob("*.py"):
        for t in graph[f]:
            if report in t.parents:
                assert layers[t.name] < layers[f.name], f"{f.name} imports {t.name}"


def test_files_are_at_most_400_lines():
    roots = (PKG, PKG.parent / "estimation")
    long = {
        str(p.relative_to(PKG.parent)): n
        for root in roots
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
