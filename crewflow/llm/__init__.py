"""LLM clients: the `LLM` strategy and its implementations.

Model strings name a client:

- ``"offline"``: `OfflineLLM`, deterministic and local (the default).
- ``"openai/<model>"``: `OpenAIChat`, for OpenAI and any OpenAI-compatible server
  (``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``).
- ``"<provider>/<model>"``: `LiteLLM`, for every other provider
  (``pip install 'crewflow[litellm]'``).

The client classes load their SDKs lazily: importing this package imports neither openai nor
litellm.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crewflow.llm._base import LLM
from crewflow.llm._models import DEFAULT_MODEL, check_model, default_model, resolve_llm
from crewflow.llm._types import (
    LLMRequest,
    LLMResponse,
    Message,
    OutputSchema,
    ToolCall,
    ToolSpec,
    Usage,
)

if TYPE_CHECKING:
    from crewflow.llm.litellm import LiteLLM
    from crewflow.llm.offline import OfflineLLM
    from crewflow.llm.openai import OpenAIChat

__all__ = [
    "DEFAULT_MODEL",
    "LLM",
    "LLMRequest",
    "LLMResponse",
    "LiteLLM",
    "Message",
    "OfflineLLM",
    "OpenAIChat",
    "OutputSchema",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "check_model",
    "default_model",
    "resolve_llm",
]

_LAZY = {
    "OpenAIChat": "crewflow.llm.openai",
    "LiteLLM": "crewflow.llm.litellm",
    "OfflineLLM": "crewflow.llm.offline",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'crewflow.llm' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
