"""``crewflow report RUN_ID [-o FILE.html] [--open] [--db PATH]``."""

from __future__ import annotations

import re
import webbrowser
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner, Result

from crewflow import cli
from crewflow.store import SQLiteStore
from tests.report.crews import stored_run, varied_crew
from tests.report.page import parse

if TYPE_CHECKING:
    from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def invoke(*args: str, columns: int = 250) -> Result:
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "TERM": "xterm-256color"}
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, str]:
    """A database holding one run of the varied crew; its path and the run's id."""
    import anyio

    path = tmp_path / "runs.db"

    async def fill() -> str:
        async with SQLiteStore(path) as store:
            _, run_id = await stored_run(varied_crew, store)
            return run_id

    return path, anyio.run(fill)


def test_report_writes_the_default_file_here_and_prints_its_path(
    recorded: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, run_id = recorded
    monkeypatch.chdir(tmp_path)

    result = invoke("report", run_id, "--db", str(db))

    assert result.exit_code == 0, result.output
    written = tmp_path / f"crewflow-report-{run_id}.html"
    assert result.stdout.strip() == str(written)
    page = parse(written.read_text("utf-8"))
    assert len(page.having("data-attempt")) == 9


def test_report_takes_a_short_id_and_an_output_file_and_opens_it(
    recorded: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, run_id = recorded
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    target = tmp_path / "out" / "r.html"
    target.parent.mkdir()

    result = invoke("report", run_id[:8], "-o", str(target), "--open", "--db", str(db))

    assert result.exit_code == 0, result.output
    assert opened == [target.resolve().as_uri()]
    assert run_id in target.read_text("utf-8")


@pytest.mark.parametrize("db_exists", [True, False])
def test_an_unknown_run_exits_2_in_one_line(
    recorded: tuple[Path, str], tmp_path: Path, db_exists: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = recorded[0] if db_exists else tmp_path / "none.db"
    monkeypatch.chdir(tmp_path)

    result = invoke("report", "no-such-run", "--db", str(db))

    assert result.exit_code == 2
    assert " ".join(ANSI.sub("", result.stderr).split()) == (
        "error: no run 'no-such-run' in the store; `crewflow runs` lists the runs it holds"
    )
    assert not list(tmp_path.glob("crewflow-report-*"))


@pytest.mark.parametrize("width", [60, 80, 120])
def test_report_fits_a_narrow_terminal(
    recorded: tuple[Path, str], tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, run_id = recorded
    monkeypatch.chdir(tmp_path)

    for args in (("report", run_id, "--db", str(db)), ("report", "--help"), ("report", "x")):
        result = invoke(*args, columns=width)

        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = ANSI.sub("", result.output).splitlines()
        if args[1] != run_id:  # the path is printed whole, however long
            assert max(len(line) for line in lines) <= width
