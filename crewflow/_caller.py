"""Where the user's code called crewflow from: the first frame outside crewflow.

A warning points at that frame's line (the ``@tool`` decorator, the ``Crew(...)`` call), however
deep crewflow called; a crew takes its default name from that frame's module.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING

from crewflow.exceptions import CrewflowWarning

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["user_frame", "warn"]

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
