"""The package's shape: a curated public API, private modules, inward dependencies, documented tests."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import otel_service

PACKAGE_DIR = Path(otel_service.__file__).parent
TESTS_DIR = Path(__file__).parent
PUBLIC_MODULES = [
    "client",
    "cli",
    "testing",
    "web_app",
    "web_boundary",
    "web_handlers",
    "web_processes",
    "web_server",
]
CORE_MODULES = [
    "_errors",
    "_events",
    "_validation",
    "_correlation",
    "_pricing",
    "_settings",
    "_records",
    "_spool",
    "_labels",
    "_drift",
    "_rate_limit",
    "_intake",
    "_shards",
]
FORBIDDEN_IN_CORE = {"aiohttp", "opentelemetry"}


def _module_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules([str(PACKAGE_DIR)]))


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; case-sensitive within."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_sorted() -> None:
    """__all__ is kept in ruff's isort-style order (constants, classes, the rest), without duplicates."""
    names = list(otel_service.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))


def test_every_name_in_all_is_importable() -> None:
    """Each exported name exists on the package and can be imported from it."""
    namespace: dict[str, object] = {}
    exec("from otel_service import *", namespace)
    missing = [name for name in otel_service.__all__ if name not in namespace]
    assert missing == []
    for name in otel_service.__all__:
        assert getattr(otel_service, name) is namespace[name]


def test_no_module_is_exported() -> None:
    """__all__ holds classes, functions and constants, never a (private) module."""
    exported_modules = [
        name for name in otel_service.__all__ if isinstance(getattr(otel_service, name), ModuleType)
    ]
    assert exported_modules == []
    assert not set(otel_service.__all__) & set(_module_names())


def test_implementation_modules_are_private() -> None:
    """Every module is either one of the named public ones or starts with an underscore."""
    modules = _module_names()
    assert set(PUBLIC_MODULES) <= set(modules)
    assert [name for name in modules if name not in PUBLIC_MODULES and not name.startswith("_")] == []


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_define_all(name: str) -> None:
    """Each public module declares __all__, and every name in it exists."""
    module = importlib.import_module(f"otel_service.{name}")
    assert isinstance(getattr(module, "__all__", None), list)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(top-level packages imported absolutely, sibling modules imported relatively) by one module."""
    tree = ast.parse((PACKAGE_DIR / f"{name}.py").read_text("utf-8"))
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                absolute.add(node.module.split(".")[0])
                if node.module.split(".")[0] == "otel_service":
                    relative.add(node.module.split(".")[1] if "." in node.module else "__init__")
            elif node.module:
                relative.add(node.module.split(".")[0])
            else:  # from . import x
                relative.update(alias.name for alias in node.names)
    return absolute, relative


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_modules_import_neither_aiohttp_nor_opentelemetry(name: str) -> None:
    """The pure core depends on no HTTP or telemetry library, directly or through a sibling module."""
    absolute, relative = _imports(name)
    assert absolute & FORBIDDEN_IN_CORE == set()
    assert relative - set(CORE_MODULES) - {"_version"} == set()


def _test_functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text("utf-8"))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test")
    ]


def test_every_test_has_a_one_line_docstring() -> None:
    """Every test function in tests/ says in one line what it checks."""
    offenders = []
    for path in sorted(TESTS_DIR.glob("*.py")):
        for function in _test_functions(path):
            doc = ast.get_docstring(function, clean=True)
            if not doc or "\n" in doc:
                offenders.append(f"{path.name}::{function.name}")
    assert offenders == []


def test_the_docstring_check_sees_the_tests() -> None:
    """The walk above finds this file's own tests, so an empty result is meaningful."""
    names = {function.name for function in _test_functions(Path(__file__))}
    assert {"test_every_test_has_a_one_line_docstring", "test_all_is_sorted"} <= names
