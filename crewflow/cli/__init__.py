"""The ``crewflow`` command line.

```
crewflow run examples/research.py --input topic=batteries --model openai/gpt-4o-mini
crewflow run crew.py --json | jq .outputs
crewflow runs --crew research --limit 5          # recorded runs, newest first
crewflow show RUN_ID                              # tasks, attempts, timing, usage, outputs
crewflow resume RUN_ID                            # finish a failed or killed run
crewflow optimize --crew research                 # the optimizer's report
crewflow graph crew.py --format dot               # the task graph (mermaid, dot or json)
crewflow processes                                # built-in and plug-in processes
crewflow cache clear
crewflow --version
```

Exit codes: 0 success, 1 the run failed (`CrewRunError`), 2 a usage or configuration problem
(bad arguments, a file that cannot be imported or holds no crew, a bad model, missing inputs,
an unknown run id, a changed crew refused by resume, an unreadable database), 130 cancelled
with Ctrl-C. Errors are one line on stderr, never a traceback.

The commands that read the run database (``runs``, ``show``, ``optimize``, ``cache clear``)
never create it, and import nothing beyond the store (``crewflow runs`` must stay fast).

This package is imported only by the console script (and ``python -m crewflow``), never by
``import crewflow``, so it may import typer and rich at the top. Its rooms:

- ``_app``: the typer app, its commands and `main`; each command imports its module when run;
- ``_common``: exit codes, `UsageProblem`, the one-line error report, opening the database;
- ``_graph``: ``graph``, a crew's task graph as Mermaid, DOT or JSON;
- ``_load``: a crew from a Python file, ``--input`` values;
- ``_progress``: `ProgressView`, the live per-task status lines;
- ``_processes``: ``processes``, the built-in and plug-in processes;
- ``_run``: ``run`` and ``resume`` (loads the crew machinery);
- ``_supervise``: ``run --restart`` and ``resume --interrupted``, crews in child processes;
- ``_store``: ``runs``, ``show``, ``cache clear``, ``optimize``; ``_render`` draws what they show;
- ``_table``: `print_table`, the borderless tables of every command.

The other names below load their module on first use, like ``crewflow``'s own.
"""

import typing

from crewflow.cli._app import app, main

if typing.TYPE_CHECKING:
    from crewflow.cli._common import (
        EXIT_CANCELLED,
        EXIT_OK,
        EXIT_RUN_FAILED,
        EXIT_USAGE,
        UsageProblem,
        show_failure,
    )
    from crewflow.cli._graph import draw_graph
    from crewflow.cli._load import (
        CrewFile,
        check_inputs,
        crew_from_file,
        find_crew,
        parse_inputs,
    )
    from crewflow.cli._processes import list_processes, show_processes
    from crewflow.cli._progress import ProgressView
    from crewflow.cli._render import OUTPUT_LINES, show_details, show_runs
    from crewflow.cli._run import kickoff, resume, resume_run, run_file, show_result
    from crewflow.cli._store import RunDetails, clear_cache, list_runs, optimize_runs, show_run
    from crewflow.cli._table import print_table

__all__ = [
    "EXIT_CANCELLED",
    "EXIT_OK",
    "EXIT_RUN_FAILED",
    "EXIT_USAGE",
    "OUTPUT_LINES",
    "CrewFile",
    "ProgressView",
    "RunDetails",
    "UsageProblem",
    "app",
    "check_inputs",
    "clear_cache",
    "crew_from_file",
    "draw_graph",
    "find_crew",
    "kickoff",
    "list_processes",
    "list_runs",
    "main",
    "optimize_runs",
    "parse_inputs",
    "print_table",
    "resume",
    "resume_run",
    "run_file",
    "show_details",
    "show_failure",
    "show_processes",
    "show_result",
    "show_run",
    "show_runs",
]

_WHERE = {
    "EXIT_CANCELLED": "_common",
    "EXIT_OK": "_common",
    "EXIT_RUN_FAILED": "_common",
    "EXIT_USAGE": "_common",
    "UsageProblem": "_common",
    "show_failure": "_common",
    "draw_graph": "_graph",
    "CrewFile": "_load",
    "check_inputs": "_load",
    "crew_from_file": "_load",
    "find_crew": "_load",
    "parse_inputs": "_load",
    "list_processes": "_processes",
    "show_processes": "_processes",
    "ProgressView": "_progress",
    "OUTPUT_LINES": "_render",
    "show_details": "_render",
    "show_runs": "_render",
    "kickoff": "_run",
    "resume": "_run",
    "resume_run": "_run",
    "run_file": "_run",
    "show_result": "_run",
    "RunDetails": "_store",
    "clear_cache": "_store",
    "list_runs": "_store",
    "optimize_runs": "_store",
    "show_run": "_store",
    "print_table": "_table",
}


def __getattr__(name: str) -> typing.Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'crewflow.cli' has no attribute {name!r}")
    import importlib

    # Not cached in this module's namespace: patch a name where it is used, in its own module.
    return getattr(importlib.import_module(f"crewflow.cli.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
