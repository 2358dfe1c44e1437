"""``crewflow batch --ray``: the batch's kickoffs on the local cluster's workers, each under the
run id the driver gave and recorded first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from typer.testing import CliRunner

from crewflow import cli
from crewflow.store import SQLiteStore

pytestmark = pytest.mark.slow

CREW = str(Path(__file__).parents[1] / "cli_crews" / "offline_crew.py")


def test_a_batch_on_ray_records_each_input_under_the_run_id_given_first(
    ray_cluster: Any, tmp_path: Path
) -> None:
    db, path = tmp_path / "runs.db", tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(3)))

    result = CliRunner().invoke(
        cli.app, ["batch", CREW, str(path), "--ray", "auto", "--db", str(db), "-q"]
    )

    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in out] == [0, 1, 2]
    assert all(f"t{i}" in json.dumps(line["outputs"]) for i, line in enumerate(out))
    batch_id = result.stderr.split("batch ", 1)[1].split()[0]

    async def read() -> tuple[Any, list[Any]]:
        async with SQLiteStore(db) as store:
            batch = await store.get_batch(batch_id)
            assert batch is not None
            return batch, [await store.get_run(item.run_id) for item in batch.items]

    batch, runs = anyio.run(read)
    assert [item.run_id for item in batch.items] == [line["run_id"] for line in out]
    assert [run.status for run in runs] == ["completed"] * 3
