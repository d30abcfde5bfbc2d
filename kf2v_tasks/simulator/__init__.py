"""A local DashScope-compatible kf2v service for tests, demos and benchmarks.

It speaks the wire protocol of the real service (reference §1–§13): async create,
task polling, cancel, list, temporary uploads, signed expiring result URLs, rate limits
and concurrency slots, plus seeded fault injection and real H.264 videos.

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

from kf2v_tasks.simulator.config import RuntimeDistribution, SimulatorConfig
from kf2v_tasks.simulator.faults import FaultConfig
from kf2v_tasks.simulator.server import Simulator, run_simulator

__all__ = ["FaultConfig", "RuntimeDistribution", "SimulatorConfig", "Simulator", "run_simulator"]
