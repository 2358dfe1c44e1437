"""Test support: entry points made by hand, reported by importlib.metadata as if installed."""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest


def install_entry_points(
    monkeypatch: pytest.MonkeyPatch, installed: list[importlib.metadata.EntryPoint]
) -> None:
    """Make ``installed`` the only entry points of their groups for the rest of the test.

    The other groups keep the real ones: pydantic, for one, looks up its own plug-ins when a
    module defining models (a built-in process's) is first imported.
    """
    real = importlib.metadata.entry_points
    groups = {entry_point.group for entry_point in installed}

    def entry_points(**selection: Any) -> Any:
        group = selection.get("group")
        if group in groups:
            return [entry_point for entry_point in installed if entry_point.group == group]
        return real(**selection)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
