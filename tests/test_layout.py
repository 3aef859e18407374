"""The package keeps its rooms (care_ray.ROOMS): no import circle anywhere in care_ray/, no room
importing a room above it, no module past ~1,000 lines. Imports are read from the source — the
function-level ones too, since they close circles just as well at run time, and those under
`if TYPE_CHECKING:` (a type that needs a circle to be named is a sign the code is in the wrong
place; ../shared/tools/import-circles.py counts them as well)."""

from __future__ import annotations

import ast
from pathlib import Path

import care_ray

MAX_MODULE_LINES = 1000


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, wherever it stands."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def import_graph(root: Path) -> dict[str, set[str]]:
    """module → the package's modules it imports (a `from pkg import name` that names a module
    is an edge to that module, else to pkg)."""
    files = {module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    top = root.name
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for target in targets:
                while target and target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target.split(".")[0] == top and target in files and target != module:
                    graph[module].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "common"  # the package's own __init__ imports nothing
    if parts[1] == "__main__":
        return "cli"
    return parts[1]


def upward_imports(graph: dict[str, set[str]], rooms: dict[str, tuple[str, ...]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        mine = room_of(module)
        for target in sorted(targets):
            theirs = room_of(target)
            if theirs != mine and theirs not in rooms.get(mine, ()):
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    return [
        f"{module_name(root, p)}: {n} lines"
        for p in sorted(root.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > limit
    ]


PACKAGE = Path(care_ray.__file__).parent


def test_no_import_circle_in_the_package():
    assert circles(import_graph(PACKAGE)) == []


def test_every_room_is_listed_and_imports_only_the_rooms_below_it():
    rooms = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert rooms == set(care_ray.ROOMS), (
        "a room (subpackage) missing from care_ray.ROOMS or vice versa"
    )
    assert upward_imports(import_graph(PACKAGE), care_ray.ROOMS) == []


def test_every_room_says_what_it_owns_and_may_import():
    for room, allowed in care_ray.ROOMS.items():
        doc = ast.get_docstring(ast.parse((PACKAGE / room / "__init__.py").read_text()))
        assert doc, f"{room}/__init__.py has no docstring"
        stated = doc.rsplit("May import:", 1)[-1]
        assert "May import:" in doc, f"{room}/__init__.py does not say what it may import"
        for other in allowed:
            assert other in stated, f"{room}: its docstring does not list {other}"


def test_no_module_is_longer_than_a_thousand_lines():
    assert long_modules(PACKAGE) == []


def test_the_checks_catch_a_planted_circle_an_upward_import_and_a_long_module(tmp_path):
    pkg = tmp_path / "pkg"
    for room in ("low", "high"):
        (pkg / room).mkdir(parents=True)
        (pkg / room / "__init__.py").write_text('"""room"""\n')
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from pkg.low import b\n")
    (pkg / "low" / "b.py").write_text("from pkg.low.a import f\n")
    (pkg / "low" / "c.py").write_text("from pkg.high import d\n" + "x = 1\n" * 1001)
    (pkg / "high" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import e\n"
    )
    (pkg / "high" / "e.py").write_text("from pkg.high.d import *\n")
    graph = import_graph(pkg)
    assert circles(graph) == [["pkg.high.d", "pkg.high.e"], ["pkg.low.a", "pkg.low.b"]]
    assert upward_imports(graph, {"low": (), "high": ("low",)}) == [
        "pkg.low.c (low) imports pkg.high.d (high)"
    ]
    assert long_modules(pkg) == ["pkg.low.c: 1002 lines"]
