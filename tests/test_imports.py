"""The package graph is a DAG: built from the source with `ast`, no model needed.

Layers: `interp` (the core) imports neither `probes` nor `analyses`; `probes` builds on `interp`; `analyses` on
both; the command-line modules sit on top of everything. Every import counts wherever it stands (module level,
inside a function, in a try block), because a lazy import is still a dependency. Imports under
`if TYPE_CHECKING:` are left out: they never run, and type-only references back into a higher layer are the
usual way to annotate without importing (one test counts them too: the attack losses must not name the engine).
Cycles are checked between files and between the packages of the design (the top-level folders; a subpackage
such as `interp.core.backends` is part of `interp`'s layer, and the CLI modules form a layer of their own).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "probes", "analyses")
CLI = "interp.cli"  # the command line (a subpackage): allowed to import anything, imported by nothing
# interp's subpackages, lowest first: a module may import its own subpackage and those before it. "base" is the
# two modules every layer uses (interp.errors, interp.io); "facade" is interp/__init__.py, for users only.
SUBPACKAGES = ("base", "data", "core", "directions", "judges", "steering", "circuits", "attacks", "cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """Every (dotted name, under TYPE_CHECKING) imported anywhere in `tree`. `from a import x` gives `a.x`
    (a submodule, or a name defined in `a`: `import_graph` keeps whichever is a file)."""
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, typing_only)
            return
        if isinstance(node, ast.Import):
            out.extend((alias.name, typing_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:  # relative: resolve against this module's package
                base = module.split(".") if is_package else module.split(".")[:-1]
                source = ".".join(base[:len(base) - node.level + 1] + ([source] if source else []))
            out.extend((f"{source}.{alias.name}", typing_only) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, typing_only)

    visit(tree, False)
    return out


def import_graph(include_type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports. A name resolves to the longest dotted prefix that
    is a file: `from a import b` is an edge to a/b.py when b is a submodule, else to a/__init__.py. Parent
    packages that Python initialises on the way are not edges (they are run first, whoever imports)."""
    files = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for target, typing_only in imported_names(tree, name, path.name == "__init__.py"):
            if typing_only and not include_type_checking:
                continue
            parts = target.split(".")
            hit = next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in files), None)
            if hit is not None and hit != name:
                edges.add(hit)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def layer(module: str) -> str:
    """The package layer of a module: 'cli' for the command line, else its top-level package."""
    return "cli" if module == CLI or module.startswith(CLI + ".") else module.split(".")[0]


def subpackage(module: str) -> str:
    """Which of interp's subpackages a core module belongs to ("base" for interp.errors and interp.io)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "facade"
    return "base" if parts[1] in ("errors", "io") else parts[1]


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        out.setdefault(layer(a), set()).update(layer(b) for b in targets if layer(b) != layer(a))
    return out


def test_graph_sees_lazy_imports():
    """The scanner counts an import inside a function and skips one under TYPE_CHECKING."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import probes\n"
                     "def f():\n    from analyses import refusal\n")
    names = dict(imported_names(tree, "interp.x", False))
    assert names["analyses.refusal"] is False and names["probes"] is True and names["typing.TYPE_CHECKING"] is False
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_cycle_between_files():
    found = cycles(import_graph())
    assert not found, "import cycles between files: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_cycle_between_packages():
    packages = package_graph(import_graph())
    found = cycles(packages)
    assert not found, f"import cycles between packages: {found} (graph: {packages})"


def test_layers():
    """interp never imports probes or analyses (the CLI aside), probes never imports analyses, nothing imports the CLI."""
    allowed = {"interp": set(), "probes": {"interp"}, "analyses": {"interp", "probes"},
               "cli": {"interp", "probes", "analyses"}}
    bad = [f"{a} imports {b}" for a, targets in sorted(import_graph().items()) for b in sorted(targets)
           if layer(b) != layer(a) and layer(b) not in allowed[layer(a)]]
    assert not bad, "imports against the layering: " + "; ".join(bad)


def test_subpackage_layers():
    """Inside interp, each subpackage imports only itself and the subpackages below it (data < core < directions
    < judges < steering < circuits < attacks < cli), and no module but the CLI imports the facade `interp`."""
    graph = import_graph()
    assert set(map(subpackage, (m for m in graph if m.startswith("interp")))) == {"facade", *SUBPACKAGES}, \
        "a module outside the known subpackages; add its subpackage to SUBPACKAGES in its place"
    bad = []
    for a, targets in sorted(graph.items()):
        if not a.startswith("interp") or subpackage(a) == "facade":
            continue
        for b in sorted(t for t in targets if t.startswith("interp")):
            sa, sb = subpackage(a), subpackage(b)
            if (sb == "facade" and sa != "cli") or (sb != "facade" and SUBPACKAGES.index(sb) > SUBPACKAGES.index(sa)):
                bad.append(f"{a} ({sa}) imports {b} ({sb})")
    assert not bad, "imports against interp's subpackage layers: " + "; ".join(bad)


def test_importing_the_core_loads_no_higher_layer():
    """What the source says, at run time: importing every core module (the CLI aside) loads neither probes nor analyses."""
    core = sorted(m for m in import_graph() if layer(m) == "interp")
    code = ("import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in core)
            + "print(sorted({m.split('.')[0] for m in sys.modules} & {'probes', 'analyses'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_losses_do_not_know_the_engine():
    """The attack losses declare what they need; they never import the engine, not even for type hints."""
    graph = import_graph(include_type_checking=True)
    assert "interp.attacks.engine" not in graph["interp.attacks.losses"]
