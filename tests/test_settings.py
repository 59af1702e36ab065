"""Settings read once from an environment mapping: defaults, standard OTEL_* variables, errors."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from otel_service import cli as cli_module
from otel_service import config as settings_module
from otel_service.config import ENVIRONMENT, Settings, SettingsError
from otel_service.model.validation import Limits

BASE = {"XDG_STATE_HOME": "/state"}
DEFAULT = Settings(spool_dir=Path("/state/otel-service/spool"), intake_processes=1)


def _from(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env}, cpus=1)  # auto: one intake process, as in DEFAULT


def test_defaults() -> None:
    """An empty environment gives loopback:5001, http/protobuf, no OTLP endpoint and the documented values."""
    settings = _from()
    assert settings == DEFAULT
    assert (settings.host, settings.port, settings.otlp_protocol, settings.otlp_endpoint) == (
        "127.0.0.1",
        5001,
        "http/protobuf",
        None,
    )
    assert settings.auth_token is None
    assert settings.max_batch_items == Limits().max_items


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({"XDG_STATE_HOME": "/xdg"}, Path("/xdg/otel-service/spool"), id="xdg"),
        pytest.param({"HOME": "/home/u"}, Path("/home/u/.local/state/otel-service/spool"), id="home"),
        pytest.param(
            {"HOME": "/h", "OTELSVC_SPOOL_DIR": " /data/spool "}, Path("/data/spool"), id="explicit"
        ),
    ],
)
def test_spool_dir_default_follows_xdg(env: dict[str, str], expected: Path) -> None:
    """The spool lives under $XDG_STATE_HOME (or ~/.local/state) unless OTELSVC_SPOOL_DIR says otherwise."""
    assert Settings.from_env(env).spool_dir == expected


#: One example value for every documented variable, and what it changes.
EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "OTEL_SERVICE_NAME": ("chatbot", {"service_name": "chatbot"}),
    "OTEL_RESOURCE_ATTRIBUTES": (
        "deployment.environment=prod, team = ml,broken,=x",
        {"resource_attributes": {"deployment.environment": "prod", "team": "ml"}},
    ),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("http://collector:4318/", {"otlp_endpoint": "http://collector:4318"}),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("grpc", {"otlp_protocol": "grpc"}),
    "OTEL_EXPORTER_OTLP_HEADERS": (
        "api-key=abc==, x-tenant = acme",
        {"otlp_headers": {"api-key": "abc==", "x-tenant": "acme"}},
    ),
    "OTEL_EXPORTER_OTLP_TIMEOUT": ("2500", {"otlp_timeout": 2.5}),
    "OTEL_METRIC_EXPORT_INTERVAL": ("15000", {"metric_export_interval": 15.0}),
    "OTEL_METRIC_EXPORT_TIMEOUT": ("5000", {"metric_export_timeout": 5.0}),
    "OTEL_BSP_SCHEDULE_DELAY": ("200", {"span_schedule_delay": 0.2}),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("64", {"span_batch_size": 64}),
    "OTEL_BLRP_SCHEDULE_DELAY": ("300", {"log_schedule_delay": 0.3}),
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": ("32", {"log_batch_size": 32}),
    "OTELSVC_HOST": ("::1", {"host": "::1"}),
    "OTELSVC_PORT": ("8080", {"port": 8080}),
    "OTELSVC_AUTH_TOKEN": ("s3cret", {"auth_token": "s3cret"}),
    "OTELSVC_SPOOL_DIR": ("/var/spool/otel", {"spool_dir": Path("/var/spool/otel")}),
    "OTELSVC_SPOOL_MAX_BYTES": ("65536", {"spool_max_bytes": 65536}),
    "OTELSVC_SPOOL_FSYNC": ("always", {"spool_fsync": "always"}),
    "OTELSVC_SPOOL_MAX_AGE": ("600", {"spool_max_age": 600.0}),
    "OTELSVC_EXPORT_MODE": ("thread", {"export_mode": "thread"}),
    "OTELSVC_STORE": ("OFF", {"store": "off"}),
    "OTELSVC_STORE_PATH": ("/var/lib/otel/e.sqlite", {"store_path": Path("/var/lib/otel/e.sqlite")}),
    "OTELSVC_STORE_RETENTION": ("86400", {"store_retention": 86400.0}),
    "OTELSVC_STORE_MAX_BYTES": ("1048576", {"store_max_bytes": 1048576}),
    "OTELSVC_INTAKE_PROCESSES": ("3", {"intake_processes": 3}),
    "OTELSVC_MAX_CONNECTIONS": ("64", {"max_connections": 64}),
    "OTELSVC_MAX_CONNECTIONS_PER_CLIENT": ("8", {"max_connections_per_client": 8}),
    "OTELSVC_HEADER_TIMEOUT": ("3", {"header_timeout": 3.0}),
    "OTELSVC_KEEPALIVE_TIMEOUT": ("5", {"keepalive_timeout": 5.0}),
    "OTELSVC_MAX_BODY_BYTES": ("2048", {"max_body_bytes": 2048}),
    "OTELSVC_MAX_BATCH_ITEMS": ("10", {"max_batch_items": 10}),
    "OTELSVC_MAX_TENANTS": ("5", {"max_tenants": 5}),
    "OTELSVC_READ_AFTER_WRITE_MS": ("100", {"read_after_write": 0.1}),
    "OTELSVC_LABEL_IDLE_SECONDS": ("600", {"label_idle_seconds": 600.0}),
    "OTELSVC_KEEP_TENANTS": ("acme, globex,", {"keep_tenants": ("acme", "globex")}),
    "OTELSVC_KEEP_MODELS": ("gpt-4o", {"keep_models": ("gpt-4o",)}),
    "OTELSVC_MAX_LABEL_VALUES": ("7", {"max_label_values": 7}),
    "OTELSVC_CARDINALITY_LIMIT": ("100", {"cardinality_limit": 100}),
    "OTELSVC_RATE_LIMIT": ("50", {"rate_limit": 50.0}),
    "OTELSVC_CORS_ORIGINS": (
        "https://a.example, https://b.example,",
        {"cors_origins": ("https://a.example", "https://b.example")},
    ),
    "OTELSVC_ALLOWED_HOSTS": ("sidecar.local, otel,", {"allowed_hosts": ("sidecar.local", "otel")}),
    "OTELSVC_PRICE_TABLE": ("/etc/prices.json", {"price_table": Path("/etc/prices.json")}),
    "OTELSVC_DEFAULT_PROVIDER": ("openai", {"default_provider": "openai"}),
    "OTELSVC_SHUTDOWN_TIMEOUT": ("3", {"shutdown_timeout": 3.0}),
    "OTELSVC_LOG_LEVEL": ("DEBUG", {"log_level": "debug"}),
}


@pytest.mark.parametrize(("name", "value", "changes"), [(n, v, c) for n, (v, c) in EXAMPLES.items()])
def test_each_variable_changes_exactly_its_setting(name: str, value: str, changes: dict[str, Any]) -> None:
    """Setting one variable changes its setting (ms become seconds) and nothing else."""
    assert _from(**{name: value}) == dataclasses.replace(DEFAULT, **changes)


def test_examples_cover_every_documented_variable() -> None:
    """The table above exercises every variable in ENVIRONMENT."""
    assert set(EXAMPLES) == set(ENVIRONMENT)


def _names_read_by_settings_module() -> set[str]:
    """OTEL* string constants in config.py outside the ENVIRONMENT table itself."""
    tree = ast.parse(Path(settings_module.__file__).read_text("utf-8"))
    skip: set[int] = set()
    for node in ast.walk(tree):
        targets = [node.target] if isinstance(node, ast.AnnAssign) else getattr(node, "targets", [])
        if any(isinstance(t, ast.Name) and t.id == "ENVIRONMENT" for t in targets):
            skip.update(id(child) for child in ast.walk(node))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and re.fullmatch(r"OTEL[A-Z0-9_]*", node.value)
    }


def test_environment_lists_exactly_the_variables_read() -> None:
    """Every ENVIRONMENT name is read in config.py, and every OTEL* name read there is documented."""
    read = _names_read_by_settings_module()
    assert read == set(ENVIRONMENT)


def test_environment_is_exported_with_descriptions() -> None:
    """The config module exposes the table, and every entry has a description."""
    assert settings_module.ENVIRONMENT is ENVIRONMENT
    assert all(description.strip() for description in ENVIRONMENT.values())
    assert not [
        name for name in ENVIRONMENT if name.startswith("OTEL_SERVICE_") and name != "OTEL_SERVICE_NAME"
    ]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "otel-service", id="neither"),
        pytest.param(
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource"}, "from-resource", id="resource"
        ),
        pytest.param(
            {"OTEL_SERVICE_NAME": "from-env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource"},
            "from-env",
            id="service-name-wins",
        ),
        pytest.param(
            {"OTEL_SERVICE_NAME": "  ", "OTEL_RESOURCE_ATTRIBUTES": "a=b,service.name=res"},
            "res",
            id="blank-name",
        ),
    ],
)
def test_service_name_precedence(env: dict[str, str], expected: str) -> None:
    """OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES, which wins over the default."""
    assert _from(**env).service_name == expected


def test_otlp_headers_values_are_percent_decoded() -> None:
    """Header values use the W3C Baggage format: percent-encoded, as the OpenTelemetry SDKs decode them."""
    settings = _from(OTEL_EXPORTER_OTLP_HEADERS="Authorization=Basic%20dXNlcjpwYXNz,x-team=a%2Cb")
    assert settings.otlp_headers == {"Authorization": "Basic dXNlcjpwYXNz", "x-team": "a,b"}


def test_resource_attribute_values_are_percent_decoded() -> None:
    """OTEL_RESOURCE_ATTRIBUTES values are percent-decoded as the resource specification requires."""
    settings = _from(OTEL_RESOURCE_ATTRIBUTES="service.name=my%20svc,owner=ml%2Cops")
    assert settings.resource_attributes == {"service.name": "my svc", "owner": "ml,ops"}
    assert settings.service_name == "my svc"


@pytest.mark.parametrize(
    ("env", "delay", "batch"),
    [
        pytest.param({}, 1.0, 512, id="defaults"),
        pytest.param(
            {"OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BLRP_SCHEDULE_DELAY": "300"}, 0.2, 512, id="bsp"
        ),
        pytest.param(
            {"OTEL_BLRP_SCHEDULE_DELAY": "50", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"},
            0.05,
            100,
            id="blrp-delay-bsp-batch",
        ),
        pytest.param(
            {"OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "20", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "30"},
            1.0,
            20,
            id="blrp-batch",
        ),
        pytest.param({"OTEL_BSP_SCHEDULE_DELAY": "0"}, 0.0, 512, id="zero-delay"),
    ],
)
def test_export_delay_and_batch_size_take_the_shorter(env: dict[str, str], delay: float, batch: int) -> None:
    """The exporter waits the shorter of the BSP/BLRP delays and sends the smaller of their batch sizes."""
    settings = _from(**env)
    assert (settings.export_delay, settings.export_batch_size) == (pytest.approx(delay), batch)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OTELSVC_PORT", "abc"),
        ("OTELSVC_PORT", "-1"),
        ("OTELSVC_PORT", "70000"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1.5"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "fast"),
        ("OTEL_METRIC_EXPORT_TIMEOUT", "-5"),
        ("OTEL_BSP_SCHEDULE_DELAY", "5s"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "many"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "udp"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC"),
        ("OTELSVC_SPOOL_FSYNC", "sometimes"),
        ("OTELSVC_SPOOL_FSYNC", "ALWAYS!"),
        ("OTELSVC_EXPORT_MODE", "fork"),
        ("OTELSVC_STORE", "yes"),
        ("OTELSVC_STORE_RETENTION", "7d"),
        ("OTELSVC_STORE_MAX_BYTES", "1024"),
        ("OTELSVC_SPOOL_MAX_BYTES", "1024"),
        ("OTELSVC_MAX_BODY_BYTES", "1e6"),
        ("OTELSVC_MAX_BATCH_ITEMS", "0"),
        ("OTELSVC_CARDINALITY_LIMIT", "5"),
        ("OTELSVC_SHUTDOWN_TIMEOUT", "0"),
    ],
)
def test_invalid_values_raise_naming_the_variable(name: str, value: str) -> None:
    """A value we cannot use raises SettingsError whose message names the variable."""
    with pytest.raises(SettingsError, match=re.escape(name)):
        _from(**{name: value})


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_binding_beyond_loopback_needs_a_token(host: str) -> None:
    """A non-loopback address without OTELSVC_AUTH_TOKEN is refused; with a token it is allowed."""
    with pytest.raises(SettingsError, match="OTELSVC_AUTH_TOKEN"):
        _from(OTELSVC_HOST=host)
    with pytest.raises(SettingsError, match="OTELSVC_AUTH_TOKEN"):
        _from(OTELSVC_HOST=host, OTELSVC_AUTH_TOKEN="")
    settings = _from(OTELSVC_HOST=host, OTELSVC_AUTH_TOKEN="t0ken")
    assert (settings.host, settings.auth_token) == (host, "t0ken")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", ""])
def test_loopback_needs_no_token(host: str) -> None:
    """Loopback addresses (and an empty value, meaning the default) bind without a token."""
    assert _from(OTELSVC_HOST=host).host == (host or "127.0.0.1")


def test_the_store_lives_in_the_spool_directory_unless_told() -> None:
    """The event store's file defaults to the spool directory's events.sqlite; OTELSVC_STORE_PATH moves it."""
    assert _from(OTELSVC_SPOOL_DIR="/data/spool").store_file == Path("/data/spool/events.sqlite")
    assert _from(OTELSVC_STORE_PATH="/db/e.sqlite").store_file == Path("/db/e.sqlite")


def test_settings_are_frozen() -> None:
    """Settings are read once and cannot be changed afterwards."""
    settings = _from()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("value", "cpus", "expected"), [("", 1, 1), ("", 2, 2), ("auto", 16, 2), ("AUTO", 1, 1)]
)
def test_intake_processes_default_to_the_usable_cpus_at_most_two(
    value: str, cpus: int, expected: int
) -> None:
    """OTELSVC_INTAKE_PROCESSES unset or auto: one per usable CPU, at most two; a number is taken as is."""
    assert (
        Settings.from_env({**BASE, "OTELSVC_INTAKE_PROCESSES": value}, cpus=cpus).intake_processes == expected
    )
    assert Settings.from_env({**BASE, "OTELSVC_INTAKE_PROCESSES": "4"}, cpus=cpus).intake_processes == 4


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 64), ("150000 100000\n", 2), ("50000 100000\n", 1), ("800000 100000\n", 8), (None, 64)],
)
def test_usable_cpus_honour_a_cgroup_quota(
    cpu_max: str | None, expected: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's cgroup v2 CPU quota (cpu.max) bounds the CPUs counted, rounded up; none: the affinity."""
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _: set(range(64)))
    if cpu_max is not None:
        (tmp_path / "cpu.max").write_text(cpu_max)
    assert settings_module.usable_cpus(tmp_path) == expected


def test_settings_equal_an_empty_environment() -> None:
    """Settings() is what an empty environment gives: every default is written once, in the table."""
    assert Settings() == Settings.from_env({})


def test_every_field_is_a_row_of_the_table() -> None:
    """Each setting declares its variable, help and parser; variables are unique."""
    rows = dataclasses.fields(Settings)
    assert all({"env", "help", "parse"} <= set(row.metadata) and row.metadata["help"] for row in rows)
    assert len({row.metadata["env"] for row in rows}) == len(rows)
    assert [name for name, _, _ in settings_module.settings_table()] == [row.metadata["env"] for row in rows]


@pytest.mark.parametrize(
    ("name", "choices"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc or http/protobuf"),
        ("OTELSVC_SPOOL_FSYNC", "never, interval or always"),
        ("OTELSVC_EXPORT_MODE", "process or thread"),
        ("OTELSVC_STORE", "on or off"),
        ("OTELSVC_LOG_LEVEL", "debug, info, warning or error"),
    ],
)
def test_choices_come_from_the_literal_type(name: str, choices: str) -> None:
    """A choice setting refuses other values, and the message lists the choices its type allows."""
    with pytest.raises(SettingsError, match=re.escape(f"{name} must be {choices}, got 'nope'")):
        _from(**{name: "nope"})


def _readme_settings_rows() -> list[tuple[str, str, str]]:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    start = readme.index(settings_module.README_START)
    end = readme.index(settings_module.README_END)
    rows = []
    for line in readme[start:end].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[2]))
    return rows


def test_the_readme_table_is_the_settings_table() -> None:
    """README's settings table lists every variable with the default and meaning config.py declares."""
    assert _readme_settings_rows() == settings_module.settings_table()


def test_help_lists_every_setting_with_its_default() -> None:
    """``otel-service --help`` shows every variable of the table with its default."""
    epilog = cli_module.help_epilog()
    for name, default, text in settings_module.settings_table():
        line = f"{text} (default: {default})"
        assert re.search(rf"^  {re.escape(name)} +{re.escape(line)}$", epilog, re.M)
