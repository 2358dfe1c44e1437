"""Tests for `crewflow._catalogue`: where agent YAML files are found and how they are read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from crewflow import _catalogue
from crewflow._catalogue import catalogue_dirs, catalogue_names, load_agent_fields
from crewflow.exceptions import ConfigurationError

CATALOGUE = {"researcher", "writer", "critic", "analyst", "manager", "editor"}
REPO_AGENTS = Path(__file__).resolve().parent.parent / "agents"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake installed package whose wheel carries ``_agents/`` (and no source checkout)."""
    package = tmp_path / "site" / "crewflow"
    (package / "_agents").mkdir(parents=True)
    monkeypatch.setattr(_catalogue, "_PACKAGE", package)
    return package / "_agents"


def test_the_source_checkouts_agents_folder_is_a_catalogue_dir() -> None:
    assert REPO_AGENTS in catalogue_dirs()


def test_the_catalogue_ships_the_documented_agents() -> None:
    assert set(catalogue_names()) >= CATALOGUE


def test_the_wheels_agents_folder_is_used_when_installed(installed: Path) -> None:
    (installed / "scout.yaml").write_text("role: Scout\ngoal: Look around\n", encoding="utf-8")

    assert catalogue_dirs() == [installed]
    assert catalogue_names() == ["scout"]
    path, fields = load_agent_fields("scout")
    assert path == installed / "scout.yaml"
    assert fields == {"role": "Scout", "goal": "Look around"}


def test_catalogue_names_are_sorted_and_unique_over_both_dirs(installed: Path) -> None:
    checkout = installed.parent.parent / "agents"
    checkout.mkdir()
    for directory, names in ((installed, ["b", "a"]), (checkout, ["a", "c"])):
        for name in names:
            (directory / f"{name}.yaml").write_text("role: R\ngoal: G\n", encoding="utf-8")

    assert catalogue_names() == ["a", "b", "c"]
    assert load_agent_fields("a")[0] == installed / "a.yaml"  # the wheel's copy comes first


def test_no_catalogue_at_all_lists_none(installed: Path) -> None:
    installed.rmdir()

    with pytest.raises(ConfigurationError, match="available: none"):
        load_agent_fields("researcher")


def test_a_catalogue_name_loads_that_files_fields() -> None:
    path, fields = load_agent_fields("researcher")

    assert path == REPO_AGENTS / "researcher.yaml"
    assert fields["role"] == "Researcher"
    assert fields["goal"]


def test_an_unknown_name_lists_the_available_names() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_agent_fields("astronaut")

    message = str(caught.value)
    assert "no agent named 'astronaut' in the catalogue" in message
    assert all(name in message for name in CATALOGUE)
    assert "pass a path to a .yaml file" in message


def test_a_path_is_read_as_an_agent_file(tmp_path: Path) -> None:
    file = tmp_path / "pilot.yml"
    file.write_text("role: Pilot\ngoal: Fly\nmax_iterations: 3\n", encoding="utf-8")

    assert load_agent_fields(file) == (file, {"role": "Pilot", "goal": "Fly", "max_iterations": 3})
    assert load_agent_fields(str(file))[1]["role"] == "Pilot"


def test_a_path_without_a_yaml_suffix_is_still_a_path(tmp_path: Path) -> None:
    file = tmp_path / "pilot"
    file.write_text("role: Pilot\ngoal: Fly\n", encoding="utf-8")

    assert load_agent_fields(file)[1] == {"role": "Pilot", "goal": "Fly"}


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "ghost.yaml"

    with pytest.raises(ConfigurationError, match=re.escape(str(missing)) + ": no such agent file"):
        load_agent_fields(missing)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("role: [unclosed\n", encoding="utf-8")

    with pytest.raises(
        ConfigurationError, match="^" + re.escape(str(file)) + ": invalid YAML: "
    ) as raised:
        load_agent_fields(file)
    assert "<unicode string>" not in str(raised.value)
    assert f'in "{file}", line 2' in str(raised.value)  # where in the file, by its name


@pytest.mark.parametrize(("body", "kind"), [("- a\n- b\n", "list"), ("just text\n", "str")])
def test_a_file_that_is_not_a_mapping_is_rejected(tmp_path: Path, body: str, kind: str) -> None:
    file = tmp_path / "odd.yaml"
    file.write_text(body, encoding="utf-8")

    with pytest.raises(
        ConfigurationError,
        match=re.escape(str(file)) + f": an agent file must be a mapping.*{kind}",
    ):
        load_agent_fields(file)


def test_an_empty_file_is_rejected_clearly(tmp_path: Path) -> None:
    file = tmp_path / "empty.yaml"
    file.write_text("# nothing yet\n", encoding="utf-8")

    with pytest.raises(
        ConfigurationError, match=re.escape(str(file)) + ": the agent file is empty"
    ):
        load_agent_fields(file)


def test_a_file_that_is_not_utf8_is_rejected_clearly(tmp_path: Path) -> None:
    file = tmp_path / "latin1.yaml"
    file.write_bytes("role: Caf\xe9\n".encode("latin-1"))

    with pytest.raises(
        ConfigurationError, match=re.escape(str(file)) + ": an agent file must be UTF-8"
    ):
        load_agent_fields(file)


def test_an_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "locked.yaml"
    file.write_text("role: R\n", encoding="utf-8")

    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", refuse)

    with pytest.raises(
        ConfigurationError, match=re.escape(str(file)) + ": cannot read agent file: Permission"
    ):
        load_agent_fields(file)


def test_keys_are_returned_as_strings(tmp_path: Path) -> None:
    file = tmp_path / "odd_keys.yaml"
    file.write_text("role: R\n1: one\n", encoding="utf-8")

    assert load_agent_fields(file)[1] == {"role": "R", "1": "one"}
