"""``crewflow processes``: the processes a crew can name, built in or installed as plug-ins.

Listing them loads each process class to read its docstring, and nothing of the run machinery.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from rich.console import Console
from rich.text import Text

from crewflow.cli._common import EXIT_OK, exit_code, print_json
from crewflow.cli._table import print_table
from crewflow.processes import describe_processes

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crewflow.processes import ProcessInfo


def list_processes(*, as_json: bool = False) -> int:
    """What ``crewflow processes`` does; returns the exit code."""
    out, err = Console(highlight=False), Console(stderr=True, highlight=False)
    try:
        found = describe_processes()
    except (Exception, KeyboardInterrupt) as exc:
        return exit_code(err, exc)
    if as_json:
        listed = [info._asdict() for info in found]
        print_json(out, json.dumps(listed, indent=2, ensure_ascii=False))
    else:
        show_processes(out, found)
    return EXIT_OK


def show_processes(console: Console, processes: Sequence[ProcessInfo]) -> None:
    """One row per process: its name, its description and where it comes from."""
    rows = [[Text(info.name), Text(info.description), Text(info.origin)] for info in processes]
    print_table(console, ["process", "description~", "from~"], rows)
