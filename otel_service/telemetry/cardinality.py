"""Cardinality guards for metric attributes, and GenAI provider inference."""

from __future__ import annotations

__all__ = ["OVERFLOW_VALUE", "LabelGuard", "infer_provider"]

#: Stands for every value beyond an attribute's cap (the semantic conventions' "other" value).
OVERFLOW_VALUE = "_OTHER"

_PROVIDERS = (
    ("gemini", "gcp.gemini"),
    ("gpt-", "openai"),
    ("o1", "openai"),
    ("o3", "openai"),
    ("o4", "openai"),
    ("text-embedding-", "openai"),
    ("claude", "anthropic"),
    ("mistral", "mistral_ai"),
    ("mixtral", "mistral_ai"),
    ("command", "cohere"),
    ("deepseek", "deepseek"),
    ("grok", "x_ai"),
)


def infer_provider(model: str, default: str) -> str:
    """The ``gen_ai.provider.name`` a model name implies, or ``default``."""
    lowered = model.lower()
    for prefix, provider in _PROVIDERS:
        if lowered.startswith(prefix):
            return provider
    return default


class LabelGuard:
    """Keeps at most ``limit`` distinct values of one attribute; later ones become ``_OTHER``."""

    __slots__ = ("limit", "name", "overflowed", "seen")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.seen: set[str] = set()
        #: How many values were replaced since the last ``take_overflow``.
        self.overflowed = 0

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        self.overflowed += 1
        return OVERFLOW_VALUE

    def take_overflow(self) -> int:
        count, self.overflowed = self.overflowed, 0
        return count
