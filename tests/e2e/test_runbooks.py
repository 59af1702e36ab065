"""The README's runbooks match prometheus/rules/alerts.yml (static; the e2e suite runs their queries)."""

from __future__ import annotations

import yaml

from tools.stack import REPO

from .readme import headings, runbooks


def _alerts() -> dict[str, str]:
    rules = yaml.safe_load((REPO / "prometheus" / "rules" / "alerts.yml").read_text())
    return {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in rules["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_every_alert_has_a_runbook_its_url_reaches() -> None:
    """Each alert's runbook_url (README.md#runbook-<name>) is the anchor of its own runbook section."""
    books = runbooks()
    alerts = _alerts()
    assert sorted(books) == sorted(alerts)
    for alert, url in alerts.items():
        assert url == f"README.md#{books[alert].anchor}", (alert, url)


def test_every_runbook_says_what_it_means_and_what_to_query() -> None:
    """Each runbook explains the alert and gives at least one PromQL, LogQL or TraceQL query."""
    for alert, book in runbooks().items():
        assert "**Means**" in book.text, alert
        assert book.queries, f"{alert}: no promql/logql/traceql block"


def test_the_full_stack_link_has_its_section() -> None:
    """README's link to #the-full-stack lands on a section."""
    readme = (REPO / "README.md").read_text()
    assert "(#the-full-stack)" in readme
    assert "the-full-stack" in headings(readme)
