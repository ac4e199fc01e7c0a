"""The migrator: task containers moved between hosts, journalled in Redis so that none is ever lost.

- :mod:`dragon.migrator.journal`: one record per move, written before each step.
- :mod:`dragon.migrator.moves`: the restart move and the recovery of moves left in flight.
"""
