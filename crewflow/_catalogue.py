"""The catalogue of ready agent definitions (``agents/*.yaml``) and YAML agent files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from crewflow.exceptions import ConfigurationError

_PACKAGE = Path(__file__).resolve().parent


def catalogue_dirs() -> list[Path]:
    """Where catalogue files live: inside the installed wheel, or the source checkout's
    top-level ``agents/`` folder."""
    return [d for d in (_PACKAGE / "_agents", _PACKAGE.parent / "agents") if d.is_dir()]


def catalogue_names() -> list[str]:
    """The names `crewflow.Agent.from_yaml` accepts without a path."""
    return sorted({p.stem for d in catalogue_dirs() for p in d.glob("*.yaml")})


def load_agent_fields(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find and parse an agent YAML file; return its path and its mapping of fields.

    Raises:
        ConfigurationError: No such catalogue name or file, invalid YAML, or not a mapping.
    """
    path = _locate(name_or_path)
    import yaml

    try:
        stream = io.StringIO(path.read_text(encoding="utf-8"))
        stream.name = str(path)  # YAML's error marks name the file, not "<unicode string>"
        data = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read agent file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"{path}: an agent file must be UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: invalid YAML: {exc}") from None
    if data is None:
        raise ConfigurationError(
            f"{path}: the agent file is empty; give at least its role and goal"
        )
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{path}: an agent file must be a mapping of fields (role, goal, backstory, ...), "
            f"not {type(data).__name__}"
        )
    return path, {str(key): value for key, value in data.items()}


def _locate(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path():
        if not candidate.is_file():
            raise ConfigurationError(f"{candidate}: no such agent file")
        return candidate
    for directory in catalogue_dirs():
        path = directory / f"{candidate.name}.yaml"
        if path.is_file():
            return path
    raise ConfigurationError(
        f"no agent named {str(name_or_path)!r} in the catalogue; "
        f"available: {', '.join(catalogue_names()) or 'none'} (or pass a path to a .yaml file)"
    )
