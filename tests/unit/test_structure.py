"""The project's structure: no import cycle between files, nor between the package's folders
(which import one way, in the layers below), nor between the project's packages; the model
above nothing of ours but itself; the report layered one way; no file over 400 lines, each
opening with what it is for.

Every import statement counts, wherever it stands (module top, inside a function, under
TYPE_CHECKING): a lazy import still ties two files together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "torchgpt"
# The project's Python packages and script folders: everything of ours that imports.
PROJECT = ("torchgpt", "tools", "bench", "tests")

# torchgpt's folders (and top-level modules) by layer: each imports only lower layers. The
# model, parallelism and utils import nothing of ours; the optimizers know the model's shapes;
# the step (its description, the specs, the TrainModule) sits on those; the config validates
# names against the specs; the estimator sits above the step it traces and below training and
# the run lifecycle's callers (auto sizing); the entry point is on top.
LAYERS = {
    "__init__": 0,
    "utils": 0,
    "model": 0,
    "parallel": 0,
    "checkpoint": 1,
    "optim": 1,
    "step": 2,
    "config": 3,
    "data": 4,
    "eval": 5,
    "run": 5,
    "testing": 5,
    "estimation": 6,
    "report": 6,
    "training": 7,
    "train": 8,
}


def _module_file(name: str) -> Path | None:
    """a.b.c -> its file (a/b/c.py or a/b/c/__init__.py) in the project, None elsewhere."""
    parts = name.split(".")
    if parts[0] not in PROJECT:
        return None
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_graph(roots: tuple[str, ...] = ("torchgpt",)) -> dict[Path, set[Path]]:
    graph: dict[Path, set[Path]] = {}
    for path in sorted(p for root in roots for p in (ROOT / root).rglob("*.py")):
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


def _unit(path: Path) -> str:
    """The folder of torchgpt a file belongs to (a top-level module is its own), or the
    project package (tools, bench, tests) for files outside torchgpt."""
    rel = path.relative_to(ROOT)
    if rel.parts[0] != "torchgpt":
        return rel.parts[0]
    return rel.parts[1] if len(rel.parts) > 2 else Path(rel.parts[1]).stem


def unit_graph(graph: dict[Path, set[Path]]) -> dict[Path, set[Path]]:
    """The file graph collapsed to units (as paths, so `cycles` takes it)."""
    units: dict[Path, set[Path]] = {}
    for f, targets in graph.items():
        edges = units.setdefault(Path(_unit(f)), set())
        edges.update(Path(_unit(t)) for t in targets if _unit(t) != _unit(f))
    return units


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
    return sorted(str(p.relative_to(ROOT)) for p in paths)


def test_no_import_cycle_between_files():
    assert [_rel(c) for c in cycles(import_graph(PROJECT))] == []


def test_no_import_cycle_between_folders_or_packages():
    """torchgpt's folders, and torchgpt / tools / bench / tests, import one way."""
    assert [sorted(map(str, c)) for c in cycles(unit_graph(import_graph(PROJECT)))] == []


def test_the_package_imports_nothing_of_the_tools_benchmarks_or_tests():
    graph = import_graph(PROJECT)
    outward = {
        (str(f.relative_to(ROOT)), str(t.relative_to(ROOT)))
        for f, targets in graph.items()
        if PKG in f.parents
        for t in targets
        if PKG not in t.parents
    }
    assert outward == set()


def test_folders_import_only_lower_layers():
    units = unit_graph(import_graph())
    assert {str(u) for u in units} <= set(LAYERS), "a new folder: give it a layer in LAYERS"
    upward = sorted(
        f"{u} (layer {LAYERS[str(u)]}) imports {t} (layer {LAYERS[str(t)]})"
        for u, targets in units.items()
        for t in targets
        if LAYERS[str(t)] >= LAYERS[str(u)]
    )
    assert upward == []


def test_every_file_opens_with_what_it_is_for():
    roots = [PKG, ROOT / "tools", ROOT / "bench"]
    bare = [
        str(p.relative_to(ROOT))
        for root in roots
        for p in root.rglob("*.py")
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert bare == []


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
    roots = [ROOT / name for name in PROJECT]
    long = {
        str(p.relative_to(ROOT)): n
        for root in roots
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}
