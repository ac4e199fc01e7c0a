"""Synthetic federations for benchmarks and tests: Pi 4Bs in LEIs, tasks placed at random.

A scenario is consistent with the twin's own law (each host's usage is its background plus its
tasks' demand), so the co-simulator and the planner can be measured on any size without a
trace: the planner benchmark's 16-, 64- and 256-host cases come from here.
"""

from __future__ import annotations

import numpy as np

from dragon.sim.federation import Federation
from dragon.sim.qos import CoSimulator, FederationState
from dragon.sim.twin import TwinParams

GIB = 1024**3
HOSTS_PER_LEI = 4


def random_scenario(
    hosts: int,
    tasks: int,
    seed: int,
    hosts_per_lei: int = HOSTS_PER_LEI,
    hot_share: float = 0.125,
    cpu_demand: tuple[float, float] = (0.05, 0.35),
) -> tuple[CoSimulator, FederationState]:
    """``hosts`` Pi 4Bs (cpu as a fraction, ram in bytes) in LEIs of ``hosts_per_lei``, ``tasks`` tasks.

    Each task uses a share of a host's CPU drawn from ``cpu_demand`` and 0.1-0.8 GiB; a
    ``hot_share`` of the hosts is given extra tasks until it passes the default overload line
    (90 % CPU), so there is something to plan.
    """
    if hosts % hosts_per_lei:
        raise ValueError(f"{hosts} hosts do not split into LEIs of {hosts_per_lei}")
    rng = np.random.default_rng(seed)
    lei_of_host = [f"lei{h // hosts_per_lei}" for h in range(hosts)]
    fed = Federation.uniform(lei_of_host, list(range(0, hosts, hosts_per_lei)), ("cpu", "ram"), (1.0, 4 * GIB))
    background = np.c_[np.full(hosts, 0.05), np.full(hosts, 0.4 * GIB)]
    demand = np.c_[rng.uniform(*cpu_demand, tasks), rng.uniform(0.1, 0.8, tasks) * GIB]
    placement = rng.integers(0, hosts, tasks)
    hot = rng.choice(hosts, int(round(hot_share * hosts)), replace=False)
    cold_tasks = rng.permutation(np.flatnonzero(~np.isin(placement, hot)))
    for host in hot:  # pile tasks onto the hot hosts until they overload
        while background[host, 0] + demand[placement == host, 0].sum() <= 0.95 and len(cold_tasks):
            placement[cold_tasks[0]], cold_tasks = host, cold_tasks[1:]
    usage = background + np.array([demand[placement == h].sum(axis=0) for h in range(hosts)])
    ram_bytes = demand[:, 1] * rng.uniform(0.5, 1.0, tasks)  # resident memory a migration ships
    state = FederationState(usage, placement, demand, ram_bytes, fed.lei_index[placement])
    params = TwinParams(background, move_gain=np.ones(2), relax=np.full(2, 0.05))
    return CoSimulator(fed, params), state
