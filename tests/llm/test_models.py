"""Model strings: validation, defaults, and which client each one resolves to."""

from __future__ import annotations

import importlib.util

import pytest

from crewflow.exceptions import ConfigurationError
from crewflow.llm import LLM, check_model, default_model, resolve_llm
from crewflow.llm._models import LITELLM_PROVIDERS, MODEL_ENV
from crewflow.llm.litellm import LiteLLM, _import_litellm
from crewflow.llm.openai import OpenAIChat


def test_the_static_provider_table_matches_the_installed_litellm() -> None:
    litellm = _import_litellm()
    installed = {getattr(provider, "value", provider) for provider in litellm.provider_list}

    assert installed - LITELLM_PROVIDERS == set(), "providers missing from LITELLM_PROVIDERS"
    assert LITELLM_PROVIDERS - installed == set(), "providers litellm no longer knows"


def test_openai_models_resolve_to_the_openai_client() -> None:
    llm = resolve_llm("openai/gpt-4o-mini")

    assert isinstance(llm, OpenAIChat)
    assert llm.model == "openai/gpt-4o-mini"
    assert llm.name == "gpt-4o-mini"


def test_other_providers_resolve_to_litellm() -> None:
    llm = resolve_llm("anthropic/claude-sonnet-4-20250514")

    assert isinstance(llm, LiteLLM)
    assert llm.model == "anthropic/claude-sonnet-4-20250514"


def test_an_llm_object_is_used_as_it_is() -> None:
    llm = OpenAIChat("gpt-4o")

    assert resolve_llm(llm) is llm


def test_a_bare_model_name_suggests_a_provider_prefix() -> None:
    with pytest.raises(ConfigurationError, match="openai/gpt-4o"):
        check_model("gpt-4o")
    with pytest.raises(ConfigurationError, match="anthropic/claude-sonnet-4"):
        resolve_llm("claude-sonnet-4")


def test_an_unknown_provider_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="unknown model provider 'nosuchprovider'"):
        check_model("nosuchprovider/some-model")


def test_an_empty_model_string_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="empty model string"):
        check_model("  ")


def test_model_strings_are_stripped() -> None:
    assert check_model("  openai/gpt-4o ") == "openai/gpt-4o"
    assert check_model("offline") == "offline"


def test_the_default_model_is_offline_unless_crewflow_model_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MODEL_ENV, raising=False)
    assert default_model() == "offline"

    monkeypatch.setenv(MODEL_ENV, "openai/gpt-4o-mini")
    assert default_model() == "openai/gpt-4o-mini"
    llm = resolve_llm(None)
    assert isinstance(llm, OpenAIChat)
    assert llm.model == "openai/gpt-4o-mini"


def test_an_invalid_crewflow_model_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ENV, "gpt-4o")

    with pytest.raises(ConfigurationError, match=MODEL_ENV):
        default_model()


@pytest.mark.skipif(
    importlib.util.find_spec("crewflow.llm.offline") is None,
    reason="crewflow.llm.offline is not written yet",
)
def test_offline_resolves_to_the_offline_model() -> None:
    llm = resolve_llm("offline")

    assert isinstance(llm, LLM)
    assert type(llm).__name__ == "OfflineLLM"
    assert not llm.is_remote
