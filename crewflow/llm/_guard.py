"""The switch that forbids real provider calls (see `crewflow.testing.forbid_real_llm_calls`).

Remote clients call `check_allowed` before every request. Calls to loopback addresses stay
allowed by default, so tests can use the OpenAI-compatible server of `crewflow.testing`.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from urllib.parse import urlsplit

from crewflow.exceptions import ConfigurationError

FORBID_ENV = "CREWFLOW_FORBID_REAL_LLM_CALLS"

# None: not set in this context, fall back to the environment variable.
_forbidden: ContextVar[tuple[bool, bool] | None] = ContextVar("crewflow_forbid", default=None)

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def set_forbidden(forbid: bool, *, allow_loopback: bool = True) -> object:
    """Set the switch for the current context; returns a token for `reset`."""
    return _forbidden.set((forbid, allow_loopback))


def reset(token: object) -> None:
    """Undo a `set_forbidden`."""
    _forbidden.reset(token)  # type: ignore[arg-type]


def is_loopback(base_url: str | None) -> bool:
    """Whether ``base_url`` points at this machine."""
    if not base_url:
        return False
    host = urlsplit(base_url).hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


def check_allowed(model: str, base_url: str | None) -> None:
    """Raise if real provider calls are forbidden here and ``base_url`` is not loopback.

    Raises:
        ConfigurationError: The call would leave the machine while the switch is on.
    """
    state = _forbidden.get()
    if state is None:
        forbid, allow_loopback = os.environ.get(FORBID_ENV, "") not in ("", "0"), True
    else:
        forbid, allow_loopback = state
    if not forbid or (allow_loopback and is_loopback(base_url)):
        return
    raise ConfigurationError(
        f"a real call to {model!r} was blocked: real LLM calls are forbidden here "
        "(crewflow.testing.forbid_real_llm_calls or CREWFLOW_FORBID_REAL_LLM_CALLS). Use the "
        'offline model ("offline"), crewflow.testing.ScriptedLLM, or the loopback OpenAIServer.'
    )
