"""How busy the machine was while a generation was timed, so that noisy timings are flagged.

A snapshot before and after the timed region gives, for that region:

- ``own_cpu_s``: CPU time of this process (all its threads). Alone on the machine, with N torch
  threads that have work, ``own_cpu_s / wall_s`` is about N; competing for cores it drops.
- ``others_cpu_s``: CPU time of the *other* processes visible in ``/proc`` (each one's
  utime + stime difference; a process born during the region counts from its start), and
  ``busy_processes``: those that used at least 0.1 core, busiest first (pid, name, cores).
- ``system_others_cpu_s``: busy time of the whole machine from ``/proc/stat`` minus this process:
  also sees processes that ``/proc`` hides (other containers) or that ended during the region.
- ``steal_s``: time the hypervisor gave this VM's CPUs to someone else.
- ``loadavg_before`` / ``loadavg_after``: the 1-minute load average, with ``cores`` (the CPUs this
  process may run on) for scale.

Nothing here runs inside the timed region; each snapshot costs a few milliseconds (one read of
``/proc/<pid>/stat`` per process). Where ``/proc`` is missing (macOS, Windows), only the process's
own CPU time and the load average are recorded. The verdict (contended or not) is the
aggregation's: :func:`harness.aggregate.summarize` pools these over a cell.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_PROC = Path("/proc")
_PF_KTHREAD = 0x00200000  # /proc/<pid>/stat flags: a kernel thread
BUSY_PROCESS_CORES = 0.1  # a process using at least this many cores over the region is listed
MAX_LISTED = 8


@dataclass(frozen=True)
class Snapshot:
    wall: float  # time.perf_counter()
    own_cpu: float  # time.process_time()
    ticks: dict[int, tuple[int, str]]  # pid -> (utime + stime in clock ticks, name), other processes
    busy_ticks: int | None  # /proc/stat: busy ticks of all CPUs together
    steal_ticks: int | None
    loadavg: float | None


def _tick() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (ValueError, OSError, AttributeError):
        return 100.0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _process_ticks() -> dict[int, tuple[int, str]]:
    me = os.getpid()
    out: dict[int, tuple[int, str]] = {}
    try:
        entries = list(os.scandir(_PROC))
    except OSError:
        return out
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (_PROC / entry.name / "stat").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        close = raw.rfind(b")")
        fields = raw[close + 2 :].split()
        try:
            if int(fields[6]) & _PF_KTHREAD:
                # Kernel threads (kworker writeback, memory reclaim) mostly work for this very process, and
                # their per-thread counters over-count short regions (seen: "1.8 cores" of a kworker while
                # /proc/stat showed the machine idle); real contention from user processes is still seen here,
                # and the kernel's own load in /proc/stat's system-wide count.
                continue
            out[int(entry.name)] = (int(fields[11]) + int(fields[12]), raw[raw.find(b"(") + 1 : close].decode("utf-8", "replace"))
        except (IndexError, ValueError):
            continue
    return out


def _system_ticks() -> tuple[int | None, int | None]:
    try:
        first = (_PROC / "stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None, None
    if first[0] != "cpu":
        return None, None
    values = [int(v) for v in first[1:9]] + [0] * max(0, 8 - len(first[1:9]))
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return user + nice + system + irq + softirq, steal


def snapshot() -> Snapshot:
    busy, steal = _system_ticks()
    try:
        loadavg: float | None = os.getloadavg()[0]
    except (OSError, AttributeError):
        loadavg = None
    ticks = _process_ticks()
    return Snapshot(time.perf_counter(), time.process_time(), ticks, busy, steal, loadavg)


def measure(
    before: Snapshot, after: Snapshot, *, threads: int, device: str, max_listed: int = MAX_LISTED, min_cores: float = BUSY_PROCESS_CORES
) -> dict[str, Any]:
    """The load record of the region between two snapshots (JSON-ready; see the module doc)."""
    tick = _tick()
    wall = max(after.wall - before.wall, 1e-9)
    own = max(after.own_cpu - before.own_cpu, 0.0)
    per_process = []
    for pid, (ticks, name) in after.ticks.items():
        start = before.ticks.get(pid)
        used = ticks - start[0] if start is not None and start[1] == name else ticks  # new (or recycled) pid: all of it
        if used > 0:
            per_process.append((used / tick, pid, name))
    others = sum(seconds for seconds, _, _ in per_process)
    busy = sorted((p for p in per_process if p[0] / wall >= min_cores), reverse=True)[:max_listed]
    system_others = None
    if before.busy_ticks is not None and after.busy_ticks is not None:
        system_others = max((after.busy_ticks - before.busy_ticks) / tick - own, 0.0)
    steal = None
    if before.steal_ticks is not None and after.steal_ticks is not None:
        steal = max((after.steal_ticks - before.steal_ticks) / tick, 0.0)
    return {
        "wall_s": round(wall, 6),
        "own_cpu_s": round(own, 6),
        "others_cpu_s": round(others, 4),
        "system_others_cpu_s": None if system_others is None else round(system_others, 4),
        "steal_s": None if steal is None else round(steal, 4),
        "busy_processes": [{"pid": pid, "name": name, "cores": round(seconds / wall, 2)} for seconds, pid, name in busy],
        "loadavg_before": before.loadavg,
        "loadavg_after": after.loadavg,
        "cores": available_cores(),
        "threads": threads,
        "device": device,
    }
