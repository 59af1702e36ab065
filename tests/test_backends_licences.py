"""Approved dependencies only (issue 12): nothing in this repository downloads, builds or vendors the
AGPL-3.0 Go modules of Loki, Tempo or Grafana.

Static: every go.mod / go.sum, build script, Makefile, Dockerfile, compose file, collector manifest and
Python dependency list in the repository is read, and none may name those module paths (docker
images such as ``grafana/loki:3.7.8`` are not module paths: the compose deployment may run them).

With the built binaries (``tools/backends.env``, e2e): the module list Go embeds in every binary the
suite runs (``go version -m``) has none of them either, so no transitive dependency pulled them in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The AGPL-3.0 module paths (a module path, or one of its packages or major versions).
AGPL_MODULES = ("github.com/grafana/loki", "github.com/grafana/tempo", "github.com/grafana/grafana")
AGPL_PATTERN = re.compile(
    r"github\.com/grafana/(?:loki|tempo|grafana)(?=$|[/@\s\"'`;,)\]])", re.IGNORECASE | re.MULTILINE
)

#: Directories that are not the repository's own files.
SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
}

#: File names (exact) and name patterns of everything that can fetch or build code.
BUILD_FILE_NAMES = {
    "go.mod",
    "go.sum",
    "go.work",
    "go.work.sum",
    "Makefile",
    "GNUmakefile",
    "Dockerfile",
    "Containerfile",
    "pyproject.toml",
    "constraints.txt",
    "package.json",
    "package-lock.json",
    "backends.env",
}
BUILD_FILE_PATTERNS = (
    re.compile(r".*\.(sh|bash|mk)$"),
    re.compile(r"Dockerfile\..*|.*\.Dockerfile$"),
    re.compile(r"(docker-)?compose(\..*)?\.ya?ml$"),
    re.compile(r".*manifest.*\.ya?ml$"),
    re.compile(r"requirements.*\.txt$"),
    re.compile(r".*\.(nix|bzl|bazel)$|^(BUILD|WORKSPACE)(\.bazel)?$"),
)


def _is_build_file(path: Path) -> bool:
    rel = path.relative_to(REPO)
    if path.name in BUILD_FILE_NAMES or any(p.fullmatch(path.name) for p in BUILD_FILE_PATTERNS):
        return True
    # CI definitions and everything under tools/ (the build scripts and wrapper modules).
    return rel.parts[:2] == (".github", "workflows") or (rel.parts[0] == "tools" and path.suffix != ".py")


def build_files() -> list[Path]:
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        for name in files:
            path = Path(root) / name
            if _is_build_file(path):
                found.append(path)
    return sorted(found)


def agpl_mentions(text: str) -> list[str]:
    return [m.group(0) for m in AGPL_PATTERN.finditer(text)]


def test_the_pattern_catches_module_paths_and_nothing_else() -> None:
    """Module paths, packages and go.sum lines are caught; images and other grafana modules are not."""
    caught = [
        "require github.com/grafana/loki/v3 v3.7.8",
        "\tgithub.com/grafana/tempo v1.5.1-0.20250529124718-87c2dc380cec // indirect",
        "github.com/grafana/tempo/cmd/tempo",
        "go install github.com/grafana/grafana@v12.0.2",
        "github.com/grafana/loki/v3 v3.7.8/go.mod h1:abc=",
        "tool github.com/grafana/loki/v3/cmd/loki",
        "GITHUB.COM/Grafana/Loki",
    ]
    for line in caught:
        assert agpl_mentions(line), line
    for line in (
        "image: grafana/loki:3.7.8",
        "image: grafana/tempo:2.8.0",
        "github.com/grafana/regexp v0.0.0-20250905093917-f7b3be9d1853",
        "github.com/grafana/grafana-foundation-sdk/go v0.0.3",
        "github.com/grafana/pyroscope-go v1.2.0",
    ):
        assert not agpl_mentions(line), line


def test_the_scan_sees_every_kind_of_build_file() -> None:
    """The scan is not vacuous: it reads wrapper modules, build script, Makefile, manifest, compose."""
    # (the files every kind of build input lives in)
    names = {str(p.relative_to(REPO)) for p in build_files()}
    for expected in (
        "Makefile",
        "tools/backends.sh",
        "tools/backends/jaeger/go.mod",
        "tools/backends/jaeger/go.sum",
        "tools/backends/compose/go.mod",
        "collector/manifest.yaml",
        "docker-compose.yml",
        "docker-compose.apache.yml",
        "pyproject.toml",
    ):
        assert expected in names, (expected, sorted(names))


def test_no_build_file_names_an_agpl_module() -> None:
    """No go.mod, build script, Makefile, compose file or manifest names an AGPL module path."""
    # AGPL_MODULES: github.com/grafana/loki, github.com/grafana/tempo, github.com/grafana/grafana.
    offenders = {}
    for path in build_files():
        mentions = agpl_mentions(path.read_text("utf-8", errors="replace"))
        if mentions:
            offenders[str(path.relative_to(REPO))] = sorted(set(mentions))
    assert not offenders, f"AGPL modules named in build files: {offenders}"


def test_no_wrapper_module_for_loki_or_tempo() -> None:
    """The wrapper modules that built Loki and Tempo are gone for good."""
    assert not (REPO / "tools" / "backends" / "loki").exists()
    assert not (REPO / "tools" / "backends" / "tempo").exists()


#: The binaries tools/backends.env names (make backends).
BINARY_VARIABLES = (
    "OTELCOL_BIN",
    "PROMETHEUS_BIN",
    "PROMTOOL_BIN",
    "ALERTMANAGER_BIN",
    "AMTOOL_BIN",
    "JAEGER_BIN",
    "VICTORIALOGS_BIN",
    "COMPOSE_BIN",
)


def _go() -> str:
    found = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(found, os.X_OK):
        pytest.fail("no Go toolchain (PATH, $GO or /usr/local/go/bin/go) to read the binaries' module lists")
    return found


@pytest.mark.e2e
def test_no_built_binary_contains_an_agpl_module() -> None:
    """No binary the suite builds embeds an AGPL module, directly or transitively (``go version -m``)."""
    missing = [v for v in BINARY_VARIABLES if not os.access(os.environ.get(v, ""), os.X_OK)]
    assert not missing, (
        f"not set or not executable: {missing}; run `make backends` and `. tools/backends.env`"
    )
    go = _go()
    for variable in BINARY_VARIABLES:
        binary = os.environ[variable]
        listing = subprocess.run(
            [go, "version", "-m", binary], capture_output=True, text=True, check=True
        ).stdout
        deps = [line for line in listing.splitlines() if line.strip().startswith(("dep", "=>", "mod"))]
        assert len(deps) > 5, f"{variable}: no module list in {binary}:\n{listing[:500]}"
        assert not agpl_mentions(listing), (
            f"{variable} ({binary}) contains {sorted(set(agpl_mentions(listing)))}"
        )
