"""The package's shape: a curated public API, packages by role, inward dependencies, documented tests."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import otel_service

PACKAGE_DIR = Path(otel_service.__file__).parent
TESTS_DIR = Path(__file__).parent
#: The top level: public modules, private helpers, and one package per role of the pipeline.
PUBLIC_MODULES = ["cli", "client", "config", "testing"]
PRIVATE_MODULES = ["__init__", "__main__", "_version"]
PACKAGES = ["export", "intake", "model", "runtime", "spool", "store", "telemetry"]
#: What each module may import from this package: the packages (or top-level modules) named here.
#: Dependencies point inward: model <- spool <- intake / export <- runtime <- cli; model <- store <- intake
#: (analytics) / runtime (the export side feeds the store through its StoreLink protocol).
ALLOWED_INSIDE = {
    "model": {"model"},
    "config": set(),
    "spool": {"model", "spool"},
    "store": {"model", "store"},
    "telemetry": {"model", "telemetry", "config"},
    "intake": {"model", "spool", "store", "telemetry", "config", "intake"},
    "export": {"model", "spool", "telemetry", "config", "export"},
    "runtime": {"model", "spool", "store", "telemetry", "config", "intake", "export", "runtime"},
    "cli": {"config", "runtime"},
    "client": set(),
    "testing": set(),
    "__init__": {"model", "config", "client"},
    "__main__": {"cli"},
    "_version": set(),
}
#: Libraries a package must not import, directly.
FORBIDDEN_OUTSIDE = {
    "model": {"aiohttp", "opentelemetry", "grpc", "structlog", "prometheus_client"},
    "config": {"aiohttp", "opentelemetry", "grpc", "structlog"},
    "spool": {"aiohttp", "opentelemetry", "grpc", "structlog"},
    "telemetry": {"aiohttp", "grpc"},
    "export": {"aiohttp"},
    "intake": {"grpc"},
}
#: A module longer than this says why in its docstring (a line starting "Length:").
MAX_LINES = 300


def _modules() -> list[tuple[str, Path]]:
    """Every module of the package as (dotted name below ``otel_service``, path)."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR).with_suffix("").parts
        found.append((".".join(parts), path))
    return found


def _role(name: str) -> str:
    """The top-level package or module a dotted module name belongs to."""
    return name.split(".")[0]


def _imports(name: str, path: Path) -> tuple[set[str], set[str]]:
    """(top-level libraries imported, this package's modules imported as dotted names) by one module."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name.split(".")[:-1]
    libraries: set[str] = set()
    inside: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "otel_service":
                    inside.add(alias.name.partition(".")[2] or "__init__")
                else:
                    libraries.add(top)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                assert node.module is not None
                top, _, rest = node.module.partition(".")
                if top == "otel_service":
                    inside.add(rest or "__init__")
                else:
                    libraries.add(top)
                continue
            base = package[: len(package) - node.level + 1]
            if node.module:
                inside.add(".".join([*base, node.module]))
            else:
                inside.update(".".join([*base, alias.name]) for alias in node.names)
    return libraries, inside


def test_all_is_sorted() -> None:
    """__all__ is kept in ruff's isort-style order (constants, classes, the rest), without duplicates."""
    names = list(otel_service.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))


def _isort_key(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: SCREAMING_SNAKE_CASE, then CamelCase, then the rest; case-sensitive within."""
    if name.isupper():
        return 0, name
    if name[:1].isupper():
        return 1, name
    return 2, name


def test_all_is_exactly_what_the_package_exposes() -> None:
    """__all__ equals the package's public names that are not modules: nothing exposed by accident."""
    exposed = {
        name
        for name in dir(otel_service)
        if not name.startswith("_") and not isinstance(getattr(otel_service, name), ModuleType)
    }
    assert exposed | {"__version__"} == set(otel_service.__all__)


def test_the_public_api_is_what_a_client_author_needs() -> None:
    """Clients, the event model, the schema version and the version; server errors stay inside."""
    assert set(otel_service.__all__) == {
        "SCHEMA_VERSION",
        "AsyncEventClient",
        "EventClient",
        "Feedback",
        "LabTrack",
        "LlmCall",
        "Prediction",
        "__version__",
    }


def test_every_name_in_all_is_importable() -> None:
    """Each exported name exists on the package and can be imported from it."""
    namespace: dict[str, object] = {}
    exec("from otel_service import *", namespace)
    missing = [name for name in otel_service.__all__ if name not in namespace]
    assert missing == []
    for name in otel_service.__all__:
        assert getattr(otel_service, name) is namespace[name]


def test_the_top_level_shows_the_pipeline() -> None:
    """The top level holds the public modules, three private ones, and one package per role."""
    entries = {path.stem for path in PACKAGE_DIR.glob("*.py")}
    packages = {path.name for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").is_file()}
    assert entries == {*PUBLIC_MODULES, *PRIVATE_MODULES}
    assert packages == set(PACKAGES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_modules_define_all(name: str) -> None:
    """Each public module declares __all__, and every name in it exists."""
    module = importlib.import_module(f"otel_service.{name}")
    assert isinstance(getattr(module, "__all__", None), list)
    assert [n for n in module.__all__ if not hasattr(module, n)] == []


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_dependencies_point_inward(name: str, path: Path) -> None:
    """Each module imports only the packages its role may depend on, and no library it must not."""
    libraries, inside = _imports(name, path)
    role = _role(name)
    allowed = ALLOWED_INSIDE[role] | {"_version"}
    assert {_role(module) for module in inside} - allowed == set()
    assert libraries & FORBIDDEN_OUTSIDE.get(role, set()) == set()


def test_the_store_needs_only_the_model_and_the_standard_library() -> None:
    """The store package imports the standard library and the model only (no driver, no msgspec)."""
    found = [_imports(name, path) for name, path in _modules() if _role(name) == "store"]
    assert found
    libraries = set().union(*(libraries for libraries, _ in found))
    assert libraries - set(sys.stdlib_module_names) - {"__future__"} == set()
    assert {_role(module) for _, inside in found for module in inside} <= {"model", "store"}


def test_the_import_check_sees_relative_imports() -> None:
    """The walk above resolves ``from ..x import y`` to package ``x``, so an empty result is meaningful."""
    _, inside = _imports("runtime.app", PACKAGE_DIR / "runtime" / "app.py")
    assert {_role(module) for module in inside} >= {"intake", "spool", "config"}


@pytest.mark.parametrize(("name", "path"), _modules(), ids=[name for name, _ in _modules()])
def test_long_modules_say_why(name: str, path: Path) -> None:
    """A module over 300 lines states the reason in its docstring (a line starting ``Length:``)."""
    lines = len(path.read_text("utf-8").splitlines())
    doc = ast.get_docstring(ast.parse(path.read_text("utf-8"))) or ""
    assert lines <= MAX_LINES or any(line.startswith("Length:") for line in doc.splitlines())


@pytest.mark.parametrize(
    ("entry", "forbidden"),
    [
        ("intake_process", ("otel_service.export", "opentelemetry.exporter")),
        ("store_process", ("otel_service.export", "opentelemetry.sdk")),
    ],
)
def test_a_child_process_loads_its_entry_point_only(entry: str, forbidden: tuple[str, ...]) -> None:
    """Extra intake processes and the store process load no gRPC and no export side (nor the SDK: store)."""
    code = (
        f"import sys, otel_service.runtime.{entry}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('grpc')}"
        f" | {{m for m in sys.modules if m.startswith({forbidden!r})}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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
