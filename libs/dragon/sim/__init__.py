"""The co-simulator (digital twin) of a federation: sec. V-B of the DRAGON paper, eq. 12-18.

- :mod:`dragon.sim.federation`: hosts (capacities, power), LEIs and the links between them.
- :mod:`dragon.sim.twin`: ``Sim(W_t, S_t) -> W_{t+1}`` (eq. 12, 16), calibrated on traces.
- :mod:`dragon.sim.qos`: ``SimQoS(W^M_t, M_t)`` (eq. 15, 17) and the fitness of eq. 18, for a
  batch of candidate migration decisions at once.

Everything here is NumPy on arrays of hosts and tasks: no MQTT, no Redis, no torch, so the
planner can call it hundreds of times per decision and a test can call it directly.
"""
