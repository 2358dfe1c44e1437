"""The typer app: the commands, their options and help, and the console script `main`.

Each command imports the module that does its work when it runs, so that registering them all
costs only typer: ``crewflow runs`` never loads the crew machinery that ``crewflow run`` needs.
Typer reads the commands' annotations at runtime, so this module does not postpone them.
"""

import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated

import typer

from crewflow._logging import LEVEL_ENV
from crewflow._version import __version__
from crewflow.cli._common import EXIT_OK

# Set by the console script `main`: the process is crewflow's own, so `crewflow run` may freeze
# the heap it loaded (`run_file`'s ``freeze_heap``). Not when the app runs inside another
# program (tests invoke it in theirs).
_OWN_PROCESS: ContextVar[bool] = ContextVar("crewflow_cli_own_process", default=False)

app = typer.Typer(
    name="crewflow",
    help="Run crews of LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    # Typer's pretty exceptions print tracebacks with local variables (API keys, prompts):
    # every error is caught and reported as one line instead.
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"crewflow {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Run crews of LLM agents."""


_JSON_HELP = "Print only JSON (for scripts)."
Quiet = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="Show no progress: only the result (and errors)."),
]


def _check_database(value: str | None) -> str | None:
    """Refuse a --db URL (or, without --db, a CREWFLOW_STORE) of a scheme no store knows, as a
    usage error."""
    import os

    from crewflow.store._base import POSTGRES_SCHEMES, store_path

    given = value if value is not None else os.environ.get("CREWFLOW_STORE")
    if given and not given.startswith(POSTGRES_SCHEMES):
        try:
            store_path(given)
        except ValueError as exc:
            named = "" if value is not None else " (from CREWFLOW_STORE)"
            raise typer.BadParameter(f"{exc}{named}") from None
    return value


Database = Annotated[
    str | None,
    typer.Option(
        "--db",
        callback=_check_database,
        metavar="PATH|URL",
        help=(
            "The run database: a SQLite file, or a postgresql:// URL (default: CREWFLOW_STORE, "
            "else runs.db in CREWFLOW_HOME or the user data directory)."
        ),
    ),
]


def _check_delay(value: str) -> str:
    """Refuse a --restart-delay that is not a delay, as a usage error."""
    from crewflow.cli._supervise import parse_delay

    try:
        parse_delay(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def _shown(db: str) -> str:
    from crewflow.cli._common import shown_database

    return shown_database(db)


def _check_run_id(value: str | None) -> str | None:
    """Refuse a --run-id that could not name a run on a command line (empty, spaces, or a
    leading dash)."""
    if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", value):
        raise typer.BadParameter(
            f"{value!r} is not a run id: use letters, digits and _.:- (at most 128), "
            "starting with a letter or digit"
        )
    return value


@app.command()
def run(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.py", help="A Python file defining a Crew (named `crew` if several)."
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help='Use this model for every agent, e.g. "offline" or "openai/gpt-4o-mini".',
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-i",
            metavar="KEY=VALUE",
            help="A template input (repeatable); VALUE is parsed as JSON when it is JSON.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print only the result as JSON (for scripts).")
    ] = False,
    quiet: Quiet = False,
    db: Database = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            callback=_check_run_id,
            metavar="RUN_ID",
            help="The run's id (default: a fresh one). If the database holds that run already, "
            "it is finished from its checkpoints instead, as `crewflow resume` would.",
        ),
    ] = None,
    restart: Annotated[
        int | None,
        typer.Option(
            "--restart",
            min=0,
            metavar="N",
            help="Run the crew in a child process and, when that process dies (killed, out of "
            "memory, crashed), resume the run from its checkpoints, up to N times. A run that "
            "fails on its own terms is not restarted.",
        ),
    ] = None,
    restart_delay: Annotated[
        str,
        typer.Option(
            "--restart-delay",
            callback=_check_delay,
            metavar="DELAY",
            help="With --restart: wait this long before each restart (10s, 500ms, 2m, 0).",
        ),
    ] = "10s",
) -> None:
    """Run the crew defined in FILE and show its progress and final output.

    With --restart N, a supervisor runs it in a child process, which owns the terminal (its live
    view shows as usual), and restarts it when the process dies, printing one line per restart.
    """
    if restart is not None:
        from crewflow.cli._supervise import parse_delay, supervise_run

        forwarded = [str(file), *(["--model", model] if model else [])]
        for value in inputs or []:
            forwarded += ["--input", value]
        forwarded += [*(["--json"] if as_json else []), *(["--quiet"] if quiet else [])]
        forwarded += ["--db", db] if db is not None else []
        options = f" --model {model}" if model else ""
        options += f" --db {_shown(db)}" if db is not None else ""
        delay = parse_delay(restart_delay)
        _exit(
            supervise_run(
                forwarded, restarts=restart, delay=delay, run_id=run_id, resume_options=options
            )
        )
        return
    from crewflow.cli._run import run_file

    _exit(
        run_file(
            file,
            model=model,
            inputs=inputs or [],
            as_json=as_json,
            quiet=quiet,
            db=db,
            freeze_heap=_OWN_PROCESS.get(),
            run_id=run_id,
        )
    )


@app.command("batch")
def batch_command(
    file: Annotated[
        Path | None,
        typer.Argument(
            metavar="FILE.py", help="A Python file defining a Crew (named `crew` if several)."
        ),
    ] = None,
    inputs: Annotated[
        Path | None,
        typer.Argument(metavar="INPUTS.jsonl", help="One JSON object of template inputs per line."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            metavar="BATCH_ID",
            help="Finish this batch: inputs already completed are not run again.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="OUT.jsonl",
            help="Write the output lines here (whole, at the end) instead of to stdout.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Run the kickoffs on this Ray cluster (pip install 'crewflow[ray]').",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", "-k", min=1, metavar="K", help="Run at most K kickoffs at once."
        ),
    ] = 8,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Use this model for every agent of every kickoff."),
    ] = None,
    quiet: Quiet = False,
    db: Database = None,
) -> None:
    """Run the crew in FILE once per line of INPUTS (a JSONL file), and print one JSON line per
    input, in order: its index, its run id, and its outputs or its error.

    Every line is checked before any work starts. The batch is recorded with each input's run
    id; if it stops (a crash, Ctrl-C), `crewflow batch --resume BATCH_ID` finishes it, running
    only what had not finished. The exit code is 1 when an input failed.
    """
    from crewflow.cli._batch import run_batch

    _exit(
        run_batch(
            file,
            inputs,
            resume=resume,
            output=output,
            model=model,
            concurrency=concurrency,
            ray=ray,
            quiet=quiet,
            db=db,
        )
    )


@app.command("resume")
def resume_command(
    run_id: Annotated[
        str | None, typer.Argument(metavar="[RUN_ID]", help="The run to resume.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            "-f",
            metavar="FILE.py",
            help="Load the crew from this file instead of the one the run was started from.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Resume even if the crew changed since the run.")
    ] = False,
    rerun: Annotated[
        bool,
        typer.Option("--rerun", help="Run the crew again, as a new run with the recorded inputs."),
    ] = False,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="The --model the run was started with, if it was given one."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    quiet: Quiet = False,
    db: Database = None,
    interrupted: Annotated[
        bool,
        typer.Option(
            "--interrupted",
            help="Instead of RUN_ID: resume every interrupted run (its process died, or its "
            "lease expired), each in a child process, and report each one's outcome.",
        ),
    ] = False,
    crew: Annotated[
        str | None,
        typer.Option(
            "--crew", "-c", metavar="NAME", help="With --interrupted: only this crew's runs."
        ),
    ] = None,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            "-k",
            min=1,
            metavar="K",
            help="With --interrupted: resume K runs at once (default: one after another).",
        ),
    ] = 1,
) -> None:
    """Finish a failed or interrupted run: only the tasks that had not finished run again.

    The crew is loaded from the file the run was started from (`crewflow run` recorded it). A
    completed run is left as it is: there is nothing to resume (--rerun runs it again).

    With --interrupted, every run whose process died is resumed, oldest first; runs another
    live process holds are skipped. The exit code is 1 when one of them failed.
    """
    if interrupted:
        from crewflow.cli._supervise import resume_interrupted

        _refuse_with_interrupted(run_id=run_id, file=file, rerun=rerun)
        code = resume_interrupted(
            crew=crew,
            parallel=parallel,
            model=model,
            force=force,
            as_json=as_json,
            db=db,
        )
        _exit(code)
        return
    if run_id is None:
        raise typer.BadParameter(
            "give the RUN_ID to resume, or --interrupted to resume every interrupted run",
            param_hint="RUN_ID",
        )
    if crew is not None or parallel != 1:
        raise typer.BadParameter("--crew and --parallel go with --interrupted")
    from crewflow.cli._run import resume_run

    code = resume_run(
        run_id,
        file=file,
        force=force,
        rerun=rerun,
        model=model,
        as_json=as_json,
        quiet=quiet,
        db=db,
    )
    _exit(code)


def _refuse_with_interrupted(*, run_id: str | None, file: Path | None, rerun: bool) -> None:
    given = [
        name for name, value in (("RUN_ID", run_id), ("--file", file), ("--rerun", rerun)) if value
    ]
    if given:
        raise typer.BadParameter(
            f"--interrupted resumes every interrupted run: it takes no {', '.join(given)}"
        )


@app.command("runs")
def runs_command(
    crew: Annotated[
        str | None, typer.Option("--crew", "-c", metavar="NAME", help="Only this crew's runs.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, metavar="N", help="Show at most N runs.")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """List the recorded runs, newest first."""
    from crewflow.cli._store import list_runs

    _exit(list_runs(crew=crew, limit=limit, as_json=as_json, db=db))


@app.command("show")
def show_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to show.")],
    full: Annotated[
        bool,
        typer.Option("--full", help="Print every output and tool error whole, however long."),
    ] = False,
    prompts: Annotated[
        bool,
        typer.Option(
            "--prompts", help="Also print what each LLM call sent and got back (JSON too)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """Show one run: its tasks, attempts, timing, usage, failed tool calls and outputs."""
    from crewflow.cli._store import show_run

    _exit(show_run(run_id, as_json=as_json, full=full, prompts=prompts, db=db))


@app.command("report")
def report_command(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run to report on.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE.html",
            help="Where to write it (default: crewflow-report-RUN_ID.html here).",
        ),
    ] = None,
    open_it: Annotated[
        bool, typer.Option("--open", help="Open the report in the default web browser.")
    ] = False,
    compare: Annotated[
        str | None,
        typer.Option(
            "--compare",
            metavar="RUN_B",
            help="Compare RUN_ID with RUN_B instead: times, tokens and outputs side by side "
            "(default file: crewflow-compare-RUN_ID-RUN_B.html here).",
        ),
    ] = None,
    db: Database = None,
) -> None:
    """Write one run's report as a self-contained HTML file (it needs no network), and print
    its path: the timeline of every attempt, requests in flight, the task graph, usage, the
    process and why, the optimizer's advice, and each task's output, prompts and tool calls.
    With --compare, two runs side by side instead.
    """
    from crewflow.cli._report import write_report

    _exit(write_report(run_id, output=output, open_it=open_it, db=db, compare=compare))


@app.command("dashboard")
def dashboard_command(
    port: Annotated[
        int, typer.Option("--port", "-p", min=0, max=65535, help="The port (0: any free one).")
    ] = 8765,
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="The address to listen on. Another than 127.0.0.1 shows every prompt and "
            "output to whoever reaches it with the token.",
        ),
    ] = "127.0.0.1",
    db: Database = None,
) -> None:
    """Serve a local web page of the recorded runs, live: the runs (by crew and status), each
    run's tasks and report, updated as runs go on, whichever process runs them. It prints its
    address with a token; it only reads. Needs the extra: pip install 'crewflow[dashboard]'.
    """
    from crewflow.cli._dashboard import serve_dashboard

    _exit(serve_dashboard(host=host, port=port, db=db))


@app.command("optimize")
def optimize_command(
    crew: Annotated[
        str | None, typer.Option("--crew", "-c", metavar="NAME", help="Only this crew's runs.")
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", "-n", min=1, metavar="N", help="Analyse the last N runs.")
    ] = 100,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    db: Database = None,
) -> None:
    """Analyse the recorded runs: per-process and per-task statistics, bottlenecks, advice."""
    from crewflow.cli._store import optimize_runs

    _exit(optimize_runs(crew=crew, runs=runs, as_json=as_json, db=db))


@app.command("graph")
def graph_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.py", help="A Python file defining a Crew (named `crew` if several)."
        ),
    ],
    crew: Annotated[
        str | None,
        typer.Option("--crew", "-c", metavar="ATTR", help="The file's attribute holding the crew."),
    ] = None,
    form: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            metavar="FORMAT",
            help="mermaid (GitHub and the docs render it), dot (Graphviz) or json.",
        ),
    ] = "mermaid",
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Write it to FILE instead."),
    ] = None,
) -> None:
    """Print the crew's task graph without running it: each task with its agent, each
    dependency, and the workflow marks (conditions, routers and their branches, optional
    context as dashed edges, guardrails).
    """
    from crewflow.cli._graph import draw_graph

    _exit(draw_graph(file, attribute=crew, form=form, output=output))


@app.command("processes")
def processes_command(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """List the processes a crew can name: built in, or installed as plug-ins."""
    from crewflow.cli._processes import list_processes

    _exit(list_processes(as_json=as_json))


cache_app = typer.Typer(
    name="cache",
    help="The cache of LLM replies.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)
app.add_typer(cache_app)


@cache_app.command("clear")
def cache_clear_command(db: Database = None) -> None:
    """Remove every cached LLM reply."""
    from crewflow.cli._store import clear_cache

    _exit(clear_cache(db=db))


def _exit(code: int) -> None:
    if code != EXIT_OK:
        raise typer.Exit(code)


def main() -> None:
    """The console script: ``crewflow ...``.

    The CLI shows progress and errors itself, so the library's own log lines are off unless
    ``CREWFLOW_LOG_LEVEL`` asks for them (e.g. ``CREWFLOW_LOG_LEVEL=INFO crewflow run ...``).
    """
    os.environ.setdefault(LEVEL_ENV, "CRITICAL")
    _OWN_PROCESS.set(True)
    app(prog_name="crewflow")
