"""`LiteLLM`: each provider LiteLLM knows (``"anthropic/..."``, ``"gemini/..."``, ``"ollama/..."``).

litellm is optional (``pip install 'crewflow[litellm]'``) and heavy (seconds to import), so it
loads on first use, in a worker thread when `open` runs first. Before the import crewflow sets
``LITELLM_MODE=PRODUCTION`` (otherwise litellm loads a ``.env`` file into the environment) and
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (otherwise it downloads a price map at import); after it,
litellm's banners and debug output are turned off, and every call runs with its retries off
because the runtime owns retries.

litellm caches its HTTP clients per event loop in a module-level cache and keeps them for ten
minutes. When the last `LiteLLM` user of a loop calls `aclose` (or an un-opened `complete`
ends), the clients litellm made for that loop are closed and dropped, so no socket or aiohttp
session outlives the loop that owns it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any, ClassVar, Final

from crewflow.exceptions import ConfigurationError, LLMError
from crewflow.llm._base import LLM
from crewflow.llm._credentials import litellm_missing, litellm_refused
from crewflow.llm._errors import (
    connection_error,
    context_length_error,
    describe_cause,
    describe_malformed,
    in_chain,
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
from crewflow.llm._redact import as_secret, public_url, redact, scrub, url_secrets
from crewflow.llm._wire import (
    MalformedResponse,
    close_shielded,
    read_stream,
    request_kwargs,
    response_from_completion,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import SecretStr

    from crewflow.llm._types import LLMRequest, LLMResponse, Usage

__all__ = ["LiteLLM"]

_INSTALL_HINT: Final = "pip install 'crewflow[litellm]'"
_KEY_HINT: Final = (
    "check the provider's API key (e.g. ANTHROPIC_API_KEY, GEMINI_API_KEY) or pass api_key="
)
# Retries belong to the runtime: litellm's would multiply them and hide 429s from the limiter.
_NO_RETRIES: Final = {"num_retries": 0, "max_retries": 0}

# How many LiteLLM users (opened objects, calls in flight) each event loop has. Module-level
# because litellm's client cache is module-level: clients are shared by every LiteLLM object.
_loop_users: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()


class LiteLLM(LLM):
    """A model behind any provider LiteLLM supports, named ``"<provider>/<model>"``.

    A `LiteLLM` is configuration plus per-loop bookkeeping, so copying one (``copy``,
    ``deepcopy``, pydantic's ``model_copy(deep=True)``) gives back the same object.

    Args:
        model: The LiteLLM model string, e.g. ``"anthropic/claude-sonnet-4-20250514"``.
        api_key: The provider key; by default LiteLLM reads the provider's environment
            variable (``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``...).
        api_base: The provider's API root, for self-hosted or proxied endpoints.
        timeout: Seconds one call may take, streaming included.
        check_credentials: Check when the client opens (before a run is recorded) that the
            provider's credentials are there, as LiteLLM knows its variables, accepting the
            provider's other ways in (Anthropic auth tokens, AWS profiles and roles, Google
            application default credentials, Azure AD). ``False`` skips the check, for
            credentials crewflow cannot see.
        **kwargs: Passed to ``litellm.acompletion`` on every call (e.g. ``api_version``,
            ``top_p``); a request's ``extra`` wins over them.

    Example:
        ```python
        llm = LiteLLM("anthropic/claude-sonnet-4-20250514")
        local = LiteLLM("ollama/llama3.1", api_base="http://127.0.0.1:11434")
        ```
    """

    is_remote: ClassVar[bool] = True

    def __init__(
        self,
        model: str,
        *,
        api_key: str | SecretStr | None = None,
        api_base: str | None = None,
        timeout: float = 600.0,
        check_credentials: bool = True,
        **kwargs: Any,
    ) -> None:
        provider, sep, name = model.strip().partition("/")
        if not (provider and sep and name):
            raise ConfigurationError(
                f'LiteLLM needs a "<provider>/<model>" string, got {model!r} '
                '(e.g. "anthropic/claude-sonnet-4-20250514")'
            )
        self.model = model.strip()
        self.api_base = api_base
        self.timeout = timeout
        self.check_credentials = check_credentials
        self.kwargs = kwargs
        self._api_key = as_secret(api_key)
        self._opened: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        if self.api_base is None:
            return f"LiteLLM(model={self.model!r})"
        return f"LiteLLM(model={self.model!r}, api_base={public_url(self.api_base)!r})"

    def __copy__(self) -> LiteLLM:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> LiteLLM:
        # The per-loop registrations must stay with the object that made them.
        return self

    @property
    def supports_output_schema(self) -> bool:
        """What LiteLLM's model table says about native JSON-schema output (False if unknown)."""
        return _supports_response_schema(self.model)

    @property
    def limit_key(self) -> str:
        """``"litellm|<api_base>|<model>"``: one set of limits per endpoint and model. The API
        root appears without credentials (`public_url`): the key is recorded with limit waits."""
        return f"litellm|{public_url(self.api_base) if self.api_base else ''}|{self.model}"

    async def open(self) -> None:
        """Import litellm and check the credentials (off the event loop), and register as a
        user of the running loop.

        Raises:
            CredentialsError: The provider's credentials are missing (see
                ``check_credentials``).
            ConfigurationError: litellm is not installed, or real calls are forbidden here
                (checked now, so a run fails before any task starts, and before it is recorded).
        """
        check_allowed(self.model, self.api_base)
        if sys.modules.get("litellm") is None or self.check_credentials:
            import anyio

            await anyio.to_thread.run_sync(self._prepare)
        loop = asyncio.get_running_loop()
        self._opened[loop] = self._opened.get(loop, 0) + 1
        _acquire_loop(loop)

    async def aclose(self) -> None:
        """Release one `open`; the loop's last user closes litellm's clients of that loop."""
        loop = asyncio.get_running_loop()
        opened = self._opened.get(loop, 0)
        if opened <= 0:
            return
        if opened == 1:
            del self._opened[loop]
        else:
            self._opened[loop] = opened - 1
        await _release_loop(loop)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """Make one ``litellm.acompletion`` call.

        Args:
            request: The messages, tools, output schema and sampling settings; ``extra`` is
                passed to ``acompletion``.

        Returns:
            The answer, with token counts and LiteLLM's cost estimate (``None`` when unknown).

        Raises:
            LLMError: The call failed; ``retryable`` says whether trying again may help.
            CredentialsError: The provider refused the key, or found none (HTTP 401); an
                `LLMError` and a `ConfigurationError`.
            ConfigurationError: litellm is missing, or real calls are forbidden here.
        """
        check_allowed(self.model, self.api_base)
        litellm = _import_litellm()
        loop = asyncio.get_running_loop()
        _acquire_loop(loop)
        try:
            kwargs = self._request_kwargs(request)
            if request.stream:
                return await self._stream(litellm, kwargs, request)
            response = await sdk_call(litellm.acompletion(**kwargs), self._map_error)
            return self._to_response(litellm, response, request)
        finally:
            await _release_loop(loop)

    def _prepare(self) -> None:
        """Import litellm, then check the credentials (in a worker thread: the check may read
        files or ask a cloud's metadata service)."""
        litellm = _import_litellm()
        if not self.check_credentials:
            return
        missing = litellm_missing(
            litellm,
            self.model,
            api_key_given=self._api_key is not None,
            api_base=self.api_base,
            params=self.kwargs,
            note=" To skip this check, use LiteLLM(..., check_credentials=False).",
        )
        if missing is not None:
            raise missing

    # -- the call ---------------------------------------------------------------------------

    def _request_kwargs(self, request: LLMRequest) -> dict[str, Any]:
        # LiteLLM translates max_tokens into each provider's own parameter.
        kwargs = request_kwargs(self.model, request)
        kwargs["timeout"] = self.timeout
        kwargs.update(_NO_RETRIES)
        if self._api_key is not None:
            kwargs["api_key"] = self._api_key.get_secret_value()
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        kwargs.update(self.kwargs)
        kwargs.update(request.extra)
        return kwargs

    async def _stream(
        self, litellm: Any, kwargs: dict[str, Any], request: LLMRequest
    ) -> LLMResponse:
        stream = await sdk_call(litellm.acompletion(**kwargs), self._map_error)
        response = await read_stream(stream, request, self.model, self._map_error)
        # litellm prices a stream before its usage chunk arrives: price the final counts.
        response.usage.cost = _price(litellm, self.model, response.usage)
        return response

    def _to_response(self, litellm: Any, response: Any, request: LLMRequest) -> LLMResponse:
        try:
            result = response_from_completion(response, request, self.model)
        except MalformedResponse as exc:
            raise self._map_error(exc) from None
        hidden = getattr(response, "_hidden_params", None)
        cost = hidden.get("response_cost") if isinstance(hidden, dict) else None
        usage = result.usage
        usage.cost = (
            float(cost) if isinstance(cost, int | float) else _price(litellm, self.model, usage)
        )
        return result

    def redact(self, text: str) -> str:
        """``text`` with the API key given to this client, and the API root's credentials,
        replaced by ``***``."""
        return redact(text, self._secrets())

    def _secrets(self) -> tuple[str, ...]:
        """The key given to this client and what its API root carries (userinfo, a key in its
        query), for taking out of errors and recorded text."""
        key = (self._api_key.get_secret_value(),) if self._api_key is not None else ()
        return (*key, *url_secrets(self.api_base))

    # -- errors -----------------------------------------------------------------------------

    def _map_error(self, exc: Exception) -> LLMError:
        """Translate a litellm, openai, httpx or parsing error into an `LLMError` without
        secrets. litellm's exceptions subclass openai's and carry ``status_code``."""
        import httpx
        import openai

        secrets = self._secrets()
        where = public_url(self.api_base) if self.api_base else self.model.partition("/")[0]
        # litellm's Timeout and APIConnectionError carry made-up statuses (408, 500): check
        # first, and look through the chain: a refused connection comes as a "500".
        exc = in_chain(exc, (openai.APIConnectionError, httpx.TransportError)) or exc
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return timeout_error(self.model, self.timeout, where, sent=was_sent(exc))
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            return connection_error(
                self.model, scrub(describe_cause(exc), secrets), where, sent=was_sent(exc)
            )
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status >= 400:
            detail = scrub(provider_detail(getattr(exc, "body", None), str(exc)), secrets)
            if status == 401:
                return litellm_refused(
                    _import_litellm(),
                    self.model,
                    api_key_given=self._api_key is not None,
                    params=self.kwargs,
                    status=status,
                    where=where,
                    detail=detail,
                )
            if status == 400 and (
                isinstance(exc, _import_litellm().ContextWindowExceededError)
                or is_context_length(getattr(exc, "body", None), detail)
            ):
                return context_length_error(self.model, detail, where)
            headers = _error_headers(exc)
            return status_error(self.model, status, headers, detail, where, _KEY_HINT)
        if isinstance(exc, ValueError):
            return malformed_error(self.model, scrub(describe_malformed(exc), secrets), where)
        retryable = isinstance(exc, openai.APIError)
        return other_error(self.model, scrub(str(exc), secrets), where, retryable=retryable)


# -- litellm, loaded once ---------------------------------------------------------------------


def _import_litellm() -> Any:
    """litellm, imported (safely) and quietened on first use."""
    global _quietened
    module = sys.modules.get("litellm")
    if module is not None and _quietened:
        return module
    # Both must be set before the import: they change what importing litellm does.
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as exc:
        raise ConfigurationError(
            f"models other than openai/... need litellm: {_INSTALL_HINT}"
        ) from exc
    _quieten(litellm)
    _quietened = True
    return litellm


def _quieten(litellm: Any) -> None:
    litellm.suppress_debug_info = True
    litellm.set_verbose = False
    # Older releases phone home unless told not to; newer ones dropped the switch.
    if hasattr(litellm, "telemetry"):
        litellm.telemetry = False


# Whether litellm's switches have been set (it may have been imported before crewflow ran).
_quietened = False


@functools.lru_cache(maxsize=256)
def _supports_response_schema(model: str) -> bool:
    try:
        return bool(_import_litellm().supports_response_schema(model=model))
    except Exception:  # Unknown models, a missing litellm, a changed API: assume no support.
        return False


def _price(litellm: Any, model: str, usage: Usage) -> float | None:
    """The cost of ``usage`` from LiteLLM's price table, or ``None`` when it does not know."""
    if model in _unpriced:
        return None
    try:
        prompt, completion = litellm.cost_per_token(
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )
        return float(prompt) + float(completion)
    except Exception:  # A price is nice to have; it must never fail the call.
        _unpriced.add(model)
        return None


# Models LiteLLM has no price for: asking again on every call would raise again.
_unpriced: set[str] = set()


def _error_headers(exc: Exception) -> Mapping[str, str] | None:
    """The provider's response headers (for Retry-After), else litellm's own copy."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if headers:
        return headers  # type: ignore[no-any-return]
    own = getattr(exc, "headers", None)
    return own if isinstance(own, dict) else None


# -- client lifetime --------------------------------------------------------------------------


def _acquire_loop(loop: asyncio.AbstractEventLoop) -> None:
    _loop_users[loop] = _loop_users.get(loop, 0) + 1


async def _release_loop(loop: asyncio.AbstractEventLoop) -> None:
    users = _loop_users.get(loop, 0) - 1
    if users > 0:
        _loop_users[loop] = users
        return
    _loop_users.pop(loop, None)
    await _close_loop_clients()


async def _close_loop_clients() -> None:
    """Close and drop the HTTP clients litellm cached for the running loop.

    litellm keys loop-bound clients ``<key>-<loop token>``; its own cleanup function
    (``close_litellm_async_clients``) closes every loop's clients and leaves them cached, which
    would break other loops' calls.
    """
    import anyio

    litellm = sys.modules.get("litellm")
    cache = getattr(litellm, "in_memory_llm_clients_cache", None)
    if cache is None:
        return
    with anyio.CancelScope(shield=True):
        try:
            suffix = cache.update_cache_key_with_event_loop("")
            keys = [key for key in list(cache.cache_dict) if str(key).endswith(suffix)]
            clients = [cache.cache_dict.pop(key, None) for key in keys] if suffix else []
            for key in keys:
                cache.ttl_dict.pop(key, None)
        except Exception:  # litellm's internals moved: leave its clients to its own cleanup.
            return
        for client in clients:
            await close_shielded(client)
