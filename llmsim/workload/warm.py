"""What a meta-device trace imports before it traces, as one call: a light module (it imports nothing itself).

`llmsim plan` runs `warm_tracer` in a spare worker forked as the command starts (llmsim.executor
`Executor.spare`), before the command reads the plan file or imports the planner: the worker that traces the
workload profile if the profile store lacks it (llmsim.planner.profiling).
"""

from __future__ import annotations


def warm_tracer() -> None:
    """Import torch and the tracer (llmsim.workload.trace), and torch._dynamo, which torch imports itself at the
    trace's first meta-device op (trace.py's docstring): ~2/3 of a first trace's seconds."""
    import torch._dynamo  # noqa: F401

    import llmsim.workload.trace  # noqa: F401
