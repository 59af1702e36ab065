"""Static checks of the deployment configuration: Prometheus, Alertmanager, Grafana, docker compose.

The real tools check what they own: ``promtool check config``, ``promtool check rules``,
``promtool test rules`` (unit tests of every alert and recording rule) and ``amtool check-config``
(Prometheus 3.16 and Alertmanager 0.35 as ``make backends`` builds them: ``$PROMTOOL_BIN`` /
``$AMTOOL_BIN``, or ``PATH``; a missing binary is a failure, not a skip). The rest is cross-checked
here without Docker: docker-compose.yml against the files it mounts and the ports the configurations
listen on, Grafana's provisioning against its dashboards, and every PromQL expression in rules and
dashboards against the metric names the pipeline produces. docker-compose.apache.yml and a real
``docker compose config`` are in tests/test_configs_compose.py; the dashboards in Grafana's typed
model in tests/test_configs_dashboards.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / "prometheus"
PROM_CONFIG = PROMETHEUS / "prometheus.yml"
#: The log and trace stores' scrape jobs, one file per stack (mounted as scrape/backends.yml).
PROM_BACKEND_SCRAPES = {
    "grafana-stack": PROMETHEUS / "scrape" / "loki-tempo.yml",
    "apache-stack": PROMETHEUS / "scrape" / "jaeger-victorialogs.yml",
}
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = REPO / "alertmanager" / "alertmanager.yml"
GRAFANA = REPO / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "datasources.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COMPOSE = REPO / "docker-compose.yml"
COLLECTOR_CONFIG = REPO / "collector" / "config.yaml"
COLLECTOR_MANIFEST = REPO / "collector" / "manifest.yaml"
LOKI_CONFIG = REPO / "loki" / "config.yaml"
TEMPO_CONFIG = REPO / "tempo" / "config.yaml"

#: The placeholder every Alertmanager webhook uses; harnesses replace this exact string.
WEBHOOK_BASE = "http://otel-service-alert-webhook:9099"


def _histogram(name: str) -> set[str]:
    return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}


#: Every metric name the pipeline produces, as Prometheus stores it.
KNOWN_METRICS: frozenset[str] = frozenset(
    {
        # GenAI semantic conventions
        *_histogram("gen_ai_client_operation_duration_seconds"),
        *_histogram("gen_ai_client_token_usage"),
        # the lab's names
        "ai_requests_total",
        *_histogram("ai_response_time_seconds"),
        "ai_tokens_used_total",
        "ai_api_cost_usd_total",
        "appointments_requested_total",
        "human_handoffs_total",
        # cost, outcomes, messages
        "ai_cost_usd_total",
        "ai_cost_unpriced_total",
        "ai_outcomes_total",
        *_histogram("ai_message_length"),
        *_histogram("ai_success_rate"),
        *_histogram("ai_user_satisfaction"),
        # ML
        "ml_predictions_total",
        *_histogram("ml_prediction_duration_seconds"),
        *_histogram("ml_prediction_confidence"),
        "ml_feedback_total",
        "data_drift_score",
        # the sidecar itself
        "otel_service_events_received_total",
        "otel_service_events_rejected_total",
        "otel_service_events_processed_total",
        "otel_service_export_items_total",
        "otel_service_dropped_total",
        "otel_service_attribute_overflow_total",
        "otel_service_spool_size_bytes",
        "otel_service_spool_oldest_age_seconds",
        *_histogram("http_server_request_duration_seconds"),
        # the collector's own telemetry (job otelcol)
        *(
            f"otelcol_exporter_{kind}_{signal}_total"
            for kind in ("sent", "send_failed", "enqueue_failed")
            for signal in ("spans", "log_records", "metric_points")
        ),
        "otelcol_exporter_queue_size",
        "otelcol_exporter_queue_capacity",
        *(
            f"otelcol_receiver_{kind}_{signal}_total"
            for kind in ("accepted", "refused")
            for signal in ("spans", "log_records", "metric_points")
        ),
        # Prometheus' own series
        "up",
        "ALERTS",
        "ALERTS_FOR_STATE",
        # Tempo's metrics generator (remote write), used by the Tempo data source
        "traces_spanmetrics_calls_total",
        "traces_spanmetrics_size_total",
        *_histogram("traces_spanmetrics_latency"),
        "traces_service_graph_request_total",
        "traces_service_graph_request_failed_total",
        *_histogram("traces_service_graph_request_server_seconds"),
        *_histogram("traces_service_graph_request_client_seconds"),
    }
)


# ------------------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _tool(name: str, env_var: str) -> str:
    path = os.environ.get(env_var) or shutil.which(name)
    if not path:
        pytest.fail(
            f"{name} not found: set ${env_var} or put it on PATH "
            f"(`make backends` builds it; `. tools/backends.env` sets ${env_var})",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return _tool("promtool", "PROMTOOL_BIN")


@pytest.fixture(scope="module")
def amtool() -> str:
    return _tool("amtool", "AMTOOL_BIN")


def _run(*cmd: str | Path, cwd: Path = REPO) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{output}"
    return output


def _tool_version(binary: str) -> str:
    out = _run(binary, "--version")
    match = re.search(r"version (\d+\.\d+\.\d+)", out)
    assert match, out
    return match[1]


@cache
def _compose() -> dict[str, Any]:
    data = _load_yaml(COMPOSE)
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _environment(service: str) -> dict[str, str]:
    env = _services()[service].get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: str) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume entry."""
    out = []
    for entry in _services()[service].get("volumes") or []:
        assert isinstance(entry, str), f"{service}: use the short volume syntax: {entry!r}"
        source, target = entry.split(":")[:2]
        out.append((source, target))
    return out


def _bind_mounts(service: str) -> dict[str, Path]:
    """Container path -> host path of each bind mount."""
    return {
        target: (REPO / source).resolve()
        for source, target in _mounts(service)
        if source.startswith((".", "/"))
    }


def _image_tag(service: str) -> str:
    image = _services()[service]["image"]
    assert ":" in image, f"{service}: image {image!r} is not pinned"
    return image.rsplit(":", 1)[1]


_ENV_DEFAULT = re.compile(r"\$\{(?:env:)?(\w+):-([^}]*)\}")


def _effective(value: str, env: dict[str, str]) -> str:
    """Expand ${VAR:-default} / ${env:VAR:-default} the way the service will see it."""
    return _ENV_DEFAULT.sub(lambda m: env.get(m[1], m[2]), str(value))


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _url_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    assert parts.hostname, url
    assert parts.port, url
    return parts.hostname, parts.port


def _expose(service: str) -> set[int]:
    return {int(str(p).split("/")[0]) for p in _services()[service].get("expose") or []}


@cache
def _rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULE_FILES:
        for group in _load_yaml(path)["groups"]:
            rules.extend(group["rules"])
    return rules


def _alerts() -> list[dict[str, Any]]:
    return [r for r in _rules() if "alert" in r]


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


@cache
def _datasources() -> list[dict[str, Any]]:
    data = _load_yaml(DATASOURCES)
    return list(data["datasources"])


def _datasource(uid: str) -> dict[str, Any]:
    matches = [d for d in _datasources() if d.get("uid") == uid]
    assert len(matches) == 1, f"exactly one data source with uid {uid!r}"
    return matches[0]


def _dashboard(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    assert isinstance(data, dict)
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


# --------------------------------------------------------------------------------- PromQL names

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VAR.sub("1", text)
    text = _RANGE.sub("", text)
    text = _LABEL_LIST.sub("", text)
    text = _MATCHERS.sub("", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match[0] in _KEYWORDS:
            continue
        names.add(match[0])
    return names


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def _variable_selector(query: str) -> str | None:
    """The series selector of a Grafana `label_values(selector, label)` query, if any."""
    match = _LABEL_VALUES.match(query)
    return match[1] if match else None


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every Prometheus query of every dashboard, variables included."""
    out = []
    for path in DASHBOARDS:
        dash = _dashboard(path)
        for panel in _panels(dash):
            for target in panel.get("targets", []):
                ds = target.get("datasource") or panel.get("datasource") or {}
                if ds.get("type") == "prometheus" and target.get("expr"):
                    out.append((f"{path.name}: {panel.get('title')}", target["expr"]))
        for var in dash.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query") if isinstance(query, dict) else query
            if var.get("type") == "query" and query:
                selector = _variable_selector(query)
                assert selector, f"{path.name}: variable {var['name']}: use label_values(metric, label)"
                out.append((f"{path.name}: variable {var['name']}", selector))
    return out


def _rule_exprs() -> list[tuple[str, str]]:
    return [(r.get("alert") or r["record"], r["expr"]) for r in _rules()]


def _datasource_exprs() -> list[tuple[str, str]]:
    queries = _datasource("tempo")["jsonData"]["tracesToMetrics"]["queries"]
    return [(f"tempo tracesToMetrics: {q['name']}", q["query"].replace("$$", "$")) for q in queries]


def test_metric_name_extraction() -> None:
    """The PromQL metric-name extractor finds names and ignores functions, labels and variables."""
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(foo_seconds_bucket{a="x:y", b=~"$v"}'
        "[$__rate_interval]))) / on () group_left () bar:ratio offset 5m > 1e3 "
        'or label_replace({otel_metric_overflow="true"}, "m", "$1", "__name__", "(.+)") '
        "unless sum(baz_total) without (instance) and count(qux) by (x)"
    )
    assert metric_names(expr) == {"foo_seconds_bucket", "bar:ratio", "baz_total", "qux"}
    assert metric_names("vector(0)") == set()
    assert _variable_selector("label_values(ai_requests_total, business_id)") == "ai_requests_total"


@pytest.mark.parametrize(
    ("where", "expr"),
    [*_rule_exprs(), *_dashboard_exprs(), *_datasource_exprs()],
    ids=lambda value: value if len(value) < 60 else value[:57] + "...",
)
def test_promql_uses_only_known_metrics(where: str, expr: str) -> None:
    """Every PromQL expression charts only metrics the pipeline produces or recording rules define."""
    unknown = metric_names(expr) - KNOWN_METRICS - _recorded()
    assert not unknown, f"{where}: unknown metric(s) {sorted(unknown)} in: {expr}"


# ----------------------------------------------------------------------------------- Prometheus


@pytest.mark.parametrize("stack", sorted(PROM_BACKEND_SCRAPES))
def test_promtool_check_config(promtool: str, tmp_path: Path, stack: str) -> None:
    """promtool check config accepts prometheus/prometheus.yml with either stack's backend jobs."""
    # prometheus.yml reads the sidecar's token from secrets/otelsvc_auth_token next to it (compose
    # mounts a secret there) and promtool insists the file exists: check a copy with a placeholder.
    shutil.copy(PROM_CONFIG, tmp_path / "prometheus.yml")
    shutil.copytree(PROMETHEUS / "rules", tmp_path / "rules")
    (tmp_path / "scrape").mkdir()
    shutil.copy(PROM_BACKEND_SCRAPES[stack], tmp_path / "scrape" / "backends.yml")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "otelsvc_auth_token").write_text("placeholder\n")
    out = _run(promtool, "check", "config", tmp_path / "prometheus.yml")
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in out, out


def test_promtool_check_rules(promtool: str) -> None:
    """promtool check rules accepts every rule file."""
    assert RULE_FILES, "no rule files in prometheus/rules"
    _run(promtool, "check", "rules", *RULE_FILES)


def test_promtool_test_rules(promtool: str) -> None:
    """promtool test rules passes every alert and recording-rule unit test."""
    assert RULE_TESTS, "no rule unit tests in prometheus/tests"
    out = _run(promtool, "test", "rules", *RULE_TESTS)
    assert "FAILED" not in out, out


def test_dashboard_promql_parses(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL."""

    def concrete(expr: str) -> str:
        for var, value in (
            ("$__rate_interval", "1m"),
            ("$__interval", "1m"),
            ("$__range", "1h"),
            ("$__tags", 'service="otel-service"'),  # Tempo's trace-to-metrics label filter
        ):
            expr = expr.replace(var, value)
        return _GRAFANA_VAR.sub(".*", expr)

    exprs = _dashboard_exprs() + _datasource_exprs()
    group = {
        "name": "dashboards",
        "rules": [
            {"record": f"dashboard:expr_{i}:check", "expr": concrete(expr)}
            for i, (_, expr) in enumerate(exprs)
        ],
    }
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    _run(promtool, "check", "rules", path)


def test_prometheus_scrape_jobs() -> None:
    """Prometheus scrapes the collector, its own telemetry and the sidecar (for up only)."""
    config = _load_yaml(PROM_CONFIG)
    assert config["global"]["scrape_interval"] == "10s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"otel-collector", "otelcol", "otel-service-sidecar", "prometheus"} <= jobs.keys()

    def targets(job: str) -> list[str]:
        return [t for sc in jobs[job]["static_configs"] for t in sc["targets"]]

    assert jobs["otel-collector"].get("honor_labels") is True
    assert targets("otel-collector") == ["otel-collector:8889"]
    assert targets("otelcol") == ["otel-collector:8888"]
    assert targets("otel-service-sidecar") == ["otel-service:5001"]
    # The direct scrape only feeds `up`: all of its samples are dropped.
    relabel = jobs["otel-service-sidecar"]["metric_relabel_configs"]
    assert relabel == [{"source_labels": ["__name__"], "regex": ".+", "action": "drop"}]
    assert config["rule_files"] == ["rules/*.yml"]
    managers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert managers == ["alertmanager:9093"]
    # The log and trace stores' jobs come from scrape/backends.yml, one file per stack; BackendDown
    # watches all four job names.
    assert config["scrape_config_files"] == ["scrape/backends.yml"]
    backend_jobs = {
        stack: {
            job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in _load_yaml(path)["scrape_configs"]
        }
        for stack, path in PROM_BACKEND_SCRAPES.items()
    }
    assert backend_jobs == {
        "grafana-stack": {"loki": ["loki:3100"], "tempo": ["tempo:3200"]},
        "apache-stack": {"jaeger": ["jaeger:8888"], "victorialogs": ["victorialogs:9428"]},
    }
    # Jaeger's embedded collector reports otelcol_* series too: renamed, so they never mix with ours.
    jaeger_job = _load_yaml(PROM_BACKEND_SCRAPES["apache-stack"])["scrape_configs"][0]
    assert jaeger_job["job_name"] == "jaeger"
    assert {
        "source_labels": ["__name__"],
        "regex": "otelcol_(.*)",
        "target_label": "__name__",
        "replacement": "jaeger_otelcol_$1",
    } in jaeger_job["metric_relabel_configs"]
    backend_down = next(a for a in _alerts() if a["alert"] == "BackendDown")
    jobs_watched = re.fullmatch(r'up\{job=~"([\w|-]+)"\} == 0', backend_down["expr"].strip())
    assert jobs_watched, backend_down["expr"]
    assert set(jobs_watched[1].split("|")) == {job for jobs in backend_jobs.values() for job in jobs}


def test_every_alert_has_metadata() -> None:
    """Every alert has severity, summary, description and runbook annotations."""
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in _alerts():
        name = alert["alert"]
        assert "for" in alert, name
        labels, annotations = alert["labels"], alert["annotations"]
        assert labels["severity"] in {"critical", "warning", "info"}, name
        assert labels.get("family"), name
        assert labels.get("component"), name
        assert annotations.get("summary"), name
        assert annotations.get("description"), name
        assert annotations.get("runbook_url") == f"README.md#runbook-{name.lower()}", name


def test_required_alerts_exist() -> None:
    """The alerts the issue asks for all exist."""
    names = {a["alert"] for a in _alerts()}
    assert {
        "SidecarDown",
        "CollectorDown",
        "AIErrorRateWarning",
        "AIErrorRateCritical",
        "HighP95LatencyLLM",
        "HighP95LatencyPrediction",
        "CostBurn",
        "ModelAccuracyDrop",
        "DataDriftDetected",
        "ExportFailures",
        "TelemetryDropped",
        "SpoolBacklogWarning",
        "CardinalityOverflow",
        "CollectorExportFailures",
    } <= names
    by_name = {a["alert"]: a for a in _alerts()}
    # The end-to-end suite induces these within minutes.
    for name in ("SidecarDown", "AIErrorRateWarning", "AIErrorRateCritical"):
        assert by_name[name]["for"] in {"30s", "1m"}, name
    assert by_name["TelemetryDropped"]["labels"]["severity"] == "critical"


def _rule_test_cases() -> Iterator[dict[str, Any]]:
    for path in RULE_TESTS:
        yield from _load_yaml(path)["tests"]


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """Every alert has a firing and a quiet promtool unit test."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _rule_test_cases():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert not names - firing, f"alerts never tested firing: {sorted(names - firing)}"
    assert not names - quiet, f"alerts never tested quiet: {sorted(names - quiet)}"
    assert not (firing | quiet) - names, f"tests of unknown alerts: {sorted((firing | quiet) - names)}"


def test_every_recording_rule_is_unit_tested() -> None:
    """Every recording rule has a promtool value test."""
    tested: set[str] = set()
    for case in _rule_test_cases():
        for check in case.get("promql_expr_test", []):
            tested |= metric_names(check["expr"])
    missing = _recorded() - tested
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


# --------------------------------------------------------------------------------- Alertmanager


def _route(amtool: str, *labels: str) -> str:
    """Receivers (comma-separated) an alert with these labels goes to."""
    out = _run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels)
    return out.splitlines()[0].strip()


def test_amtool_check_config(amtool: str) -> None:
    """amtool check-config accepts alertmanager/alertmanager.yml."""
    _run(amtool, "check-config", ALERTMANAGER_CONFIG)


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        (["severity=critical", "alertname=SidecarDown"], "pager"),
        (["severity=warning", "alertname=AIErrorRateWarning"], "default"),
        (["severity=info", "alertname=UnpricedModelCalls"], "default"),
        # Alertmanager 0.35 parses matchers as UTF-8 matchers: a value with a comma is quoted.
        (["severity=critical", 'notify="email,slack"'], "team-email,team-slack,pager"),
        (["alertname=Unlabelled"], "default"),
    ],
)
def test_alertmanager_routes(amtool: str, labels: list[str], receivers: str) -> None:
    """Alertmanager routes by severity to the expected receivers."""
    assert _route(amtool, *labels) == receivers


def test_alertmanager_severities_are_routed(amtool: str) -> None:
    """amtool routes each severity to its receiver."""
    for severity in {a["labels"]["severity"] for a in _alerts()}:
        assert _route(amtool, f"severity={severity}") in {"pager", "default"}, severity


def test_alertmanager_secrets_and_webhooks() -> None:
    """Alertmanager secrets come from files and the default receiver is a webhook."""
    config = _load_yaml(ALERTMANAGER_CONFIG)
    text = ALERTMANAGER_CONFIG.read_text()
    # secrets only by file
    assert "smtp_auth_password_file" in config["global"]
    assert "smtp_auth_password" not in config["global"]
    receivers = {r["name"]: r for r in config["receivers"]}
    for receiver in receivers.values():
        for slack in receiver.get("slack_configs", []):
            assert "api_url_file" in slack
            assert "api_url" not in slack
        for webhook in receiver.get("webhook_configs", []):
            # the e2e suite rewrites this exact base URL
            assert webhook["url"].startswith(WEBHOOK_BASE + "/"), webhook
    assert receivers["pager"]["webhook_configs"][0]["url"] == f"{WEBHOOK_BASE}/critical"
    assert text.count(WEBHOOK_BASE) >= 2
    # critical inhibits warning of the same family
    inhibit = config["inhibit_rules"][0]
    assert inhibit["source_matchers"] == ['severity="critical"']
    assert inhibit["target_matchers"] == ['severity="warning"']
    assert "family" in inhibit["equal"]


# -------------------------------------------------------------------------------------- Grafana


def test_datasources_are_linked() -> None:
    """Grafana datasources link exemplars, logs and traces to each other."""
    uids = {d["uid"] for d in _datasources()}
    assert {"prometheus", "loki", "tempo", "alertmanager"} <= uids

    prom = _datasource("prometheus")["jsonData"]
    assert prom["exemplarTraceIdDestinations"] == [
        {"name": "trace_id", "datasourceUid": "tempo", "urlDisplayLabel": "View trace"}
    ]

    derived = _datasource("loki")["jsonData"]["derivedFields"]
    trace_links = [f for f in derived if f["datasourceUid"] == "tempo"]
    assert any(f.get("matcherType") == "label" and f["matcherRegex"] == "trace_id" for f in trace_links)
    assert all(f["url"] == "$${__value.raw}" for f in trace_links)

    tempo = _datasource("tempo")["jsonData"]
    assert tempo["tracesToLogsV2"]["datasourceUid"] == "loki"
    assert tempo["tracesToLogsV2"]["filterByTraceID"] is True
    assert "trace_id=" in tempo["tracesToLogsV2"]["query"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == "prometheus"
    assert tempo["serviceMap"]["datasourceUid"] == "prometheus"
    assert tempo["nodeGraph"]["enabled"] is True
    assert tempo["lokiSearch"]["datasourceUid"] == "loki"

    def linked_uids(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasourceUid":
                    yield value
                else:
                    yield from linked_uids(value)
        elif isinstance(node, list):
            for item in node:
                yield from linked_uids(item)

    for ds in _datasources():
        assert set(linked_uids(ds.get("jsonData", {}))) <= uids, ds["name"]


def test_datasource_templates_are_escaped() -> None:
    """Grafana expands $VAR in provisioning values: its own template variables must be `$$`."""

    def strings(node: Any) -> Iterator[str]:
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for item in node:
                yield from strings(item)

    unescaped = [value for value in strings(_datasources()) if re.search(r"(?<!\$)\$\{?__\w+", value)]
    assert not unescaped, f"escape as $$: {unescaped}"


def test_dashboard_provider_points_at_dashboards() -> None:
    """The dashboard provider loads the repository's dashboards."""
    providers = _load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert len(providers) == 1
    path = providers[0]["options"]["path"]
    assert _bind_mounts("grafana").get(path) == (GRAFANA / "dashboards").resolve()


def test_dashboards_exist() -> None:
    """The three dashboards exist."""
    assert {p.name for p in DASHBOARDS} >= {
        "ai-overview.json",
        "model-performance.json",
        "sidecar-health.json",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid(path: Path) -> None:
    """A dashboard parses, uses provisioned datasource uids and a 10 s refresh."""
    dash = _dashboard(path)
    uids = {d["uid"] for d in _datasources()}
    assert dash.get("uid")
    assert dash.get("title")
    assert dash["refresh"] == "10s"
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"

    def refs(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "datasource":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    for ref in refs(dash):
        if isinstance(ref, dict) and ref.get("type") == "grafana":
            continue  # the built-in annotations source
        assert isinstance(ref, dict), f"refer to data sources by uid: {ref!r}"
        assert "uid" in ref, f"refer to data sources by uid: {ref!r}"
        assert ref["uid"] in uids, f"unknown data source uid {ref['uid']!r}"
        assert _datasource(ref["uid"])["type"] == ref.get("type", _datasource(ref["uid"])["type"])

    # Latency panels (histograms in seconds) show exemplars: links to the traces.
    for panel in _panels(dash):
        targets = panel.get("targets", [])
        if panel["type"] == "timeseries" and any("_seconds_bucket" in t.get("expr", "") for t in targets):
            assert any(t.get("exemplar") for t in targets), f"{panel['title']}: enable exemplars"


def test_dashboard_uids_are_unique() -> None:
    """Dashboard uids are unique."""
    uids = [_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_ai_overview_error_rate_colours() -> None:
    """The error-rate panel is green below 5 %, yellow to 10 %, red above."""
    dash = _dashboard(GRAFANA / "dashboards" / "ai-overview.json")
    panel = next(p for p in _panels(dash) if p["title"].startswith("Error rate"))
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["color"], s["value"]) for s in steps] == [
        ("green", None),
        ("yellow", 0.05),
        ("red", 0.1),
    ]
    assert panel["fieldConfig"]["defaults"]["unit"] == "percentunit"


# ------------------------------------------------------------------------------- docker compose

EXPECTED_SERVICES = {
    "otel-service",
    "otel-collector",
    "prometheus",
    "alertmanager",
    "loki",
    "tempo",
    "grafana",
}

#: service -> container path of the data it must keep in a named volume
STATE = {
    "otel-service": "/var/lib/otel-service",
    "otel-collector": "/var/lib/otelcol/file_storage",
    "prometheus": "/prometheus",
    "alertmanager": "/alertmanager",
    "loki": "/loki",
    "tempo": "/var/tempo",
    "grafana": "/var/lib/grafana",
}


def test_compose_services() -> None:
    """docker-compose.yml defines every service with an image or a build."""
    assert set(_services()) == EXPECTED_SERVICES
    for name, service in _services().items():
        assert service.get("image") or service.get("build"), f"{name}: no image or build"
        assert ":" in service["image"], f"{name}: image not pinned"
        assert not service["image"].endswith(":latest"), name
        test = (service.get("healthcheck") or {}).get("test")
        assert test, f"{name}: no healthcheck"
        assert test[0] in {"CMD", "CMD-SHELL"}, f"{name}: healthcheck {test!r}"


def test_compose_build_contexts_exist() -> None:
    """Every compose build context and Dockerfile exists."""
    for name, service in _services().items():
        build = service.get("build")
        if not build:
            continue
        context = REPO / (build if isinstance(build, str) else build.get("context", "."))
        assert context.is_dir(), f"{name}: build context {context} missing"
        if isinstance(build, dict) and "dockerfile_inline" in build:
            for copied in re.findall(r"^COPY (?!--from)(\S+)", build["dockerfile_inline"], re.M):
                assert (context / copied).exists(), f"{name}: COPY {copied} not in {context}"
        else:
            dockerfile = build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"
            assert (context / dockerfile).is_file(), f"{name}: {context / dockerfile} missing"


def test_compose_mounts_and_volumes() -> None:
    """Bind mounts exist in the repository and named volumes are declared."""
    declared = set(_compose().get("volumes") or {})
    used = set()
    for name in _services():
        for source, _target in _mounts(name):
            if source.startswith((".", "/")):
                host = (REPO / source).resolve()
                assert host.exists(), f"{name}: bind mount {source} does not exist"
                assert host.is_relative_to(REPO), f"{name}: {source} is outside the repository"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
                used.add(source)
        named = {t for s, t in _mounts(name) if not s.startswith((".", "/"))}
        assert STATE[name] in named, f"{name}: {STATE[name]} must be a named volume"
    assert declared == used, f"unused volumes: {sorted(declared - used)}"


def _published(service: str) -> dict[int, int]:
    """host port -> container port of each published port of a service, each bound to 127.0.0.1."""
    published = {}
    for port in _services()[service].get("ports") or []:
        assert isinstance(port, str), f"{service}: use the short port syntax"
        host_ip, host_port, container_port = port.split(":")
        assert host_ip == "127.0.0.1", f"{service}: {port} must bind the host's loopback"
        published[int(host_port)] = int(container_port)
    return published


def test_compose_publishes_only_on_loopback() -> None:
    """Published on 127.0.0.1 only: Grafana, intake, the collector's OTLP, the UIs and query APIs."""
    published = {name: _published(name) for name in _services() if _published(name)}
    assert published == {
        "grafana": {3000: 3000},
        "otel-service": {5001: 5001},
        "otel-collector": {4317: 4317, 4318: 4318},  # the app's own OTLP
        "prometheus": {9090: 9090},  # Targets and Alerts
        "alertmanager": {9093: 9093},
        "loki": {3100: 3100},  # README "Following one request"
        "tempo": {3200: 3200},
    }


def test_compose_secrets_and_required_env() -> None:
    """Secrets and required environment variables are declared."""
    raw = COMPOSE.read_text()
    assert re.search(r"OTELSVC_AUTH_TOKEN: \$\{OTELSVC_AUTH_TOKEN:\?", raw)
    assert re.search(r"GF_SECURITY_ADMIN_PASSWORD: \$\{GRAFANA_ADMIN_PASSWORD:\?", raw)
    grafana = _environment("grafana")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    # Prometheus reads the sidecar's token where prometheus.yml expects it
    config = _load_yaml(PROM_CONFIG)
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "otel-service-sidecar")
    credentials = job["authorization"]["credentials_file"]
    assert not credentials.startswith("/"), "relative to prometheus.yml"
    (secret,) = _services()["prometheus"]["secrets"]
    config_dir = str(Path(_prometheus_flag("--config.file")).parent)
    assert secret["target"] == f"{config_dir}/{credentials}"
    assert _compose()["secrets"][secret["source"]] == {"environment": "OTELSVC_AUTH_TOKEN"}


def _prometheus_flag(flag: str) -> str:
    for arg in _services()["prometheus"]["command"]:
        if arg.startswith(flag + "="):
            return str(arg.split("=", 1)[1])
    pytest.fail(f"prometheus: {flag} not set")


def test_compose_config_files_are_mounted() -> None:
    """Each config path a service is started with is a bind mount of the repository's file."""
    expected = {
        "otel-collector": ("--config=", COLLECTOR_CONFIG),
        "prometheus": ("--config.file=", PROM_CONFIG),
        "alertmanager": ("--config.file=", ALERTMANAGER_CONFIG),
        "loki": ("-config.file=", LOKI_CONFIG),
        "tempo": ("-config.file=", TEMPO_CONFIG),
    }
    for name, (flag, repo_file) in expected.items():
        args = [a for a in _services()[name]["command"] if a.startswith(flag)]
        assert len(args) == 1, f"{name}: {flag} missing"
        path = args[0].removeprefix(flag)
        assert _bind_mounts(name).get(path) == repo_file.resolve(), f"{name}: {path} not mounted"
    # prometheus.yml's relative rule_files and scrape_config_files resolve inside the mounts
    config_dir = Path(_prometheus_flag("--config.file")).parent
    assert _bind_mounts("prometheus").get(str(config_dir / "rules")) == (PROMETHEUS / "rules").resolve()
    backends = str(config_dir / "scrape" / "backends.yml")
    assert _bind_mounts("prometheus").get(backends) == PROM_BACKEND_SCRAPES["grafana-stack"].resolve()
    for ds_dir in ("datasources", "dashboards"):
        target = f"/etc/grafana/provisioning/{ds_dir}"
        assert _bind_mounts("grafana").get(target) == (GRAFANA / "provisioning" / ds_dir).resolve()
    home = _environment("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    mount_dir, name = home.rsplit("/", 1)
    assert (_bind_mounts("grafana")[mount_dir] / name).is_file()


def test_compose_prometheus_flags_and_versions(promtool: str, amtool: str) -> None:
    """Prometheus runs with exemplar storage and the remote-write receiver."""
    command = _services()["prometheus"]["command"]
    assert "--enable-feature=exemplar-storage" in command
    assert "--web.enable-remote-write-receiver" in command
    # Prometheus 3 removed the console templates and their flags.
    assert not [a for a in command if a.startswith("--web.console.")], command
    # the images match the binaries the tests build and run (Prometheus 3.16, Alertmanager 0.35)
    assert _image_tag("prometheus") == "v" + _tool_version(promtool)
    assert _image_tag("alertmanager") == "v" + _tool_version(amtool)


def test_compose_versions_match_the_native_builds() -> None:
    """Image versions match the binaries the tests build and run."""
    manifest = _load_yaml(COLLECTOR_MANIFEST)
    assert _image_tag("otel-collector") == manifest["dist"]["version"]
    inline = _services()["otel-collector"]["build"]["dockerfile_inline"]
    ocb = _services()["otel-collector"]["build"]["args"]["OCB_VERSION"]
    assert ocb == manifest["dist"]["version"]
    assert "builder --config=manifest.yaml" in inline
    binary = manifest["dist"]["name"]
    assert f"/build/_build/{binary}" in inline, "ocb output path (manifest output_path: ./_build)"

    # Loki and Tempo (AGPL-3.0) are never built here: their configuration files name the release
    # line they are written for, which must be the one compose runs.
    for service, config, product in (("loki", LOKI_CONFIG, "Loki"), ("tempo", TEMPO_CONFIG, "Tempo")):
        header = re.search(rf"^# Grafana {product} (\d+\.\d+) ", config.read_text(), re.MULTILINE)
        assert header, f"{config.name}: no '# Grafana {product} <major.minor>' header"
        assert _image_tag(service).startswith(header[1] + "."), (service, _image_tag(service), header[1])


def test_compose_sidecar_settings() -> None:
    """The sidecar service binds beyond loopback only with a token and exports to the collector."""
    env = _environment("otel-service")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    assert env["OTELSVC_HOST"] == "0.0.0.0"
    assert env["OTELSVC_SPOOL_DIR"].startswith(STATE["otel-service"] + "/")
    assert int(env["OTELSVC_PORT"]) == 5001


def test_compose_ports_match_configs() -> None:
    """Ports in docker-compose.yml, prometheus.yml and Grafana agree with what each service listens on."""
    prom_targets = {
        target
        for path in (PROM_CONFIG, PROM_BACKEND_SCRAPES["grafana-stack"])
        for job in _load_yaml(path)["scrape_configs"]
        for sc in job["static_configs"]
        for target in sc["targets"]
    }
    ds_urls = {d["uid"]: _url_port(d["url"]) for d in _datasources()}

    # collector: receivers, prometheus exporter, own telemetry, health
    col_env = _environment("otel-collector")
    col = _load_yaml(COLLECTOR_CONFIG)
    protocols = col["receivers"]["otlp"]["protocols"]
    grpc = _port(_effective(protocols["grpc"]["endpoint"], col_env))
    http = _port(_effective(protocols["http"]["endpoint"], col_env))
    exporter = _port(_effective(col["exporters"]["prometheus"]["endpoint"], col_env))
    reader = col["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    telemetry = int(_effective(reader["port"], col_env))
    health = _port(_effective(col["extensions"]["health_check"]["endpoint"], col_env))
    assert (grpc, http, exporter, telemetry) == (4317, 4318, 8889, 8888)
    assert {grpc, http, exporter, telemetry, health} <= _expose("otel-collector")
    assert _published("otel-collector") == {grpc: grpc, http: http}
    assert f"otel-collector:{exporter}" in prom_targets
    assert f"otel-collector:{telemetry}" in prom_targets
    assert _url_port(_environment("otel-service")["OTEL_EXPORTER_OTLP_ENDPOINT"]) == (
        "otel-collector",
        grpc,
    )
    assert f":{health}/" in " ".join(_services()["otel-collector"]["healthcheck"]["test"])

    # loki: HTTP API (also OTLP ingest from the collector)
    loki_env = _environment("loki")
    loki_port = int(_effective(_load_yaml(LOKI_CONFIG)["server"]["http_listen_port"], loki_env))
    assert loki_port == 3100
    assert loki_port in _expose("loki")
    assert _published("loki") == {loki_port: loki_port}
    assert f"loki:{loki_port}" in prom_targets
    assert ds_urls["loki"] == ("loki", loki_port)
    loki_otlp = _effective(col["exporters"]["otlp_http/logs"]["endpoint"], col_env)
    assert _url_port(loki_otlp) == ("loki", loki_port)

    # tempo: HTTP API and OTLP/gRPC from the collector
    tempo_env = _environment("tempo")
    tempo_cfg = _load_yaml(TEMPO_CONFIG)
    tempo_http = int(_effective(tempo_cfg["server"]["http_listen_port"], tempo_env))
    tempo_grpc = _port(
        _effective(tempo_cfg["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"], tempo_env)
    )
    assert (tempo_http, tempo_grpc) == (3200, 4317)
    assert {tempo_http, tempo_grpc} <= _expose("tempo")
    assert _published("tempo") == {tempo_http: tempo_http}  # its OTLP receiver stays internal
    assert f"tempo:{tempo_http}" in prom_targets
    assert ds_urls["tempo"] == ("tempo", tempo_http)
    tempo_otlp = _effective(col["exporters"]["otlp_grpc/traces"]["endpoint"], col_env)
    assert _url_port(tempo_otlp) == ("tempo", tempo_grpc)

    # tempo's metrics generator writes to prometheus' remote-write receiver
    remote_write = _effective(tempo_cfg["metrics_generator"]["storage"]["remote_write"][0]["url"], tempo_env)
    assert remote_write == "http://prometheus:9090/api/v1/write"
    assert 9090 in _expose("prometheus")
    assert _published("prometheus") == {9090: 9090}
    assert ds_urls["prometheus"] == ("prometheus", 9090)
    assert 9093 in _expose("alertmanager")
    assert _published("alertmanager") == {9093: 9093}
    assert ds_urls["alertmanager"] == ("alertmanager", 9093)
    assert "otel-service:5001" in prom_targets

    # healthchecks probe the port the service listens on
    for name, port in (("prometheus", 9090), ("alertmanager", 9093), ("loki", loki_port)):
        assert f"127.0.0.1:{port}/" in " ".join(_services()[name]["healthcheck"]["test"]), name
    assert f"127.0.0.1:{tempo_http}/" in " ".join(_services()["tempo"]["healthcheck"]["test"])
