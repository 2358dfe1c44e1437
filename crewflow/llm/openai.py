"""`OpenAIChat`: OpenAI and any OpenAI-compatible server, through the official ``openai`` SDK.

The SDK (and httpx) load on first use, never at import. HTTP clients belong to one event loop
and outlive a kickoff: every `OpenAIChat` of a loop with the same settings (base URL, API key,
organization, timeout, headers) shares one, kept by `crewflow.llm._pool` until
`crewflow.aclose()` or the loop's shutdown (``kickoff_sync`` closes its own). Building one cost
every kickoff 1-2 ms. `open`/`aclose` only mark the use: `aclose` leaves the shared client open.
An ``http://`` endpoint gets no CA bundle (building the TLS context costs ~23 ms).

A whole answer is read from its JSON body (`crewflow.llm._wire.response_from_json`, through the
SDK's raw-response API) rather than through the SDK's typed models: ~225 us less CPU a call
(about 2.0 ms -> 1.8 ms on the loopback server here). The SDK still sends the request, maps
HTTP statuses and errors, and parses streams.

Provider errors become `crewflow.exceptions.LLMError` in one place, `OpenAIChat._map_error`, with
API keys and the base URL's credentials scrubbed from every message (OpenAI's 401 body echoes
part of the key). The base URL is used as given for the HTTP calls; wherever it is shown (limit
keys, messages, the repr) it goes through `crewflow.llm._redact.public_url`.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import os
import sys
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import urlsplit

from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm._base import LLM
from crewflow.llm._credentials import missing_error, refused_error
from crewflow.llm._errors import (
    connection_error,
    context_length_error,
    describe_cause,
    describe_malformed,
    is_context_length,
    malformed_error,
    other_error,
    provider_detail,
    sdk_call,
    status_error,
    timeout_error,
    was_sent,
)
from crewflow.llm._guard import check_allowed
from crewflow.llm._pool import client_key, loop_client
from crewflow.llm._redact import (
    as_secret,
    public_url,
    redact,
    scrub,
    split_userinfo,
    url_secrets,
)
from crewflow.llm._wire import read_stream, request_kwargs, response_from_json

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping

    from openai import AsyncOpenAI
    from pydantic import SecretStr

    from crewflow.llm._types import LLMRequest, LLMResponse

__all__ = ["DEFAULT_BASE_URL", "OpenAIChat"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"
"""Where the SDK sends requests when neither ``base_url`` nor ``OPENAI_BASE_URL`` is set."""

_OPENAI_HOST: Final = "api.openai.com"
# Local OpenAI-compatible servers (vLLM, llama.cpp, Ollama) ignore the key, but the SDK
# refuses to build a client without one.
_PLACEHOLDER_KEY: Final = "crewflow-no-key"
_KEY_HINT: Final = "check OPENAI_API_KEY (or api_key=) and that it belongs to this server"
_KEY_VARIABLE: Final = "OPENAI_API_KEY"
_HOW: Final = "OpenAIChat(..., api_key=...)"


@dataclass(slots=True)
class _Opened:
    """What `open` resolved for one event loop, and how many `open` calls share it."""

    base_url: str
    key: str
    """The `client_key` of the loop's shared client for these settings."""
    refs: int = 0


class OpenAIChat(LLM):
    """A chat model behind the OpenAI chat-completions API: OpenAI itself, or any compatible
    server (vLLM, llama.cpp, Ollama, LM Studio, a proxy) via ``base_url``.

    The SDK's own retries are off (``max_retries=0``): the runtime retries, under its limits.
    An `OpenAIChat` is configuration plus a per-loop client cache, so copying one (``copy``,
    ``deepcopy``, pydantic's ``model_copy(deep=True)``) gives back the same object.

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
        self._api_key = as_secret(api_key)
        self._opened: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Opened] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        if self.base_url is None:
            return f"OpenAIChat(model={self.name!r})"
        return f"OpenAIChat(model={self.name!r}, base_url={public_url(self.base_url)!r})"

    def __copy__(self) -> OpenAIChat:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAIChat:
        # Live clients belong to their event loop and must not be copied.
        return self

    @property
    def supports_output_schema(self) -> bool:
        """OpenAI-compatible servers take ``response_format`` with a JSON schema."""
        return True

    @property
    def limit_key(self) -> str:
        """``"openai|<base_url>|<model>"``: one set of limits per endpoint and model. The base URL
        appears without credentials (`public_url`): the key is recorded with limit waits."""
        return f"openai|{public_url(self._resolve_base_url().rstrip('/'))}|{self.name}"

    async def open(self) -> None:
        """Load the SDK and make (or share) the running loop's client for these settings.

        Raises:
            CredentialsError: No API key is set for OpenAI's own API (checked now, so a run
                fails before it is recorded).
            ConfigurationError: Real calls are forbidden here.
        """
        check_allowed(self.model, self._resolve_base_url())
        await _import_off_loop("openai")
        # httpx loads its transport (httpcore, h11, h2) and CA bundle module with the first
        # client: ~35 ms more, also off the loop.
        await _import_off_loop("httpcore")
        await _import_off_loop("certifi")
        # asyncio resolves the host in its default executor, whose module loads on first use.
        await _import_off_loop("concurrent.futures.thread")
        loop = asyncio.get_running_loop()
        entry = self._opened.get(loop)
        if entry is None:
            base_url = self._resolve_base_url()
            entry = _Opened(base_url, self._client_key(base_url))
            # Made now, so a missing key fails the run before it is recorded.
            await loop_client(entry.key, functools.partial(self._new_client, base_url))
            self._opened[loop] = entry
        entry.refs += 1

    async def aclose(self) -> None:
        """Release one `open`. The client stays, shared, for later kickoffs of this loop: it
        closes at `crewflow.aclose` or when the loop shuts down."""
        loop = asyncio.get_running_loop()
        entry = self._opened.get(loop)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs <= 0:
            del self._opened[loop]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one chat-completions call.

        Args:
            request: The messages, tools, output schema and sampling settings. Keys of
                ``request.extra`` that the SDK's ``create`` does not know go in the JSON body.

        Returns:
            The answer, with the provider's token counts (estimated when the server sends none).

        Raises:
            LLMError: The call failed; ``retryable`` says whether trying again may help.
            CredentialsError: No API key is set for OpenAI, or the server refused the key
                (HTTP 401); an `LLMError` and a `ConfigurationError`.
            ConfigurationError: Real calls are forbidden here.
        """
        entry = self._opened.get(asyncio.get_running_loop())
        if entry is None:
            # Not opened: the settings are read now, as `open` would.
            base_url = self._resolve_base_url()
            check_allowed(self.model, base_url)
            entry = _Opened(base_url, self._client_key(base_url))
        else:
            check_allowed(self.model, entry.base_url)
        client = await loop_client(entry.key, functools.partial(self._new_client, entry.base_url))
        return await self._send(client, entry.base_url, request)

    # -- the call ---------------------------------------------------------------------------

    async def _send(self, client: AsyncOpenAI, base_url: str, request: LLMRequest) -> LLMResponse:
        # OpenAI's reasoning models reject the deprecated ``max_tokens``; many compatible
        # servers (older vLLM, llama.cpp, Ollama) only know ``max_tokens``.
        max_tokens = "max_completion_tokens" if _is_openai_host(base_url) else "max_tokens"
        kwargs = request_kwargs(
            self.name, request, temperature=self.temperature, max_tokens_param=max_tokens
        )
        if not request.stream and _REQUEST_OPTIONS.isdisjoint(request.extra):
            # The SDK sends the request (with its client's headers, auth and timeout), maps
            # statuses and errors, and reads the body; the body is read here, not through its
            # typed models (~200 us of CPU a reply). The arguments go as they are: `create`
            # would walk them through its typed parameters first (~400 us of CPU a call, more
            # than the rest of a task's runtime, for the same JSON body), and its first use
            # loads the SDK's every resource (~500 modules, 0.3 s).
            import httpx

            body = {**kwargs, **request.extra}
            body.update(body.pop("extra_body", None) or {})
            call = client.post("/chat/completions", body=body, cast_to=httpx.Response)
            content = (await sdk_call(call, self._map_error)).content
        else:
            # A stream, or options of the request given in ``request.extra`` (``extra_headers``,
            # ``extra_query``, ``timeout``): through `create`, its modules loaded off the loop.
            await _import_off_loop("openai.resources.chat.completions")
            _add_extra(kwargs, request.extra)
            if request.stream:
                stream: Any = await sdk_call(
                    client.chat.completions.create(**kwargs), self._map_error
                )
                return await read_stream(stream, request, self.model, self._map_error)
            raw = client.chat.completions.with_raw_response.create(**kwargs)
            content = (await sdk_call(raw, self._map_error)).http_response.content
        try:
            return response_from_json(content, request, self.model)
        except ValueError as exc:  # invalid JSON, or not a chat completion
            raise self._map_error(exc) from None

    # -- configuration ----------------------------------------------------------------------

    def redact(self, text: str) -> str:
        """``text`` with the API key in use, and the base URL's credentials, replaced by
        ``***``."""
        return redact(text, self._secrets())

    def _resolve_base_url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL

    def _secret(self) -> str | None:
        """The key in use, if any (for scrubbing it out of errors)."""
        if self._api_key is not None:
            return self._api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or None

    def _secrets(self) -> tuple[str, ...]:
        """Every secret in use: the key, and what the base URL carries (userinfo, a key in its
        query), for taking out of errors and recorded text."""
        key = self._secret()
        return (*((key,) if key else ()), *url_secrets(self._resolve_base_url()))

    def _resolve_api_key(self, base_url: str) -> str:
        key = self._secret()
        if key:
            return key
        if _is_openai_host(base_url):
            raise missing_error(
                self.model,
                (_KEY_VARIABLE,),
                needs=_KEY_VARIABLE,
                how=_HOW,
                note=" For an OpenAI-compatible server, set OPENAI_BASE_URL or base_url= instead.",
            )
        return _PLACEHOLDER_KEY

    def _client_key(self, base_url: str) -> str:
        """The digest naming this configuration's client: what `_new_client` is built from."""
        headers = sorted(self.default_headers.items()) if self.default_headers else None
        key = self._resolve_api_key(base_url)
        return client_key("openai", base_url, key, self.organization, self.timeout, headers)

    def _new_client(self, base_url: str) -> AsyncOpenAI:
        import httpx
        from openai import AsyncOpenAI

        api_key = self._resolve_api_key(base_url)
        # The URL's credentials become the client's basic auth, as httpx would make them: the
        # URL the SDK and httpx keep (in requests, responses, errors, debug logs) has none.
        base_url, basic_auth = split_userinfo(base_url)
        http_client = httpx.AsyncClient(
            auth=basic_auth,
            verify=_ssl_context() if urlsplit(base_url).scheme == "https" else _no_ca_context(),
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
        import httpx
        import openai

        secrets = self._secrets()
        where = public_url(self._resolve_base_url())
        if isinstance(exc, openai.APIStatusError):
            detail = scrub(provider_detail(exc.body, exc.message), secrets)
            if exc.status_code == 401:
                return refused_error(
                    self.model,
                    (_KEY_VARIABLE,),
                    needs=_KEY_VARIABLE,
                    how=_HOW,
                    status=401,
                    where=where,
                    detail=detail,
                )
            if exc.status_code == 400 and is_context_length(exc.body, detail):
                return context_length_error(self.model, detail, where)
            return status_error(
                self.model, exc.status_code, exc.response.headers, detail, where, _KEY_HINT
            )
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return timeout_error(self.model, self.timeout, where, sent=was_sent(exc))
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            return connection_error(
                self.model, scrub(describe_cause(exc), secrets), where, sent=was_sent(exc)
            )
        if isinstance(exc, ValueError | openai.APIResponseValidationError):
            return malformed_error(self.model, scrub(describe_malformed(exc), secrets), where)
        # An error event inside a stream, or another SDK failure without an HTTP status.
        retryable = isinstance(exc, openai.APIError)
        return other_error(self.model, scrub(str(exc), secrets), where, retryable=retryable)


def _is_openai_host(base_url: str) -> bool:
    return urlsplit(base_url).hostname == _OPENAI_HOST


_REQUEST_OPTIONS = frozenset({"extra_headers", "extra_query", "timeout"})
"""Arguments of ``create`` that set the request's options, not its JSON body."""


@functools.cache
def _create_params() -> frozenset[str]:
    from openai.resources.chat.completions import AsyncCompletions

    return frozenset(inspect.signature(AsyncCompletions.create).parameters) - {"self"}


def _add_extra(kwargs: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Pass ``extra`` through: keys ``create`` knows as arguments, the rest in the JSON body
    (the SDK raises ``TypeError`` on unknown keyword arguments such as vLLM's ``top_k``)."""
    known = _create_params()
    body: dict[str, Any] = {}
    for key, value in extra.items():
        if key == "extra_body":
            continue
        if key in known:
            kwargs[key] = value
        else:
            body[key] = value
    body.update(extra.get("extra_body") or {})  # last, as on the plain path (`_send`)
    if body:
        kwargs["extra_body"] = body


async def _import_off_loop(name: str) -> None:
    """Import a heavy SDK in a worker thread, so the first `open` does not stall the event loop
    (openai takes ~0.5 s to import)."""
    if name in sys.modules:
        return
    import anyio

    await anyio.to_thread.run_sync(importlib.import_module, name)


@functools.cache
def _no_ca_context() -> ssl.SSLContext:
    """The TLS context of an ``http://`` endpoint, which needs none: it trusts no certificate
    (verification stays on), so a redirect to ``https://`` fails instead of going unchecked,
    and it costs no CA bundle (~23 ms in a fresh process)."""
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one costs 10-20 ms (it loads the CA bundle),
    which httpx would otherwise pay for every client."""
    import httpx

    return httpx.create_ssl_context()
