"""The package's shape as tests: layers only import downwards, no import cycle, a core without I/O,
and one exception tree. Imports are read from the source with ``ast`` (``TYPE_CHECKING`` ones too).
"""

from __future__ import annotations

import ast
import fnmatch
import importlib
import inspect
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import gateway
from gateway import errors
from gateway.errors import GatewayError

PACKAGE = Path(gateway.__file__).parent

# Lowest first. A module may import its own layer and the layers below it, never one above.
# The pure rules of a feature package sit with the core; its drivers sit with the network drivers.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "gateway",
            "gateway.errors",
            "gateway.config",
            "gateway.checks",
            "gateway.logs",
            "gateway.metrics",
            "gateway.sdnotify",
        ),
    ),
    ("ocpp", ("gateway.ocpp", "gateway.ocpp.*")),
    (
        "core",
        (
            "gateway.core",
            "gateway.core.*",
            "gateway.tags.rules",
            "gateway.tags.learned",
            "gateway.tags.flipturn",
            "gateway.tags.local_list",
            "gateway.tags.list_program",
            "gateway.reservations.rules",
            "gateway.reservations.gate",
            "gateway.site.guard",
            "gateway.site.allocation",
            "gateway.site.lending",
            "gateway.site.sequencer",
            "gateway.site.profiles",
            "gateway.site.rounds",
            "gateway.site.program",
        ),
    ),
    ("store", ("gateway.store", "gateway.store.*")),
    (
        "drivers",
        (
            "gateway.net",
            "gateway.net.*",
            "gateway.tags",
            "gateway.tags.*",
            "gateway.reservations",
            "gateway.reservations.*",
            "gateway.site",
            "gateway.site.*",
        ),
    ),
    ("api", ("gateway.api", "gateway.api.*")),
    ("app", ("gateway.app", "gateway.cli", "gateway.support", "gateway.__main__")),
)
PURE_LAYERS = ("ocpp", "core")
# What a pure module must not reach, even through other gateway modules.
IO_LIBRARIES = frozenset(
    {"asyncio", "sqlite3", "aiosqlite", "httpx", "websockets", "socket", "ssl", "uvicorn"}
)
# None: the session sees the hub only through its SessionHost protocol.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def find_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted name → source file, for every module under ``root`` (a package named ``package``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imported_names(name: str, path: Path, known: Iterable[str]) -> tuple[set[str], set[str]]:
    """(modules of the package that ``name`` imports, top-level names of everything else)."""
    known = set(known)
    is_package = path.name == "__init__.py"
    inner: set[str] = set()
    outer: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [module]
            # ``from gateway.core import offline`` imports the module gateway.core.offline.
            targets += [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
        for target in targets:
            if target in known:
                inner.add(target)
            elif target.split(".")[0] in {n.split(".")[0] for n in known}:
                inner.add(target.rsplit(".", 1)[0])  # a name taken from a module
            else:
                outer.add(target.split(".")[0])
    inner.discard(name)
    return inner & known, outer


def import_graph(modules: Mapping[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    inner, outer = {}, {}
    for name, path in modules.items():
        inner[name], outer[name] = imported_names(name, path, modules)
    return inner, outer


def layer_of(module: str) -> int:
    for exact in (True, False):
        for index, (_, patterns) in enumerate(LAYERS):
            for pattern in patterns:
                if ("*" not in pattern) == exact and fnmatch.fnmatchcase(module, pattern):
                    return index
    raise LookupError(module)


def cycles(graph: Mapping[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(start: str, graph: Mapping[str, set[str]]) -> set[str]:
    """``start`` and every module it loads: what it imports, transitively, and their packages."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += graph.get(module, set())
        parts = module.split(".")
        todo += [".".join(parts[:n]) for n in range(1, len(parts)) if ".".join(parts[:n]) in graph]
    return seen


def io_reached(modules: Mapping[str, Path], pure: Iterable[str]) -> dict[str, set[str]]:
    """Pure module → the I/O libraries it loads, directly or through other modules of the package."""
    inner, outer = import_graph(modules)
    bad = {}
    for module in pure:
        reached = set().union(*(outer[m] for m in reachable(module, inner))) & IO_LIBRARIES
        if reached:
            bad[module] = reached
    return bad


MODULES = find_modules(PACKAGE, "gateway")
INNER, OUTER = import_graph(MODULES)


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for module in MODULES:
        try:
            layer_of(module)
        except LookupError:
            unplaced.append(module)
    assert not unplaced, f"place these in LAYERS: {unplaced}"


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(INNER.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    found = set(cycles(INNER))
    assert found <= KNOWN_CYCLES, [sorted(c) for c in found - KNOWN_CYCLES]


def test_packages_import_nothing() -> None:
    """A package's ``__init__`` is its docstring (the layer drawn), so loading one module loads no other."""
    busy = [
        m for m, p in MODULES.items() if p.name == "__init__.py" and m != "gateway" and INNER[m]
    ]
    assert not busy
    for module, path in MODULES.items():
        if path.name == "__init__.py":
            assert ast.get_docstring(ast.parse(path.read_text())), f"{module} has no docstring"


def test_the_core_and_the_wire_layer_load_no_io_library() -> None:
    pure = [m for m in MODULES if LAYERS[layer_of(m)][0] in PURE_LAYERS]
    assert "gateway.core.link" in pure and "gateway.ocpp.frames" in pure
    assert "gateway.site.sequencer" in pure and "gateway.site.profiles" in pure
    assert io_reached(MODULES, pure) == {}


def test_only_the_store_talks_to_sqlite() -> None:
    users = sorted(m for m in MODULES if OUTER[m] & {"sqlite3", "aiosqlite"})
    assert users and all(m.startswith("gateway.store.") for m in users), users


def write_package(root: Path, files: Mapping[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return find_modules(root / "pkg", "pkg")


def test_the_io_check_follows_imports_through_the_package(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "__init__.py": '"""."""\n',
            "core/__init__.py": '"""."""\n',
            "core/rules.py": "from pkg.core import helper\n",
            "core/helper.py": "from ..util import clock\n",
            "core/clean.py": "import json\n",
            "util/__init__.py": "import sqlite3\n",
            "util/clock.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n",
        },
    )
    bad = io_reached(modules, ["pkg.core.rules", "pkg.core.helper", "pkg.core.clean"])
    assert bad == {
        "pkg.core.rules": {"asyncio", "sqlite3"},
        "pkg.core.helper": {"asyncio", "sqlite3"},
    }


def test_the_cycle_check_finds_a_cycle_through_three_modules(tmp_path: Path) -> None:
    modules = write_package(
        tmp_path,
        {
            "a.py": "from pkg import b\n",
            "b.py": "from pkg.c import thing\n",
            "c.py": "import pkg.a\n",
            "d.py": "from pkg import a\n",
        },
    )
    inner, _ = import_graph(modules)
    assert cycles(inner) == [frozenset({"pkg.a", "pkg.b", "pkg.c"})]


def test_layer_of_prefers_an_exact_name_to_a_pattern() -> None:
    assert LAYERS[layer_of("gateway.tags.rules")][0] == "core"
    assert LAYERS[layer_of("gateway.tags.sync")][0] == "drivers"
    with pytest.raises(LookupError):
        layer_of("gateway_elsewhere")


def gateway_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for module in MODULES:
        if module == "gateway.__main__":
            continue  # running it is its only purpose
        for name, obj in inspect.getmembers(importlib.import_module(module), inspect.isclass):
            mine = obj.__module__.startswith("gateway") and not name.startswith("_")
            if mine and issubclass(obj, BaseException):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_exception_of_the_gateway_is_in_the_one_tree() -> None:
    found = gateway_exceptions()
    assert "gateway.errors.InvalidTransition" in found
    outside = sorted(name for name, cls in found.items() if not issubclass(cls, GatewayError))
    assert not outside, outside
    elsewhere = sorted(name for name in found if not name.startswith("gateway.errors."))
    assert not elsewhere, f"define these in gateway.errors: {elsewhere}"


def test_the_errors_docstring_draws_every_class() -> None:
    drawn = {
        line.strip(" │├└─").split()[0]
        for line in (errors.__doc__ or "").splitlines()
        if line.strip(" │├└─") and ("─" in line or line.strip() == "GatewayError")
    }
    assert drawn == set(errors.__all__)


def test_each_package_docstring_names_its_modules() -> None:
    for package, path in MODULES.items():
        if path.name != "__init__.py" or package == "gateway":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        members = [m.rsplit(".", 1)[1] for m in MODULES if m.rsplit(".", 1)[0] == package]
        missing = [m for m in members if f"``{m}``" not in doc]
        assert not missing, f"{package}'s docstring does not draw {missing}"
