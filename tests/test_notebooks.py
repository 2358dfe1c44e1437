"""The example notebook runs, offline, on a real IPython kernel (nbclient), and shows what it says.

The kernel is this venv's (``python -m ipykernel install --sys-prefix``, as ``.ci/run`` does).
Locally the test skips when no kernel spec is installed; with ``CREWFLOW_REQUIRE_KERNEL=1`` (CI)
it fails instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.report.page import parse

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "notebooks" / "quickstart.ipynb"
KERNEL = "python3"


def _kernel_missing() -> str | None:
    try:
        import nbclient  # noqa: F401
        from jupyter_client.kernelspec import KernelSpecManager
    except ImportError as exc:
        return f"nbclient or jupyter_client is not installed ({exc.name})"
    specs = KernelSpecManager().find_kernel_specs()
    if KERNEL not in specs:
        return f"no {KERNEL!r} kernel spec (python -m ipykernel install --sys-prefix)"
    return None


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[tuple[int, str, str]]]:
    """The notebook run in a temporary copy (its runs recorded in a temporary CREWFLOW_HOME),
    and the display messages each cell got: (cell index, message type, display id)."""
    missing = _kernel_missing()
    if missing is not None:
        if os.environ.get("CREWFLOW_REQUIRE_KERNEL") == "1":
            pytest.fail(f"CREWFLOW_REQUIRE_KERNEL=1 but {missing}")
        pytest.skip(missing)
    import nbformat
    from nbclient import NotebookClient

    folder = tmp_path_factory.mktemp("notebook")
    home = folder / "home"
    home.mkdir()
    copy = folder / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    notebook = nbformat.read(copy, as_version=4)
    messages: list[tuple[int, str, str]] = []

    class Client(NotebookClient):  # type: ignore[misc]
        def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
            display_id = (msg.get("content", {}).get("transient") or {}).get("display_id")
            if display_id:
                messages.append((cell_index, msg["msg_type"], display_id))
            return super().process_message(msg, cell, cell_index)

    # The kernel inherits this environment: the offline model, no real call, a fresh store.
    env = {
        "CREWFLOW_HOME": str(home),
        "CREWFLOW_FORBID_REAL_LLM_CALLS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    saved = {name: os.environ.get(name) for name in [*env, "CREWFLOW_MODEL"]}
    os.environ.update(env)
    os.environ.pop("CREWFLOW_MODEL", None)
    try:
        client = Client(
            notebook,
            timeout=90,
            kernel_name=KERNEL,
            resources={"metadata": {"path": str(folder)}},
            allow_errors=False,
        )
        client.execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return notebook, messages


def _outputs(notebook: Any, source: str) -> tuple[int, list[Any]]:
    """The index and outputs of the code cell whose source holds ``source``."""
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and source in cell.source:
            return index, cell.outputs
    raise AssertionError(f"no cell holds {source!r}")


def _html(output: Any) -> str:
    return str(output.get("data", {}).get("text/html", ""))


def test_no_cell_raised(executed: tuple[Any, list[tuple[int, str, str]]]) -> None:
    notebook, _ = executed
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in errors if o.output_type == "error"]
    assert all(c.execution_count for c in notebook.cells if c.cell_type == "code")


def test_the_parallel_result_shows_its_report_inline(
    executed: tuple[Any, list[tuple[int, str, str]]],
) -> None:
    notebook, _ = executed
    _, outputs = _outputs(notebook, "parallel_result = await parallel.kickoff")
    [shown] = [o for o in outputs if o.output_type == "execute_result"]
    [frame] = parse(_html(shown)).tags("iframe")
    assert frame.attrs["sandbox"] == "allow-scripts"
    page = parse(frame.attrs["srcdoc"])
    [gantt] = [e for e in page.tags("svg") if e.attrs.get("id") == "gantt"]
    assert gantt.attrs["aria-label"]
    bars = sorted(e.attrs["data-attempt"] for e in page.having("data-attempt"))
    assert bars == ["ecology#1", "history#1", "physics#1", "summary#1"]
    assert {"history", "physics", "ecology", "summary"} <= {
        e.attrs["data-task"] for e in page.having("data-task")
    }


def test_the_crew_shows_its_graph_and_agents(
    executed: tuple[Any, list[tuple[int, str, str]]],
) -> None:
    notebook, _ = executed
    _, outputs = _outputs(notebook, "crew  # its graph")
    [frame] = parse(_html(outputs[0])).tags("iframe")
    page = parse(frame.attrs["srcdoc"])
    assert [e.attrs["data-node"] for e in page.having("data-node")] == ["facts", "post"]
    assert [e.attrs["data-agent"] for e in page.having("data-agent")] == ["Researcher", "Writer"]


def test_a_running_crew_shows_progress_updated_in_place(
    executed: tuple[Any, list[tuple[int, str, str]]],
) -> None:
    notebook, messages = executed
    for source, runs in [
        ('result = await crew.kickoff(inputs={"topic": "tides"})', 1),
        ("results = await crew.kickoff_for_each", 3),
    ]:
        index, outputs = _outputs(notebook, source)
        kinds = [kind for cell, kind, _ in messages if cell == index]
        assert kinds[0] == "display_data"
        assert "update_display_data" in kinds[1:]  # drawn again, in place
        assert len({display for cell, _, display in messages if cell == index}) == 1
        [progress] = [o for o in outputs if o.output_type == "display_data"]
        lines = parse(_html(progress)).having("data-run")
        assert [line.attrs["data-status"] for line in lines] == ["completed"] * runs
        assert {line.attrs["data-run"] for line in lines}.isdisjoint({""})
        assert "2/2 tasks done" in parse(_html(progress)).text


def test_a_handle_shows_its_status(executed: tuple[Any, list[tuple[int, str, str]]]) -> None:
    notebook, _ = executed
    _, outputs = _outputs(notebook, "background_result = await handle")
    [shown] = [o for o in outputs if o.output_type == "execute_result"]
    [line] = parse(_html(shown)).having("data-run")
    assert line.attrs["data-status"] == "completed"
    assert "4/4 tasks done" in parse(_html(shown)).text
