"""The worker side of every backend: run units with the runner's own code, keep one model loaded.

A UnitWorker lives in a worker process (a Ray actor, a local worker process, a SLURM array task);
it turns each unit into a stream of WorkerItems (records, the model it loaded, or the unit's failure)
and writes nothing itself.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence

from harness.backends import ModelLoaded, UnitFailure, WorkerItem, WorkerSpec, WorkUnit


class UnitWorker:
    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from harness.runner import Runner, WorkerCache

        if spec.threads is not None:
            torch.set_num_threads(spec.threads)
        self.runner = Runner.for_worker(spec.suite, spec.run_id, spec.data, spec.bindings, spec.execute_code, spec.code_isolation)
        self.cache = WorkerCache()
        self.bandwidths: dict[str, float] = {}  # device -> bytes/s, measured once per worker

    def describe(self) -> dict[str, object]:
        """Where this worker runs (for the manifest's `workers`)."""
        import torch

        import harness
        from harness.environment import hardware_info

        info = {k: v for k, v in hardware_info().items() if k != "devices"}
        info.update(
            pid=os.getpid(),
            host=platform.node(),
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
            torch_threads=torch.get_num_threads(),
            harness_code=os.path.dirname(os.path.dirname(os.path.abspath(harness.__file__))),
        )
        return info

    def run(self, unit: WorkUnit) -> Iterator[WorkerItem]:
        """Yield the unit's finished records as they finish; a failure ends the stream with a UnitFailure."""
        before = self.cache.model
        try:
            for row in self.runner.run_unit(unit.cell, unit.questions, unit.done, self.cache):
                if self.cache.model != before:  # the model loaded for this unit: say what it is
                    before = self.cache.model
                    yield self._loaded(unit)
                yield row
            if self.cache.model != before:
                yield self._loaded(unit)
        except Exception as error:  # the driver retries the unit or records the failure
            yield UnitFailure.from_exception(error)

    def _loaded(self, unit: WorkUnit) -> ModelLoaded:
        """What was loaded, and this worker's streaming read bandwidth on its device (for the memory floor; untimed)."""
        from harness.memory import measure_read_bandwidth

        device = self.cache.loaded.target.device
        if str(device) not in self.bandwidths:
            self.bandwidths[str(device)] = measure_read_bandwidth(device)
        return ModelLoaded(unit.cell.model.name, dict(self.cache.loaded.info), self.bandwidths[str(device)])


def run_units_job(spec: WorkerSpec, units: Sequence[WorkUnit]) -> tuple[dict[str, object], list[tuple[str, list[WorkerItem]]]]:
    """A batch job (a SLURM array task): run `units` in order; returns (worker info, items of each unit)."""
    worker = UnitWorker(spec)
    return worker.describe(), [(unit.unit_id, list(worker.run(unit))) for unit in units]
