"""The `LLM` strategy: one provider call, plus the lifetime of the client behind it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from types import TracebackType

    from crewflow.llm._types import LLMRequest, LLMResponse


class LLM(ABC):
    """A language model crewflow can call.

    Subclass it to plug in any provider: implement `complete`, and `open`/`aclose` when the
    client holds connections. The runtime wraps every LLM it uses with limits, retries, usage
    accounting and events, so an implementation makes exactly one provider call per `complete`
    and maps its SDK's errors to `crewflow.exceptions.LLMError` (with ``retryable`` set for
    429, 5xx, timeouts and connection errors).

    Example:
        ```python
        class EchoLLM(LLM):
            model = "echo"

            async def complete(self, request: LLMRequest) -> LLMResponse:
                return LLMResponse(content=request.messages[-1].content)
        ```
    """

    model: str
    """The model string, e.g. ``"openai/gpt-4o-mini"`` or ``"offline"``."""

    is_remote: ClassVar[bool] = False
    """Whether calls leave this process (what `crewflow.testing.forbid_real_llm_calls` blocks)."""

    @abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one call to the model.

        Args:
            request: The messages, tools, output schema and sampling settings.

        Returns:
            The model's answer with its token usage.

        Raises:
            crewflow.exceptions.LLMError: The provider call failed.
        """

    @property
    def supports_output_schema(self) -> bool:
        """Whether the provider enforces a JSON schema natively (``response_format``); when not,
        the agent asks for JSON in the prompt and validates the answer itself."""
        return False

    @property
    def limit_key(self) -> str:
        """The key that limits, Retry-After pauses and circuit breakers are shared under:
        provider + base URL + model, so two objects for one endpoint share them."""
        return self.model

    def redact(self, text: str) -> str:
        """``text`` without this client's secrets (its API key, and credentials in its base URL,
        become ``***``): the runtime passes every prompt and reply it records through it. The
        default changes nothing; a client that holds a key overrides it.
        """
        return text

    async def open(self) -> None:  # noqa: B027 - an optional hook with a default
        """Prepare the client for the running event loop. Called by the runtime (or
        ``async with llm:``) before the first call; calls nest and must be balanced by `aclose`."""

    async def aclose(self) -> None:  # noqa: B027 - an optional hook with a default
        """Release what `open` acquired; the last `aclose` of an event loop closes its client."""

    async def __aenter__(self) -> LLM:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
