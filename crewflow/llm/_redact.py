"""Secrets out of whatever is recorded, logged or shown: API keys, and the credentials an
endpoint's URL can carry (``http://user:KEY@host/v1``, ``...?api_key=KEY``).

The clients keep their real key and URL for the HTTP calls they make; everything else (limit
keys, error messages, reprs, recorded prompts) goes through the helpers here:

- `public_url`: an endpoint as it may be shown: no userinfo, secret query values as ``***``;
- `url_secrets`: the secret parts of an endpoint, for `redact` and `scrub`;
- `redact`: known secrets out of recorded text, which otherwise stays as it was sent;
- `scrub`: known secrets and anything shaped like a key or a URL's credentials out of a
  provider's error text (the SDK's exception itself is never chained to ours:
  `crewflow.llm._errors.sdk_call`);
- `split_userinfo`: a URL's credentials apart from it, for the HTTP client's basic auth.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qsl, unquote, unquote_plus, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "REDACTED",
    "SECRET_PARAMETERS",
    "as_secret",
    "public_url",
    "redact",
    "scrub",
    "split_userinfo",
    "url_secrets",
]

REDACTED: Final = "***"
"""What a secret is replaced by."""

SECRET_PARAMETERS: Final = frozenset(
    {
        "access_token",
        "api-key",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "client_secret",
        "code",
        "credential",
        "credentials",
        "key",
        "pass",
        "password",
        "passwd",
        "private_key",
        "refresh_token",
        "secret",
        "session",
        "sig",
        "signature",
        "token",
        "x-amz-credential",
        "x-amz-security-token",
        "x-amz-signature",
        "x-api-key",
    }
)
"""Query parameters (compared case-insensitively) whose values are treated as secrets."""

_MIN_SECRET: Final = 4
"""Shorter URL parts are not searched for in text: they would mangle it and protect nothing."""

# Key-shaped tokens: OpenAI-style (sk-, sk-proj-...), Google keys, bearer tokens, and whatever
# follows "API key provided:" in an echoing error body.
_KEY_PATTERN: Final = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{6,}"
    r"|\bAIza[A-Za-z0-9_\-]{20,}"
    r"|\bBearer\s+[^\s\"',]+"
    r"|(?<=api key provided: )[^\s\"',]+",
    re.IGNORECASE,
)
# The userinfo of a URL in free text (``scheme://user:pass@``), and secret query values.
_URL_USERINFO: Final = re.compile(r"(?<=://)[^\s/?#@\"'<>]+@")
_SECRET_QUERY: Final = re.compile(
    r"(?<=[?&;])(" + "|".join(re.escape(p) for p in sorted(SECRET_PARAMETERS)) + r")=[^&#\s\"'<>]*",
    re.IGNORECASE,
)


def as_secret(api_key: str | SecretStr | None) -> SecretStr | None:
    """The key as a `SecretStr` (``None`` when absent or empty), so no repr can show it."""
    if api_key is None:
        return None
    secret = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
    return secret if secret.get_secret_value() else None


def _is_secret_parameter(name: str) -> bool:
    return name.lower() in SECRET_PARAMETERS


def public_url(url: str) -> str:
    """``url`` as it may be recorded, logged or shown: without ``user:password@``, and with the
    values of secret query parameters (``api_key``, ``token``, ``sig``...) replaced by ``***``.

    Example:
        ```python
        public_url("https://me:sk-123@proxy.example/v1?api_key=k&v=2")
        # 'https://proxy.example/v1?api_key=***&v=2'
        ```
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_is_secret_parameter(name) for name, _ in pairs):
        query = urlencode(
            [(name, REDACTED if _is_secret_parameter(name) else value) for name, value in pairs],
            safe="*",
        )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and that user and password (percent-decoded,
    for HTTP basic auth), so that no URL an HTTP client keeps or logs holds them."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secrets ``url`` carries, as written and percent-decoded: its password (its user name
    too when it has no password, as in ``https://TOKEN@host``) and its secret query values."""
    if not url:
        return ()
    parts = urlsplit(url)
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        found.append(password if colon else user)
    for pair in re.split("[&;]", parts.query):
        name, _, value = pair.partition("=")
        if _is_secret_parameter(unquote_plus(name)):
            found += (value, unquote_plus(value))
    both = {form for value in found for form in (value, unquote(value))}
    return tuple(sorted((s for s in both if len(s) >= _MIN_SECRET), key=len, reverse=True))


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``: for recorded prompts, which must
    stay as they were sent, so unlike `scrub` nothing merely shaped like a key is touched."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` without ``secrets``, without anything shaped like an API key, and without the
    credentials of any URL in it."""
    text = redact(text, secrets)
    text = _URL_USERINFO.sub("", text)
    text = _SECRET_QUERY.sub(lambda match: f"{match.group(1)}={REDACTED}", text)
    return _KEY_PATTERN.sub(REDACTED, text)
