"""Shipping a crew to other processes: pickled by value, with no store object and no secret.

A crew travels as bytes made once per `kickoff_for_each` (Ray's cloudpickle), so that each
worker rebuilds it the way it was written:

- The modules that are not installed packages (a crew file that ``crewflow run`` loaded, a
  script's modules, a notebook's) are pickled by value
  (``cloudpickle.register_pickle_by_value``): the workers need only crewflow and its
  dependencies, not the user's files.
- The store is sent as what names it (a SQLite file's absolute path, a URL), and each worker
  opens its own; a `Store` object, which holds connections and threads, never travels.
- An LLM client holding a key (``OpenAIChat(api_key=...)``) is refused: the key would travel in
  the bytes. Models named by string make their clients inside each worker, from the keys the
  workers' environment holds.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import site
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from crewflow.agent import Agent
from crewflow.exceptions import ConfigurationError
from crewflow.store import MemoryStore, SQLiteStore, Store, default_store_path

if TYPE_CHECKING:
    from crewflow.crew import Crew
    from crewflow.llm._base import LLM

__all__ = ["Shipment", "by_value", "ship", "unship"]

ENV_PREFIXES = ("CREWFLOW_",)
"""Variables every worker gets from the driver's environment (the default model, the store's
home, the guard against real model calls), besides those of the crew's providers."""


@dataclass
class Shipment:
    """A crew ready to travel.

    Attributes:
        digest: The payload's SHA-256 (workers keep unpickled crews by it).
        payload: The pickled crew.
        env: The environment variables its models read, from this process's environment.
        sqlite: The crew's SQLite file when its store is one (a cluster must then be this
            machine alone), else ``None``.
    """

    digest: str
    payload: bytes
    env: dict[str, str] = field(repr=False)
    sqlite: str | None


def ship(crew: Crew, llm: str | None) -> Shipment:
    """Pickle ``crew`` for the workers, its store replaced by what names it.

    Raises:
        ConfigurationError: The crew holds something that cannot or must not travel: a
            `MemoryStore` or another store object, or a model client with an API key.
    """
    store, sqlite = _store_name(crew.store)
    travelling = crew.model_copy(update={"store": store})
    providers: set[str] = set()
    if llm is not None:
        providers.add(_provider(llm))
    payload = by_value(travelling, providers)
    return Shipment(
        digest=hashlib.sha256(payload).hexdigest(),
        payload=payload,
        env=_environment(providers),
        sqlite=sqlite,
    )


def by_value(obj: Any, providers: set[str] | None = None) -> bytes:
    """Pickle ``obj`` with the user's own modules by value (a crew, a tool's function), refusing
    API keys and store objects; the providers of the agents met on the way go into
    ``providers``.

    Raises:
        ConfigurationError: ``obj`` holds something that must not travel.
    """
    import importlib

    cloudpickle: Any = importlib.import_module("ray.cloudpickle")
    registered = cloudpickle.cloudpickle._is_registered_pickle_by_value
    modules = [module for module in _user_modules() if not registered(module)]
    for module in modules:
        cloudpickle.register_pickle_by_value(module)
    try:
        buffer = _Buffer()
        pickler = _pickler(cloudpickle)(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.providers = set() if providers is None else providers
        pickler.dump(obj)
    finally:
        for module in modules:
            cloudpickle.unregister_pickle_by_value(module)
    return buffer.getvalue()


def unship(payload: bytes) -> Crew:
    """The crew `ship` pickled (in a worker)."""
    crew: Crew = pickle.loads(payload)
    return crew


def _store_name(store: Any) -> tuple[Any, str | None]:
    """What names ``store`` for another process, and its SQLite file if it is one."""
    if store is None:
        return None, None
    if isinstance(store, SQLiteStore):
        path = str(store.path.resolve())
        return path, path
    if isinstance(store, MemoryStore):
        raise ConfigurationError(
            "a MemoryStore lives in one process, and the kickoffs run in Ray's workers: give "
            "the crew a store they can open (store='runs.db', or a PostgreSQL URL), or "
            "store=None to record nothing"
        )
    if isinstance(store, Store):
        raise ConfigurationError(
            f"the crew's store {store!r} is an object, which cannot travel to Ray's workers: "
            "name it instead (a SQLite path or a URL), so that each worker opens its own"
        )
    text = os.fspath(store)
    if "://" in text:
        return text, None
    file = default_store_path() if text == "default" else Path(text).expanduser()
    resolved = str(file.resolve())
    return resolved, resolved


def _user_modules() -> list[Any]:
    """The loaded modules that are neither installed packages nor the standard library nor
    crewflow: the user's own files, which the workers may not have."""
    roots = [sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    roots += [*site.getsitepackages(), site.getusersitepackages()]
    installed = tuple({str(Path(root).resolve()) for root in roots})
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if (
            not path
            or name == "__main__"
            or name.partition(".")[0] == "crewflow"
            or not path.endswith(".py")
        ):
            continue
        resolved = str(Path(path).resolve())
        if not resolved.startswith(installed):
            found.append(module)
    return found


class _Buffer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


def _pickler(cloudpickle: Any) -> Any:
    """Ray's cloudpickle pickler, refusing secrets and store objects and noting the providers
    of the agents' models on the way."""

    class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]
        providers: set[str]

        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, SecretStr):
                raise ConfigurationError(
                    "the crew holds a model client with an API key (api_key=...), which "
                    "would travel to Ray's workers inside the pickled crew: name the model "
                    "as a string (e.g. llm='openai/gpt-4o') and set its key in the "
                    "environment, which RayExecutor passes to the workers"
                )
            if isinstance(obj, Store):
                raise ConfigurationError(
                    f"the crew holds a store object ({obj!r}), which cannot travel to Ray's "
                    "workers: name the store by its path or URL instead"
                )
            if isinstance(obj, Agent):
                self.providers.add(_provider(obj.llm))
            return super().reducer_override(obj)

    return Pickler


def _provider(model: str | LLM | None) -> str:
    """The provider a model belongs to (``"openai"``, ``"anthropic"``, ...), or ``""``."""
    if model is None:
        from crewflow.llm._models import default_model

        model = default_model()
    if not isinstance(model, str):
        if type(model).__module__ == "crewflow.llm.openai":
            return "openai"
        model = str(getattr(model, "model", ""))
    provider, sep, _ = model.partition("/")
    return provider if sep else ""


def _environment(providers: set[str]) -> dict[str, str]:
    """The driver's variables a worker needs: ``CREWFLOW_*`` and each provider's
    (``OPENAI_*`` for ``openai/...`` models)."""
    prefixes = ENV_PREFIXES + tuple(f"{p.upper()}_" for p in sorted(providers) if p)
    return {name: value for name, value in os.environ.items() if name.startswith(prefixes)}
