"""The package's import graph: no cycles between modules nor between sub-packages (lazy
imports included), no imports of another module's underscore names. Read from the source with
``ast``, so a cycle hidden inside a function body still counts, and so does a module named in a
string (``importlib.import_module``, a package's lazy exports: ``verydeep.lazy_exports``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "verydeep"


def module_graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """(module -> modules it imports, including each target's parent packages;
    [(module, 'target.name')] for underscore names imported from another module)."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    edges: dict[str, set[str]] = {m: set() for m in modules}
    private: list[tuple[str, str]] = []

    def add(src: str, target: str) -> None:
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            t = ".".join(parts[:i])
            if t in modules and t != src and not src.startswith(t + ".") and t != "verydeep":
                edges[src].add(t)

    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in modules:
                add(name, node.value)  # imported by name: importlib.import_module(...)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                if not base.startswith("verydeep"):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    add(name, full if full in modules else base)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and full not in modules:
                        private.append((name, full))
    return edges, private


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
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
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def package_graph(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto the package's parts: each sub-package (``verydeep.train``,
    everything under it) and each top-level module (``verydeep.config``) is one node."""
    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    folded: dict[str, set[str]] = {part(m): set() for m in edges}
    for src, targets in edges.items():
        folded[part(src)].update(part(t) for t in targets if part(t) != part(src))
    return folded


def test_import_graph_has_no_cycles():
    edges, _ = module_graph()
    assert cycles(edges) == []


def test_no_cycle_between_sub_packages():
    edges, _ = module_graph()
    assert cycles(package_graph(edges)) == []


def test_no_module_imports_another_modules_private_names():
    _, private = module_graph()
    assert private == []


MAX_FUNCTION_LINES = 80
LONG_REASON = "Why this is long:"  # a function over the limit says why in its docstring


def long_functions() -> list[tuple[int, str]]:
    """(lines, 'path:line name') of every function over the limit without a stated reason."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                    out.append((lines, f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_no_function_is_long_without_a_reason():
    assert long_functions() == []


def test_the_checker_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_a_cycle_between_packages_that_modules_do_not_have():
    """config imports train.config, train.loop imports config: no module cycle, a package one."""
    edges = {"verydeep.config": {"verydeep.train.config"}, "verydeep.train.config": set(),
             "verydeep.train.loop": {"verydeep.config"}}
    assert cycles(edges) == []
    assert cycles(package_graph(edges)) == [["verydeep.config", "verydeep.train"]]


if __name__ == "__main__":  # python tests/test_package_structure.py: print the graph's cycles
    graph, names = module_graph()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports")
    print("cycles:", cycles(graph) or "none")
    print("cycles between sub-packages:", cycles(package_graph(graph)) or "none")
    print("underscore names imported from other modules:", names or "none")
    print(f"functions over {MAX_FUNCTION_LINES} lines without a reason:", long_functions() or "none")
