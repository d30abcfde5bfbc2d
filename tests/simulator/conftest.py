"""Fixtures for the simulator tests: a simulator factory with fast defaults."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest

from kf2v_tasks.simulator import Simulator

from .simkit import fast_config

#: Simulators still stopping (in the background) after their test ended.
_stopping: list[threading.Thread] = []


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """Factory: ``make_sim(**config)`` starts a simulator that stops after the test.

    A stop waits ≈0.25 s for uvicorn's shutdown (its tick and its grace for connections),
    ~250 times in this folder; nothing of the next test depends on it (each simulator has
    its own port and state), so the stops run in threads, all joined when the session ends.
    """
    started: list[Simulator] = []

    def make(**kw) -> Simulator:
        started.append(Simulator(fast_config(**kw)).start())
        return started[-1]

    yield make
    for sim in started:
        stop = threading.Thread(target=sim.stop, name="kf2v-simulator-stop", daemon=True)
        stop.start()
        _stopping.append(stop)


@pytest.fixture(scope="session", autouse=True)
def _stopped_simulators() -> Iterator[None]:
    """Every simulator stopped in the background is gone when the session ends."""
    yield
    for stop in _stopping:
        stop.join(timeout=15)


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    """A simulator with the fast defaults."""
    return make_sim()
