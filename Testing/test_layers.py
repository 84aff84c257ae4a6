"""The shape of the code: no import cycles, imports inside functions only for heavy optional libraries
(each with a comment saying why), and the Slicer module above its glue.

The layer rules themselves are import-linter contracts in ``pyproject.toml`` (run by ``.ci/run``
with ``lint-imports``); this file checks what those contracts cannot express.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "MedSegExtension"
PACKAGES = ("medseg", "MedSegExtensionLib")


def _modules_and_files() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((EXT / pkg).rglob("*.py")):
            rel = path.relative_to(EXT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    out.append(("MedSegExtension", EXT / "MedSegExtension.py"))
    return out


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    """Between modules, counting every import (top level, in functions, under TYPE_CHECKING); a
    package's ``__init__`` re-exporting its own modules does not count as importing them back."""
    g = grimp.build_graph(*PACKAGES, cache_dir=None)
    graph: dict[str, set[str]] = {}
    for m in g.modules:
        targets = set()
        for t in g.find_modules_directly_imported_by(m):
            if m.startswith(t + "."):  # a module importing its own package's __init__ (re-exports)
                continue
            targets.add(t)
        graph[m] = targets
    assert _strongly_connected(graph) == []


def _function_level_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, has a comment: on the line, or on the line above the block of imports
    it belongs to) for every import inside a function body."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                text = lines[node.lineno - 1]
                k = node.lineno - 2  # the line above the block of imports this one belongs to
                while k >= 0 and lines[k].strip().startswith(("import ", "from ")) and "#" not in lines[k]:
                    k -= 1
                above = lines[k].strip() if k >= 0 else ""
                found.append((node.lineno, name or "", "#" in text or above.startswith("#")))
    return sorted(set(found))


MODULES = dict(_modules_and_files())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_inside_functions_are_heavy_optional_libraries_with_a_reason(module):
    """In the core package, never an import of ``medseg`` inside a function. In the Slicer module and
    its glue, the core may be imported late (Slicer loads the module before the dependency check has
    installed torch), but every such import, like every deferred import of a heavy or optional
    library anywhere, carries a comment saying why."""
    path = MODULES[module]
    in_core = module.startswith("medseg")
    bad = []
    for line, name, commented in _function_level_imports(path):
        if in_core and name.split(".")[0] == "medseg":
            bad.append(f"{path.name}:{line}: imports {name} inside a function (import it at the top)")
        elif not commented:
            bad.append(f"{path.name}:{line}: imports {name} inside a function without a comment saying why")
    assert bad == []


def test_the_glue_never_imports_the_slicer_module():
    for module, path in _modules_and_files():
        if not module.startswith("MedSegExtensionLib"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert "MedSegExtension" not in [n.split(".")[0] for n in names], f"{path.name} imports the module"
