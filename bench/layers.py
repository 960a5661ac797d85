"""The package's import graph against its layer contract: upward imports, cycles, module sizes.

    python bench/layers.py            # figures, and each upward import
    python bench/layers.py --quiet    # figures only
    git worktree add /tmp/before d1faaa5 && python bench/layers.py --root /tmp/before   # another commit

Every ``import`` counts, also one inside a function (a lazy import is still a dependency) or
under ``TYPE_CHECKING``. A module belongs to the first layer (bottom up) one of whose names it is
or lies under. ``tests/test_layers.py`` holds the contract: no upward import, no cycle.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hpo"

# Bottom up. A module may import its own layer and those below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundations", ("hpo.errors", "hpo.registry", "hpo.settings", "hpo.env", "hpo.files", "hpo.keys",
                     "hpo.system")),
    ("data", ("hpo.data",)),
    ("train and its trackers", ("hpo.train", "hpo.tracking")),
    ("search space and study file", ("hpo.params", "hpo.space", "hpo.config", "hpo.strategy", "hpo.pruning",
                                     "hpo.prepare")),
    ("storage", ("hpo.storage",)),
    ("study, objective, workers", ("hpo.checks", "hpo.study", "hpo.objective", "hpo.workers", "hpo.records", "hpo.progress")),
    ("review, export, final models, prediction, API",
     ("hpo.review", "hpo.export", "hpo.final", "hpo.predict", "hpo.ensemble", "hpo.run", "hpo.status",
      "hpo.catalog")),
    ("command line", ("hpo.cli", "hpo.__main__", "hpo")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports (a name imported from a package is its
    submodule when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a import b`: the module a.b where there is one, else a itself
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def layer_of(module: str) -> int:
    for index, (_, names) in reversed(list(enumerate(LAYERS))):
        if any(module == name or module.startswith(name + ".") for name in names if name != "hpo"):
            return index
    return len(LAYERS) - 1  # the package itself: the top


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets
                  if layer_of(b) > layer_of(a) and a != "hpo" and not b.startswith(a + "."))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan). A package's
    ``__init__`` that re-exports its submodules is left out: importing it is importing them."""
    packages = {name for name, path in modules().items() if path.name == "__init__.py"}
    edges = {a: {b for b in targets if b not in packages} for a, targets in edges.items() if a not in packages}
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    sys.setrecursionlimit(10_000)
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def sizes() -> list[tuple[int, str]]:
    return sorted(((len(path.read_text().splitlines()), name) for name, path in modules().items()), reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--root", type=Path, help="a checkout to measure (default: this one)")
    args = parser.parse_args()
    global PACKAGE
    PACKAGE = (args.root / "hpo").resolve() if args.root else PACKAGE
    edges = graph()
    up, loops, lines = upward(edges), cycles(edges), sizes()
    print(f"modules: {len(edges)}; imports inside the package: {sum(map(len, edges.values()))}")
    print(f"upward imports: {len(up)}")
    if not args.quiet:
        for a, b in up:
            print(f"  {a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})")
    print(f"cycles: {len(loops)}" + "".join(f"\n  {' <-> '.join(c)}" for c in loops))
    print(f"largest modules: {', '.join(f'{name} {n}' for n, name in lines[:5])}")
    print(f"modules over 400 lines: {sum(n > 400 for n, _ in lines)}")


if __name__ == "__main__":
    main()
