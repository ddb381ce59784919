"""Draw the package's imports as arrows, and check them against the layers.

    python tools/import_graph.py           # the package-level drawing, layer by layer
    python tools/import_graph.py --check   # exit 1 on an import circle or an import that goes up a layer

Every `import` counts, including those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "hpcrobust"

# Top to bottom. A module may import from its own layer's other packages or from any layer below.
LAYERS: list[tuple[str, ...]] = [
    ("cli",),
    ("launch", "planner"),
    ("sweep",),
    ("config", "analysis"),
    ("attacks", "training", "tracking"),
    ("store", "tasks", "models", "parallel"),
    ("fields", "rng", "log", "errors", "savepoint", "__init__"),
]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The hpcrobust modules that `path` imports (a `from pkg import mod` counts as importing pkg.mod)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "hpcrobust"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hpcrobust":
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in known else node.module)
    return {m for m in out if m in known}


def module_graph() -> dict[str, set[str]]:
    mods = modules()
    names = set(mods)
    return {m: imports(p, names) - {m} for m, p in mods.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (each one is an import circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_edges(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(package_of(a), package_of(b)) for a, deps in graph.items() for b in deps
            if package_of(a) != package_of(b) and package_of(b) != "__init__"}


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(module, imported module) pairs that go up a layer."""
    return sorted((a, b) for a, deps in graph.items() for b in deps
                  if LEVEL[package_of(b)] < LEVEL[package_of(a)])


def drawing(graph: dict[str, set[str]]) -> str:
    edges = package_edges(graph)
    lines = []
    for layer in LAYERS:
        for pkg in layer:
            if pkg == "__init__":
                continue
            deps = sorted({b for a, b in edges if a == pkg}, key=lambda p: (LEVEL[p], p))
            lines.append(f"{pkg:<10} -> {', '.join(deps) or '(nothing)'}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    graph = module_graph()
    unknown = sorted({package_of(m) for m in graph} - set(LEVEL))
    problems = [f"package {p} has no layer in tools/import_graph.py" for p in unknown]
    problems += [f"import circle: {' <-> '.join(c)}" for c in cycles(graph)]
    problems += [f"upward import: {a} -> {b}" for a, b in upward(graph)] if not unknown else []
    if "--check" in sys.argv:
        print("\n".join(problems) or "ok")
        return int(bool(problems))
    print(drawing(graph), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
