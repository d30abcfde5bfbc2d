"""Fixtures for the simulator tests: a simulator factory with fast defaults."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack

import pytest

from kf2v_tasks.simulator import Simulator, run_simulator

from .simkit import fast_config


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """Factory: ``make_sim(**config)`` starts a simulator that stops after the test."""
    with ExitStack() as stack:
        yield lambda **kw: stack.enter_context(run_simulator(fast_config(**kw)))


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    """A simulator with the fast defaults."""
    return make_sim()
