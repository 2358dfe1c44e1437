"""`Usage`: requests, tokens and cost, the one record of what calls spent.

Its own module, below the LLM clients and the records: the store keeps it, the runtime adds it
up, every LLM response carries it, and the store's commands (``crewflow runs``) load nothing of
the clients to read it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Usage"]


@dataclass(slots=True)
class Usage:
    """Token usage and cost, added up over calls.

    Attributes:
        requests: Provider calls made (retries included).
        prompt_tokens: Input tokens reported by the provider (or estimated).
        completion_tokens: Output tokens.
        cost: Cost in USD when the provider or LiteLLM's price table knows it, else ``None``.
    """

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        """Add ``other`` into this usage, in place."""
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        if other.cost is not None:
            self.cost = (self.cost or 0.0) + other.cost

    def copy(self) -> Usage:
        """An independent copy."""
        return Usage(self.requests, self.prompt_tokens, self.completion_tokens, self.cost)
