"""The package's import graph has no cycles: every `import adamscope.x` / `from adamscope.x import`
anywhere in a module (top level or inside a function) is an edge, between modules, after mapping a
subpackage's `__init__` to the package itself only for its own re-exports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "adamscope"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported dotted name lives in (`a.b.c` may be attribute c of module a.b)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(mod: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a.b import c`: c may be a submodule a.b.c or an attribute of a.b
            names = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n == "adamscope" or n.startswith("adamscope."):
                target = _resolve(n, modules)
                if target and target != mod:
                    out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    modules = _modules()
    g = {m: imports_of(m, p, modules) for m, p in modules.items()}
    # A package's __init__ re-exports its children; importing `adamscope.x` (the package) from
    # inside x's own modules is not a dependency on the children, so such edges are dropped.
    for m, deps in g.items():
        g[m] = {d for d in deps if not (m.startswith(d + ".") and d != "adamscope")}
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        color[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if color.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if color.get(d) is None:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        color[n] = 2
        return None

    for n in sorted(g):
        if color.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LAYERS = {
    # a lower layer never imports a higher one
    "adamscope.vocab": set(),
    "adamscope.errors": set(),
    "adamscope.config": {"adamscope.errors"},
}


@pytest.mark.parametrize("mod", sorted(LAYERS))
def test_foundation_modules_import_only_the_foundation(mod: str) -> None:
    assert graph()[mod] <= LAYERS[mod]


def test_readers_and_stats_do_not_import_upwards() -> None:
    upper = (
        "adamscope.api",
        "adamscope.cli",
        "adamscope.pipeline",
        "adamscope.report",
        "adamscope.figures",
        "adamscope.tables",
    )
    for m, deps in graph().items():
        if m.startswith(("adamscope.readers", "adamscope.stats")):
            bad = {d for d in deps if d.startswith(upper)}
            assert not bad, f"{m} imports {bad}"
