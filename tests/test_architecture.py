"""The architecture is kept by tools, not by memory.

- `lint-imports` keeps the layer contract of `.importlinter` (entry points > modules > report >
  metrics > explain | data | models > tracking > utils; nothing imports an entry point);
- no import cycle between packages (at every level of nesting) nor between files, lazy imports
  inside functions included (grimp sees them);
- no file of xai_bench/ grows past MAX_LINES: past that, split it by concern.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import grimp
import pytest
from conftest import REPO_ROOT

PACKAGE = "xai_bench"
MAX_LINES = 450


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    # no cache: a test must not leave a .grimp_cache folder in the repository
    return grimp.build_graph(PACKAGE, cache_dir=None)


Successors = Callable[[str], Iterable[str]]


def _strongly_connected(nodes: Iterable[str], successors: Successors) -> list[list[str]]:
    """Tarjan's algorithm, iterative (no recursion limit): the components with a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(successors(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(successors(child)))))
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


def _cycle_in(component: list[str], successors: Successors) -> list[str]:
    """One cycle through the component's first node, as a -> b -> ... -> a (for the message)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest cycle back to `start`
        next_frontier = []
        for node in frontier:
            for child in sorted(successors(node)):
                if child == start:
                    return [*paths[node], start]
                if child in members and child not in paths:
                    paths[child] = [*paths[node], child]
                    next_frontier.append(child)
        frontier = next_frontier
    return component  # unreachable for a strongly connected component


def _describe(cycles: list[list[str]], successors: Successors) -> str:
    return "\n".join(" -> ".join(_cycle_in(c, successors)) for c in cycles)


def test_layer_contracts_hold() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=REPO_ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_import_cycle_between_files(graph: grimp.ImportGraph) -> None:
    def successors(module: str) -> set[str]:
        return graph.find_modules_directly_imported_by(module)

    cycles = _strongly_connected(sorted(graph.modules), successors)
    assert not cycles, "import cycles between files:\n" + _describe(cycles, successors)


def test_no_import_cycle_between_packages(graph: grimp.ImportGraph) -> None:
    """At every level: the sub-packages (and modules) of each package, each taken with all that
    lies below it, import each other without a cycle."""
    packages = sorted(m for m in graph.modules if graph.find_children(m))
    problems = []
    for package in packages:
        children = sorted(graph.find_children(package))
        depth = package.count(".") + 2  # a module's name cut to this many parts: its child

        def owner(module: str, depth: int = depth) -> str:
            return ".".join(module.split(".")[:depth])

        edges: dict[str, set[str]] = {child: set() for child in children}
        for child in children:
            for module in {child} | graph.find_descendants(child):
                for imported in graph.find_modules_directly_imported_by(module):
                    target = owner(imported)
                    if target in edges and target != child:
                        edges[child].add(target)
        cycles = _strongly_connected(children, edges.__getitem__)
        if cycles:
            problems.append(f"in {package}:\n" + _describe(cycles, edges.__getitem__))
    assert not problems, "import cycles between packages:\n" + "\n".join(problems)


def test_no_file_is_too_long() -> None:
    root = REPO_ROOT / PACKAGE
    lengths = {
        path.relative_to(REPO_ROOT).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in sorted(root.rglob("*.py"))
    }
    too_long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines (split them by concern): {too_long}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The checks above pass on an empty result: make sure they would see a cycle."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    cycles = _strongly_connected(sorted(edges), edges.__getitem__)
    assert cycles == [["a", "b", "c"]]
    assert _cycle_in(cycles[0], edges.__getitem__) == ["a", "b", "c", "a"]
