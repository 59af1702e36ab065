"""Versioned price tables and the cost of one LLM call, by token type."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["Cost", "ModelPrice", "PriceTable", "cost_of", "load_price_table"]

_PER_TOKEN = 1e-6


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens of each type."""

    input: float
    output: float
    cached_input: float | None = None
    reasoning: float | None = None


@dataclass(frozen=True, slots=True)
class Cost:
    """What one call cost, split by token type; ``source`` says where the figure came from."""

    source: str  # "reported" | "computed" | "unpriced"
    by_type: tuple[tuple[str, float], ...] = ()

    @property
    def total(self) -> float:
        return sum(value for _, value in self.by_type)


UNPRICED = Cost("unpriced")


@dataclass(frozen=True, slots=True)
class PriceTable:
    version: str
    models: Mapping[str, ModelPrice] = field(default_factory=dict)

    def price(self, model: str) -> ModelPrice | None:
        """The price of ``model``, matching dated variants (``gpt-4o-2024-08-06``) by prefix."""
        found = self.models.get(model)
        if found is not None:
            return found
        best = ""
        for name in self.models:
            if model.startswith(name + "-") and len(name) > len(best):
                best = name
        return self.models.get(best) if best else None


def cost_of(
    price: ModelPrice | None,
    *,
    reported: float | None,
    input_tokens: int | None,
    output_tokens: int | None,
    cached_input_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> Cost:
    """A call's cost at ``price`` (the model's, if it has one): the app's own figure when given, else
    priced from token counts.

    Cached input tokens are part of ``input_tokens`` and reasoning tokens part of ``output_tokens``
    (as the providers report them); each is charged at its own rate.
    """
    if reported is not None:
        return Cost("reported", (("total", reported),))
    if price is None or (input_tokens is None and output_tokens is None):
        return UNPRICED
    cached = min(cached_input_tokens or 0, input_tokens or 0)
    reasoning = min(reasoning_tokens or 0, output_tokens or 0)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    reasoning_rate = price.output if price.reasoning is None else price.reasoning
    parts = (
        ("input", ((input_tokens or 0) - cached) * price.input * _PER_TOKEN),
        ("cached_input", cached * cached_rate * _PER_TOKEN),
        ("output", ((output_tokens or 0) - reasoning) * price.output * _PER_TOKEN),
        ("reasoning", reasoning * reasoning_rate * _PER_TOKEN),
    )
    return Cost("computed", tuple([part for part in parts if part[1] > 0]))


def load_price_table(path: Path | None = None) -> PriceTable:
    """Load a price table from ``path``, or the one shipped with the package."""
    if path is None:
        text = resources.files("otel_service.model").joinpath("prices.json").read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    raw = json.loads(text)
    models = {
        name: ModelPrice(
            input=float(entry["input"]),
            output=float(entry["output"]),
            cached_input=None if entry.get("cached_input") is None else float(entry["cached_input"]),
            reasoning=None if entry.get("reasoning") is None else float(entry["reasoning"]),
        )
        for name, entry in raw["models"].items()
    }
    return PriceTable(version=str(raw["version"]), models=models)
