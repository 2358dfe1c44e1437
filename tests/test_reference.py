"""The API reference documents what users meet: built once with mkdocs (strictly), then read.

Each check is general, so that a gap stays closed when the code grows: every public name is on
the reference exactly once; every documented method of a documented class is there (a missing
``Crew.resume`` fails); pydantic models list their fields (griffe-pydantic), enums their
members; and a type the reference names is one it documents (``RunHandle(run: Run)`` fails).
"""

from __future__ import annotations

import enum
import functools
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel, RootModel

# One mkdocs build (a subprocess, a few seconds) for the whole module.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

PUBLIC_MODULES = (
    "crewflow",
    "crewflow.events",
    "crewflow.exceptions",
    "crewflow.llm",
    "crewflow.optimizer",
    "crewflow.processes",
    "crewflow.store",
    "crewflow.testing",
)

# Documented methods the reference leaves out on purpose, by class and name: why.
LEFT_OUT = {
    "Agent.run": "only the runtime calls agents (DESIGN.md); users run crews",
}

# Undocumented objects the reference may name: why.
NAMED_UNDOCUMENTED = {
    "crewflow._spec.Spec": "the private base of Agent, Task and Crew (shown as their base)",
    "crewflow._spec.Value": "the private base of the value models (shown as their base)",
    "crewflow.store._records._Record": "the private base of the store's records",
    "crewflow._records.Compact": "the base of the records made per task (shown as their base)",
    "crewflow.optimizer._report._Model": "the private base of the optimizer's report models",
    "crewflow.limits._Unset": "the type of Limits' 'not given' default, in its signature",
    "crewflow.limits._UNSET": "Limits' 'not given' default, in its signature",
}

_HEADING = re.compile(r'<h\d id="(crewflow[^"]*)" class="doc doc-heading"')
# An identifier the reference names but could not link: rendered as a span with its path.
_UNLINKED = re.compile(r'<span title="(crewflow(?:\.\w+)+)">')
_MISSING = object()


@dataclass(frozen=True)
class Heading:
    """One documented object of the built reference."""

    page: Path
    id: str  # the anchor, e.g. "crewflow.Crew.resume"
    obj: Any  # what the id names, or _MISSING (a pydantic field has no class attribute)


def resolve(path: str) -> Any:
    """The object a dotted path names (modules imported as needed), or _MISSING."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, _MISSING)
            if found is _MISSING:
                return _MISSING
        return found
    return _MISSING


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built strictly (a broken reference, link or docstring fails the build)."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[dev]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def headings(site: Path) -> list[Heading]:
    found = []
    for page in sorted((site / "reference").glob("*/index.html")):
        for ident in _HEADING.findall(page.read_text(encoding="utf-8")):
            found.append(Heading(page, ident, resolve(ident)))
    return found


@pytest.fixture(scope="module")
def ids(headings: list[Heading]) -> set[str]:
    return {heading.id for heading in headings}


def documented_classes(headings: list[Heading]) -> list[Heading]:
    return [
        heading
        for heading in headings
        if inspect.isclass(heading.obj) and heading.obj.__module__.startswith("crewflow")
    ]


def test_the_docs_site_builds_strictly(site: Path) -> None:
    assert (site / "reference" / "crewflow" / "index.html").is_file()


def test_every_public_name_is_documented_exactly_once(headings: list[Heading]) -> None:
    where: dict[int, list[str]] = defaultdict(list)
    for heading in headings:
        where[id(heading.obj)].append(f"{heading.id} ({heading.page.parent.name})")
    problems = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if name == "__version__":
                continue
            obj = getattr(module, name)
            found = where.get(id(obj), [])
            single = inspect.isclass(obj) or inspect.isfunction(obj)
            if not found or (single and len(found) > 1):
                problems.append(f"{module_name}.{name}: {found or 'not in the reference'}")
    assert not problems, "each public name needs one entry in docs/reference:\n" + "\n".join(
        problems
    )


def _documented_members(cls: type) -> list[str]:
    """The names of the methods and properties ``cls`` itself defines with a docstring."""
    fields = getattr(cls, "model_fields", {})
    members = []
    for name, value in vars(cls).items():
        if name.startswith("_") or name in fields or name == "model_post_init":
            continue
        if isinstance(value, classmethod | staticmethod):
            value = value.__func__
        routine = isinstance(value, property | functools.cached_property) or inspect.isfunction(
            value
        )
        if routine and value.__doc__:
            members.append(name)
    return members


def test_every_documented_method_of_a_documented_class_is_in_the_reference(
    headings: list[Heading], ids: set[str]
) -> None:
    missing = []
    for heading in documented_classes(headings):
        for name in _documented_members(heading.obj):
            left_out = f"{heading.obj.__qualname__}.{name}" in LEFT_OUT
            if not left_out and f"{heading.id}.{name}" not in ids:
                missing.append(f"{heading.id}.{name} ({heading.page.parent.name})")
    assert not missing, "add these to their class's members (or to LEFT_OUT):\n" + "\n".join(
        missing
    )
    assert "crewflow.Crew.resume" in ids


def _contents(page_html: str, heading_id: str) -> str:
    """What an object's entry shows before its first member: docstring, fields, config."""
    start = page_html.index(f'id="{heading_id}"')
    following = _HEADING.search(page_html, start + 1)
    return page_html[start : following.start() if following else None]


def test_every_pydantic_model_lists_its_fields(headings: list[Heading]) -> None:
    models = [h for h in documented_classes(headings) if issubclass(h.obj, BaseModel)]
    unlisted = []
    for heading in models:
        contents = _contents(heading.page.read_text(encoding="utf-8"), heading.id)
        # A field is listed once: in the docstring's Attributes table, or else under Fields.
        listed = "".join(
            contents[contents.find(title) :]
            for title in ("<p>Fields:</p>", '"doc-section-title">Attributes:')
            if title in contents
        )
        canonical = f"{heading.obj.__module__}.{heading.obj.__qualname__}"
        if issubclass(heading.obj, RootModel):
            # Its one field, ``root``, is its base's parameter: RootModel[dict[str, ...]].
            if 'title="pydantic.RootModel"' not in contents:
                unlisted.append(f"{heading.id}.root")
            continue
        for field in heading.obj.model_fields:
            if f'{heading.id}.{field}"' not in listed and f'{canonical}.{field}"' not in listed:
                unlisted.append(f"{heading.id}.{field}")
    events = {h.obj for h in models if h.id.startswith("crewflow.events.")}
    assert len(events) >= 20, "the events page should list every event class"
    assert not unlisted, "fields the reference does not list:\n" + "\n".join(unlisted)


def test_every_enum_lists_its_members(headings: list[Heading], ids: set[str]) -> None:
    enums = [h for h in documented_classes(headings) if issubclass(h.obj, enum.Enum)]
    assert {h.obj.__name__ for h in enums} >= {"RunStatus", "TaskStatus", "TaskKind"}
    missing = [
        f"{heading.id}.{member}  (give it a docstring)"
        for heading in enums
        for member in heading.obj.__members__
        if f"{heading.id}.{member}" not in ids
    ]
    assert not missing, "enum members the reference does not list:\n" + "\n".join(missing)


def test_every_type_the_reference_names_is_documented(headings: list[Heading], site: Path) -> None:
    documented = {id(h.obj) for h in headings if h.obj is not _MISSING}
    unknown = set()
    for page in (site / "reference").glob("*/index.html"):
        for path in _UNLINKED.findall(page.read_text(encoding="utf-8")):
            if path in NAMED_UNDOCUMENTED or isinstance(resolve(path), TypeVar):
                continue
            # A field or attribute of a documented class is described in that class's entry.
            owner = resolve(path.rpartition(".")[0])
            if not inspect.isclass(owner) or id(owner) not in documented:
                unknown.add(f"{path} ({page.parent.name})")
    assert not unknown, "the reference names these but documents none of them:\n" + "\n".join(
        sorted(unknown)
    )
