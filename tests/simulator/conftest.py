"""One simulator server per test module, and a server of subject images for it to fetch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from relightq.serving import serve_in_thread
from relightq.simulator.app import create_app
from relightq.simulator.state import SimulatorState
from tests.simulator.test_app import not_an_image, subject_png


@pytest.fixture(scope="module")
def sim_state() -> SimulatorState:
    return SimulatorState()


@pytest.fixture(scope="module")
def sim_url(sim_state: SimulatorState) -> Iterator[str]:
    with serve_in_thread(create_app(sim_state)) as url:
        yield url


@pytest.fixture(scope="module")
def assets_url() -> Iterator[str]:
    routes = [Route("/subject.png", subject_png), Route("/notes.txt", not_an_image)]
    with serve_in_thread(Starlette(routes=routes)) as url:
        yield url
