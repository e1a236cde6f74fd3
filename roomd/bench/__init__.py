"""``roomd bench``: a load generator and the performance targets it checks.

See docs/performance.md. :func:`main` is the command; the modules are private:
``_run`` (options, orchestration), ``_procs`` (the cluster and driver processes, /proc),
``_workloads`` (W1-W3, the bus, and merging the drivers' answers), ``_sessions`` (resume,
drain, crash), ``_faults`` (the cluster's faults, and their accounting), ``_driver`` and
``_engine`` (the load-generating process), ``_resume`` (its sessions, resumed as the Trio
client resumes them), ``_clients`` (the fault workloads' Trio clients), ``_bus`` (the bus
workload's publisher and subscriber),
``_ws`` (the client side of the WebSocket protocol), ``_stats`` (bitmaps, percentiles),
``_report`` (targets, tables, medians), ``_profile`` (py-spy).
"""

from ._run import main as main

__all__ = ["main"]
