"""Preemptive migration planning: simulated annealing over decisions scored by the co-simulator.

- :mod:`dragon.planner.annealing`: the paper's neighbourhood and simulated annealing (DRAGON,
  Alg. 2 line 11), plus exhaustive search for small cases (the yardstick of the tests and the
  benchmark).
- :mod:`dragon.planner.lookahead`: DRAGON+ (Alg. 3): N steps of DRAGON on the simulated future,
  merged so that a task planned to h_p and then h_q goes to h_max(p, q).
"""
