"""GenAI providers: the ``gen_ai.provider.name`` a model name implies."""

from __future__ import annotations

__all__ = ["infer_provider"]

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
