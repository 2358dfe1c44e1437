"""The installed version of crewflow."""

__version__ = "0.1.0"
