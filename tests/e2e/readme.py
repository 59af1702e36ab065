"""The README's runbooks: one ``### Runbook: <AlertName>`` section per alert, with its queries."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tools.stack import REPO

README = REPO / "README.md"
#: Placeholders the runbooks use in queries, and what the tests substitute.
PLACEHOLDERS = {"<model>": "gpt-4o", "<id>": "x", "<trace_id>": "0" * 31 + "1"}


@dataclass
class Runbook:
    alert: str
    anchor: str
    text: str
    #: (language, query) of every fenced promql / logql / traceql / logsql / jaeger block line (a jaeger
    #: line is the query string of Jaeger's /api/traces search: tags={...}&minDuration=5s).
    queries: list[tuple[str, str]] = field(default_factory=list)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbooks(text: str | None = None) -> dict[str, Runbook]:
    """The runbooks under ``## Runbooks``, by alert name."""
    text = README.read_text("utf-8") if text is None else text
    start = text.index("\n## Runbooks\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    found: dict[str, Runbook] = {}
    parts = re.split(r"^### (Runbook: (\w+))\s*$", section, flags=re.MULTILINE)
    for heading, alert, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        book = Runbook(alert, github_anchor(heading), body)
        for language, block in re.findall(
            r"```(promql|logql|traceql|logsql|jaeger)\n(.*?)```", body, re.DOTALL
        ):
            for line in block.splitlines():
                query = line.strip()
                if language == "promql":
                    query = re.sub(r"\s+#\s.*$", "", query)
                if query and not query.startswith("#"):
                    for placeholder, value in PLACEHOLDERS.items():
                        query = query.replace(placeholder, value)
                    book.queries.append((language, query))
        found[alert] = book
    return found


def headings(text: str | None = None) -> list[str]:
    text = README.read_text("utf-8") if text is None else text
    return [github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)]
