"""The house's import arrows point one way: no module of specvlm imports (at module level or inside a function) a
module that imports it back, directly or through others. Read from the source, so lazy imports count too: the
command line's shared parts live in `specvlm.arguments`, which every command imports, never `cli` itself."""

import ast
from pathlib import Path

import specvlm

PACKAGE = Path(specvlm.__file__).parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the specvlm modules it imports (`from .x import y` counts both `.x` and `.x.y` when they exist)."""
    files = {module_name(p): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package_name = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package_name.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                named = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            else:
                continue
            graph[name].update(n for n in named if n in files and n != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_cycle_finder_finds_a_cycle_through_a_lazy_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_commands_share_one_front_door():
    """generate, demo, serve, bench and train-head build their options from specvlm.arguments, never from cli."""
    graph = import_graph()
    for command in ("specvlm.commands", "specvlm.serve.command", "specvlm.bench.command", "specvlm.train.command"):
        assert "specvlm.cli" not in graph[command] and "specvlm.arguments" in graph[command], command


def test_design_maps_every_package_and_module():
    """docs/DESIGN.md's Layout names every package and top-level module, so the map cannot fall behind the house."""
    design = (PACKAGE.parent.parent / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    layout = design[design.index("## Layout") : design.index("## Checks")]
    packages = [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()]
    modules = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert packages and modules
    missing = [f"{name}/" for name in packages if f"{name}/" not in layout]
    missing += [name for name in modules if name not in layout]
    assert not missing, f"docs/DESIGN.md's Layout does not name {missing}"
