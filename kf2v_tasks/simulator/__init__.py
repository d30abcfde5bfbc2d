"""A local DashScope-compatible kf2v service for tests, demos and benchmarks (optional extra).

It speaks the wire protocol of the real service (reference §1–§13): async create,
task polling, cancel, list, temporary uploads, signed expiring result URLs, rate limits
and concurrency slots, plus seeded fault injection and real H.264 videos.

It needs the ``simulator`` extra (``pip install "kf2v-tasks[simulator]"``: PyAV, NumPy,
uvicorn). The names below load on first use, so importing this package, its options
(:mod:`kf2v_tasks.simulator.cli`) or :func:`missing_dependencies` works without the extra.

Example:
    ```python
    from kf2v_tasks.simulator import FaultConfig, SimulatorConfig, run_simulator
    cfg = SimulatorConfig(speed=600, render="tiny",
                          faults=FaultConfig.parse("query.error503=0.1"))
    with run_simulator(cfg) as sim:
        print(sim.base_url)   # point DASHSCOPE_HTTP_BASE_URL here
        print(sim.stats()["creates"])
    ```
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

#: What to type to get the simulator's dependencies.
INSTALL_HINT = 'pip install "kf2v-tasks[simulator]"'

#: Modules only the simulator needs (the ``simulator`` extra of the package).
EXTRA_MODULES: tuple[str, ...] = ("av", "numpy", "uvicorn")

_EXPORTS = {
    "FaultConfig": "kf2v_tasks.simulator.faults",
    "RuntimeDistribution": "kf2v_tasks.simulator.config",
    "SimulatorConfig": "kf2v_tasks.simulator.config",
    "Simulator": "kf2v_tasks.simulator.server",
    "run_simulator": "kf2v_tasks.simulator.server",
}

__all__ = ["INSTALL_HINT", "EXTRA_MODULES", "missing_dependencies", *_EXPORTS]


def missing_dependencies() -> list[str]:
    """The simulator's dependencies that are not installed (empty when it can run).

    Only looks the modules up; nothing is imported.

    Example:
        ```python
        from kf2v_tasks.simulator import INSTALL_HINT, missing_dependencies
        if missing_dependencies():
            print(f"the simulator needs: {INSTALL_HINT}")
        ```
    """
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kf2v_tasks.simulator' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
