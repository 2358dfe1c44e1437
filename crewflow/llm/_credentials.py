"""Credentials: whether a model has what its provider authenticates with, and the
`CredentialsError` when it has not (no key when a client opens, or a key refused with HTTP 401).

For LiteLLM models, LiteLLM itself says which environment variables a provider reads
(``litellm.validate_environment``). Its table is stricter than some providers, so where it finds
variables missing, the provider's other ways to authenticate count too: Anthropic auth tokens
and workload identity; AWS profiles, roles and instance credentials for Bedrock and SageMaker
(botocore's own credential chain); Google's application default credentials for Vertex AI;
Azure AD for Azure OpenAI. Credentials are reported missing only when all of them are absent,
and never when crewflow cannot tell (an unknown provider, a changed LiteLLM).

Only the names of variables are read or shown here, never their values.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from crewflow.exceptions import CredentialsError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

__all__ = ["litellm_missing", "litellm_refused", "missing_error", "refused_error"]

MAX_REFUSAL_DETAIL: Final = 160
"""How many characters of the provider's refusal a `CredentialsError` quotes (the full text
stays on the chained SDK error)."""

LITELLM_HOW: Final = "LiteLLM(..., api_key=...)"

# Variables LiteLLM lists that say where a provider is, not who the caller is: a missing one is
# not a missing credential (Ollama, for one, defaults to localhost).
_ENDPOINT_SUFFIXES: Final = ("_API_BASE", "_BASE_URL", "_API_VERSION")

# Providers whose "provider info" is an interactive OAuth login: asking LiteLLM about them
# starts that login, and no environment variable stands for it. LiteLLM's own list is used
# where it has one.
_INTERACTIVE_LOGIN: Final = frozenset({"github_copilot", "chatgpt"})


def missing_error(
    model: str,
    variables: Sequence[str],
    *,
    needs: str,
    how: str,
    noun: str = "API key",
    note: str = "",
) -> CredentialsError:
    """The error of a model that has no credentials at all."""
    return CredentialsError(
        f"no {noun} for {model!r}: set {needs}, or pass {how}.{note}",
        model=model,
        variables=variables,
    )


def refused_error(
    model: str,
    variables: Sequence[str],
    *,
    needs: str,
    how: str,
    status: int,
    where: str,
    detail: str,
    noun: str = "API key",
) -> CredentialsError:
    """The error of a model whose provider refused its credentials (``status``: 401)."""
    if len(detail) > MAX_REFUSAL_DETAIL:
        detail = detail[: MAX_REFUSAL_DETAIL - 1].rstrip() + "…"
    were = "were" if noun.endswith("credentials") else "was"
    return CredentialsError(
        f"the {noun} for {model!r} {were} refused (HTTP {status} at {where}: {detail}): check "
        f"{needs}, or pass {how}.",
        model=model,
        variables=variables,
        status_code=status,
    )


# -- LiteLLM's providers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Alternatives:
    """The other ways one provider authenticates, beyond the variables LiteLLM lists."""

    needs: str
    """What the error asks the user to set."""
    env: tuple[tuple[str, ...], ...] = ()
    """Groups of variables; any group whose variables are all set is a credential."""
    params: tuple[str, ...] = ()
    """Prefixes of ``LiteLLM(**kwargs)`` names that carry a credential."""
    chain: Callable[[Any], bool] | None = None
    """The provider SDK's own credential lookup (given litellm); may read files or ask a
    metadata service, so it runs off the event loop and only when the rest found nothing."""
    noun: str = "API key"
    how: str = LITELLM_HOW

    def given(self, params: Mapping[str, Any]) -> bool:
        """Whether the environment or ``params`` hold one of the alternatives (no chain)."""
        if any(all(os.environ.get(name) for name in group) for group in self.env):
            return True
        if not self.params:
            return False
        return any(
            value is not None and name.startswith(self.params) for name, value in params.items()
        )


def _aws_chain(litellm: Any) -> bool:
    """botocore's credential chain: profiles, SSO, roles, container and instance credentials."""
    try:
        session = importlib.import_module("botocore.session")
    except ImportError:
        return False
    try:
        return session.Session().get_credentials() is not None
    except Exception:  # A broken profile or config: the call will say what is wrong with it.
        return True


def _google_chain(litellm: Any) -> bool:
    """Google's application default credentials: gcloud's file, else google-auth's lookup
    (which also asks the metadata server of Google's own machines)."""
    config = os.environ.get("CLOUDSDK_CONFIG")
    if config:
        folder = Path(config)
    elif os.name == "nt":
        folder = Path(os.environ.get("APPDATA", "~")) / "gcloud"
    else:
        folder = Path("~/.config/gcloud")
    if (folder.expanduser() / "application_default_credentials.json").is_file():
        return True
    try:
        auth = importlib.import_module("google.auth")
    except ImportError:
        return False
    try:
        auth.default()
    except Exception as exc:
        # None found is the one answer that means missing; any other failure cannot tell.
        return type(exc).__name__ != "DefaultCredentialsError"
    return True


def _azure_ad_refresh(litellm: Any) -> bool:
    """LiteLLM's switch for Azure AD through azure-identity (managed identity, ``az login``)."""
    return getattr(litellm, "enable_azure_ad_token_refresh", False) is True


_ANTHROPIC: Final = _Alternatives(
    needs="ANTHROPIC_API_KEY (or ANTHROPIC_AUTH_TOKEN)",
    env=(
        ("ANTHROPIC_AUTH_TOKEN",),
        # Workload identity federation: LiteLLM mints a token from these.
        ("ANTHROPIC_FEDERATION_RULE_ID", "ANTHROPIC_ORGANIZATION_ID"),
    ),
    params=("anthropic_federation_",),
)
_AWS: Final = _Alternatives(
    needs=(
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, an IAM role, or "
        "AWS_BEARER_TOKEN_BEDROCK)"
    ),
    env=(("AWS_BEARER_TOKEN_BEDROCK",), ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")),
    params=("aws_",),
    chain=_aws_chain,
    noun="AWS credentials",
)
_VERTEX: Final = _Alternatives(
    needs="GOOGLE_APPLICATION_CREDENTIALS (or run `gcloud auth application-default login`)",
    env=(("GOOGLE_APPLICATION_CREDENTIALS",), ("VERTEXAI_CREDENTIALS",)),
    params=("vertex_credentials",),
    chain=_google_chain,
    noun="Google credentials",
    how="LiteLLM(..., vertex_credentials=...)",
)
_AZURE: Final = _Alternatives(
    needs=(
        "AZURE_API_KEY (or Azure AD: AZURE_AD_TOKEN, or AZURE_CLIENT_ID, AZURE_CLIENT_SECRET "
        "and AZURE_TENANT_ID)"
    ),
    env=(
        ("AZURE_OPENAI_API_KEY",),
        ("AZURE_AD_TOKEN",),
        ("AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"),
        ("AZURE_CLIENT_ID", "AZURE_USERNAME", "AZURE_PASSWORD"),
    ),
    params=("azure_ad_token", "azure_username", "client_secret"),
    chain=_azure_ad_refresh,
)

_ALTERNATIVES: Final[Mapping[str, _Alternatives]] = {
    "anthropic": _ANTHROPIC,
    "anthropic_text": _ANTHROPIC,
    "bedrock": _AWS,
    "bedrock_mantle": _AWS,
    "sagemaker": _AWS,
    "sagemaker_chat": _AWS,
    "sagemaker_nova": _AWS,
    "vertex_ai": _VERTEX,
    "vertex_ai_beta": _VERTEX,
    "azure": _AZURE,
    "azure_text": _AZURE,
}


def litellm_missing(
    litellm: Any,
    model: str,
    *,
    api_key_given: bool,
    api_base: str | None,
    params: Mapping[str, Any],
    probe: bool = True,
    note: str = "",
) -> CredentialsError | None:
    """The error for a LiteLLM model without credentials, or ``None`` when it has some (or
    when crewflow cannot tell).

    Args:
        litellm: The litellm module.
        model: The ``"<provider>/<model>"`` string.
        api_key_given: A key was passed to the client.
        api_base: The client's API root, if given.
        params: The client's extra ``acompletion`` arguments (``aws_profile_name``...).
        probe: Ask the provider SDK's credential chain too (files, metadata services: off
            the event loop only). Without it, a provider that has one is never reported.
        note: A sentence added to the error's message.
    """
    provider = model.partition("/")[0]
    if api_key_given or provider in _interactive_logins(litellm) or _global_key(litellm):
        return None
    variables = _missing_variables(litellm, model, api_base, params)
    if not variables:
        return None
    other = _ALTERNATIVES.get(provider)
    if other is None:
        return missing_error(
            model, variables, needs=" or ".join(variables), how=LITELLM_HOW, note=note
        )
    if other.given(params):
        return None
    if other.chain is not None and (not probe or other.chain(litellm)):
        return None
    return missing_error(
        model, variables, needs=other.needs, how=other.how, noun=other.noun, note=note
    )


def litellm_refused(
    litellm: Any,
    model: str,
    *,
    api_key_given: bool,
    params: Mapping[str, Any],
    status: int,
    where: str,
    detail: str,
) -> CredentialsError:
    """The error for a LiteLLM model whose call was refused with ``status`` (401): the error of
    a missing key when none is set (LiteLLM refuses such calls itself), else a refused key."""
    missing = litellm_missing(
        litellm, model, api_key_given=api_key_given, api_base=None, params=params, probe=False
    )
    if missing is not None:
        missing.status_code = status
        return missing
    other = _ALTERNATIVES.get(model.partition("/")[0])
    if other is None:
        return refused_error(
            model,
            (),
            needs="the provider's API key variable",
            how=LITELLM_HOW,
            status=status,
            where=where,
            detail=detail,
        )
    return refused_error(
        model,
        (),
        needs=other.needs,
        how=other.how,
        status=status,
        where=where,
        detail=detail,
        noun=other.noun,
    )


def _missing_variables(
    litellm: Any, model: str, api_base: str | None, params: Mapping[str, Any]
) -> list[str]:
    """The credential variables LiteLLM finds missing for ``model`` (endpoints left out)."""
    try:
        answer = litellm.validate_environment(
            model=model, api_base=api_base, api_version=params.get("api_version")
        )
    except Exception:  # LiteLLM's API moved, or it cannot place the model: cannot tell.
        return []
    missing = answer.get("missing_keys") if isinstance(answer, dict) else None
    if not isinstance(missing, list):
        return []
    return [
        name
        for name in missing
        if isinstance(name, str) and name and not name.endswith(_ENDPOINT_SUFFIXES)
    ]


def _interactive_logins(litellm: Any) -> frozenset[str]:
    try:
        constants = importlib.import_module("litellm.constants")
    except ImportError:
        return _INTERACTIVE_LOGIN
    found = getattr(constants, "PROVIDERS_THAT_AUTHENTICATE_ON_PROVIDER_INFO", None)
    return _INTERACTIVE_LOGIN | frozenset(found or ())


def _global_key(litellm: Any) -> bool:
    """``litellm.api_key``: LiteLLM's process-wide key, used for every provider."""
    return bool(getattr(litellm, "api_key", None))
