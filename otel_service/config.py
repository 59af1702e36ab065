"""Every setting, declared once: the fields of ``Settings`` are the table.

Each field names its environment variable, default, type (a ``Literal`` where it is a choice) and help;
``Settings.from_env``, ``otel-service --help`` and the README's settings table are all built from the
fields. Standard OpenTelemetry variables keep their standard meaning; the service's own use the
``OTELSVC_`` prefix. Read once (``Settings.from_env(os.environ)``, or any mapping in tests), then passed
down, frozen. ``Settings()`` is what an empty environment gives.

Length: one row per setting (43 of them) and their parsers; split, the table would not be one table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

__all__ = [
    "AUTO_INTAKE_PROCESSES",
    "ENVIRONMENT",
    "MAX_INTAKE_PROCESSES",
    "README_END",
    "README_START",
    "STORE_FILE",
    "Settings",
    "SettingsError",
    "is_loopback",
    "markdown_table",
    "settings_table",
    "usable_cpus",
]

MAX_INTAKE_PROCESSES = 32
#: ``OTELSVC_INTAKE_PROCESSES=auto`` (the default) starts one per usable CPU, up to this many: two
#: intake processes and the export process fill two cores; past that, measure before adding more.
AUTO_INTAKE_PROCESSES = 2
_CGROUP = Path("/sys/fs/cgroup")
_T = TypeVar("_T")

Protocol = Literal["grpc", "http/protobuf"]
Fsync = Literal["never", "interval", "always"]
ExportMode = Literal["process", "thread"]
LogLevel = Literal["debug", "info", "warning", "error"]
Switch = Literal["on", "off"]
#: The event store's file when ``OTELSVC_STORE_PATH`` is unset: in the spool directory.
STORE_FILE = "events.sqlite"


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


# -- how a variable's text becomes a value: each parser gets (variable, text) -----------------------


def _integer(minimum: int = 0, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
        if value < minimum:
            raise SettingsError(f"{name} must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name} must be {minimum}..{maximum}, got {value}")
        return value

    return parse


def _seconds(minimum: int = 0, *, millis: bool = False) -> Callable[[str, str], float]:
    """A whole number of seconds, or of milliseconds (the OTEL_* convention), as float seconds."""
    integer = _integer(minimum)
    return lambda name, raw: integer(name, raw) / (1000 if millis else 1)


def _text(name: str, raw: str) -> str:
    return raw


def _lower(name: str, raw: str) -> str:
    return raw.lower()


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _pairs(name: str, raw: str) -> dict[str, str]:
    """``key=value,key=value`` with percent-encoded keys and values (the OpenTelemetry format)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        if "=" in item:
            key, _, value = item.partition("=")
            if key.strip():
                out[unquote(key.strip())] = unquote(value.strip())
    return out


def _items(name: str, raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _endpoint(name: str, raw: str) -> str:
    return raw.rstrip("/")


def _intake_processes(name: str, raw: str) -> int | None:
    """A number of processes, or ``None`` for ``auto`` (resolved by ``from_env``)."""
    if raw.lower() == "auto":
        return None
    return _integer(1, MAX_INTAKE_PROCESSES)(name, raw)


def _setting(
    env: str,
    default: _T,
    help: str,
    *,
    parse: Callable[[str, str], Any] = _text,
    shown: str | None = None,
    strip: bool = True,
) -> _T:
    """One row of the table: a dataclass field carrying its variable, parser and help; ``shown``: how
    ``--help`` and the README state the default."""
    metadata = {"env": env, "parse": parse, "help": help, "shown": shown, "strip": strip}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)  # type: ignore[return-value]
    return dataclasses.field(default=default, metadata=metadata)


def _measured(
    env: str, factory: Callable[[], _T], help: str, *, parse: Callable[[str, str], Any], shown: str
) -> _T:
    """A row whose default is measured when read (the spool directory, the intake processes)."""
    metadata = {"env": env, "parse": parse, "help": help, "shown": shown, "strip": True}
    return dataclasses.field(default_factory=factory, metadata=metadata)


def usable_cpus(cgroup: Path = _CGROUP) -> int:
    """CPUs this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    try:
        return max(1, min(cpus, -(-int(quota) // int(period))))
    except (ValueError, ZeroDivisionError):
        return cpus


def _auto_intake_processes(cpus: int) -> int:
    return max(1, min(AUTO_INTAKE_PROCESSES, cpus))


def _default_spool(state_home: str | None = None, home: str | None = None) -> Path:
    """``$XDG_STATE_HOME/otel-service/spool``, else under ``~/.local/state``."""
    state = Path(state_home) if state_home else Path(home or Path.home()) / ".local" / "state"
    return state / "otel-service" / "spool"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Settings:
    """The sidecar's settings; each field is one row of the settings table."""

    # -- standard OpenTelemetry variables ------------------------------------------------------
    service_name: str = _setting(
        "OTEL_SERVICE_NAME",
        "otel-service",
        "service.name of everything exported (else service.name in OTEL_RESOURCE_ATTRIBUTES)",
    )
    resource_attributes: Mapping[str, str] = _setting(
        "OTEL_RESOURCE_ATTRIBUTES",
        {},
        "extra resource attributes, key=value,key=value",
        parse=_pairs,
        shown="none",
    )
    otlp_endpoint: str | None = _setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        None,
        "collector base URL; unset = embedded default (no OTLP export)",
        parse=_endpoint,
    )
    otlp_protocol: Protocol = _setting("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", "the OTLP transport")
    otlp_headers: Mapping[str, str] = _setting(
        "OTEL_EXPORTER_OTLP_HEADERS",
        {},
        "headers sent with every export, key=value,key=value",
        parse=_pairs,
        shown="none",
    )
    otlp_timeout: float = _setting(
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        10.0,
        "export timeout in ms",
        parse=_seconds(1, millis=True),
        shown="10000",
    )
    metric_export_interval: float = _setting(
        "OTEL_METRIC_EXPORT_INTERVAL",
        60.0,
        "metric export interval in ms",
        parse=_seconds(1, millis=True),
        shown="60000",
    )
    metric_export_timeout: float = _setting(
        "OTEL_METRIC_EXPORT_TIMEOUT",
        30.0,
        "metric export timeout in ms",
        parse=_seconds(1, millis=True),
        shown="30000",
    )
    span_schedule_delay: float = _setting(
        "OTEL_BSP_SCHEDULE_DELAY",
        5.0,
        "longest wait before spans are exported, in ms",
        parse=_seconds(0, millis=True),
        shown="5000",
    )
    span_batch_size: int = _setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, "largest span batch", parse=_integer(1)
    )
    log_schedule_delay: float = _setting(
        "OTEL_BLRP_SCHEDULE_DELAY",
        1.0,
        "longest wait before log records are exported, in ms",
        parse=_seconds(0, millis=True),
        shown="1000",
    )
    log_batch_size: int = _setting(
        "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512, "largest log batch", parse=_integer(1)
    )
    # -- the service's own ---------------------------------------------------------------------
    host: str = _setting("OTELSVC_HOST", "127.0.0.1", "address to bind; others need OTELSVC_AUTH_TOKEN")
    port: int = _setting("OTELSVC_PORT", 5001, "port to bind", parse=_integer(0, 65535))
    auth_token: str | None = _setting(
        "OTELSVC_AUTH_TOKEN", None, "bearer token required on intake endpoints when set", strip=False
    )
    spool_dir: Path = _measured(
        "OTELSVC_SPOOL_DIR",
        _default_spool,
        "directory of the durable export spool; a second sidecar on one host needs its own",
        parse=_path,
        shown="$XDG_STATE_HOME/otel-service/spool (~/.local/state/...)",
    )
    spool_max_bytes: int = _setting(
        "OTELSVC_SPOOL_MAX_BYTES",
        1 << 30,
        "bound on undelivered spool bytes; at it intake answers 503 (delivered events wait on disk for "
        "the next metric checkpoint, up to twice this in all)",
        parse=_integer(1 << 16),
        shown="1073741824",
    )
    spool_max_age: float = _setting(
        "OTELSVC_SPOOL_MAX_AGE",
        86_400.0,
        "seconds the oldest undelivered event may wait; beyond, intake answers 503 (0 = no age bound)",
        parse=_seconds(0),
        shown="86400",
    )
    spool_fsync: Fsync = _setting(
        "OTELSVC_SPOOL_FSYNC",
        "never",
        "when to fsync the spool (never: a crash of the process loses nothing, a power loss may; "
        "interval: every 100 ms; always: before each answer)",
    )
    export_mode: ExportMode = _setting(
        "OTELSVC_EXPORT_MODE", "process", "where export runs: a child process, or a thread of the first"
    )
    store: Switch = _setting(
        "OTELSVC_STORE",
        "on",
        "keep every accepted event as a row of the event store (SQLite), read by /analytics",
        parse=_lower,
    )
    store_path: Path | None = _setting(
        "OTELSVC_STORE_PATH",
        None,
        "the event store's SQLite file (WAL; its directory is created)",
        parse=_path,
        shown=f"OTELSVC_SPOOL_DIR/{STORE_FILE}",
    )
    store_retention: float = _setting(
        "OTELSVC_STORE_RETENTION",
        604_800.0,
        "seconds an event's row is kept, by the event's time (0 = no age bound)",
        parse=_seconds(0),
        shown="604800",
    )
    store_max_bytes: int = _setting(
        "OTELSVC_STORE_MAX_BYTES",
        1 << 30,
        "bound on the event store's pages in use; beyond it the oldest rows are deleted",
        parse=_integer(1 << 20),
        shown="1073741824",
    )
    intake_processes: int = _measured(
        "OTELSVC_INTAKE_PROCESSES",
        lambda: _auto_intake_processes(usable_cpus()),
        "HTTP intake processes sharing the port (SO_REUSEPORT), 1..32 or auto; more take more events/s "
        "on more cores; rate limits then apply per process",
        parse=_intake_processes,
        shown=f"auto = the usable CPUs, at most {AUTO_INTAKE_PROCESSES}",
    )
    max_connections: int = _setting(
        "OTELSVC_MAX_CONNECTIONS",
        512,
        "open connections per intake process; beyond, new ones are closed at once (counted)",
        parse=_integer(1),
    )
    max_connections_per_client: int = _setting(
        "OTELSVC_MAX_CONNECTIONS_PER_CLIENT",
        256,
        "open connections per client address and intake process",
        parse=_integer(1),
    )
    header_timeout: float = _setting(
        "OTELSVC_HEADER_TIMEOUT",
        10.0,
        "seconds a new connection has to send its first request's headers",
        parse=_seconds(1),
        shown="10",
    )
    keepalive_timeout: float = _setting(
        "OTELSVC_KEEPALIVE_TIMEOUT",
        30.0,
        "seconds an idle keep-alive connection is kept open",
        parse=_seconds(1),
        shown="30",
    )
    max_body_bytes: int = _setting(
        "OTELSVC_MAX_BODY_BYTES",
        1 << 20,
        "largest request body after decompression",
        parse=_integer(1024),
        shown="1048576",
    )
    max_batch_items: int = _setting(
        "OTELSVC_MAX_BATCH_ITEMS", 1000, "most events in one request", parse=_integer(1)
    )
    max_tenants: int = _setting(
        "OTELSVC_MAX_TENANTS", 200, "distinct business_id values kept as a metric label", parse=_integer(1)
    )
    max_label_values: int = _setting(
        "OTELSVC_MAX_LABEL_VALUES", 200, "distinct values per other metric label", parse=_integer(1)
    )
    label_idle_seconds: float = _setting(
        "OTELSVC_LABEL_IDLE_SECONDS",
        3600.0,
        "seconds unseen after which a tenant, model or other label value gives its place up to a new "
        "value once the cap is reached (its series merge into _OTHER, so totals stay whole); 0 = never",
        parse=_seconds(0),
        shown="3600",
    )
    keep_tenants: tuple[str, ...] = _setting(
        "OTELSVC_KEEP_TENANTS",
        (),
        "comma-separated business_id values always kept as labels (beyond the cap, never aged out)",
        parse=_items,
        shown="none",
    )
    keep_models: tuple[str, ...] = _setting(
        "OTELSVC_KEEP_MODELS",
        (),
        "comma-separated model names always kept as labels (beyond the cap, never aged out)",
        parse=_items,
        shown="none",
    )
    cardinality_limit: int = _setting(
        "OTELSVC_CARDINALITY_LIMIT",
        2000,
        "series per metric before the SDK's overflow series",
        parse=_integer(10),
    )
    rate_limit: float = _setting(
        "OTELSVC_RATE_LIMIT", 0.0, "events per second per client; 0 = off", parse=_seconds(0), shown="0"
    )
    cors_origins: tuple[str, ...] = _setting(
        "OTELSVC_CORS_ORIGINS", (), "comma-separated origins allowed by CORS", parse=_items, shown="none"
    )
    allowed_hosts: tuple[str, ...] = _setting(
        "OTELSVC_ALLOWED_HOSTS",
        (),
        "comma-separated Host names served besides loopback ones while OTELSVC_AUTH_TOKEN is unset "
        "(a guard against DNS rebinding; with a token, the token is the guard)",
        parse=_items,
        shown="none",
    )
    price_table: Path | None = _setting(
        "OTELSVC_PRICE_TABLE", None, "path of a JSON price table", parse=_path, shown="the packaged one"
    )
    default_provider: str = _setting(
        "OTELSVC_DEFAULT_PROVIDER", "_OTHER", "gen_ai.provider.name when neither sent nor inferable"
    )
    read_after_write: float = _setting(
        "OTELSVC_READ_AFTER_WRITE_MS",
        0.25,
        "how long /metrics and /health/detailed wait for export to record every event acknowledged "
        "before the read (read-your-writes); past it they answer as they are and count a stale read; "
        "0 = no wait",
        parse=_seconds(0, millis=True),
        shown="250",
    )
    shutdown_timeout: float = _setting(
        "OTELSVC_SHUTDOWN_TIMEOUT",
        10.0,
        "seconds to flush on SIGTERM before exiting",
        parse=_seconds(1),
        shown="10",
    )
    log_level: LogLevel = _setting(
        "OTELSVC_LOG_LEVEL", "info", "level of the service's own diagnostics", parse=_lower
    )

    @property
    def store_file(self) -> Path:
        """Where the event store is: ``OTELSVC_STORE_PATH``, else in the spool directory."""
        return self.store_path if self.store_path is not None else self.spool_dir / STORE_FILE

    @property
    def export_delay(self) -> float:
        """How long the exporter waits to fill a batch: the shorter of the two standard delays."""
        return min(self.span_schedule_delay, self.log_schedule_delay)

    @property
    def export_batch_size(self) -> int:
        return min(self.span_batch_size, self.log_batch_size)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, cpus: int | None = None) -> Settings:
        """Read every setting from ``env`` (default: ``os.environ``) and check them; ``cpus``: the
        usable CPUs for ``OTELSVC_INTAKE_PROCESSES=auto`` (default: measured)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for row in dataclasses.fields(cls):
            meta = row.metadata
            raw = env.get(meta["env"], "")
            raw = raw.strip() if meta["strip"] else raw
            value = meta["parse"](meta["env"], raw) if raw else None
            choices = _CHOICES.get(row.name)
            if choices is not None and value is not None and value not in choices:
                raise SettingsError(f"{meta['env']} must be {_one_of(choices)}, got {raw!r}")
            if value is not None:
                values[row.name] = value
        # Defaults that depend on other variables, or on the machine:
        if "service_name" not in values and "service.name" in values.get("resource_attributes", {}):
            values["service_name"] = values["resource_attributes"]["service.name"]
        if "spool_dir" not in values:
            values["spool_dir"] = _default_spool(env.get("XDG_STATE_HOME"), env.get("HOME"))
        if "intake_processes" not in values:  # unset or auto
            values["intake_processes"] = _auto_intake_processes(usable_cpus() if cpus is None else cpus)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse unsafe or impossible combinations."""
        if not is_loopback(self.host) and not self.auth_token:
            raise SettingsError(
                f"refusing to bind {self.host}: binding beyond loopback needs OTELSVC_AUTH_TOKEN"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"OTELSVC_PORT must be 0..65535, got {self.port}")
        if not 1 <= self.intake_processes <= MAX_INTAKE_PROCESSES:
            raise SettingsError(
                f"OTELSVC_INTAKE_PROCESSES must be 1..{MAX_INTAKE_PROCESSES}, got {self.intake_processes}"
            )


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _literal_choices() -> dict[str, tuple[str, ...]]:
    hints = typing.get_type_hints(Settings)
    return {
        name: tuple(str(arg) for arg in typing.get_args(hint))
        for name, hint in hints.items()
        if typing.get_origin(hint) is Literal
    }


#: The allowed values of each ``Literal`` setting, from its type.
_CHOICES = _literal_choices()


def _shown(row: dataclasses.Field[Any]) -> str:
    if row.metadata["shown"] is not None:
        return str(row.metadata["shown"])
    return "unset" if row.default is None else str(row.default)


def _meaning(row: dataclasses.Field[Any]) -> str:
    choices = _CHOICES.get(row.name)
    text = str(row.metadata["help"])
    return f"{text}: {_one_of(choices)}" if choices else text


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, in declaration order."""
    return [(row.metadata["env"], _shown(row), _meaning(row)) for row in dataclasses.fields(Settings)]


#: Every variable and its meaning (with the default), for ``--help`` and tests.
ENVIRONMENT: dict[str, str] = {env: f"{text} (default: {default})" for env, default, text in settings_table()}


#: The README's settings table stands between these lines (``make settings-table`` rewrites it).
README_START = "<!-- settings table: written by `make settings-table` from otel_service/config.py -->"
README_END = "<!-- end of the settings table -->"


def markdown_table() -> str:
    """The settings table in Markdown, between ``README_START`` and ``README_END``."""
    rows = [f"| `{name}` | `{default}` | {text} |" for name, default, text in settings_table()]
    return "\n".join(
        [README_START, "", "| variable | default | meaning |", "| --- | --- | --- |", *rows, "", README_END]
    )
