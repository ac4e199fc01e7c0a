"""Helpers for tests and benchmarks that run real LEIs (needs the ``test`` extra)."""
