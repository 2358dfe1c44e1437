"""Executors: where `Crew.kickoff_for_each` runs its kickoffs when not in this process.

`RayExecutor` runs each whole kickoff on a worker of a Ray cluster (``pip install
'crewflow[ray]'``). Ray itself is imported only when an executor is made.
"""

from crewflow.executors._ray import RayExecutor

__all__ = ["RayExecutor"]
