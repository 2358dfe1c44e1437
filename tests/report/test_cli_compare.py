"""``crewflow report RUN_A --compare RUN_B [-o FILE.html] [--open] [--db PATH]``."""

from __future__ import annotations

import webbrowser
from typing import TYPE_CHECKING

import pytest

from crewflow.store import SQLiteStore
from crewflow.testing import run_virtual
from tests.report.crews import versioned_crew
from tests.report.page import parse
from tests.report.test_cli_report import ANSI, invoke

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A database holding a run of each version of the versioned crew; its path and the ids.
    The commands only read it, so the module's tests share it."""
    path = tmp_path_factory.mktemp("compare") / "runs.db"

    async def fill() -> tuple[str, str]:
        async with SQLiteStore(path) as store:
            first = await versioned_crew(store, 1).kickoff()
            second = await versioned_crew(store, 2).kickoff()
            return first.run_id, second.run_id

    first, second = run_virtual(fill)
    return path, first, second


def test_compare_writes_the_default_file_here_and_prints_its_path(
    recorded: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, first, second = recorded
    monkeypatch.chdir(tmp_path)

    result = invoke("report", first, "--compare", second, "--db", str(db))

    assert result.exit_code == 0, result.output
    written = tmp_path / f"crewflow-compare-{first[:8]}-{second[:8]}.html"
    assert result.stdout.strip() == str(written)
    page = parse(written.read_text("utf-8"))
    rows = [e.attrs["data-task"] for e in page.having("data-task")]
    assert rows == ["extra", "draft", "plan", "check"]
    assert "+3.00 s, 2.50× slower" in page.text
    assert not list(tmp_path.glob("crewflow-report-*"))


def test_compare_takes_short_ids_and_an_output_file_and_opens_it(
    recorded: tuple[Path, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, first, second = recorded
    opened: list[str] = []
    monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
    target = tmp_path / "c.html"

    result = invoke(
        "report", second[:6], "--compare", first[:6], "-o", str(target), "--open", "--db", str(db)
    )

    assert result.exit_code == 0, result.output
    assert opened == [target.resolve().as_uri()]
    text = parse(target.read_text("utf-8")).text
    assert f"A run {second}" in " ".join(text.split())  # the order given: A is the first id
    assert "−3.00 s, 2.50× faster" in text


@pytest.mark.parametrize("which", ["first", "second"])
def test_an_unknown_run_exits_2_in_one_line(
    recorded: tuple[Path, str, str], tmp_path: Path, which: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, first, _ = recorded
    monkeypatch.chdir(tmp_path)
    args = ("no-such-run", first) if which == "first" else (first, "no-such-run")

    result = invoke("report", args[0], "--compare", args[1], "--db", str(db))

    assert result.exit_code == 2
    assert " ".join(ANSI.sub("", result.stderr).split()) == (
        "error: no run 'no-such-run' in the store; `crewflow runs` lists the runs it holds"
    )
    assert not list(tmp_path.glob("crewflow-compare-*"))


def test_without_a_database_it_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    result = invoke("report", "a", "--compare", "b", "--db", str(tmp_path / "none.db"))

    assert result.exit_code == 2
    assert len(ANSI.sub("", result.stderr).strip().splitlines()) == 1


@pytest.mark.parametrize("width", [60, 80, 120])
def test_compare_fits_a_narrow_terminal(
    recorded: tuple[Path, str, str], tmp_path: Path, width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    db, first, second = recorded
    monkeypatch.chdir(tmp_path)
    cases = (
        ("report", first, "--compare", second, "--db", str(db)),
        ("report", "--help"),
        ("report", first, "--compare", "nope", "--db", str(db)),
        ("report", first, "--compare"),
    )

    for args in cases:
        result = invoke(*args, columns=width)

        assert result.exception is None or isinstance(result.exception, SystemExit)
        lines = ANSI.sub("", result.output).splitlines()
        if args[2:4] != ("--compare", second):  # the path is printed whole, however long
            assert max(len(line) for line in lines) <= width, "\n".join(lines)
