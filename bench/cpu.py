"""CPU time of processes from /proc (Linux): what a benchmark charges to each process per request."""

from __future__ import annotations

import os
from collections.abc import Iterable

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (all its threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children(pid: int) -> list[int]:
    """The direct children of a process (gunicorn's workers), from /proc/<pid>/task/*/children."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """A process and its direct children."""
    return [pid, *children(pid)]


def snapshot(roles: dict[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role (the sum over its processes)."""
    return {role: sum(cpu_seconds(pid) for pid in pids) for role, pids in roles.items()}


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min) / {five:.2f} (5 min)"
