"""The public API: what each public module exports, and where it comes from.

A public module is one whose dotted name has no part starting with ``_``.
Each must say what it exports in ``__all__``; every name there must exist,
once, and be the very object its defining module holds (``txcmux.Route is
txcmux._route.Route``).  Where an object says where it was defined
(``__module__``), that is where it is looked up, so the test stays right
while code moves between private modules.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from zope.interface.interface import InterfaceClass

import txcmux


def _public_modules() -> list[str]:
    names = [txcmux.__name__]
    for info in pkgutil.walk_packages(txcmux.__path__, txcmux.__name__ + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


PUBLIC = _public_modules()

# The public modules the project documents; each must be found above.
DOCUMENTED = [
    "txcmux",
    "txcmux.config",
    "txcmux.demo",
    "txcmux.grpcserver",
    "txcmux.matchers",
    "txcmux.relay",
    "txcmux.testing",
    "txcmux.tls",
    "txcmux.web",
    "txcmux.websocket",
]


# -- the checks, each a list of what is wrong with one module -------------------


def _says_where_it_was_defined(thing: object) -> bool:
    """Classes, functions and interfaces know their defining module."""
    return (
        inspect.isclass(thing)
        or inspect.isfunction(thing)
        or inspect.isbuiltin(thing)
        or isinstance(thing, InterfaceClass)
    ) and bool(getattr(thing, "__module__", None))  # (protobuf classes may not)


def all_problems(module: ModuleType) -> list[str]:
    """``__all__`` missing, not a list of names, with duplicates or unknowns."""
    exported = getattr(module, "__all__", None)
    if exported is None:
        return [f"{module.__name__} has no __all__"]
    if not isinstance(exported, (list, tuple)) or not all(
        isinstance(name, str) for name in exported
    ):
        return [f"{module.__name__}.__all__ is not a list of names"]
    problems = [
        f"{name} is listed {exported.count(name)} times"
        for name in sorted(set(exported))
        if exported.count(name) > 1
    ]
    problems += [
        f"{name} does not exist" for name in exported if not hasattr(module, name)
    ]
    return problems


def _exports(module: ModuleType) -> list[str]:
    return [n for n in getattr(module, "__all__", ()) if hasattr(module, n)]


def misattributed(module: ModuleType) -> list[str]:
    """Exports that are not the object their defining module holds."""
    wrong = []
    for name in _exports(module):
        thing = getattr(module, name)
        if isinstance(thing, ModuleType):
            if thing.__name__ != f"{module.__name__}.{name}":
                wrong.append(f"{name} is the module {thing.__name__}")
        elif _says_where_it_was_defined(thing):
            qualified = getattr(thing, "__qualname__", thing.__name__)
            found: object = importlib.import_module(thing.__module__)
            for part in qualified.split("."):
                found = getattr(found, part, None)
            if found is not thing:
                wrong.append(f"{name} is not {thing.__module__}.{qualified}")
    return wrong


def _imported_names(module: ModuleType) -> dict[str, tuple[str, str]]:
    """For each top-level ``from X import a as b``: ``{b: (X, a)}``."""
    tree = ast.parse(inspect.getsource(module))
    package = module.__name__ if hasattr(module, "__path__") else module.__package__
    imported = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            origin = node.module or ""
            if node.level:
                origin = importlib.util.resolve_name("." * node.level + origin, package)
            for alias in node.names:
                imported[alias.asname or alias.name] = (origin, alias.name)
    return imported


def misimported(module: ModuleType) -> list[str]:
    """Re-exported names (constants too) not the object of the module they
    are imported from: constants do not say where they were defined."""
    wrong = []
    imported = _imported_names(module)
    for name in _exports(module):
        if name not in imported:
            continue
        origin_name, original = imported[name]
        origin = importlib.import_module(origin_name)
        ours = getattr(module, name)
        if isinstance(ours, ModuleType):
            continue  # ``from . import matchers``: checked by misattributed
        if getattr(origin, original, None) is not ours:
            wrong.append(f"{name} is not {origin_name}.{original}")
    return wrong


def exported_twice(module: ModuleType) -> list[str]:
    """Classes, functions or modules exported under more than one name."""
    seen: dict[int, str] = {}
    twice = []
    for name in _exports(module):
        thing = getattr(module, name)
        if not (_says_where_it_was_defined(thing) or isinstance(thing, ModuleType)):
            continue  # equal constants may be one interned object
        if id(thing) in seen:
            twice.append(f"{seen[id(thing)]} and {name} are one object")
        seen.setdefault(id(thing), name)
    return twice


def undocumented(module: ModuleType) -> list[str]:
    """The module, or exported classes and functions, without a docstring."""
    missing = [] if inspect.getdoc(module) else [f"{module.__name__} itself"]
    for name in _exports(module):
        thing = getattr(module, name)
        if _says_where_it_was_defined(thing) and not inspect.getdoc(thing):
            missing.append(name)
    return missing


# -- the checks on every public module ---------------------------------------------


def test_the_documented_modules_are_public() -> None:
    assert set(DOCUMENTED) <= set(PUBLIC)


@pytest.mark.parametrize("module_name", PUBLIC)
def test_all_lists_existing_names_once(module_name: str) -> None:
    assert all_problems(importlib.import_module(module_name)) == []


@pytest.mark.parametrize("module_name", PUBLIC)
def test_exports_are_the_objects_of_their_defining_modules(module_name: str) -> None:
    assert misattributed(importlib.import_module(module_name)) == []


@pytest.mark.parametrize("module_name", PUBLIC)
def test_re_exports_are_the_objects_they_were_imported_as(module_name: str) -> None:
    assert misimported(importlib.import_module(module_name)) == []


@pytest.mark.parametrize("module_name", PUBLIC)
def test_no_object_is_exported_under_two_names(module_name: str) -> None:
    assert exported_twice(importlib.import_module(module_name)) == []


@pytest.mark.parametrize("module_name", PUBLIC)
def test_exports_say_what_they_are_for(module_name: str) -> None:
    assert undocumented(importlib.import_module(module_name)) == []


def test_matchers_any_has_one_public_name() -> None:
    from txcmux import matchers

    assert "any" in matchers.__all__
    assert "any_" not in matchers.__all__
    assert matchers.any().name == "any"


def test_the_top_level_names() -> None:
    from txcmux import _factory, _route

    assert txcmux.Route is _route.Route
    assert txcmux.ProtocolSwitchingFactory is _factory.ProtocolSwitchingFactory
    assert "testing" not in txcmux.__all__


# -- the checks find what they look for ------------------------------------------


@pytest.fixture
def fake_public_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """A package ``fakepublic`` with a private module and a sloppy public one."""
    package = tmp_path / "fakepublic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_impl.py").write_text(
        textwrap.dedent(
            '''
            """Private."""
            LIMIT = 1000
            def helper():
                """Helps."""
            def silent():
                pass
            class Thing:
                """A thing."""
            '''
        )
    )
    (package / "api.py").write_text(
        textwrap.dedent(
            '''
            """Public, badly."""
            from ._impl import LIMIT, Thing, helper, silent
            alias = helper
            LIMIT = 1001
            class Thing:
                """Shadows the private Thing."""
            Thing.__module__ = "fakepublic._impl"
            __all__ = ["LIMIT", "Thing", "alias", "helper", "helper", "missing",
                       "silent"]
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("fakepublic.api")
    for name in [n for n in sys.modules if n.startswith("fakepublic")]:
        del sys.modules[name]


def test_the_checks_find_a_sloppy_module(fake_public_module: ModuleType) -> None:
    module = fake_public_module
    assert all_problems(module) == [
        "helper is listed 2 times",
        "missing does not exist",
    ]
    assert misattributed(module) == ["Thing is not fakepublic._impl.Thing"]
    assert misimported(module) == [
        "LIMIT is not fakepublic._impl.LIMIT",
        "Thing is not fakepublic._impl.Thing",
    ]
    assert exported_twice(module) == [
        "alias and helper are one object",
        "alias and helper are one object",
    ]
    assert undocumented(module) == ["silent"]
    del module.__all__
    assert all_problems(module) == ["fakepublic.api has no __all__"]
