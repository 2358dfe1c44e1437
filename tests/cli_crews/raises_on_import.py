"""Raises while being imported."""

raise RuntimeError("boom while importing")
