"""--backend slurm: submitit jobs, one array task per unit (default unit: a whole cell).

On a SLURM cluster every unit goes out in one array job (`--slurm-parallelism` tasks at once);
`--slurm-cluster local` runs the same jobs as local processes through submitit's LocalExecutor
(`debug`: in this process), at most `--slurm-parallelism` at a time. A task returns its unit's
records when it ends; the driver writes them. A task that fails (an error, a time limit, a node
lost) is resubmitted with the records it delivered skipped, up to --retries times.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.backends import (
    BackendOptions, Event, ModelLoaded, ModelReady, Record, UnitFailure, UnitQueue, UnitStarted,
    WorkerSpec, WorkerStarted, WorkUnit, require, slurm_minutes, worker_failure,
)

POLL_S = 2.0


class SlurmBackend:
    def __init__(self, options: BackendOptions) -> None:
        require("slurm")
        self.options = options

    def _executor(self, folder: Path, spec: WorkerSpec, unit: WorkUnit) -> Any:
        import submitit

        options = self.options
        model = unit.cell.model
        gpus = options.slurm_gpus_per_task if options.slurm_gpus_per_task is not None else (
            model.gpus if model.gpus is not None else (0 if model.device == "cpu" else 1))
        cluster = None if options.slurm_cluster == "slurm" else options.slurm_cluster
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster or "slurm")
        setup = [f"export PYTHONPATH={shlex.quote(spec.code_root)}${{PYTHONPATH:+:$PYTHONPATH}}"]
        parameters: dict[str, Any] = {
            "name": f"eagle2-{spec.suite.name}",
            "timeout_min": slurm_minutes(options.slurm_time),
            "tasks_per_node": 1,
            "cpus_per_task": options.slurm_cpus_per_task or spec.threads or 1,
            "slurm_array_parallelism": options.slurm_parallelism,
            "slurm_setup": setup,
            "local_setup": setup,
        }
        if gpus:
            parameters["gpus_per_node"] = gpus
        if options.slurm_partition:
            parameters["slurm_partition"] = options.slurm_partition
        executor.update_parameters(**parameters)
        return executor

    def execute(self, units: Sequence[WorkUnit], spec: WorkerSpec, out_dir: Path) -> Iterator[Event]:
        from harness.backends.worker import run_units_job

        folder = Path(self.options.slurm_folder) if self.options.slurm_folder else out_dir / "slurm"
        work = UnitQueue(units, self.options.retries)
        in_flight: dict[Any, WorkUnit] = {}  # submitit job -> unit
        # A real cluster queues the whole array itself; local processes are capped here.
        cap = len(units) if self.options.slurm_cluster == "slurm" else self.options.slurm_parallelism
        try:
            while work or in_flight:
                batch: list[WorkUnit] = []
                while work and len(in_flight) + len(batch) < cap:
                    unit = work.take()
                    assert unit is not None
                    batch.append(unit)
                for model in dict.fromkeys(u.cell.model.name for u in batch):  # one array per model (its resources)
                    same = [u for u in batch if u.cell.model.name == model]
                    executor = self._executor(folder, spec, same[0])
                    jobs = executor.map_array(run_units_job, [spec] * len(same), [[u] for u in same])
                    for job, unit in zip(jobs, same):
                        in_flight[job] = unit
                        yield UnitStarted(unit, f"job {job.job_id}")
                finished = [job for job in in_flight if job.done()]
                if not finished:
                    time.sleep(POLL_S)
                    continue
                for job in finished:
                    unit = in_flight.pop(job)
                    worker = f"job {job.job_id}"
                    try:
                        info, results = job.result()
                    except Exception as error:  # submitit's UncompletedJobError / FailedJobError: the task died or raised
                        yield work.ended(unit, worker, worker_failure(error, f"SLURM task {job.job_id} failed"))
                        continue
                    yield WorkerStarted(worker, info)
                    failure = None
                    for _, items in results:
                        for item in items:
                            if isinstance(item, UnitFailure):
                                failure = item
                            elif isinstance(item, ModelLoaded):
                                yield ModelReady(worker, item.model, item.info, item.read_bandwidth_bytes_per_s)
                            else:
                                work.delivered_row(unit, item)
                                yield Record(unit, worker, item)
                    yield work.ended(unit, worker, failure)
        finally:
            for job in in_flight:  # the driver stops: do not leave tasks running for nobody
                job.cancel(check=False)
