"""Imports run one way: no cycle among the modules of rlhf/ or of scripts/, counting imports
inside functions too (a lazy import still couples the two modules), and config imports no
runtime module. Importing `a.b.c` runs the packages `a` and `a.b` first, so those count."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_name(path: Path, base: Path, prefix: str) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([prefix, *parts] if prefix else parts)


def import_graph(base: Path, prefix: str) -> dict[str, set[str]]:
    """module -> the modules of the same tree it imports (top level or in a function)."""
    files = {_module_name(p, base, prefix): p for p in base.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from .x import y
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    mod = f"{anchor}.{node.module}" if node.module else anchor
                else:
                    mod = node.module or ""
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            for t in targets:
                # the module itself and every package above it that belongs to this tree
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in files and dep != name and not name.startswith(dep + "."):
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph(ROOT / "rlhf", "rlhf")) == []


def test_no_import_cycles_in_scripts():
    assert cycles(import_graph(ROOT / "scripts", "")) == []


def test_config_imports_no_runtime_module():
    """rlhf.config may use the pure registries (algos, tasks), the error type and the function
    resolver; nothing that builds actors, engines, models or data."""
    allowed = {"rlhf", "rlhf.algos", "rlhf.tasks", "rlhf.errors", "rlhf.resolve"}
    graph = import_graph(ROOT / "rlhf", "rlhf")
    outside = {
        (m, dep)
        for m, deps in graph.items()
        if m.startswith("rlhf.config")
        for dep in deps
        if not dep.startswith("rlhf.config") and dep not in allowed
    }
    assert outside == set()


def test_the_checker_sees_a_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (pkg / "b.py").write_text("from pkg import a\n")
    assert cycles(import_graph(pkg, "pkg")) == [["pkg.a", "pkg.b"]]


def test_test_modules_have_unique_names():
    """pytest imports test files by basename (no packages under tests/): two files of one name
    in different folders break collection of the whole suite."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
