"""Credentials: a LiteLLM model without them fails when its client opens, as LiteLLM knows the
provider's variables, accepting the provider's other ways in; a refused key (HTTP 401) is the
same `CredentialsError`.

No test has a real key: every provider variable is removed, and the values set are fakes. The
clients point at a loopback address they never call (opening makes no request).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

from crewflow.exceptions import ConfigurationError, CredentialsError, LLMError
from crewflow.llm import LLMRequest, Message
from crewflow.llm._credentials import litellm_refused
from crewflow.llm.litellm import LiteLLM, _import_litellm
from crewflow.testing import Error, OpenAIServer

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.asyncio

NOWHERE = "http://127.0.0.1:9/v1"  # loopback (allowed by the test guard), never called
FAKE = "fake-credential-3c1e"
HELLO = LLMRequest([Message("user", "hello")])
_PREFIXES = ("ANTHROPIC_", "AWS_", "AZURE_", "GOOGLE_", "GEMINI_", "VERTEX", "GROQ_", "OLLAMA_")


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No provider credential anywhere: not in the environment, not in the files the cloud SDKs
    read, not from an instance metadata service."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES) or name in ("USE_LITELLM_PROXY", "CLOUDSDK_CONFIG"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setitem(sys.modules, "google.auth", None)  # google-auth: not installed
    litellm = _import_litellm()
    monkeypatch.setattr(litellm, "api_key", None)
    monkeypatch.setattr(litellm, "enable_azure_ad_token_refresh", False)


async def opens(llm: LiteLLM) -> bool:
    async with llm:
        return True


async def refusal(llm: LiteLLM) -> CredentialsError:
    with pytest.raises(CredentialsError) as info:
        await llm.open()
    return info.value


# -- a missing key ------------------------------------------------------------------------------


async def test_a_missing_anthropic_key_is_a_short_configuration_error_naming_the_variable() -> None:
    error = await refusal(LiteLLM("anthropic/claude-sonnet-4-20250514", api_base=NOWHERE))

    assert isinstance(error, ConfigurationError)
    assert str(error).startswith(
        "no API key for 'anthropic/claude-sonnet-4-20250514': set ANTHROPIC_API_KEY (or "
        "ANTHROPIC_AUTH_TOKEN), or pass LiteLLM(..., api_key=...)."
    )
    assert "check_credentials=False" in str(error)
    assert len(str(error)) < 250
    assert error.variables == ("ANTHROPIC_API_KEY",)
    assert (error.model, error.status_code, error.retryable) == (
        "anthropic/claude-sonnet-4-20250514",
        None,
        False,
    )


async def test_the_variables_named_are_litellms_for_the_provider() -> None:
    gemini = await refusal(LiteLLM("gemini/gemini-2.0-flash", api_base=NOWHERE))
    groq = await refusal(LiteLLM("groq/llama-3.1-8b-instant", api_base=NOWHERE))

    assert gemini.variables == ("GOOGLE_API_KEY", "GEMINI_API_KEY")
    assert "set GOOGLE_API_KEY or GEMINI_API_KEY, or pass" in str(gemini)
    assert groq.variables == ("GROQ_API_KEY",)


async def test_a_key_in_the_environment_or_given_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    assert await opens(LiteLLM("anthropic/claude-x", api_base=NOWHERE, api_key=FAKE))
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE)
    assert await opens(LiteLLM("anthropic/claude-x", api_base=NOWHERE))


async def test_check_credentials_false_skips_the_check() -> None:
    llm = LiteLLM("anthropic/claude-x", api_base=NOWHERE, check_credentials=False)

    assert await opens(llm)


async def test_a_provider_that_needs_no_key_opens() -> None:
    # LiteLLM lists OLLAMA_API_BASE as missing: an endpoint (default localhost), not a key.
    assert await opens(LiteLLM("ollama/llama3.1", api_base=NOWHERE))
    assert await opens(LiteLLM("hosted_vllm/some-model", api_base=NOWHERE))


async def test_a_provider_that_logs_in_interactively_is_not_asked_about(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Asking LiteLLM about github_copilot starts its OAuth device flow (a network login).
    def asked(**kwargs: Any) -> dict[str, Any]:
        raise AssertionError(f"validate_environment was called with {kwargs}")

    monkeypatch.setattr(_import_litellm(), "validate_environment", asked)

    assert await opens(LiteLLM("github_copilot/gpt-4o", api_base=NOWHERE))


async def test_when_litellm_cannot_tell_the_client_opens(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(**kwargs: Any) -> dict[str, Any]:
        raise RuntimeError("litellm changed")

    monkeypatch.setattr(_import_litellm(), "validate_environment", broken)

    assert await opens(LiteLLM("anthropic/claude-x", api_base=NOWHERE))


async def test_litellms_process_wide_key_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_import_litellm(), "api_key", FAKE)

    assert await opens(LiteLLM("groq/llama-3.1-8b-instant", api_base=NOWHERE))


async def test_no_credential_value_is_ever_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    # Half of a pair is set: still missing, and its value appears nowhere.
    monkeypatch.setenv("ANTHROPIC_FEDERATION_RULE_ID", FAKE)

    error = await refusal(LiteLLM("anthropic/claude-x", api_base=NOWHERE))

    assert FAKE not in f"{error} {error!r} {error.variables}"


# -- where LiteLLM's table is too strict --------------------------------------------------------


@pytest.mark.parametrize(
    "variables",
    [
        {"ANTHROPIC_AUTH_TOKEN": FAKE},
        {"ANTHROPIC_FEDERATION_RULE_ID": "rule", "ANTHROPIC_ORGANIZATION_ID": "org"},
    ],
    ids=["auth-token", "workload-identity"],
)
async def test_anthropics_other_credentials_count(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert await opens(LiteLLM("anthropic/claude-x", api_base=NOWHERE))


async def test_bedrock_without_any_aws_credentials_says_what_would_do() -> None:
    error = await refusal(LiteLLM("bedrock/anthropic.claude-3-haiku", api_base=NOWHERE))

    assert str(error).startswith("no AWS credentials for 'bedrock/anthropic.claude-3-haiku'")
    assert "AWS_PROFILE, an IAM role, or AWS_BEARER_TOKEN_BEDROCK" in str(error)
    assert error.variables == ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.mark.parametrize(
    "variables",
    [
        {"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": FAKE},
        {"AWS_PROFILE": "work"},
        {"AWS_ROLE_ARN": "arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE": "/t"},
        {"AWS_BEARER_TOKEN_BEDROCK": FAKE},
    ],
    ids=["keys", "profile", "role", "bedrock-api-key"],
)
async def test_bedrocks_environment_credentials_count(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert await opens(LiteLLM("bedrock/anthropic.claude-3-haiku", api_base=NOWHERE))


async def test_bedrock_finds_a_shared_credentials_file_through_botocore(tmp_path: Path) -> None:
    (tmp_path / "aws-credentials").write_text(
        f"[default]\naws_access_key_id = AKIAFAKE\naws_secret_access_key = {FAKE}\n"
    )

    assert await opens(LiteLLM("bedrock/anthropic.claude-3-haiku", api_base=NOWHERE))
    assert await opens(LiteLLM("sagemaker/my-endpoint", api_base=NOWHERE))


async def test_aws_credentials_given_to_the_client_count() -> None:
    llm = LiteLLM("bedrock/anthropic.claude-3-haiku", api_base=NOWHERE, aws_profile_name="work")

    assert await opens(llm)


async def test_vertex_without_application_default_credentials_fails() -> None:
    error = await refusal(LiteLLM("vertex_ai/gemini-2.0-flash", api_base=NOWHERE))

    assert str(error).startswith(
        "no Google credentials for 'vertex_ai/gemini-2.0-flash': set "
        "GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`)"
    )


async def test_vertex_with_gclouds_application_default_credentials_opens(tmp_path: Path) -> None:
    (tmp_path / "gcloud").mkdir()
    (tmp_path / "gcloud" / "application_default_credentials.json").write_text("{}")

    assert await opens(LiteLLM("vertex_ai/gemini-2.0-flash", api_base=NOWHERE))


async def test_vertex_credentials_in_the_environment_or_given_count(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert await opens(
        LiteLLM("vertex_ai/gemini-2.0-flash", api_base=NOWHERE, vertex_credentials="{}")
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    assert await opens(LiteLLM("vertex_ai/gemini-2.0-flash", api_base=NOWHERE))


@pytest.mark.parametrize("found", [True, False])
async def test_vertex_asks_google_auth_when_it_is_installed(
    monkeypatch: pytest.MonkeyPatch, found: bool
) -> None:
    class DefaultCredentialsError(Exception):
        pass

    def default() -> tuple[object, str]:
        if not found:
            raise DefaultCredentialsError("none")
        return object(), "project"  # e.g. a GCE machine's service account

    auth = ModuleType("google.auth")
    auth.default = default  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.auth", auth)
    llm = LiteLLM("vertex_ai/gemini-2.0-flash", api_base=NOWHERE)

    if found:
        assert await opens(llm)
    else:
        await refusal(llm)


async def test_azure_without_a_key_or_azure_ad_fails() -> None:
    error = await refusal(LiteLLM("azure/my-deployment", api_base=NOWHERE))

    assert "AZURE_API_KEY (or Azure AD: AZURE_AD_TOKEN" in str(error)
    assert error.variables == ("AZURE_API_KEY",)  # its endpoint and version are not keys


@pytest.mark.parametrize(
    "variables",
    [
        {"AZURE_OPENAI_API_KEY": FAKE},
        {"AZURE_AD_TOKEN": FAKE},
        {"AZURE_CLIENT_ID": "c", "AZURE_CLIENT_SECRET": FAKE, "AZURE_TENANT_ID": "t"},
    ],
    ids=["openai-key", "ad-token", "service-principal"],
)
async def test_azures_other_credentials_count(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    assert await opens(LiteLLM("azure/my-deployment", api_base=NOWHERE))


async def test_azure_ad_through_litellms_token_refresh_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_import_litellm(), "enable_azure_ad_token_refresh", True)

    assert await opens(LiteLLM("azure/my-deployment", api_base=NOWHERE))
    assert await opens(LiteLLM("azure/other", api_base=NOWHERE, azure_ad_token=FAKE))


# -- a refused key ------------------------------------------------------------------------------


async def test_a_401_is_a_credentials_error_naming_what_to_check(server: OpenAIServer) -> None:
    server.enqueue(Error(401, "Incorrect API key provided"))
    llm = LiteLLM("openai/test-model", api_base=server.base_url, api_key=FAKE)

    with pytest.raises(CredentialsError) as info:
        await llm.complete(HELLO)

    error = info.value
    assert isinstance(error, LLMError)
    assert isinstance(error, ConfigurationError)
    assert (error.status_code, error.retryable) == (401, False)
    assert str(error).startswith("the API key for 'openai/test-model' was refused (HTTP 401 at ")
    assert "Incorrect API key provided" in str(error)


async def test_a_call_litellm_refuses_for_want_of_a_key_gives_the_open_message() -> None:
    llm = LiteLLM("anthropic/claude-x", api_base=NOWHERE, check_credentials=False)
    at_open = await refusal(LiteLLM("anthropic/claude-x", api_base=NOWHERE))

    # LiteLLM itself refuses the call (a 401 of its own, no request made).
    with pytest.raises(CredentialsError) as info:
        await llm.complete(HELLO)

    error = info.value
    assert error.status_code == 401
    assert str(at_open).startswith(str(error))
    assert error.variables == at_open.variables


async def test_refused_cloud_credentials_say_what_to_check() -> None:
    # What the client makes of Bedrock's 401 (no loopback server speaks Bedrock's protocol).
    error = litellm_refused(
        _import_litellm(),
        "bedrock/anthropic.claude-3-haiku",
        api_key_given=False,
        params={},
        status=401,
        where="bedrock",
        detail="The security token included in the request is invalid",
    )

    assert str(error).startswith(
        "the AWS credentials for 'bedrock/anthropic.claude-3-haiku' were refused (HTTP 401 at "
        "bedrock: The security token included in the request is invalid): check "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )
    assert error.status_code == 401
