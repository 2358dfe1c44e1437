"""One local Ray cluster for the whole test run, on loopback only.

Ray's usage statistics and dashboard are off, the node listens on 127.0.0.1 (Ray would otherwise
swap a loopback address for the machine's own on Linux: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
keeps it), and the cluster has 2 CPUs. Without Ray the tests skip, unless
``CREWFLOW_REQUIRE_RAY=1`` (CI), where they fail.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

LOOPBACK_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
}


def _import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError as exc:
        if os.environ.get("CREWFLOW_REQUIRE_RAY") == "1":
            pytest.fail(f"CREWFLOW_REQUIRE_RAY=1 but Ray is not importable ({exc})")
        pytest.skip("Ray is not installed (pip install 'crewflow[ray]')")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A local cluster of 2 CPUs on 127.0.0.1, started once and shut down at the end."""
    ray = _import_ray()
    saved = {name: os.environ.get(name) for name in LOOPBACK_ENV}
    os.environ.update(LOOPBACK_ENV)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
