"""docker-compose.yml and docker-compose.apache.yml read by a real compose implementation.

``docker compose`` v5.6.0 (github.com/docker/compose/v5, built by ``make backends``: ``$COMPOSE_BIN``)
needs no Docker engine for ``config``: it parses, interpolates, merges and validates the files against
the compose specification exactly as ``docker compose up`` would, then prints the resolved model.
Both stacks (docker-compose.yml: the Grafana stack; docker-compose.apache.yml: the Apache-2.0 stack) and
every profile they define must pass ``config -q``; the resolved models are then checked for what each
stack promises, and the services both stacks share for being the same apart from the store endpoints.
A missing binary is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Stack name -> the compose files, in order.
STACKS = {
    "grafana": ("docker-compose.yml",),
    "apache": ("docker-compose.apache.yml",),
}
#: The variables each stack requires (`${VAR:?...}`), with placeholders.
REQUIRED_ENV = {
    "grafana": {"OTELSVC_AUTH_TOKEN": "test-token", "GRAFANA_ADMIN_PASSWORD": "test-password"},
    "apache": {"OTELSVC_AUTH_TOKEN": "test-token"},
}


def _compose_bin() -> str:
    path = os.environ.get("COMPOSE_BIN", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            "docker compose not found: set $COMPOSE_BIN (`make backends` builds docker compose v5.6.0; "
            "`. tools/backends.env` sets it)",
            pytrace=False,
        )
    return path


def compose(
    stack: str, *args: str, profiles: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``docker compose -f <the stack's files> [--profile P]... <args>`` in the repository."""
    files = [a for f in STACKS[stack] for a in ("-f", f)]
    profile_args = [a for p in profiles for a in ("--profile", p)]
    base = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") or k == "COMPOSE_BIN"}
    # No engine is needed or wanted: point DOCKER_HOST at nothing, so any attempt to use one fails.
    base.update(DOCKER_HOST="unix:///nonexistent/docker.sock", DOCKER_CONFIG=str(REPO / ".no-docker-config"))
    return subprocess.run(
        [_compose_bin(), *files, *profile_args, *args],
        cwd=REPO,
        env={**base, **(env if env is not None else REQUIRED_ENV[stack])},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: exit {result.returncode}\n{result.stderr}{result.stdout}"
    return result.stdout


@cache
def profiles(stack: str) -> tuple[str, ...]:
    return tuple(_ok(compose(stack, "config", "--profiles")).split())


@cache
def model(stack: str, profile: tuple[str, ...] = ()) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(_ok(compose(stack, "config", "--format", "json", profiles=profile)))
    return document


def test_compose_version() -> None:
    """The compose implementation is docker compose v5.6.0."""
    out = _ok(subprocess.run([_compose_bin(), "version"], capture_output=True, text=True, check=False))
    assert "v5.6.0" in out, out


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_every_profile_passes_compose_config(stack: str) -> None:
    """``docker compose config -q`` accepts each stack with no profile, each profile, and all of them."""
    # (neither file defines a profile today: every service runs)
    for profile in [(), *((p,) for p in profiles(stack))]:
        _ok(compose(stack, "config", "-q", profiles=profile))
    # With every profile at once, too (`--profile '*'`).
    _ok(compose(stack, "config", "-q", profiles=("*",)))


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_required_secrets_are_enforced(stack: str) -> None:
    """Compose refuses a stack without each variable it requires, and accepts it with exactly those."""
    for missing in REQUIRED_ENV[stack]:
        env = {k: v for k, v in REQUIRED_ENV[stack].items() if k != missing}
        result = compose(stack, "config", "-q", env=env)
        assert result.returncode != 0, missing
        assert missing in result.stderr, result.stderr
    # ... and with exactly these, it accepts the file (the Apache-2.0 stack with the token alone).
    _ok(compose(stack, "config", "-q", env=REQUIRED_ENV[stack]))


def test_grafana_stack_services() -> None:
    """The default stack: Loki, Tempo and Grafana (official images) with the collector feeding them."""
    services = model("grafana")["services"]
    assert set(services) == {
        "otel-service",
        "otel-collector",
        "prometheus",
        "alertmanager",
        "loki",
        "tempo",
        "grafana",
    }
    env = services["otel-collector"]["environment"]
    assert (env["TRACES_OTLP_ENDPOINT"], env["LOGS_OTLP_ENDPOINT"]) == ("tempo:4317", "http://loki:3100/otlp")
    assert services["loki"]["image"].startswith("grafana/loki:")
    assert services["tempo"]["image"].startswith("grafana/tempo:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert services["prometheus"]["image"] == "prom/prometheus:v3.16.0"
    assert services["alertmanager"]["image"] == "prom/alertmanager:v0.35.0"


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container target -> source of every volume of a resolved service."""
    return {v["target"]: v["source"] for v in service.get("volumes", [])}


def test_apache_stack_services() -> None:
    """The Apache-2.0 stack: Jaeger and VictoriaLogs, no AGPL service, its configs, loopback ports."""
    services = model("apache")["services"]
    assert set(services) == {
        "otel-service",
        "otel-collector",
        "prometheus",
        "alertmanager",
        "jaeger",
        "victorialogs",
    }
    env = services["otel-collector"]["environment"]
    assert env["TRACES_OTLP_ENDPOINT"] == "jaeger:4317"
    assert env["LOGS_OTLP_ENDPOINT"] == "http://victorialogs:9428/insert/opentelemetry"
    assert set(services["otel-collector"]["depends_on"]) == {"jaeger", "victorialogs"}
    assert services["jaeger"]["image"] == "jaegertracing/jaeger:2.12.0"
    assert services["victorialogs"]["image"] == "victoriametrics/victoria-logs:v1.52.2"
    # The repository's configuration files, mounted where the services read them.
    assert _mounts(services["jaeger"])["/etc/jaeger/config.yaml"] == str(REPO / "jaeger" / "config.yaml")
    assert "--config=/etc/jaeger/config.yaml" in services["jaeger"]["command"]
    assert services["victorialogs"]["environment"]["VL_retentionPeriod"] == "7d"  # from the env_file
    prom = _mounts(services["prometheus"])
    scrape = REPO / "prometheus" / "scrape" / "jaeger-victorialogs.yml"
    assert prom["/etc/prometheus/scrape/backends.yml"] == str(scrape)
    assert _published(services) == {
        "otel-service": [(5001, 5001)],
        "otel-collector": [(4317, 4317), (4318, 4318)],
        "prometheus": [(9090, 9090)],
        "alertmanager": [(9093, 9093)],
        "jaeger": [(16686, 16686)],
        "victorialogs": [(9428, 9428)],
    }


def _published(services: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """service -> its published (host, container) ports, as compose resolved them; each must be TCP on
    127.0.0.1."""
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            assert (port["host_ip"], port["protocol"]) == ("127.0.0.1", "tcp"), (name, port)
        if service.get("ports"):
            published[name] = sorted((int(p["published"]), int(p["target"])) for p in service["ports"])
    return published


def test_grafana_stack_publishes_on_loopback_only() -> None:
    """Published on 127.0.0.1 only: intake, Grafana, OTLP, Prometheus, Alertmanager, Loki and Tempo APIs."""
    assert _published(model("grafana")["services"]) == {
        "otel-service": [(5001, 5001)],
        "grafana": [(3000, 3000)],
        "otel-collector": [(4317, 4317), (4318, 4318)],  # the app's own OTLP
        "prometheus": [(9090, 9090)],  # the lab's steps: Status > Targets, Alerts
        "alertmanager": [(9093, 9093)],
        "loki": [(3100, 3100)],  # the README's "Following one request" recipes
        "tempo": [(3200, 3200)],
    }


#: What may differ between the two stacks in the services they share (after `docker compose config`).
ALLOWED_DIFFERENCES = {
    "otel-collector": {"environment", "depends_on"},
    "prometheus": {"volumes", "ports", "command"},
    "alertmanager": {"ports"},
    "otel-service": set(),
}


def test_shared_services_are_the_same_in_both_stacks() -> None:
    """The services both stacks share resolve alike but for store endpoints, scrape file and ports."""
    # otel-service, otel-collector, prometheus and alertmanager are copies in the two files; the
    # remote-write flag is for Tempo only.
    grafana, apache = model("grafana")["services"], model("apache")["services"]
    for name, allowed in ALLOWED_DIFFERENCES.items():
        keys = set(grafana[name]) | set(apache[name])
        differ = {k for k in keys if grafana[name].get(k) != apache[name].get(k)}
        assert differ <= allowed, (name, {k: (grafana[name].get(k), apache[name].get(k)) for k in differ})
    col_g, col_a = grafana["otel-collector"]["environment"], apache["otel-collector"]["environment"]
    assert {k for k in col_g.keys() | col_a.keys() if col_g.get(k) != col_a.get(k)} == {
        "TRACES_OTLP_ENDPOINT",
        "LOGS_OTLP_ENDPOINT",
    }
    prom_g, prom_a = grafana["prometheus"]["command"], apache["prometheus"]["command"]
    assert set(prom_g) ^ set(prom_a) == {"--web.enable-remote-write-receiver"}
    mounts_g, mounts_a = _mounts(grafana["prometheus"]), _mounts(apache["prometheus"])
    assert {t for t in mounts_g.keys() | mounts_a.keys() if mounts_g.get(t) != mounts_a.get(t)} == {
        "/etc/prometheus/scrape/backends.yml"
    }
