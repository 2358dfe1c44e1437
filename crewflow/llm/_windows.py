"""Context windows of well-known models, in tokens: what a request to each may hold, prompt and
answer together.

A model string is matched by its name without the provider prefix (everything up to the last
``/``: ``"openai/gpt-4o-mini"``, ``"openrouter/openai/gpt-4o-mini"`` and ``"gpt-4o-mini"`` are
one model), lower-cased, against the prefixes below; the longest prefix that matches wins
(``gpt-4o-mini`` before ``gpt-4o`` before ``gpt-4``). A model no prefix matches has no known
window, and so no limit: set `crewflow.Agent`'s ``max_context_tokens`` for it. The offline
model has none.

The numbers are the providers' published windows, as listed in docs/guides/context-budget.md
with the date they were checked; a provider (or a local server started with a smaller
context) may allow less, which ``max_context_tokens`` states.
"""

from __future__ import annotations

import functools
from typing import Final

__all__ = ["CONTEXT_WINDOWS", "context_window"]

CONTEXT_WINDOWS: Final[dict[str, int]] = {
    # OpenAI
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4.5": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic: every Claude 3 and 4 model (Claude 2.0 and Instant had 100 K).
    "claude": 200_000,
    "claude-2.0": 100_000,
    "claude-instant": 100_000,
    # Google
    "gemini-2.5": 1_048_576,
    "gemini-2.0": 1_048_576,
    "gemini-1.5-pro": 2_097_152,
    "gemini-1.5-flash": 1_048_576,
    # Mistral
    "mistral-large": 131_072,
    "mistral-medium": 131_072,
    "mistral-small": 131_072,
    "codestral": 262_144,
    "ministral": 131_072,
    "pixtral": 131_072,
    "open-mistral-nemo": 131_072,
    "open-mistral-7b": 32_768,
    "open-mixtral-8x7b": 32_768,
    "open-mixtral-8x22b": 65_536,
    # Meta Llama, as hosted providers name it (groq, together, fireworks) and as Ollama does.
    "llama-4": 131_072,
    "llama-3.3": 131_072,
    "llama-3.2": 131_072,
    "llama-3.1": 131_072,
    "llama-3": 8_192,
    "llama3.3": 131_072,
    "llama3.2": 131_072,
    "llama3.1": 131_072,
    "llama3": 8_192,
}
"""Context windows in tokens, by model-name prefix (see the module's docs for the matching)."""

_BY_LENGTH: Final = sorted(CONTEXT_WINDOWS.items(), key=lambda item: -len(item[0]))


@functools.lru_cache(maxsize=256)
def context_window(model: str) -> int | None:
    """The context window of ``model`` in tokens, or ``None`` when it is not known.

    Args:
        model: A model string, e.g. ``"openai/gpt-4o-mini"`` or ``"groq/llama-3.3-70b"``.

    Example:
        ```python
        context_window("anthropic/claude-sonnet-4-20250514")  # 200000
        context_window("offline")  # None
        ```
    """
    name = model.rpartition("/")[2].strip().lower()
    for prefix, window in _BY_LENGTH:
        if name.startswith(prefix):
            return window
    return None
