"""How busy the host was while a measured backend timed its steps.

A measured step time is this machine's only when nothing else competed for its cores. On a shared host
torch's default intra-op threads (OpenMP workers that spin-wait between parallel regions) lose far more
than their share when the cores are oversubscribed: on the development host (2 cores, load 10–13) a
MoE step with torch's default 2 threads took 7.9 s against 205 ms with `threads: 1`. The runs still
count, but the report must say they were taken on a busy host, so each measured row carries the load.
"""

from __future__ import annotations

import os

BUSY_LOAD_PER_CORE = 1.0  # more runnable processes than cores: some waited for a core (Linux load average)


def load_per_core() -> float | None:
    """The 1-minute load average over the number of cores (–; ``None`` where the OS gives no load average).

    The Linux load average counts runnable and uninterruptible tasks, averaged exponentially over a minute
    (proc(5), /proc/loadavg); divided by os.cpu_count() it is > 1 when processes queued for a core."""
    try:
        one_minute = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform
        return None
    return one_minute / (os.cpu_count() or 1)

