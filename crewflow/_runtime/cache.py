"""The reply cache: an LLM reply is reused when the request that produced it comes again.

``Task(cache=True)`` / ``Crew(cache=True)`` turn it on; the per-call layer (`ManagedLLM`) asks
the `ReplyCache` before calling the provider and keeps every `cacheable` reply after. Replies
live in the run's store (`Store.cache_get` / `cache_put`, so they outlive the run and every
process gets them), or in memory for the run when ``store=None``. ``crewflow cache clear``
empties the store's part.

What is in the key (`cache_key`), and why:

- the model string: another model answers differently. Callers pass the LLM's ``limit_key``
  (provider + base URL + model) when one model name can be served by different endpoints;
- every message, with every field `Message` holds (role, content, tool calls with their ids,
  names and arguments, ``tool_call_id``, ``name``): the conversation is the question;
- the tools (name, description, parameter schema) and the output schema (name, schema): they
  change what the model may answer;
- ``temperature``, ``max_tokens`` and ``extra`` (provider kwargs such as ``top_p`` or ``seed``):
  sampling settings change the answer too.

Every field of `LLMRequest` is in the key except ``stream`` and ``on_delta``, which change how
the reply arrives, not what it is: a streamed and an unstreamed call share their entries. A new
field added to `LLMRequest` joins the key by default, so it can only cause misses, never a
reply served for a different question. Requests hold no secrets (keys and headers live in the
clients), and nothing secret is added here.

The key is ``v1:`` plus the SHA-256 of a canonical JSON of all that (sorted keys, no spaces,
unicode kept); a value JSON cannot hold falls back to its ``repr``, which at worst makes the key
differ between runs (a miss, e.g. a repr holding a memory address). Changing the format means
changing the ``v1:`` tag, which invalidates old entries rather than misreading them. Replies
are stored as JSON, never pickled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any

from crewflow._logging import get_logger
from crewflow._runtime.clock import real_work
from crewflow.exceptions import StoreError
from crewflow.llm._types import LLMResponse, ToolCall, Usage

if TYPE_CHECKING:
    from crewflow.llm._types import LLMRequest
    from crewflow.store._base import Store

__all__ = [
    "KEY_VERSION",
    "ReplyCache",
    "as_cached",
    "cache_key",
    "cacheable",
    "decode_response",
    "encode_response",
    "replay_deltas",
    "tokens_saved",
]

KEY_VERSION = "v1"
"""Part of every key and every stored value: bump it when either format changes."""

_NOT_IN_KEY = frozenset({"stream", "on_delta"})
"""`LLMRequest` fields that change how a reply arrives, not what it is."""

_UNFINISHED = frozenset({"length", "max_tokens", "content_filter", "error"})
"""Finish reasons of a reply cut short or refused: replaying one would make every retry of the
same request fail the same way."""


def cache_key(model: str, request: LLMRequest) -> str:
    """The cache key of ``request`` sent to ``model``: ``v1:`` and a hex SHA-256.

    Equal for requests that would get the same reply (see the module docstring for what is in
    it); ``stream`` and ``on_delta`` are left out.

    Tool-call ids are kept, although models generate new ones on every fresh reply. In an agent
    loop with tools, the second call carries the ids of the first reply; when that first reply
    was itself served from the cache, the ids are the cached ones, so the second call hits too,
    and the whole loop replays. When the first reply was fresh, the conversation really is new
    and misses anyway. Dropping the ids would buy nothing and could serve a reply to a
    conversation the model never saw (ids are part of what the model reads).

    Example:
        ```python
        key = cache_key(llm.limit_key, LLMRequest(messages=[Message("user", "Hi")]))
        assert key.startswith("v1:")
        ```
    """
    payload: dict[str, Any] = {"model": model}
    for spec in fields(request):
        if spec.name not in _NOT_IN_KEY:
            payload[spec.name] = _canonical(getattr(request, spec.name))
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a lone surrogate in a message must not crash the call, only hash.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{KEY_VERSION}:{digest}"


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data: dataclasses by their fields, mappings with string keys,
    sequences as lists, anything else JSON cannot hold as ``{"$repr": repr(value)}``."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if is_dataclass(value) and not isinstance(value, type):
        return {spec.name: _canonical(getattr(value, spec.name)) for spec in fields(value)}
    if isinstance(value, dict):
        # Keys as JSON would write them (providers JSON-encode these kwargs anyway); sort_keys
        # then never meets keys of mixed types.
        return {_canonical_key(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    # Tagged, so that an object never shares a key with a string that looks like its repr.
    return {"$repr": repr(value)}


def _canonical_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)
    return repr(key)


def encode_response(response: LLMResponse) -> str:
    """``response`` as JSON text: content, tool calls, usage, model and finish reason.

    The usage is what the provider billed for the original call; `decode_response` gives it
    back unchanged (`as_cached` is what zeroes it when the reply is served).
    """
    usage = response.usage
    return json.dumps(
        {
            "format": KEY_VERSION,
            "content": response.content,
            "tool_calls": [
                {"id": call.id, "name": call.name, "arguments": call.arguments}
                for call in response.tool_calls
            ],
            "usage": {
                "requests": usage.requests,
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cost": usage.cost,
            },
            "model": response.model,
            "finish_reason": response.finish_reason,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode_response(text: str) -> LLMResponse:
    """The response `encode_response` wrote as ``text``.

    Raises:
        ValueError: ``text`` is not such a response (corrupt, truncated, another format).
    """
    data = json.loads(text)  # json.JSONDecodeError is a ValueError
    if not isinstance(data, dict) or data.get("format") != KEY_VERSION:
        raise ValueError("not a cached reply of this format")
    usage = _get(data, "usage", dict)
    calls = _get(data, "tool_calls", list)
    cost = _get(usage, "cost", (int, float, type(None)))
    return LLMResponse(
        content=_get(data, "content", (str, type(None))),
        tool_calls=tuple(
            ToolCall(
                id=_get(call, "id", str),
                name=_get(call, "name", str),
                arguments=_get(call, "arguments", str),
            )
            for call in (_checked(item, dict) for item in calls)
        ),
        usage=Usage(
            requests=_get(usage, "requests", int),
            prompt_tokens=_get(usage, "prompt_tokens", int),
            completion_tokens=_get(usage, "completion_tokens", int),
            cost=None if cost is None else float(cost),
        ),
        model=_get(data, "model", str),
        finish_reason=_get(data, "finish_reason", (str, type(None))),
    )


def _get(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise ValueError(f"cached reply has no {name!r}")
    return _checked(data[name], kind, name)


def _checked(value: Any, kind: type | tuple[type, ...], name: str = "item") -> Any:
    # bool is an int to isinstance, never a token count.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise ValueError(f"cached reply has a bad {name!r}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def cacheable(response: LLMResponse, request: LLMRequest | None = None) -> bool:
    """Whether ``response`` is a finished reply worth keeping.

    Kept: a reply with tool calls or non-blank text. Not kept: a reply cut short or refused
    (finish reason ``length``, ``max_tokens``, ``content_filter``, ``error``), and an empty
    one, since replaying those would make every retry of the request fail the same way. When
    ``request`` asks for structured output, a text reply must also be valid JSON (whether it
    matches the schema is the agent's check).
    """
    if response.finish_reason in _UNFINISHED:
        return False
    if response.tool_calls:
        return True
    if response.content is None or not response.content.strip():
        return False
    if request is not None and request.output is not None:
        try:
            json.loads(response.content)
        except ValueError:
            return False
    return True


def as_cached(response: LLMResponse) -> LLMResponse:
    """``response`` as served from the cache: nothing was sent, so its usage is zero requests
    and zero tokens. The cost is ``0.0`` when the original's was known, else ``None``, so that
    adding it up never turns an unknown total into a known one."""
    cost = None if response.usage.cost is None else 0.0
    return replace(
        response, usage=Usage(requests=0, prompt_tokens=0, completion_tokens=0, cost=cost)
    )


def tokens_saved(response: LLMResponse) -> int:
    """Tokens a hit saved: what the original call billed. Pass the reply `ReplyCache.get`
    returned (not the `as_cached` one, whose usage is zero)."""
    return response.usage.total_tokens


async def replay_deltas(request: LLMRequest, response: LLMResponse) -> None:
    """Give a streaming caller the cached text, as one piece, through ``request.on_delta``:
    a hit must not leave a live display empty."""
    if not request.stream or request.on_delta is None or not response.content:
        return
    result = request.on_delta(response.content)
    if inspect.isawaitable(result):
        await result


class ReplyCache:
    """The replies of one run's cached calls: in ``store``, or in memory when it is ``None``.

    A value that cannot be decoded (corrupt, or from another format) is a miss, and the next
    `put` overwrites it. A store that fails (`StoreError`) is a miss on `get` and a skipped
    write on `put`, logged as a warning: the cache must never fail a call, least of all one the
    provider has already billed. Logs name the key's prefix and the error, never the request
    or the reply.

    Two identical calls in flight at once both miss and both go to the provider; each then
    writes its whole reply in one `cache_put`, and the last one stays. Nothing is corrupted;
    the second call is simply not saved (waiting on the first would hold calls back behind one
    another's limits and retries, for a case that is rare inside one run).

    Attributes:
        hits: Calls served from the cache.
        misses: Lookups that found nothing usable.

    Example:
        ```python
        cache = ReplyCache(store)
        key = cache_key(llm.limit_key, request)
        reply = await cache.get(key)
        if reply is None:
            reply = await llm.complete(request)
            if cacheable(reply, request):
                await cache.put(key, reply)
        else:
            reply = as_cached(reply)
        ```
    """

    def __init__(self, store: Store | None, *, log: Any = None) -> None:
        self.store = store
        self.hits = 0
        self.misses = 0
        self._memory: dict[str, str] = {}
        self._log = log

    async def get(self, key: str) -> LLMResponse | None:
        """The reply kept under ``key`` with its original usage, or ``None`` (a miss)."""
        try:
            if self.store is None:
                text = self._memory.get(key)
            else:
                with real_work():
                    text = await self.store.cache_get(key)
        except StoreError as exc:
            self._warn("reply cache read failed", key, exc)
            text = None
        response = None
        if text is not None:
            try:
                response = decode_response(text)
            except ValueError as exc:
                self._warn("cached reply unreadable, treated as a miss", key, exc)
        if response is None:
            self.misses += 1
        else:
            self.hits += 1
        return response

    async def put(self, key: str, response: LLMResponse) -> None:
        """Keep ``response`` under ``key``, replacing what was there."""
        text = encode_response(response)
        if self.store is None:
            self._memory[key] = text
            return
        try:
            with real_work():
                await self.store.cache_put(key, text)
        except StoreError as exc:
            self._warn("reply cache write failed", key, exc)

    def _warn(self, message: str, key: str, error: Exception) -> None:
        if self._log is None:
            self._log = get_logger()
        self._log.warning(message, key=key[:15], error=f"{type(error).__name__}: {error}")
