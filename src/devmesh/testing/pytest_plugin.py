"""The pytest plugin `devmesh` (entry point `pytest11`): the project's mesh, up for a test session.

    pytest --devmesh                    # up for every test (`devmesh up --detach`, then healthy)

    def test_api(devmesh_mesh):         # or only for the tests that ask for it
        with urllib.request.urlopen(devmesh_mesh.url("api") + "/health") as response:
            assert response.status == 200

An agent that already runs is used as it is and left running; one this session started is stopped at
its end. Inert unless used: without `--devmesh` and without a test asking for `devmesh_mesh`, nothing of
devmesh's runtime is imported, no process starts and nothing in the environment changes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from devmesh.testing import Mesh


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("devmesh", "devmesh: the project's service mesh for the test session")
    group.addoption(
        "--devmesh",
        action="store_true",
        default=False,
        help="bring the project's mesh up for every test of the session (and down at the end, if it "
        "was not running already)",
    )
    group.addoption(
        "--devmesh-config",
        metavar="FILE",
        default=None,
        help="the devmesh config (default: $DEVMESH_CONFIG, else devmesh.toml found walking up from "
        "the rootdir)",
    )
    group.addoption(
        "--devmesh-timeout",
        metavar="DURATION",
        default="60s",
        help='how long the services may take to become healthy: "60s", "2m" (default: 60s)',
    )


class _EveryTest:
    """Registered with --devmesh only: every test gets the mesh, whether it asks for it or not."""

    @pytest.fixture(scope="session", autouse=True)
    def _devmesh_every_test(self, devmesh_mesh: Mesh) -> None:
        return None


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("devmesh", default=False):
        config.pluginmanager.register(_EveryTest(), "devmesh-every-test")


@pytest.fixture(scope="session")
def devmesh_mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    """The running mesh: `.url("api")`, `.services`, `.urls`, `.status()`, `.admin` (the admin API
    client), `.proxy`. Brought up once per session if no agent runs, and then stopped at its end."""
    from devmesh.config.units import parse_duration_s
    from devmesh.testing import MeshError, MeshSession

    config = request.config
    option = config.getoption("devmesh_config", default=None)
    try:
        timeout_s = parse_duration_s(str(config.getoption("devmesh_timeout", default="60s")))
    except ValueError as error:
        raise pytest.UsageError(f"--devmesh-timeout: {error}") from None
    session = MeshSession(
        Path(option) if option else None,
        search_from=config.rootpath,
        timeout_s=timeout_s,
        # A pytest-xdist worker is one of several sessions: it must not start (or stop) a shared mesh.
        may_start=not hasattr(config, "workerinput"),
    )
    try:
        mesh = session.start()
    except MeshError as error:
        problem = str(error)
    else:
        problem = ""
    if problem:
        pytest.fail(problem, pytrace=False)  # outside the except: no "during handling of" chain
    try:
        yield mesh
    finally:
        session.stop()
