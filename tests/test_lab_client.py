"""The lab's own client (lib/mlops-tracking.ts, run with Node) against a real sidecar, as the lab uses it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otel_service.runtime.intake_process import PUBLISH_SECONDS

from .conftest import Sidecar

LAB_DIR = Path(__file__).parent / "lab"
NODE = shutil.which("node")


def _sample(text: str, name: str, labels: dict[str, str]) -> float | None:
    """The value of the series ``name`` whose labels include ``labels``, in Prometheus text."""
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{key}="{value}"' in match[1] for key, value in labels.items()):
            return float(match[2])
    return None


def _lab_totals(payloads: list[dict[str, Any]]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """What the lab's six metrics (and the success and satisfaction histograms) must show, worked out
    from the payloads as the lab's Flask service counted them."""
    totals: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
    for p in payloads:
        biz = (("business_id", p["business_id"]),)
        requests = (*biz, ("intent", p["intent_detected"]), ("response_type", p["response_type"]))
        totals["ai_requests_total", requests] += 1
        totals["ai_response_time_seconds_count", biz] += 1
        totals["ai_response_time_seconds_sum", biz] += p["response_time_ms"] / 1000
        model = (*biz, ("model", p.get("model_name", "gemini-1.5-flash")))
        totals["ai_tokens_used_total", model] += p["tokens_used"]
        totals["ai_api_cost_usd_total", biz] += p["api_cost_usd"]
        totals["appointments_requested_total", biz] += p["appointment_requested"]
        totals["human_handoffs_total", biz] += p["human_handoff_requested"]
        totals["ai_success_rate_sum", biz] += p["success_rate"]
        if "user_satisfaction" in p:
            totals["ai_user_satisfaction_sum", biz] += p["user_satisfaction"]
    return dict(totals)


def _run_lab(sidecar: Sidecar, out: Path) -> dict[str, Any]:
    """Run tests/lab/run-lab.mjs (the lab's tracking functions) against ``sidecar``; its JSON report."""
    if not (LAB_DIR / "node_modules" / "typescript").is_dir():
        pytest.fail(
            "TypeScript is not installed for tests/lab: run `make lab-node` (npm ci --prefix tests/lab)"
        )
    assert NODE is not None
    result = subprocess.run(
        [NODE, str(LAB_DIR / "run-lab.mjs"), str(out)],
        env={**os.environ, "MLOPS_SERVICE_URL": f"http://127.0.0.1:{sidecar.port}"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    report: dict[str, Any] = json.loads(result.stdout)
    return report


@pytest.mark.skipif(
    NODE is None, reason="node is not installed (the CI machine has Node 20): cannot run the lab"
)
def test_the_labs_own_client_tracks_everything_and_nothing_fails(
    serve: Callable[..., Sidecar], tmp_path: Path
) -> None:
    """The lab's trackMetrics posts success, failure and booking: all tracked, no failure, lab totals."""
    sidecar = serve()
    # The start-up readiness polls (503 until ready) are the sidecar's own failed requests: the lab's
    # calls must add none.
    time.sleep(2 * PUBLISH_SECONDS)  # another intake process's request counts are that old at most
    before = json.loads(sidecar.get("/health/detailed"))["requests"]
    report = _run_lab(sidecar, tmp_path / "lab")
    payloads = report["payloads"]
    assert len(payloads) == 3
    assert report["logged"] == [{"level": "log", "text": "Metrics tracked successfully: success"}] * 3
    assert [row["business_id"] for row in report["stored"]] == ["bright-smile"] * 3

    time.sleep(2 * PUBLISH_SECONDS)
    detail = json.loads(sidecar.get("/health/detailed"))
    assert detail["events"]["accepted"] == {"llm_call": 3}
    assert detail["events"]["rejected"] == {}
    assert detail["requests"]["failed"] - before["failed"] == 0
    # Three /track and three /refresh-metrics; plus this read, and the read of `before` if another
    # intake process served it (its count was published after `before` was answered): 6 to 8.
    assert detail["requests"]["total"] - before["total"] in (6, 7, 8)

    # One read, right after the lab's calls: /metrics reflects every event acknowledged before it.
    expected = _lab_totals(payloads)
    text = sidecar.get("/metrics").decode()
    found = {key: _sample(text, name, dict(labels)) for key in expected for name, labels in [key]}
    assert found == pytest.approx(expected)
    assert _sample(text, "otel_service_status_stale_reads_total", {}) is None  # none: it never waited out
    biz = {"business_id": "bright-smile"}
    assert _sample(text, "ai_user_satisfaction_count", biz) == 1
    assert _sample(text, "ai_success_rate_count", biz) == 3


def test_the_lab_toolchain_is_pinned_and_apache_licensed() -> None:
    """tests/lab installs exactly one package, TypeScript at an exact version, under Apache-2.0."""
    manifest = json.loads((LAB_DIR / "package.json").read_text())
    lock = json.loads((LAB_DIR / "package-lock.json").read_text())
    assert re.fullmatch(r"\d+\.\d+\.\d+", manifest["devDependencies"]["typescript"])
    packages = {path: entry for path, entry in lock["packages"].items() if path}
    assert list(packages) == ["node_modules/typescript"]
    typescript = packages["node_modules/typescript"]
    assert (typescript["version"], typescript["license"]) == (
        manifest["devDependencies"]["typescript"],
        "Apache-2.0",
    )
    assert typescript["integrity"].startswith("sha512-")
