"""Settings, read once from the environment into a frozen object.

Standard OpenTelemetry variables keep their standard meaning; the service's own use the ``OTELSVC_``
prefix. Every variable is listed in ``ENVIRONMENT`` with its default and meaning.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from .model.validation import Limits

__all__ = ["ENVIRONMENT", "Settings", "SettingsError", "usable_cpus"]

ENVIRONMENT: dict[str, str] = {
    "OTEL_SERVICE_NAME": "service.name of everything exported (default: otel-service)",
    "OTEL_RESOURCE_ATTRIBUTES": "extra resource attributes, key=value,key=value",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "collector base URL; unset = embedded default (no OTLP export)",
    "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc or http/protobuf (default: http/protobuf)",
    "OTEL_EXPORTER_OTLP_HEADERS": "headers sent with every export, key=value,key=value",
    "OTEL_EXPORTER_OTLP_TIMEOUT": "export timeout in ms (default: 10000)",
    "OTEL_METRIC_EXPORT_INTERVAL": "metric export interval in ms (default: 60000)",
    "OTEL_METRIC_EXPORT_TIMEOUT": "metric export timeout in ms (default: 30000)",
    "OTEL_BSP_SCHEDULE_DELAY": "longest wait before spans are exported, in ms (default: 5000)",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "largest span batch (default: 512)",
    "OTEL_BLRP_SCHEDULE_DELAY": "longest wait before log records are exported, in ms (default: 1000)",
    "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "largest log batch (default: 512)",
    "OTELSVC_HOST": "address to bind (default: 127.0.0.1; others need OTELSVC_AUTH_TOKEN)",
    "OTELSVC_PORT": "port to bind (default: 5001)",
    "OTELSVC_AUTH_TOKEN": "bearer token required on intake endpoints when set",
    "OTELSVC_SPOOL_DIR": "directory of the durable export spool (default: $XDG_STATE_HOME/otel-service)",
    "OTELSVC_SPOOL_MAX_BYTES": "spool size bound; at it intake answers 503 (default: 1073741824)",
    "OTELSVC_SPOOL_MAX_AGE": "seconds the oldest undelivered event may wait; beyond, intake answers "
    "503 (default: 86400; 0 = no age bound)",
    "OTELSVC_SPOOL_FSYNC": "never | interval | always: when to fsync the spool (default: never; "
    "a crash of the process loses nothing, a power loss may)",
    "OTELSVC_EXPORT_MODE": "process (export in a child process, default) or thread",
    "OTELSVC_INTAKE_PROCESSES": "HTTP intake processes sharing the port (SO_REUSEPORT), 1..32 or auto; "
    "more take more events/s on more cores; rate limits then apply per process (default: auto = the "
    "usable CPUs, at most 2)",
    "OTELSVC_MAX_BODY_BYTES": "largest request body after decompression (default: 1048576)",
    "OTELSVC_MAX_BATCH_ITEMS": "most events in one request (default: 1000)",
    "OTELSVC_MAX_TENANTS": "distinct business_id values kept as a metric label (default: 200)",
    "OTELSVC_MAX_LABEL_VALUES": "distinct values per other metric label (default: 200)",
    "OTELSVC_CARDINALITY_LIMIT": "series per metric before the SDK's overflow series (default: 2000)",
    "OTELSVC_RATE_LIMIT": "events per second per client; 0 = off (default: 0)",
    "OTELSVC_CORS_ORIGINS": "comma-separated origins allowed by CORS (default: none)",
    "OTELSVC_PRICE_TABLE": "path of a JSON price table (default: the packaged one)",
    "OTELSVC_DEFAULT_PROVIDER": "gen_ai.provider.name when neither sent nor inferable (default: _OTHER)",
    "OTELSVC_SHUTDOWN_TIMEOUT": "seconds to flush on SIGTERM before exiting (default: 10)",
    "OTELSVC_LOG_LEVEL": "level of the service's own diagnostics (default: info)",
}


MAX_INTAKE_PROCESSES = 32
#: ``OTELSVC_INTAKE_PROCESSES=auto`` (the default) starts one per usable CPU, up to this many: two
#: intake processes and the export process fill two cores; past that, measure before adding more.
AUTO_INTAKE_PROCESSES = 2
_CGROUP = Path("/sys/fs/cgroup")


class SettingsError(ValueError):
    """A setting has a value we cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be >= {minimum}, got {value}")
    return value


def _pairs(raw: str) -> dict[str, str]:
    """``key=value,key=value`` with percent-encoded keys and values (the OpenTelemetry format)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        if "=" in item:
            key, _, value = item.partition("=")
            if key.strip():
                out[unquote(key.strip())] = unquote(value.strip())
    return out


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _intake_processes(env: Mapping[str, str], cpus: int) -> int:
    raw = env.get("OTELSVC_INTAKE_PROCESSES", "").strip().lower()
    if raw in ("", "auto"):
        return max(1, min(AUTO_INTAKE_PROCESSES, cpus))
    return _int(env, "OTELSVC_INTAKE_PROCESSES", 1, 1)


def _default_spool(env: Mapping[str, str]) -> Path:
    state = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "state")
    return Path(state) / "otel-service" / "spool"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5001
    auth_token: str | None = None
    service_name: str = "otel-service"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    otlp_endpoint: str | None = None
    otlp_protocol: str = "http/protobuf"
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    otlp_timeout: float = 10.0
    metric_export_interval: float = 60.0
    metric_export_timeout: float = 30.0
    span_schedule_delay: float = 5.0
    span_batch_size: int = 512
    log_schedule_delay: float = 1.0
    log_batch_size: int = 512
    spool_dir: Path = Path(".otel-service-spool")
    spool_max_bytes: int = 1 << 30
    spool_max_age: float = 86_400.0
    spool_fsync: str = "never"
    export_mode: str = "process"
    intake_processes: int = 1
    max_body_bytes: int = 1 << 20
    limits: Limits = field(default_factory=Limits)
    max_tenants: int = 200
    max_label_values: int = 200
    cardinality_limit: int = 2000
    rate_limit: float = 0.0
    cors_origins: tuple[str, ...] = ()
    price_table: Path | None = None
    default_provider: str = "_OTHER"
    shutdown_timeout: float = 10.0
    log_level: str = "info"

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
        usable CPUs (default: measured)."""
        env = os.environ if env is None else env
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip() or "http/protobuf"
        if protocol not in ("grpc", "http/protobuf"):
            raise SettingsError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got {protocol!r}"
            )
        fsync = env.get("OTELSVC_SPOOL_FSYNC", "never").strip() or "never"
        if fsync not in ("never", "interval", "always"):
            raise SettingsError(f"OTELSVC_SPOOL_FSYNC must be never, interval or always, got {fsync!r}")
        mode = env.get("OTELSVC_EXPORT_MODE", "process").strip() or "process"
        if mode not in ("process", "thread"):
            raise SettingsError(f"OTELSVC_EXPORT_MODE must be process or thread, got {mode!r}")
        resource = _pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        service_name = env.get("OTEL_SERVICE_NAME", "").strip() or resource.get(
            "service.name", "otel-service"
        )
        spool = env.get("OTELSVC_SPOOL_DIR", "").strip()
        price_table = env.get("OTELSVC_PRICE_TABLE", "").strip()
        settings = cls(
            host=env.get("OTELSVC_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=_int(env, "OTELSVC_PORT", 5001),
            auth_token=env.get("OTELSVC_AUTH_TOKEN") or None,
            service_name=service_name,
            resource_attributes=resource,
            otlp_endpoint=(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") or None),
            otlp_protocol=protocol,
            otlp_headers=_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS", "")),
            otlp_timeout=_int(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, 1) / 1000,
            metric_export_interval=_int(env, "OTEL_METRIC_EXPORT_INTERVAL", 60_000, 1) / 1000,
            metric_export_timeout=_int(env, "OTEL_METRIC_EXPORT_TIMEOUT", 30_000, 1) / 1000,
            span_schedule_delay=_int(env, "OTEL_BSP_SCHEDULE_DELAY", 5_000) / 1000,
            span_batch_size=_int(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1),
            log_schedule_delay=_int(env, "OTEL_BLRP_SCHEDULE_DELAY", 1_000) / 1000,
            log_batch_size=_int(env, "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512, 1),
            spool_dir=Path(spool) if spool else _default_spool(env),
            spool_max_bytes=_int(env, "OTELSVC_SPOOL_MAX_BYTES", 1 << 30, 1 << 16),
            spool_max_age=float(_int(env, "OTELSVC_SPOOL_MAX_AGE", 86_400)),
            spool_fsync=fsync,
            export_mode=mode,
            intake_processes=_intake_processes(env, usable_cpus() if cpus is None else cpus),
            max_body_bytes=_int(env, "OTELSVC_MAX_BODY_BYTES", 1 << 20, 1024),
            limits=Limits(max_items=_int(env, "OTELSVC_MAX_BATCH_ITEMS", 1000, 1)),
            max_tenants=_int(env, "OTELSVC_MAX_TENANTS", 200, 1),
            max_label_values=_int(env, "OTELSVC_MAX_LABEL_VALUES", 200, 1),
            cardinality_limit=_int(env, "OTELSVC_CARDINALITY_LIMIT", 2000, 10),
            rate_limit=float(_int(env, "OTELSVC_RATE_LIMIT", 0)),
            cors_origins=tuple(
                o.strip() for o in env.get("OTELSVC_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            price_table=Path(price_table) if price_table else None,
            default_provider=env.get("OTELSVC_DEFAULT_PROVIDER", "").strip() or "_OTHER",
            shutdown_timeout=float(_int(env, "OTELSVC_SHUTDOWN_TIMEOUT", 10, 1)),
            log_level=env.get("OTELSVC_LOG_LEVEL", "info").strip().lower() or "info",
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse unsafe or impossible combinations."""
        if not _is_loopback(self.host) and not self.auth_token:
            raise SettingsError(
                f"refusing to bind {self.host}: binding beyond loopback needs OTELSVC_AUTH_TOKEN"
            )
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"OTELSVC_PORT must be 0..65535, got {self.port}")
        if not 1 <= self.intake_processes <= MAX_INTAKE_PROCESSES:
            raise SettingsError(
                f"OTELSVC_INTAKE_PROCESSES must be 1..{MAX_INTAKE_PROCESSES}, got {self.intake_processes}"
            )
