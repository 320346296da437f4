"""The package's layering, read from its source with ``ast`` (every import, at module level or inside a function).

The rule (README, "Architecture"): the parts of the package come in one order,

    core -> lens -> inference -> analysis -> plot / widgets,   mine and zoo beside analysis,

a part imports only parts below it (or beside it, never both ways), no part imports another part's private
names (a leading underscore, in the module path or the name), and no two modules import each other, directly
or round a longer loop. An import inside a function counts: hiding a cycle there does not remove it.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "zfwidgets"

# the rank of each part: a part may import parts of a lower rank, or of its own rank in one direction only
RANK = {"core": 0, "lens": 1, "inference": 2, "analysis": 3, "mine": 3, "zoo": 3, "plot": 4, "widgets": 4}
# the package's own root modules: ``__init__`` (the public API) imports anything; ``_progress`` is the shared
# progress bar, beneath everything
ROOT_MODULES = {"zfwidgets": 9, "zfwidgets._progress": -1}
# an analysis result's ``.plot()`` calls the plot part: the one upward step, allowed while plot never imports analysis
UPWARD_ALLOWED = {("analysis", "plot")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """The part a module belongs to: ``core`` for ``zfwidgets.core.graph``, ``lens`` for ``zfwidgets.lens``."""
    if module in ROOT_MODULES:
        return module
    return module.split(".")[1]


def _rank(part: str) -> int:
    return ROOT_MODULES.get(part, RANK.get(part, -2))


def _imports():
    """``(importer, imported module, imported name or None)`` for every import of the package's own modules."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    found = []
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "zfwidgets":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    # ``from . import graph`` imports a module; ``from .graph import Graph`` a name
                    found.append((module, sub, None) if sub in modules else (module, target, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "zfwidgets":
                        found.append((module, alias.name, None))
    return modules, found


MODULES, IMPORTS = _imports()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_the_scan_sees_the_package():
    # a scan that found nothing would pass every rule below
    assert {"core", "lens", "inference", "analysis", "mine", "zoo", "plot", "widgets"} <= {
        _part(m) for m in MODULES}
    assert len(IMPORTS) > 100


def test_no_private_name_crosses_parts():
    crossing = []
    for importer, target, name in IMPORTS:
        if _part(importer) == _part(target) or _part(importer) == "zfwidgets":
            continue
        inside = target.split(".")[1:] + ([name] if name else [])
        if any(_is_private(s) for s in inside if s != "_progress"):
            crossing.append(f"{importer} imports {target}{'.' + name if name else ''}")
    assert not crossing, "private names imported across parts:\n" + "\n".join(crossing)


def test_parts_import_downwards_only():
    edges = defaultdict(set)
    for importer, target, _ in IMPORTS:
        a, b = _part(importer), _part(target)
        if a != b:
            edges[a].add(b)
    upward = [f"{a} -> {b}" for a in edges for b in edges[a]
              if _rank(b) > _rank(a) and a != "zfwidgets" and (a, b) not in UPWARD_ALLOWED]
    both_ways = sorted({" <-> ".join(sorted((a, b))) for a in edges for b in edges[a] if a in edges.get(b, ())})
    assert not upward, "imports of a part above the importer:\n" + "\n".join(sorted(upward))
    assert not both_ways, "parts that import each other:\n" + "\n".join(both_ways)


def test_no_module_level_import_cycle():
    graph = defaultdict(set)
    for importer, target, _ in IMPORTS:
        # importing a name from a package runs the package's __init__: an edge to it
        module = target if target in MODULES else target.rsplit(".", 1)[0]
        while module not in MODULES and "." in module:
            module = module.rsplit(".", 1)[0]
        if module != importer and module in MODULES and not importer.startswith(module + "."):
            graph[importer].add(module)
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [])
    assert not cycles, "modules that import each other:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", ["zfwidgets.analysis._inputs", "zfwidgets.inference.chain",
                                    "zfwidgets.analysis.incremental"])
def test_the_removed_copies_stay_removed(module):
    assert module not in MODULES
