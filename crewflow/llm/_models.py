"""Model strings: ``"offline"``, ``"openai/<model>"`` and ``"<provider>/<model>"`` via LiteLLM."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from crewflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from crewflow.llm._base import LLM

DEFAULT_MODEL = "offline"
"""The model used when an agent names none and ``CREWFLOW_MODEL`` is unset."""

MODEL_ENV = "CREWFLOW_MODEL"

# Provider prefixes LiteLLM routes, kept static so that checking a model string never imports
# litellm (seconds of import time). tests/llm/test_models.py keeps it in step with the installed
# litellm's ``provider_list``.
LITELLM_PROVIDERS: frozenset[str] = frozenset(
    (
        "a2a",
        "a2a_agent",
        "abliteration",
        "ai21",
        "ai21_chat",
        "aiand",
        "aiml",
        "aiohttp_openai",
        "amazon_nova",
        "anthropic",
        "anthropic_text",
        "apertis",
        "assemblyai",
        "auto_router",
        "aws_polly",
        "aws_textract",
        "azure",
        "azure_ai",
        "azure_speech",
        "azure_text",
        "baseten",
        "bedrock",
        "bedrock_mantle",
        "bespoke",
        "bigmodel",
        "black_forest_labs",
        "bytez",
        "cerebras",
        "charity_engine",
        "chatgpt",
        "chutes",
        "clarifai",
        "clf_ai_gateway",
        "cloudflare",
        "codestral",
        "cognition",
        "cohere",
        "cohere_chat",
        "cometapi",
        "compactifai",
        "coralbricks",
        "cortecs",
        "cursor",
        "custom",
        "custom_openai",
        "darkbloom",
        "dashscope",
        "databricks",
        "databricks_agent",
        "datarobot",
        "deepgram",
        "deepinfra",
        "deepseek",
        "docker_model_runner",
        "dotprompt",
        "edenai",
        "elevenlabs",
        "empiriolabs",
        "empower",
        "eu_jev",
        "fal_ai",
        "featherless_ai",
        "fireworks_ai",
        "friendliai",
        "galadriel",
        "gdc",
        "gemini",
        "gigachat",
        "github",
        "github_copilot",
        "gradient_ai",
        "groq",
        "helicone",
        "heroku",
        "hosted_vllm",
        "hostinger_router",
        "huggingface",
        "humanloop",
        "hyperbolic",
        "inception",
        "inferenceapis",
        "infinity",
        "jina_ai",
        "kyma",
        "lambda_ai",
        "langflow",
        "langfuse",
        "langgraph",
        "laya",
        "lemonade",
        "libertai",
        "litellm_agent",
        "litellm_proxy",
        "llamafile",
        "lm_studio",
        "manus",
        "maritalk",
        "meta",
        "meta_llama",
        "microsoft_365_copilot",
        "milvus",
        "minimax",
        "mistral",
        "modelscope",
        "mongodb",
        "moonshot",
        "morph",
        "nace",
        "nadir",
        "nano-gpt",
        "nebius",
        "neosantara",
        "nlp_cloud",
        "novita",
        "nscale",
        "nvidia_nim",
        "nvidia_riva",
        "oci",
        "ollama",
        "ollama_chat",
        "oobabooga",
        "openai",
        "openai_like",
        "opencode_go",
        "openinfer",
        "openrouter",
        "opensearch",
        "ovhcloud",
        "parallel_ai",
        "parasail",
        "perplexity",
        "petals",
        "pg_vector",
        "pinstripes",
        "poe",
        "predibase",
        "prism",
        "publicai",
        "qwen_ai_platform",
        "qwencloud",
        "ragflow",
        "recraft",
        "reducto",
        "refuseless",
        "reka",
        "replicate",
        "runwayml",
        "s3_vectors",
        "sagemaker",
        "sagemaker_chat",
        "sagemaker_nova",
        "sail",
        "sambanova",
        "sap",
        "scaledown",
        "scaleway",
        "scx-ai",
        "snowflake",
        "soniox",
        "stability",
        "strands_decider",
        "streamlake",
        "synthetic",
        "tencent",
        "tensormesh",
        "text-completion-codestral",
        "text-completion-inception",
        "text-completion-openai",
        "together_ai",
        "topaz",
        "transcribe",
        "triton",
        "typesafe",
        "v0",
        "valkey",
        "vercel_ai_gateway",
        "vertex_ai",
        "vertex_ai_beta",
        "vllm",
        "volcengine",
        "voyage",
        "wally",
        "wandb",
        "watsonx",
        "watsonx_text",
        "xai",
        "xiaomi_mimo",
        "xinference",
        "zai",
        "zerogpu",
    )
)

# What a bare model name most likely meant, for the error message.
_BARE_HINTS = (
    (("gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding", "davinci"), "openai"),
    (("claude",), "anthropic"),
    (("gemini",), "gemini"),
    (("mistral", "mixtral", "codestral"), "mistral"),
    (("command",), "cohere"),
    (("llama", "qwen", "phi", "gemma"), "ollama"),
    (("deepseek",), "deepseek"),
    (("grok",), "xai"),
)


def check_model(model: str) -> str:
    """Validate a model string and return it stripped.

    Args:
        model: ``"offline"``, ``"openai/<model>"`` or ``"<provider>/<model>"``.

    Returns:
        The model string without surrounding blanks.

    Raises:
        ConfigurationError: The string is empty, has no provider prefix, or names a provider
            that neither crewflow nor LiteLLM knows.
    """
    name = model.strip()
    if name == DEFAULT_MODEL:
        return name
    if not name:
        raise ConfigurationError(
            'empty model string: use "offline", "openai/<model>" or "<provider>/<model>"'
        )
    provider, sep, rest = name.partition("/")
    if not sep or not rest or not provider:
        raise ConfigurationError(
            f"model {name!r} has no provider prefix; did you mean {_suggest(name)!r}? "
            'Model strings are "offline", "openai/<model>" or "<provider>/<model>".'
        )
    if provider != "openai" and provider not in LITELLM_PROVIDERS:
        raise ConfigurationError(
            f'unknown model provider {provider!r} in {name!r}. Use "openai/<model>" for any '
            "OpenAI-compatible server (set OPENAI_BASE_URL), or a LiteLLM provider prefix such as "
            '"anthropic/", "gemini/", "ollama/" (see https://docs.litellm.ai/docs/providers).'
        )
    return name


def default_model() -> str:
    """The model agents use when they name none: ``CREWFLOW_MODEL``, else ``"offline"``."""
    value = os.environ.get(MODEL_ENV, "").strip()
    if not value:
        return DEFAULT_MODEL
    try:
        return check_model(value)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{MODEL_ENV} is invalid: {exc}") from None


def resolve_llm(model: str | LLM | None) -> LLM:
    """Turn a model string (or ``None``: the default model) into an `LLM` client object.

    SDKs are imported here, on first use, never by ``import crewflow``.
    """
    from crewflow.llm._base import LLM

    if isinstance(model, LLM):
        return model
    name = check_model(model) if model is not None else default_model()
    if name == DEFAULT_MODEL:
        from crewflow.llm.offline import OfflineLLM

        return OfflineLLM()
    provider, _, rest = name.partition("/")
    if provider == "openai":
        from crewflow.llm.openai import OpenAIChat

        return OpenAIChat(rest)
    from crewflow.llm.litellm import LiteLLM

    return LiteLLM(name)


def _suggest(name: str) -> str:
    lowered = name.lower()
    for prefixes, provider in _BARE_HINTS:
        if lowered.startswith(prefixes):
            return f"{provider}/{name}"
    return f"openai/{name}"
