"""Where the user's code called crewflow from: the first frame outside crewflow.

A warning points at that frame's line (the ``@tool`` decorator, the ``Crew(...)`` call), however
deep crewflow called; a crew is named after that frame's module.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

from crewflow.exceptions import CrewflowWarning

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["CallerModule", "user_frame", "warn"]

# pydantic: specs are validated through it (an agent's tools into Tools, a crew's fields).
_INSIDE = ("crewflow.", "pydantic")


def user_frame() -> tuple[FrameType | None, int]:
    """The first frame outside crewflow, and how far up it is from the caller of this
    function (1: the caller itself, as ``warnings.warn``'s ``stacklevel`` counts)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    return frame, level


def warn(message: str) -> None:
    """Warn with a `CrewflowWarning` that points at the user's line."""
    _, level = user_frame()
    warnings.warn(CrewflowWarning(message), stacklevel=level)


class CallerModule:
    """The module of the user's code that called crewflow: its file's name and its namespace.

    Attributes:
        stem: The file's name without its extension (``research`` for ``research.py``; the
            package's name for its ``__init__.py`` or ``__main__.py``).
        namespace: The module's globals, as they are now (the module may still be running).
    """

    # A plain class: a dataclass costs a millisecond of `import crewflow`.
    __slots__ = ("namespace", "stem")

    def __init__(self, stem: str, namespace: dict[str, Any]) -> None:
        self.stem = stem
        self.namespace = namespace

    @classmethod
    def find(cls) -> CallerModule | None:
        """The caller's module; ``None`` when it has no file (a notebook, a REPL, ``python
        -c``, ``exec``)."""
        frame, _ = user_frame()
        namespace = frame.f_globals if frame is not None else {}
        path = namespace.get("__file__")
        if not isinstance(path, str) or not path or path.startswith("<"):
            return None
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in ("__init__", "__main__"):  # `python -m package`: the package's name
            stem = os.path.basename(os.path.dirname(os.path.abspath(path))) or stem
        return cls(stem, namespace) if stem else None

    def attribute_of(self, value: object, kind: type) -> str | None:
        """The module attribute that holds ``value`` (the first, comparing by equality), when
        the module holds several distinct ``kind`` objects; else ``None``."""
        first: dict[Any, str] = {}
        for attribute, held in list(self.namespace.items()):
            if isinstance(held, kind):
                first.setdefault(held, attribute)
        return first.get(value) if len(first) > 1 else None

    def __deepcopy__(self, memo: dict[int, Any]) -> CallerModule:
        # A module's namespace is not data to copy (it holds modules): copies share it.
        return self
