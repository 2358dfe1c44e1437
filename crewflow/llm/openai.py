"""`OpenAIChat`: OpenAI and any OpenAI-compatible server, through the official ``openai`` SDK.

The SDK (and httpx) load on first use, never at import. Clients belong to one event loop: `open`
makes (or shares) the client of the running loop, `aclose` closes it after the last user, and a
`complete` outside `open`/`aclose` gets a client of its own for that one call.

Provider errors become `crewflow.exceptions.LLMError` in one place, `OpenAIChat._map_error`, with
API keys scrubbed from every message (OpenAI's 401 body echoes part of the key). The helpers
below the class (scrubbing, Retry-After parsing, stream accumulation) are shared with
`crewflow.llm.litellm`, whose responses have the same OpenAI shape.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import json
import os
import re
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr

from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm._base import LLM
from crewflow.llm._guard import check_allowed
from crewflow.llm._types import (
    LLMResponse,
    ToolCall,
    Usage,
    estimate_prompt_tokens,
    estimate_tokens,
)

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable, Mapping

    from openai import AsyncOpenAI

    from crewflow.llm._types import LLMRequest, Message, OutputSchema

__all__ = ["DEFAULT_BASE_URL", "OpenAIChat"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
"""Where the SDK sends requests when neither ``base_url`` nor ``OPENAI_BASE_URL`` is set."""

_OPENAI_HOST: Final = "api.openai.com"
# Local OpenAI-compatible servers (vLLM, llama.cpp, Ollama) ignore the key, but the SDK
# refuses to build a client without one.
_PLACEHOLDER_KEY: Final = "crewflow-no-key"
_STREAM_OPTIONS: Final = {"include_usage": True}
_MAX_DETAIL: Final = 500


@dataclass(slots=True)
class _LoopClient:
    """The SDK client of one event loop and how many `open` calls share it."""

    client: AsyncOpenAI
    base_url: str
    refs: int = 0


class OpenAIChat(LLM):
    """A chat model behind the OpenAI chat-completions API: OpenAI itself, or any compatible
    server (vLLM, llama.cpp, Ollama, LM Studio, a proxy) via ``base_url``.

    The SDK's own retries are off (``max_retries=0``): the runtime retries, under its limits.

    Args:
        model: The SDK model name, e.g. ``"gpt-4o-mini"`` (without the ``openai/`` prefix).
        base_url: The API root; defaults to ``OPENAI_BASE_URL``, else OpenAI's.
        api_key: The key; defaults to ``OPENAI_API_KEY``. Servers other than OpenAI's may need
            none, in which case a placeholder is sent.
        timeout: Seconds one call may take, streaming included.
        temperature: Default sampling temperature (a request's own wins).
        organization: The OpenAI organization id (defaults to ``OPENAI_ORG_ID``).
        default_headers: Extra HTTP headers sent with every request.

    Example:
        ```python
        llm = OpenAIChat("gpt-4o-mini")
        local = OpenAIChat("qwen2.5:7b", base_url="http://127.0.0.1:11434/v1")
        ```
    """

    is_remote: ClassVar[bool] = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        timeout: float = 600.0,
        temperature: float | None = None,
        organization: str | None = None,
        default_headers: Mapping[str, str] | None = None,
    ) -> None:
        if not model.strip():
            raise ConfigurationError(
                'OpenAIChat needs a model name, e.g. OpenAIChat("gpt-4o-mini")'
            )
        self.name = model.strip()
        """The model name as the SDK and the server know it (no ``openai/`` prefix)."""
        self.model = f"openai/{self.name}"
        self.base_url = base_url
        """The configured API root, or ``None`` for ``OPENAI_BASE_URL`` / OpenAI's."""
        self.timeout = timeout
        self.temperature = temperature
        self.organization = organization
        self.default_headers = dict(default_headers) if default_headers else None
        self._api_key = _as_secret(api_key)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        if self.base_url is None:
            return f"OpenAIChat(model={self.name!r})"
        return f"OpenAIChat(model={self.name!r}, base_url={_display_url(self.base_url)!r})"

    @property
    def supports_output_schema(self) -> bool:
        """OpenAI-compatible servers take ``response_format`` with a JSON schema."""
        return True

    @property
    def limit_key(self) -> str:
        """``"openai|<base_url>|<model>"``: one set of limits per endpoint and model."""
        return f"openai|{self._resolve_base_url().rstrip('/')}|{self.name}"

    async def open(self) -> None:
        """Create (or share) the SDK client of the running event loop.

        Raises:
            ConfigurationError: No API key is set for OpenAI's own API.
        """
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            base_url = self._resolve_base_url()
            entry = _LoopClient(self._new_client(base_url), base_url)
            self._clients[loop] = entry
        entry.refs += 1

    async def aclose(self) -> None:
        """Release one `open`; the last one closes the running loop's client."""
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._clients[loop]
            await _close_shielded(entry.client)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one chat-completions call.

        Args:
            request: The messages, tools, output schema and sampling settings. Keys of
                ``request.extra`` that the SDK's ``create`` does not know go in the JSON body.

        Returns:
            The answer, with the provider's token counts (estimated when the server sends none).

        Raises:
            LLMError: The call failed; ``retryable`` says whether trying again may help.
            ConfigurationError: Real calls are forbidden here, or no API key is set for OpenAI.
        """
        entry = self._clients.get(asyncio.get_running_loop())
        if entry is not None:
            check_allowed(self.model, entry.base_url)
            return await self._send(entry.client, entry.base_url, request)
        base_url = self._resolve_base_url()
        check_allowed(self.model, base_url)
        # Not opened: a client for this one call, so nothing outlives it.
        client = self._new_client(base_url)
        try:
            return await self._send(client, base_url, request)
        finally:
            await _close_shielded(client)

    # -- the call ---------------------------------------------------------------------------

    async def _send(self, client: AsyncOpenAI, base_url: str, request: LLMRequest) -> LLMResponse:
        kwargs = self._request_kwargs(request, base_url)
        if request.stream:
            return await self._stream(client, kwargs, request)
        try:
            completion: Any = await client.chat.completions.create(**kwargs)
        except sdk_errors() as exc:
            raise self._map_error(exc) from exc
        try:
            return _response_from_completion(completion, request, self.model)
        except _MalformedResponse as exc:
            raise self._map_error(exc) from None

    async def _stream(
        self, client: AsyncOpenAI, kwargs: dict[str, Any], request: LLMRequest
    ) -> LLMResponse:
        try:
            stream: Any = await client.chat.completions.create(**kwargs)
        except sdk_errors() as exc:
            raise self._map_error(exc) from exc
        state = StreamState()
        iterator = aiter(stream)
        try:
            while True:
                # Only the SDK's iteration is mapped: errors of the user's callback are theirs.
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                except sdk_errors() as exc:
                    raise self._map_error(exc) from exc
                text = state.add(chunk)
                if text and request.on_delta is not None:
                    await call_on_delta(request.on_delta, text)
        finally:
            await stream.close()
        return state.response(request, self.model)

    def _request_kwargs(self, request: LLMRequest, base_url: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.name,
            "messages": messages_to_openai(request.messages),
        }
        if request.tools:
            kwargs["tools"] = [tool.to_openai() for tool in request.tools]
        if request.output is not None:
            kwargs["response_format"] = response_format(request.output)
        temperature = request.temperature if request.temperature is not None else self.temperature
        if temperature is not None:
            kwargs["temperature"] = temperature
        if request.max_tokens is not None:
            kwargs[_max_tokens_param(base_url)] = request.max_tokens
        if request.stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = _STREAM_OPTIONS
        if request.extra:
            _add_extra(kwargs, request.extra)
        return kwargs

    # -- configuration ----------------------------------------------------------------------

    def _resolve_base_url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL

    def _secret(self) -> str | None:
        """The key in use, if any (for scrubbing it out of errors)."""
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or None

    def _resolve_api_key(self, base_url: str) -> str:
        key = self._secret()
        if key:
            return key
        if _is_openai_host(base_url):
            raise ConfigurationError(
                f"no API key for {self.model!r}: set the OPENAI_API_KEY environment variable or "
                "pass OpenAIChat(..., api_key=...). For an OpenAI-compatible server, set "
                "OPENAI_BASE_URL or base_url= instead."
            )
        return _PLACEHOLDER_KEY

    def _new_client(self, base_url: str) -> AsyncOpenAI:
        import httpx
        from openai import AsyncOpenAI

        api_key = self._resolve_api_key(base_url)
        http_client = httpx.AsyncClient(
            verify=_ssl_context(),
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            follow_redirects=True,
        )
        return AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            organization=self.organization,
            timeout=self.timeout,
            max_retries=0,
            default_headers=self.default_headers,
            http_client=http_client,
        )

    # -- errors -----------------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> LLMError:
        """Translate an SDK, transport or parsing error into an `LLMError` without secrets."""
        import openai

        secret = self._secret()
        scrub_exception(exc, secret)
        where = _display_url(self._resolve_base_url())
        if isinstance(exc, openai.APIStatusError):
            detail = scrub(provider_detail(exc.body, exc.message), secret)
            return status_error(
                self.model, exc.status_code, exc.response.headers, detail, where, _KEY_HINT
            )
        if isinstance(exc, openai.APITimeoutError | _httpx_timeout()):
            return timeout_error(self.model, self.timeout, where)
        if isinstance(exc, openai.APIConnectionError | _httpx_error()):
            return connection_error(self.model, scrub(describe_cause(exc), secret), where)
        if isinstance(exc, ValueError | openai.APIResponseValidationError):
            return malformed_error(self.model, scrub(str(exc), secret), where)
        # An error event inside a stream, or another SDK failure without an HTTP status.
        return LLMError(
            f"{self.model} failed at {where}: {scrub(str(exc), secret)}",
            model=self.model,
            retryable=isinstance(exc, openai.APIError),
        )


_KEY_HINT: Final = "check OPENAI_API_KEY (or api_key=) and that it belongs to this server"


class _MalformedResponse(ValueError):
    """A 200 answer that is not a chat completion."""


# -- request building (shared with crewflow.llm.litellm) ------------------------------------


def messages_to_openai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """The messages as OpenAI chat-completions dicts."""
    return [message.to_openai() for message in messages]


def response_format(output: OutputSchema) -> dict[str, Any]:
    """The ``response_format`` asking for JSON that matches ``output``.

    ``strict`` is off: strict mode rejects common pydantic schemas (optional fields, defaults),
    and the agent validates the answer against the model anyway.
    """
    return {
        "type": "json_schema",
        "json_schema": {"name": output.name, "schema": output.schema, "strict": False},
    }


def _max_tokens_param(base_url: str) -> str:
    # OpenAI's reasoning models reject the deprecated ``max_tokens``; many compatible servers
    # (older vLLM, llama.cpp, Ollama) only know ``max_tokens``.
    return "max_completion_tokens" if _is_openai_host(base_url) else "max_tokens"


@functools.cache
def _create_params() -> frozenset[str]:
    from openai.resources.chat.completions import AsyncCompletions

    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"}


def _add_extra(kwargs: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Pass ``extra`` through: keys ``create`` knows as arguments, the rest in the JSON body
    (the SDK raises ``TypeError`` on unknown keyword arguments such as vLLM's ``top_k``)."""
    known = _create_params()
    body: dict[str, Any] = dict(kwargs.get("extra_body") or {})
    for key, value in extra.items():
        if key in known:
            kwargs[key] = value
        else:
            body[key] = value
    if body:
        kwargs["extra_body"] = body


# -- response mapping (shared with crewflow.llm.litellm) ------------------------------------


def _response_from_completion(completion: Any, request: LLMRequest, model: str) -> LLMResponse:
    if isinstance(completion, str):
        # The SDK hands back the raw text when a 200 is not labelled as JSON.
        raise _MalformedResponse(f"the body is not JSON: {completion[:_MAX_DETAIL]!r}")
    try:
        choice = completion.choices[0]
        message = choice.message
        content: str | None = message.content
        calls = tool_calls_from(message.tool_calls)
        finish_reason: str | None = choice.finish_reason
    except (AttributeError, IndexError, TypeError) as exc:
        raise _MalformedResponse(f"the body is not a chat completion ({exc})") from None
    usage = usage_from(getattr(completion, "usage", None), request, content, calls)
    return LLMResponse(content, calls, usage, model, finish_reason)


def tool_calls_from(raw_calls: Iterable[Any] | None) -> tuple[ToolCall, ...]:
    """The function calls of an OpenAI-shaped assistant message (other call kinds skipped)."""
    if not raw_calls:
        return ()
    calls = []
    for index, raw in enumerate(raw_calls):
        function = getattr(raw, "function", None)
        if function is None:
            continue
        calls.append(
            ToolCall(raw.id or f"call_{index}", function.name or "", function.arguments or "")
        )
    return tuple(calls)


def usage_from(
    raw: Any, request: LLMRequest, content: str | None, calls: tuple[ToolCall, ...]
) -> Usage:
    """The provider's token counts, or estimates (characters / 4) when it sent none."""
    if raw is not None and getattr(raw, "prompt_tokens", None) is not None:
        return Usage(1, raw.prompt_tokens or 0, raw.completion_tokens or 0)
    written = (content or "") + "".join(call.name + call.arguments for call in calls)
    return Usage(1, estimate_prompt_tokens(request.messages), estimate_tokens(written))


async def call_on_delta(callback: Any, text: str) -> None:
    """Call the streaming callback, awaiting it when it is a coroutine function."""
    result = callback(text)
    if inspect.isawaitable(result):
        await result


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamState:
    """What a chat-completions stream has said so far: text, tool calls by index, usage."""

    parts: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: Any = None

    def add(self, chunk: Any) -> str | None:
        """Take one chunk in; return its text piece, if any."""
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage
        choices = chunk.choices
        if not choices:
            return None
        choice = choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is None:
            return None
        if delta.tool_calls:
            self._add_calls(delta.tool_calls)
        text: str | None = delta.content
        if text:
            self.parts.append(text)
        return text

    def _add_calls(self, deltas: Iterable[Any]) -> None:
        for delta in deltas:
            index = delta.index
            if index is None:
                # Some servers omit the index: a new id starts a call, no id continues the last.
                index = len(self.calls) if (delta.id or not self.calls) else max(self.calls)
            call = self.calls.setdefault(index, _PartialCall())
            if delta.id and not call.id:
                call.id = delta.id
            function = delta.function
            if function is None:
                continue
            if function.name and not call.name:
                call.name = function.name
            if function.arguments:
                call.arguments.append(function.arguments)

    def response(self, request: LLMRequest, model: str) -> LLMResponse:
        """The whole answer, once the stream has ended."""
        content = "".join(self.parts) if self.parts else None
        calls = tuple(
            ToolCall(call.id or f"call_{index}", call.name, "".join(call.arguments))
            for index, call in sorted(self.calls.items())
        )
        usage = usage_from(self.usage, request, content, calls)
        return LLMResponse(content, calls, usage, model, self.finish_reason)


# -- errors (shared with crewflow.llm.litellm) ----------------------------------------------


@functools.cache
def sdk_errors() -> tuple[type[Exception], ...]:
    """The exception classes `OpenAIChat` and `LiteLLM` translate: the provider's fault, not ours.

    litellm's exceptions subclass openai's. ``JSONDecodeError``: the SDK parses a malformed 200
    body (or SSE event) with ``json.loads`` and lets the error through.
    """
    import httpx
    import openai

    return (openai.OpenAIError, httpx.HTTPError, json.JSONDecodeError)


def _httpx_timeout() -> type[Exception]:
    import httpx

    return httpx.TimeoutException


def _httpx_error() -> type[Exception]:
    import httpx

    return httpx.TransportError


def status_error(
    model: str,
    status: int,
    headers: Mapping[str, str] | None,
    detail: str,
    where: str,
    key_hint: str,
) -> LLMError:
    """The `LLMError` of an HTTP error answer: retryable for 408, 409, 429 and 5xx."""
    retryable = status in (408, 409, 429) or status >= 500
    retry_after = parse_retry_after(headers) if headers is not None else None
    advice = _status_advice(status, key_hint, retry_after)
    return LLMError(
        f"{model} failed with HTTP {status} at {where}: {detail}. {advice}",
        model=model,
        status_code=status,
        retryable=retryable,
        retry_after=retry_after,
    )


def _status_advice(status: int, key_hint: str, retry_after: float | None) -> str:
    if status == 429:
        wait = f" in {retry_after:g}s" if retry_after is not None else ""
        return f"Rate limited: crewflow retries{wait}; lower the model's rpm/concurrency limits."
    if status >= 500 or status in (408, 409):
        return "The server failed; retrying may succeed."
    if status in (401, 403):
        return f"The API key was refused: {key_hint}."
    if status == 404:
        return "Check the model name and the base URL."
    return "The request was rejected; retrying will not help."


def timeout_error(model: str, timeout: float | None, where: str) -> LLMError:
    """The `LLMError` of a call that got no (complete) answer in time."""
    limit = f" within {timeout:g}s" if timeout is not None else ""
    return LLMError(
        f"{model} did not answer{limit} at {where}; retrying may succeed, or raise timeout=.",
        model=model,
        retryable=True,
    )


def connection_error(model: str, detail: str, where: str) -> LLMError:
    """The `LLMError` of a failed or broken connection."""
    return LLMError(
        f"{model}: the connection to {where} failed ({detail}); check that the server is "
        "running and the base URL is right. Retrying may succeed.",
        model=model,
        retryable=True,
    )


def malformed_error(model: str, detail: str, where: str) -> LLMError:
    """The `LLMError` of a 200 answer that could not be read."""
    return LLMError(
        f"{model} sent an unreadable answer from {where}: {detail[:_MAX_DETAIL]}. Retrying "
        "may succeed; if not, the server does not speak the OpenAI chat-completions API.",
        model=model,
        status_code=200,
        retryable=True,
    )


def describe_cause(exc: BaseException) -> str:
    """The SDK's message plus the transport error under it (e.g. ``ConnectError: refused``)."""
    cause = exc.__cause__ or exc.__context__
    text = str(exc)
    if cause is not None and str(cause):
        text = f"{text} {type(cause).__name__}: {cause}"
    return text[:_MAX_DETAIL]


def provider_detail(body: object, fallback: str) -> str:
    """The provider's own error message from an error body, else ``fallback``."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])[:_MAX_DETAIL]
        if isinstance(error, str):
            return error[:_MAX_DETAIL]
    return fallback[:_MAX_DETAIL]


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


# -- secrets ----------------------------------------------------------------------------------

# Key-shaped tokens: OpenAI-style (sk-, sk-proj-...), bearer tokens, and whatever follows
# "API key provided:" in an echoing error body.
_KEY_PATTERN: Final = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}"
    r"|\bBearer\s+[^\s\"',]+"
    r"|(?<=api key provided: )[^\s\"',]+",
    re.IGNORECASE,
)
_REDACTED: Final = "***"


def scrub(text: str, secret: str | None) -> str:
    """``text`` without ``secret`` and without anything shaped like an API key."""
    if secret:
        text = text.replace(secret, _REDACTED)
    return _KEY_PATTERN.sub(_REDACTED, text)


def scrub_exception(exc: BaseException, secret: str | None) -> None:
    """Scrub an SDK exception in place: it is chained as ``__cause__`` and ends up in logs."""
    exc.args = tuple(scrub(a, secret) if isinstance(a, str) else a for a in exc.args)
    for name in ("message", "litellm_debug_info"):
        value = getattr(exc, name, None)
        if isinstance(value, str):
            setattr(exc, name, scrub(value, secret))
    if hasattr(exc, "body"):
        exc.body = _scrub_value(exc.body, secret)


def _scrub_value(value: object, secret: str | None) -> object:
    if isinstance(value, str):
        return scrub(value, secret)
    if isinstance(value, dict):
        return {key: _scrub_value(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_scrub_value(item, secret) for item in value]
    return value


def _as_secret(api_key: str | SecretStr | None) -> SecretStr | None:
    if api_key is None:
        return None
    secret = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
    return secret if secret.get_secret_value() else None


# -- URLs and clients -------------------------------------------------------------------------


def _is_openai_host(base_url: str) -> bool:
    return urlsplit(base_url).hostname == _OPENAI_HOST


def _display_url(url: str) -> str:
    """``url`` without user:password, fit for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one costs 10-20 ms (it loads the CA bundle),
    which httpx would otherwise pay for every client."""
    import httpx

    return httpx.create_ssl_context()


async def _close_shielded(client: AsyncOpenAI) -> None:
    """Close a client even inside a cancelled scope, so no socket is left open."""
    import anyio

    with anyio.CancelScope(shield=True):
        await client.close()
