"""The collector's, Jaeger's and VictoriaLogs' configuration files read by the binaries themselves.

``validate`` of the collector distribution (collector/config.yaml) and of Jaeger v2 (jaeger/config.yaml)
loads every component's configuration exactly as a start would, without listening; VictoriaLogs has no
configuration file but flags from ``VL_*`` variables (victorialogs/victorialogs.env), which it silently
ignores when misspelt, so each must name a flag ``victoria-logs -help`` lists. Binaries from
``tools/backends.env`` (``make backends``); a missing one is a failure, not a skip.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _binary(variable: str) -> str:
    path = os.environ.get(variable, "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"${variable} is not set: run `make backends` and `. tools/backends.env`", pytrace=False)
    return path


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False
    )


def _validate(variable: str, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return _run([_binary(variable), "validate", f"--config={config}"], env)


def test_collector_validates_its_config(tmp_path: Path) -> None:
    """``otelcol-otel-service validate`` accepts collector/config.yaml (both stores' endpoints)."""
    for traces, logs in (
        ("tempo:4317", "http://loki:3100/otlp"),
        ("jaeger:4317", "http://victorialogs:9428/insert/opentelemetry"),
    ):
        env = {
            "OTELCOL_STORAGE_DIR": str(tmp_path / "storage"),
            "TRACES_OTLP_ENDPOINT": traces,
            "LOGS_OTLP_ENDPOINT": logs,
        }
        result = _validate("OTELCOL_BIN", REPO / "collector" / "config.yaml", env)
        assert result.returncode == 0, result.stderr


def test_jaeger_validates_its_config(tmp_path: Path) -> None:
    """``jaeger validate`` accepts jaeger/config.yaml, and refuses a copy with a misspelt key."""
    env = {"JAEGER_DATA_DIR": str(tmp_path / "data")}
    config = REPO / "jaeger" / "config.yaml"
    result = _validate("JAEGER_BIN", config, env)
    assert result.returncode == 0, result.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(config.read_text().replace("ephemeral: false", "ephemerall: false"))
    result = _validate("JAEGER_BIN", typo, env)
    assert result.returncode != 0
    assert "ephemerall" in result.stderr, result.stderr


def test_victorialogs_env_names_only_real_flags() -> None:
    """Every VL_* variable in victorialogs/victorialogs.env is a flag of this VictoriaLogs build."""
    result = _run([_binary("VICTORIALOGS_BIN"), "-help"], {})
    help_text = result.stdout + result.stderr
    flags = set(re.findall(r"^\s+-([\w.]+)\b", help_text, re.MULTILINE))
    assert {"retentionPeriod", "httpListenAddr", "storageDataPath", "envflag.enable"} <= flags
    names = re.findall(r"^VL_(\w+)=", (REPO / "victorialogs" / "victorialogs.env").read_text(), re.MULTILINE)
    assert names, "no VL_ settings"
    # Dots in flag names are underscores in variable names (lib/envflag).
    unknown = [n for n in names if n not in {f.replace(".", "_") for f in flags}]
    assert not unknown, f"not VictoriaLogs flags: {unknown}"
