"""The collector: one per host, it samples the host and publishes its usage.

A real host is read with psutil (:class:`dragon.collector.probes.PsutilProbe`). An
emulated host is a parent cgroup whose task containers run with ``--cgroup-parent``
(:mod:`dragon.collector.cgroups`, :class:`dragon.collector.probes.CgroupProbe`); the
collector can create such hosts and their demo tasks (:mod:`dragon.collector.emulation`)
and inject real faults into them (:mod:`dragon.collector.injector`, which runs the
load generators of :mod:`dragon.collector.workloads` inside the host's cgroup).

Nothing under this package imports numpy or torch: the collector image carries only
the core dependencies.
"""
