"""--backend local with --gpus I,J,... (one worker process per GPU, CUDA_VISIBLE_DEVICES pinned) or
--workers N (N CPU worker processes): multiprocessing with the spawn start method, no Ray.

Each worker has its own task queue (the driver hands an idle worker the next unit, preferring one of
the model it holds) and all send events on one queue. A worker that dies is restarted and its unit
retried; a worker whose driver is gone (killed) exits after its current unit.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.backends import (
    BackendOptions, Event, ModelLoaded, ModelReady, Record, UnitFailure, UnitQueue, UnitStarted,
    WorkerSpec, WorkerStarted, WorkUnit, worker_failure,
)

POLL_S = 1.0  # how often a worker checks that its driver lives, and the driver that its workers do


def worker_main(worker: str, gpu: int | None, spec: WorkerSpec, tasks: Any, events: Any, driver_pid: int) -> None:
    """The body of one worker process."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # before anything initialises CUDA in this process
    from harness.backends.worker import UnitWorker

    unit_worker = UnitWorker(spec)
    events.put(("started", worker, None, unit_worker.describe()))
    while os.getppid() == driver_pid:
        try:
            unit = tasks.get(timeout=POLL_S)
        except queue_module.Empty:
            continue
        if unit is None:
            return
        for item in unit_worker.run(unit):
            events.put(("item", worker, unit.unit_id, item))
        events.put(("done", worker, unit.unit_id, None))


class ProcessBackend:
    def __init__(self, options: BackendOptions) -> None:
        self.options = options

    def execute(self, units: Sequence[WorkUnit], spec: WorkerSpec, out_dir: Path) -> Iterator[Event]:
        context = multiprocessing.get_context("spawn")
        events = context.Queue()
        slots: list[int | None] = list(self.options.gpus) if self.options.gpus else [None] * min(self.options.workers or 1, max(len(units), 1))
        names = [f"gpu{gpu}" if gpu is not None else f"cpu{index}" for index, gpu in enumerate(slots)]
        processes: dict[str, Any] = {}
        tasks: dict[str, Any] = {}

        def start(name: str, gpu: int | None) -> None:
            tasks[name] = context.Queue()
            processes[name] = context.Process(
                target=worker_main, args=(name, gpu, spec, tasks[name], events, os.getpid()), name=f"eagle2-worker-{name}", daemon=True
            )
            processes[name].start()

        for name, gpu in zip(names, slots):
            start(name, gpu)
        work = UnitQueue(units, self.options.retries)
        ready: list[str] = []  # started and idle
        holds: dict[str, str | None] = {name: None for name in names}  # worker -> model it has loaded
        busy: dict[str, WorkUnit] = {}
        failed: dict[str, UnitFailure] = {}
        checked = time.monotonic()
        try:
            while work or busy:
                while ready and work:
                    name = ready.pop(0)
                    unit = work.take(holds[name])
                    busy[name] = unit
                    tasks[name].put(unit)
                    yield UnitStarted(unit, name)
                if time.monotonic() - checked >= POLL_S:
                    checked = time.monotonic()
                    for name, gpu in zip(names, slots):
                        if processes[name].is_alive():
                            continue
                        code = processes[name].exitcode
                        unit = busy.pop(name, None)
                        failed.pop(name, None)
                        if name in ready:
                            ready.remove(name)
                        holds[name] = None
                        if unit is not None:
                            error = ChildProcessError(f"exit code {code}")
                            yield work.ended(unit, name, worker_failure(error, f"worker process {name} died"))
                        start(name, gpu)
                try:
                    kind, name, unit_id, payload = events.get(timeout=POLL_S)
                except queue_module.Empty:
                    continue
                unit = busy.get(name)
                if kind == "started":
                    ready.append(name)
                    yield WorkerStarted(name, payload)
                elif unit is None or unit.unit_id != unit_id:
                    continue  # from a unit already given up on (its worker was declared dead)
                elif kind == "done":
                    del busy[name]
                    ready.append(name)
                    yield work.ended(unit, name, failed.pop(name, None))
                elif isinstance(payload, UnitFailure):
                    failed[name] = payload
                elif isinstance(payload, ModelLoaded):
                    holds[name] = payload.model
                    yield ModelReady(name, payload.model, payload.info, payload.read_bandwidth_bytes_per_s)
                else:
                    work.delivered_row(unit, payload)
                    yield Record(unit, name, payload)
        finally:
            for name in names:
                if processes[name].is_alive():
                    tasks[name].put(None)
            deadline = time.monotonic() + 10
            for name in names:
                processes[name].join(timeout=max(0.0, deadline - time.monotonic()))
                if processes[name].is_alive():
                    processes[name].terminate()
                    processes[name].join(timeout=5)
