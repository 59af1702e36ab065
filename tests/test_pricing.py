"""Price tables and the cost of one LLM call, by token type."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from otel_service.model.pricing import Cost, ModelPrice, PriceTable, cost_of, load_price_table

RATES = ModelPrice(input=1.0, output=2.0, cached_input=0.5, reasoning=4.0)  # USD per 1M tokens
TABLE = PriceTable(
    "test",
    {
        "flat": ModelPrice(input=1.0, output=2.0),
        "rated": RATES,
        "gpt-4o": ModelPrice(input=2.5, output=10.0),
        "gpt-4o-mini": ModelPrice(input=0.15, output=0.6),
    },
)


def _by_type(cost: Cost) -> dict[str, float]:
    return dict(cost.by_type)


def test_reported_cost_wins_over_token_pricing() -> None:
    """The app's own figure is used as is, even for a priced model with token counts."""
    cost = cost_of(TABLE.price("rated"), reported=0.25, input_tokens=1_000_000, output_tokens=1_000_000)
    assert cost == Cost("reported", (("total", 0.25),))
    assert cost.total == 0.25


def test_reported_zero_is_still_reported() -> None:
    """A reported 0.0 (a free call) is not mistaken for an absent figure."""
    assert cost_of(TABLE.price("rated"), reported=0.0, input_tokens=10, output_tokens=10) == Cost(
        "reported", (("total", 0.0),)
    )


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param(
            {"input_tokens": 1000, "output_tokens": 100},
            {"input": 1000 * 1e-6, "output": 100 * 2e-6},
            id="plain",
        ),
        pytest.param(
            {"input_tokens": 1000, "output_tokens": 100, "cached_input_tokens": 400, "reasoning_tokens": 30},
            {"input": 600 * 1e-6, "cached_input": 400 * 0.5e-6, "output": 70 * 2e-6, "reasoning": 30 * 4e-6},
            id="cached-and-reasoning-at-their-own-rates",
        ),
        pytest.param(
            {
                "input_tokens": 1000,
                "output_tokens": 100,
                "cached_input_tokens": 5000,
                "reasoning_tokens": 900,
            },
            {"cached_input": 1000 * 0.5e-6, "reasoning": 100 * 4e-6},
            id="capped-at-the-totals",
        ),
        pytest.param(
            {"input_tokens": 1000, "output_tokens": None},
            {"input": 1000 * 1e-6},
            id="input-only",
        ),
        pytest.param(
            {"input_tokens": None, "output_tokens": 50, "cached_input_tokens": 10},
            {"output": 50 * 2e-6},
            id="cached-without-input-is-capped-to-zero",
        ),
        pytest.param({"input_tokens": 0, "output_tokens": 0}, {}, id="zero-tokens"),
    ],
)
def test_computed_cost_by_token_type(tokens: dict[str, int | None], expected: dict[str, float]) -> None:
    """Without a reported cost, each token type is charged at its rate; cached/reasoning are capped."""
    cost = cost_of(TABLE.price("rated"), reported=None, **tokens)
    assert cost.source == "computed"
    assert _by_type(cost) == pytest.approx(expected)
    assert [kind for kind, _ in cost.by_type] == list(expected)  # no zero-valued parts
    assert cost.total == pytest.approx(sum(expected.values()))


def test_cached_and_reasoning_default_to_input_and_output_rates() -> None:
    """A model without special rates charges cached input as input and reasoning as output."""
    cost = cost_of(
        TABLE.price("flat"),
        reported=None,
        input_tokens=1000,
        output_tokens=100,
        cached_input_tokens=400,
        reasoning_tokens=30,
    )
    assert _by_type(cost) == pytest.approx(
        {"input": 600e-6, "cached_input": 400e-6, "output": 140e-6, "reasoning": 60e-6}
    )
    assert cost.total == pytest.approx(1000e-6 + 200e-6)


@pytest.mark.parametrize("reverse", [False, True], ids=["short-first", "long-first"])
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-mini-x", "gpt-4o-mini"),
        ("gpt-4omni", None),
        ("gpt-4", None),
        ("gpt-4o-", "gpt-4o"),
        ("GPT-4o", None),
        ("my-gpt-4o", None),
        ("", None),
    ],
)
def test_model_lookup_matches_dated_variants_by_longest_prefix(
    model: str, expected: str | None, reverse: bool
) -> None:
    """Exact names win; otherwise the longest name followed by '-' matches, whatever the table order."""
    names = ["gpt-4o", "gpt-4o-mini"]
    if reverse:
        names.reverse()
    prices = {name: ModelPrice(input=float(len(name)), output=1.0) for name in names}
    table = PriceTable("t", prices)
    assert table.price(model) == (None if expected is None else prices[expected])


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param({"input_tokens": 1000, "output_tokens": 100}, id="with-tokens"),
        pytest.param({"input_tokens": 0, "output_tokens": 0}, id="zero-tokens"),
        pytest.param({"input_tokens": None, "output_tokens": None}, id="no-tokens"),
    ],
)
def test_unknown_model_is_unpriced_never_zero(tokens: dict[str, int | None]) -> None:
    """An unknown model's cost is 'unpriced' (no parts), never a computed 0.0."""
    cost = cost_of(TABLE.price("mystery-model"), reported=None, **tokens)
    assert cost == Cost("unpriced")
    assert cost.source == "unpriced"


def test_known_model_without_token_counts_is_unpriced() -> None:
    """With neither input nor output tokens there is nothing to price."""
    cost = cost_of(TABLE.price("rated"), reported=None, input_tokens=None, output_tokens=None)
    assert cost == Cost("unpriced")


def test_packaged_table_loads_with_a_version_and_sane_prices() -> None:
    """The price table shipped in the package loads, is versioned, and holds finite non-negative prices."""
    table = load_price_table()
    assert isinstance(table.version, str)
    assert table.version
    assert {"gpt-4o", "gpt-4o-mini", "gemini-1.5-flash"} <= set(table.models)
    for name, price in table.models.items():
        rates = [price.input, price.output, price.cached_input, price.reasoning]
        assert all(r is None or (math.isfinite(r) and r >= 0) for r in rates), name
    assert table.price("gpt-4o-2024-08-06") == table.models["gpt-4o"]
    assert table.price("gpt-4o-mini-2024-07-18") == table.models["gpt-4o-mini"]


def test_custom_table_file_loads(tmp_path: Path) -> None:
    """A table file given by path loads into exactly the prices it lists."""
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "version": 7,
                "models": {
                    "house-model": {"input": 1, "output": "2.5"},
                    "house-reasoner": {"input": 3, "output": 4, "cached_input": 0.5, "reasoning": 8},
                    "house-cache": {"input": 3, "output": 4, "cached_input": None},
                },
            }
        ),
        encoding="utf-8",
    )
    assert load_price_table(path) == PriceTable(
        "7",
        {
            "house-model": ModelPrice(input=1.0, output=2.5),
            "house-reasoner": ModelPrice(input=3.0, output=4.0, cached_input=0.5, reasoning=8.0),
            "house-cache": ModelPrice(input=3.0, output=4.0),
        },
    )
