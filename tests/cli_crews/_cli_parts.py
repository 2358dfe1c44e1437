"""A sibling module, imported by sibling_crew.py the way a user's own helpers would be."""

from crewflow import Agent


def make_agent() -> Agent:
    """The agent sibling_crew.py uses."""
    return Agent(role="Helper", goal="Help", llm="offline")
