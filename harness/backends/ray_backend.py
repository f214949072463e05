"""--backend ray: Ray actors, each a UnitWorker that loads a model once and streams records back.

Models run one after another; each gets a pool of actors sized by --workers or by what the
cluster holds (`gpus` GPUs per actor from the model config: 1 by default, 0 for a cpu model;
`--threads` CPUs, else 1). Each unit is one streaming-generator call on an idle actor. An actor that
dies is restarted by Ray (max_restarts) and its unit retried; records it already delivered are kept.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.backends import (
    BackendError, BackendOptions, Event, ModelLoaded, ModelReady, Record, UnitFailure, UnitQueue,
    UnitStarted, WorkerSpec, WorkerStarted, WorkUnit, require, worker_failure,
)

CONNECT_TIMEOUT_S = 10.0
RESTART_POLL_S = 0.5  # how often to ask a restarting actor whether it is back


def model_resources(unit: WorkUnit, spec: WorkerSpec) -> tuple[int, int]:
    """(num_gpus, num_cpus) of one actor for this unit's model."""
    model = unit.cell.model
    gpus = model.gpus if model.gpus is not None else (0 if model.device == "cpu" else 1)
    return gpus, spec.threads or 1


class RayBackend:
    def __init__(self, options: BackendOptions) -> None:
        require("ray")
        self.options = options

    def _connect(self, spec: WorkerSpec) -> bool:
        """Join or start Ray; True when this call started it (and must shut it down)."""
        import ray

        if ray.is_initialized():
            return False
        address = None if self.options.ray_address in (None, "local") else self.options.ray_address
        if address not in (None, "auto"):
            host, _, port = address.removeprefix("ray://").rpartition(":")
            try:  # fail in seconds with a clear message, not after Ray's own minute of retries
                socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
            except OSError as error:
                raise BackendError(f"--ray-address {address}: nothing answers there ({error}); is the Ray head running "
                                   "(`ray start --head`)? Omit --ray-address to start a local Ray instance") from error
        try:
            ray.init(
                address=address,
                num_cpus=self.options.ray_num_cpus if address is None else None,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"PYTHONPATH": spec.code_root}} if address is None else None,
            )
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise BackendError(
                f"--ray-address {address}: no Ray cluster could be joined there ({type(error).__name__}: {error}); "
                "start one with `ray start --head`, or omit --ray-address to start a local Ray instance"
            ) from error
        return True

    def execute(self, units: Sequence[WorkUnit], spec: WorkerSpec, out_dir: Path) -> Iterator[Event]:
        import ray

        started = self._connect(spec)
        try:
            models = list(dict.fromkeys(u.cell.model.name for u in units))
            for model in models:
                yield from self._run_model([u for u in units if u.cell.model.name == model], spec)
        finally:
            if started:
                ray.shutdown()

    def _run_model(self, units: list[WorkUnit], spec: WorkerSpec) -> Iterator[Event]:
        import ray

        from harness.backends.worker import UnitWorker

        gpus, cpus = model_resources(units[0], spec)
        resources = ray.cluster_resources()
        have = resources.get("GPU", 0) if gpus else resources.get("CPU", 0)
        capacity = int(have // (gpus or cpus))
        if capacity < 1:
            kind = "GPU" if gpus else "CPU"
            raise BackendError(f"model {units[0].cell.model.name} asks for {gpus or cpus} {kind}(s) per worker; the Ray cluster has {have:g}")
        count = max(1, min(self.options.workers or capacity, len(units)))
        actor_class = ray.remote(UnitWorker).options(
            num_gpus=gpus, num_cpus=cpus, max_restarts=-1, runtime_env={"env_vars": {"PYTHONPATH": spec.code_root}}
        )
        name = units[0].cell.model.name
        actors = {f"{name}/{index}": actor_class.remote(spec) for index in range(count)}
        try:
            for worker, info in zip(actors, ray.get([a.describe.remote() for a in actors.values()])):
                yield WorkerStarted(worker, info)
            queue = UnitQueue(units, self.options.retries)
            idle = list(actors)
            busy: dict[Any, tuple[str, WorkUnit]] = {}  # streaming generator -> (worker, unit)
            failed: dict[Any, UnitFailure] = {}
            recovering: dict[Any, str] = {}  # describe() call on a restarting actor -> worker
            while queue or busy:
                while idle and queue:
                    worker = idle.pop(0)
                    unit = queue.take()
                    busy[actors[worker].run.remote(unit)] = (worker, unit)
                    yield UnitStarted(unit, worker)
                if not busy and not recovering:
                    continue
                ready, _ = ray.wait(list(busy) + list(recovering), num_returns=1)
                for ref in ready:
                    if ref in recovering:  # a restarted actor answers (or is still coming back)
                        worker = recovering.pop(ref)
                        try:
                            yield WorkerStarted(worker, ray.get(ref))
                            idle.append(worker)
                        except ray.exceptions.ActorUnavailableError:
                            time.sleep(RESTART_POLL_S)
                            recovering[actors[worker].describe.remote()] = worker
                        continue
                    stream = ref
                    worker, unit = busy[stream]
                    try:
                        item = ray.get(next(stream))
                    except StopIteration:
                        del busy[stream]
                        idle.append(worker)
                        yield queue.ended(unit, worker, failed.pop(stream, None))
                        continue
                    except ray.exceptions.RayError as error:  # the actor died (killed, OOM, node lost)
                        del busy[stream]
                        failed.pop(stream, None)
                        yield queue.ended(unit, worker, worker_failure(error, f"Ray worker {worker} died"))
                        recovering[actors[worker].describe.remote()] = worker  # Ray restarts it; use it once it answers
                        continue
                    if isinstance(item, UnitFailure):
                        failed[stream] = item
                    elif isinstance(item, ModelLoaded):
                        yield ModelReady(worker, item.model, item.info, item.read_bandwidth_bytes_per_s)
                    else:
                        queue.delivered_row(unit, item)
                        yield Record(unit, worker, item)
        finally:
            for actor in actors.values():
                ray.kill(actor)
