"""Loading a crew from a Python file (``crewflow run FILE.py``) and its ``--input`` values."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crewflow.cli._common import UsageProblem
from crewflow.crew import Crew
from crewflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path
    from types import ModuleType


def parse_inputs(pairs: Sequence[str]) -> dict[str, Any]:
    """Turn ``KEY=VALUE`` strings into inputs; a VALUE that parses as JSON is used as JSON.

    ``n=3`` gives ``3``, ``tags=["a","b"]`` a list, ``topic=batteries`` the string. A key given
    twice keeps its last value.

    Raises:
        UsageProblem: A pair without ``=`` or with an empty key.
    """
    inputs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageProblem(
                f"--input {pair!r} is not KEY=VALUE; write e.g. --input topic=batteries"
            )
        try:
            # JSON has no NaN or Infinity: such a value is the text as written.
            inputs[key] = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
        except ValueError:
            inputs[key] = raw
    return inputs


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e999: a number JSON can write but no record can hold
        raise ValueError(f"{text} is out of range")
    return value


@dataclass(frozen=True)
class CrewFile:
    """A crew loaded from a file by `crew_from_file`.

    Attributes:
        crew: The crew, as the file defines it (a crew that kept the default name is named
            after the module that built it, as under ``python FILE.py``).
        path: The file, absolute and resolved (what a run records, so that ``crewflow resume``
            finds it from any directory).
        attribute: The module attribute that holds the crew.
    """

    crew: Crew
    path: Path
    attribute: str


@contextmanager
def crew_from_file(path: Path, attribute: str | None = None) -> Iterator[CrewFile]:
    """Import ``path`` as a module and yield its crew.

    The crew is the module's ``attribute`` when given and it holds a Crew, else the one
    `find_crew` picks. The file's directory goes first on ``sys.path`` (so its sibling imports
    work) and the module is registered in ``sys.modules`` for as long as the context lasts
    (pydantic resolves models through it); both are undone afterwards. The module is not
    ``__main__``, so an ``if __name__ == "__main__":`` block in the file does not run.

    Raises:
        UsageProblem: The file is missing, cannot be imported, or holds no crew or several.
        ConfigurationError: The file's own specs are invalid (raised while importing it).
    """
    path = path.expanduser()
    if not path.is_file():
        what = "is a directory, not" if path.is_dir() else "does not exist; expected"
        raise UsageProblem(f"{path} {what} a Python file defining a Crew")
    path = path.resolve()
    directory = str(path.parent)
    module_name = path.stem if path.stem not in sys.modules else f"_crewflow_run_{path.stem}"
    added_path = directory not in sys.path
    if added_path:
        sys.path.insert(0, directory)
    try:
        module = _import(path, module_name)
        found = getattr(module, attribute, None) if attribute else None
        if isinstance(found, Crew) and attribute:
            name, crew = attribute, found
        else:
            name, crew = find_crew(module, path)
        yield CrewFile(crew, path, name)
    finally:
        sys.modules.pop(module_name, None)
        if added_path:
            with suppress(ValueError):  # the crew's code removed it itself
                sys.path.remove(directory)


def _import(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageProblem(f"{path} is not a Python file (expected a .py file defining a Crew)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except ConfigurationError:
        raise
    except SyntaxError as exc:
        where = f"line {exc.lineno}" if exc.lineno else "unknown line"
        raise UsageProblem(f"{path.name} has a syntax error at {where}: {exc.msg}") from None
    except (Exception, SystemExit) as exc:
        raise UsageProblem(
            f"importing {path.name} raised {type(exc).__name__}: {exc}".rstrip(": ")
        ) from None
    return module


def find_crew(module: ModuleType, path: Path) -> tuple[str, Crew]:
    """The module's crew and its attribute name: ``crew``, else its only `Crew` attribute.

    Raises:
        UsageProblem: ``crew`` is not a Crew, or there is no Crew or several.
    """
    named = getattr(module, "crew", None)
    if named is not None:
        if isinstance(named, Crew):
            return "crew", named
        raise UsageProblem(
            f"`crew` in {path.name} is a {type(named).__name__}, not a Crew; name the Crew to "
            "run `crew`"
        )
    found: dict[str, Crew] = {}
    for attribute, value in vars(module).items():
        if isinstance(value, Crew) and all(value is not crew for crew in found.values()):
            found[attribute] = value
    if len(found) == 1:
        return next(iter(found.items()))
    if not found:
        raise UsageProblem(
            f"{path.name} defines no Crew at module level; add one named `crew`, "
            "e.g. crew = Crew(tasks=[...])"
        )
    names = ", ".join(sorted(found))
    raise UsageProblem(
        f"{path.name} defines {len(found)} crews ({names}); name the one to run `crew`"
    )


def check_inputs(crew: Crew, inputs: dict[str, Any]) -> None:
    """Name every template input the crew needs and the command line did not give.

    `Crew.kickoff` checks this too; this message says how to pass them with ``--input``.

    Raises:
        UsageProblem: Some ``{placeholders}`` have no ``--input``.
    """
    needed = crew.graph.placeholders
    missing = sorted(set(needed) - set(inputs) - set(crew.default_inputs))
    if missing:
        detail = "; ".join(f"{name!r} (used by {', '.join(needed[name])})" for name in missing)
        example = " ".join(f"--input {name}=..." for name in missing)
        raise UsageProblem(f"missing inputs for the task templates: {detail}; pass {example}")
