"""The import graph of spkcausal, function-local imports included, has no cycle.

import-linter's layer contracts see only the edges between layers; a cycle between two modules of one
subpackage hides behind an import placed inside a function. This test parses every module with `ast`,
resolves relative imports, counts imports at any depth (module level, functions, methods) and fails on
any strongly connected component of more than one module, printing one cycle per component.

Run as a script (`python tests/test_import_graph.py`) it also prints the counts quoted in issue 27:
function-local imports outside `cli/` and private names (`_x`) imported across modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "spkcausal"


def _module_names() -> dict[str, Path]:
    """Dotted name -> file for every module of the package (a package is its __init__)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _resolve_from(node: ast.ImportFrom, here: str, modules: dict[str, Path]) -> str:
    """Absolute module named by `from X import ...` in module `here`."""
    if node.level == 0:
        return node.module or ""
    base = here.split(".") if _is_package(here, modules) else here.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest module of the package that `name` lies in (None outside spkcausal)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _Visitor(ast.NodeVisitor):
    """Collects (target module, imported name or None, inside a function) for every import."""

    def __init__(self, here: str, modules: dict[str, Path]) -> None:
        self.here, self.modules = here, modules
        self.depth = 0
        self.imports: list[tuple[str, str | None, bool]] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            target = _owner(alias.name, self.modules)
            if target:
                self.imports.append((target, None, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve_from(node, self.here, self.modules)
        for alias in node.names:
            # `from pkg import sub` imports the submodule when one exists, else a name of pkg
            sub = f"{base}.{alias.name}"
            if sub in self.modules:
                self.imports.append((sub, None, self.depth > 0))
                continue
            target = _owner(base, self.modules)
            if target:
                self.imports.append((target, alias.name, self.depth > 0))


def import_records() -> dict[str, list[tuple[str, str | None, bool]]]:
    """Module -> its imports of spkcausal modules, TYPE_CHECKING blocks included."""
    modules = _module_names()
    records = {}
    for name, path in modules.items():
        visitor = _Visitor(name, modules)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        records[name] = visitor.imports
    return records


def import_graph() -> dict[str, set[str]]:
    """Module -> modules of spkcausal it imports anywhere in its body (self-imports dropped)."""
    return {m: {t for t, _, _ in imps if t != m} for m, imps in import_records().items()}


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), those of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return sorted(found)


def _one_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start, members = comp[0], set(comp)
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    return comp


def cycles_report() -> list[str]:
    """One line per cycle: the component and one cycle through it."""
    graph = import_graph()
    return [
        f"{len(comp)} modules {{{', '.join(comp)}}}: " + " -> ".join(_one_cycle(graph, comp))
        for comp in _components(graph)
    ]


def counts() -> tuple[int, int]:
    """(function-local imports of spkcausal outside cli/, private names imported across modules)."""
    local = private = 0
    for here, imps in import_records().items():
        for target, name, in_function in imps:
            local += in_function and not here.startswith("spkcausal.cli")
            private += bool(name and name.startswith("_") and not name.startswith("__") and target != here)
    return local, private


def test_components_found_on_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _components(graph) == [["a", "b", "c"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_function_local_and_relative_imports_are_resolved():
    records = import_records()
    # spkcausal/cli/__init__.py: `from ..utils import ...` at module level (relative, level 2)
    assert ("spkcausal.utils", "output_error", False) in records["spkcausal.cli"]
    # spkcausal/cli/score.py imports inside its handler functions only
    assert any(in_function for _, _, in_function in records["spkcausal.cli.score"])


def test_no_import_cycles():
    lines = cycles_report()
    assert not lines, "import cycles inside spkcausal:\n" + "\n".join(lines)


if __name__ == "__main__":
    for line in cycles_report():
        print(line)
    local, private = counts()
    print(f"function-local imports outside cli/: {local}")
    print(f"private names imported across modules: {private}")
