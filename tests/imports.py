"""Which modules a piece of code imports on the main thread (where the event loop runs), in a
fresh interpreter: a first kickoff should import its heavy modules in a worker thread."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

_WATCH = """
import sys, threading

on_main_thread = {{}}


class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name in {watched!r}:
            on_main_thread[name] = threading.current_thread() is threading.main_thread()


sys.meta_path.insert(0, _Watch())
"""


def imported_on_main_thread(code: str, watched: Sequence[str], home: Path) -> dict[str, bool]:
    """Run ``code`` in a fresh interpreter (``CREWFLOW_HOME`` at ``home``) and return, for each
    module of ``watched`` it imported, whether the import ran on the main thread."""
    script = _WATCH.format(watched=tuple(watched)) + code + "\nprint(on_main_thread)\n"
    env = {**os.environ, "CREWFLOW_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, bool] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return found
