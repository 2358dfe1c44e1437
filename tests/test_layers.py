"""The layers of DESIGN.md hold: imports point down the list, never up.

The contract is import-linter's, in ``pyproject.toml`` (``[tool.importlinter]``); these tests run
``lint-imports`` on the package as it is, and on a copy with a forbidden import, so that a
contract that checks nothing would fail too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``project``'s package, with its pyproject.toml."""
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    command = command or shutil.which("lint-imports")
    assert command is not None, "lint-imports is missing: pip install -e '.[dev]'"
    # import-linter finds the package by import: this project's copy first.
    path = os.pathsep.join(filter(None, [str(project), os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [command, "--no-cache"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, to break."""
    shutil.copytree(
        ROOT / "crewflow", tmp_path / "crewflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_imports_point_down_the_layers() -> None:
    result = lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_up_the_layers_breaks_the_contract(copy: Path) -> None:
    task = copy / "crewflow" / "task.py"
    task.write_text(
        task.read_text()
        # A spec importing the runtime (layer 3 -> 5), even inside a function: forbidden.
        + "\n\ndef _up() -> object:\n    from crewflow._runtime import run\n\n    return run\n"
        # For type hints only (layer 3 -> 7): exempt.
        + "\n\nif TYPE_CHECKING:\n    from crewflow.crew import Crew\n"
    )

    result = lint_imports(copy)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "crewflow.task is not allowed to import crewflow._runtime" in result.stdout
    assert "crewflow.task -> crewflow._runtime.run" in result.stdout
    assert "crewflow.crew" not in result.stdout


def test_every_module_has_a_layer(copy: Path) -> None:
    (copy / "crewflow" / "stray.py").write_text('"""Placed nowhere."""\n')
    (copy / "crewflow" / "report.py").write_text('"""Placed already, as DESIGN.md plans."""\n')

    result = lint_imports(copy)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "crewflow.stray" in result.stdout
    assert "crewflow.report" not in result.stdout
