"""Backends for `harness run --backend`: who runs the units of a suite, and where.

A unit is one cell x a chunk of its questions (every repeat, every turn). The driver (the Runner of
`harness run`) plans the units, hands them to a backend and is the only writer of the run folder:
workers stream finished records back as events, the driver appends them to results.jsonl. A unit
that fails (an error, or its worker died) is retried `retries` times with the records it already
delivered skipped, then recorded in failures.jsonl; the sweep goes on.

    local   no --gpus/--workers: this process runs every cell, model by model (the default; no workers)
            --gpus 0,1 / --workers N: one worker process per GPU (CUDA_VISIBLE_DEVICES pinned) or N CPU processes
    ray     Ray actors (each loads a model once and runs many units): a local Ray instance, or a cluster
            (--ray-address auto | HOST:PORT | ray://HOST:PORT); num_gpus per actor from the model's `gpus`
    slurm   a submitit array job, one array task per unit (--slurm-partition, --slurm-time, ...);
            --slurm-cluster local runs the same jobs as local processes (tests, a dry run)

What a backend adds to the run folder's manifest.json (harness.runner writes it): `backend` (these
options), `workers` (worker name -> host, pid, GPUs, torch threads, CUDA_VISIBLE_DEVICES, the folder
its harness code came from, models it loaded, read bandwidth), and in the session entry `backend`
and `unit_retries`. Records and failures keep the runner's schema; a unit that fails as a whole
(its model does not load, its worker keeps dying) is one failure with question_id = null.

Everything that crosses a process boundary here is a frozen dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import re
import shutil
import traceback
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, Union

if TYPE_CHECKING:
    from harness.config import Cell, Suite
    from harness.tasks import Question

BACKENDS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local", "debug")  # submitit's executors: a real SLURM, local processes, in-process
EXTRAS: Mapping[str, tuple[str, str]] = MappingProxyType({"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")})  # backend -> (module, pip extra)
DEFAULT_RETRIES = 2
_RAY_ADDRESS = re.compile(r"^(auto|local|(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d{1,5})$")
_SLURM_TIME = re.compile(r"^(\d+)$|^(?:(\d+)-)?(\d{1,2}):(\d{2})(?::(\d{2}))?$")


class BackendError(ValueError):
    """A bad backend option, or a backend that cannot start here; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Options.


@dataclass(frozen=True)
class BackendOptions:
    backend: str = "local"  # local | ray | slurm
    gpus: tuple[int, ...] = ()  # local: one worker process per listed GPU index
    workers: int | None = None  # local: N CPU worker processes; ray: actors per model (default: what the cluster holds)
    chunk: int | None = None  # questions per unit (default: 1 for local/ray, every question of the cell for slurm)
    retries: int = DEFAULT_RETRIES  # extra attempts of a failed unit before it goes to failures.jsonl
    ray_address: str | None = None  # None: start a local Ray instance; auto | HOST:PORT | ray://HOST:PORT: join a cluster
    ray_num_cpus: int | None = None  # CPUs of a local Ray instance (default: Ray's choice)
    slurm_partition: str | None = None
    slurm_time: str = "60"  # minutes, or [D-]HH:MM[:SS], per array task
    slurm_gpus_per_task: int | None = None  # default: the model's `gpus`
    slurm_cpus_per_task: int | None = None
    slurm_parallelism: int = 8  # array tasks running at once
    slurm_cluster: str = "slurm"  # slurm | local | debug (submitit's executors)
    slurm_folder: str | None = None  # submitit logs and pickles (default: <out>/slurm)

    @property
    def distributed(self) -> bool:
        """False for the in-process default (local with neither --gpus nor --workers)."""
        return self.backend != "local" or bool(self.gpus) or self.workers is not None

    def unit_chunk(self) -> int:
        """Questions per unit; 0 means every question of the cell."""
        if self.chunk is not None:
            return self.chunk
        return 0 if self.backend == "slurm" else 1

    def describe(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def slurm_minutes(text: str) -> int:
    """`90`, `1:30`, `01:30:00` or `2-00:00` -> minutes (rounded up)."""
    match = _SLURM_TIME.match(str(text).strip())
    if not match:
        raise BackendError(f"--slurm-time {text!r}: expected minutes (90), HH:MM, HH:MM:SS or D-HH:MM")
    if match.group(1):
        minutes = int(match.group(1))
    else:
        days, hours, mins, secs = (int(g) if g else 0 for g in match.groups()[1:])
        minutes = days * 1440 + hours * 60 + mins + (1 if secs else 0)
    if minutes < 1:
        raise BackendError(f"--slurm-time {text!r}: must be at least one minute")
    return minutes


def require(backend: str, extras: Mapping[str, tuple[str, str]] = EXTRAS) -> None:
    """Raise BackendError naming the extra to install when `backend`'s package is missing."""
    if backend not in extras:
        return
    module, extra = extras[backend]
    if importlib.util.find_spec(module) is None:
        raise BackendError(f"--backend {backend} needs the `{module}` package, which is not installed: pip install 'eagle2-bench[{extra}]'")


def visible_gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_runs_on_workers(suite: Suite, backend: str, *, custom_methods: bool = False) -> None:
    """Refuse what worker processes cannot run: an interleaved schedule (it times every model entry
    side by side in one process) or a method registry of one's own (workers build their methods
    from the shipped eagle2.methods.METHODS)."""
    if suite.schedule == "interleaved":
        raise BackendError(f"{suite.path}: schedule: interleaved times every model entry side by side in one process; "
                           f"drop --backend {backend} / --workers (or use schedule: by_model)")
    if custom_methods:
        raise BackendError("a method registry other than eagle2.methods.METHODS runs in this process only: "
                           f"workers build their methods from the shipped registry (drop --backend {backend} / --workers)")


def validate(options: BackendOptions, suite: Suite | None = None, *, gpu_count: int | None = None) -> None:
    """Reject bad or contradictory options before anything starts; messages list the valid values."""
    if options.backend not in BACKENDS:
        raise BackendError(f"unknown backend {options.backend!r}; valid: {', '.join(BACKENDS)}")
    wrong: list[str] = []
    if options.backend != "local":
        wrong += ["--gpus"] if options.gpus else []
    if options.backend != "ray":
        wrong += [flag for flag, value in (("--ray-address", options.ray_address), ("--ray-num-cpus", options.ray_num_cpus)) if value is not None]
    if options.backend != "slurm":
        defaults = BackendOptions()
        wrong += [
            "--" + name.replace("_", "-")
            for name in ("slurm_partition", "slurm_time", "slurm_gpus_per_task", "slurm_cpus_per_task", "slurm_parallelism", "slurm_cluster", "slurm_folder")
            if getattr(options, name) != getattr(defaults, name)
        ]
    if options.backend == "slurm" and options.workers is not None:
        wrong.append("--workers")
    if wrong:
        raise BackendError(f"{', '.join(wrong)} do(es) not apply to --backend {options.backend} (see `python -m harness run --help`)")
    if suite is not None and options.distributed:
        check_runs_on_workers(suite, options.backend)
    if options.retries < 0:
        raise BackendError(f"--retries {options.retries}: must be >= 0")
    if options.chunk is not None and options.chunk < 0:
        raise BackendError(f"--chunk {options.chunk}: must be >= 0 (0: every question of a cell in one unit)")
    if options.workers is not None and options.workers < 1:
        raise BackendError(f"--workers {options.workers}: must be >= 1")
    if options.gpus:
        if options.workers is not None:
            raise BackendError("--gpus and --workers exclude each other: --gpus starts one worker per listed GPU")
        if len(set(options.gpus)) != len(options.gpus) or min(options.gpus) < 0:
            raise BackendError(f"--gpus {','.join(map(str, options.gpus))}: list distinct GPU indices >= 0, e.g. 0,1,2,3")
        count = visible_gpu_count() if gpu_count is None else gpu_count
        if count == 0:
            raise BackendError(f"--gpus {','.join(map(str, options.gpus))}: no CUDA GPU is visible on this machine; "
                               "drop --gpus (or use --workers N for CPU worker processes)")
        if max(options.gpus) >= count:
            raise BackendError(f"--gpus {','.join(map(str, options.gpus))}: this machine has {count} GPU(s): valid indices 0..{count - 1}")
        if suite is not None:
            cpu = sorted(m.name for m in suite.models if m.device == "cpu")
            if cpu:
                raise BackendError(f"--gpus: model(s) {', '.join(cpu)} have device: cpu; use --workers N for CPU worker processes")
            pinned = sorted(f"{m.name} ({m.device})" for m in suite.models if m.device.startswith("cuda:") and not m.device_map)
            if pinned:
                raise BackendError(f"--gpus: model(s) {', '.join(pinned)} name a GPU, but each worker sees only its own GPU "
                                   "(as cuda:0); use device: cuda or auto")
    if options.backend == "ray":
        if options.ray_address is not None and not _RAY_ADDRESS.match(options.ray_address):
            raise BackendError(f"bad --ray-address {options.ray_address!r}: expected auto, HOST:PORT or ray://HOST:PORT (omit it to start a local Ray instance)")
        if options.ray_num_cpus is not None and options.ray_num_cpus < 1:
            raise BackendError(f"--ray-num-cpus {options.ray_num_cpus}: must be >= 1")
        if options.ray_num_cpus is not None and options.ray_address not in (None, "local"):
            raise BackendError("--ray-num-cpus sizes a local Ray instance; a cluster's resources are its own (drop it with --ray-address)")
    if options.backend == "slurm":
        if options.slurm_cluster not in SLURM_CLUSTERS:
            raise BackendError(f"--slurm-cluster {options.slurm_cluster!r}; valid: {', '.join(SLURM_CLUSTERS)}")
        slurm_minutes(options.slurm_time)
        for name in ("slurm_gpus_per_task", "slurm_cpus_per_task"):
            value = getattr(options, name)
            if value is not None and value < (0 if name == "slurm_gpus_per_task" else 1):
                raise BackendError(f"--{name.replace('_', '-')} {value}: must be >= {0 if name == 'slurm_gpus_per_task' else 1}")
        if options.slurm_parallelism < 1:
            raise BackendError(f"--slurm-parallelism {options.slurm_parallelism}: must be >= 1")
        if options.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
            raise BackendError("--backend slurm: no `sbatch` on this machine's PATH; run the driver on a SLURM login node "
                               "(or --slurm-cluster local to run the same jobs as local processes)")
    require(options.backend)


# ----------------------------------------------------------------------------------------------
# The CLI flags (shared by `run` and `validate`).


def _gpu_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices separated by commas (e.g. 0,1,2,3), got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected GPU indices separated by commas (e.g. 0,1,2,3), got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("backends (where the units run; see README 'Running on a cluster')")
    group.add_argument("--backend", default="local", metavar="NAME", help=f"{' | '.join(BACKENDS)} (default: local, in this process)")
    group.add_argument("--gpus", type=_gpu_list, default=(), metavar="I,J,...", help="local: one worker process per listed GPU (CUDA_VISIBLE_DEVICES pinned)")
    group.add_argument("--workers", type=int, metavar="N", help="local: N worker processes (CPU); ray: actors per model (default: what the cluster holds)")
    group.add_argument("--chunk", type=int, metavar="Q", help="questions per unit (default 1; slurm: 0 = a whole cell per array task)")
    group.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N", help=f"retries of a failed unit before failures.jsonl (default {DEFAULT_RETRIES})")
    group.add_argument("--ray-address", metavar="ADDR", help="join a Ray cluster: auto | HOST:PORT | ray://HOST:PORT (default: start a local instance)")
    group.add_argument("--ray-num-cpus", type=int, metavar="N", help="CPUs of the local Ray instance")
    group.add_argument("--slurm-partition", metavar="NAME")
    group.add_argument("--slurm-time", default="60", metavar="TIME", help="per array task: minutes or [D-]HH:MM[:SS] (default 60)")
    group.add_argument("--slurm-gpus-per-task", type=int, metavar="N", help="default: the model's `gpus` (1, or 0 on cpu)")
    group.add_argument("--slurm-cpus-per-task", type=int, metavar="N")
    group.add_argument("--slurm-parallelism", type=int, default=8, metavar="N", help="array tasks running at once (default 8)")
    group.add_argument("--slurm-cluster", default="slurm", metavar="KIND", help=f"submitit executor: {' | '.join(SLURM_CLUSTERS)} (local/debug: this machine)")
    group.add_argument("--slurm-folder", metavar="DIR", help="submitit logs and pickles (default: <out>/slurm)")


def options_from_args(args: argparse.Namespace) -> BackendOptions:
    return BackendOptions(
        backend=args.backend, gpus=tuple(args.gpus), workers=args.workers, chunk=args.chunk, retries=args.retries,
        ray_address=args.ray_address, ray_num_cpus=args.ray_num_cpus, slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time, slurm_gpus_per_task=args.slurm_gpus_per_task, slurm_cpus_per_task=args.slurm_cpus_per_task,
        slurm_parallelism=args.slurm_parallelism, slurm_cluster=args.slurm_cluster, slurm_folder=args.slurm_folder,
    )


# ----------------------------------------------------------------------------------------------
# Units and the events that come back.


@dataclass(frozen=True)
class WorkUnit:
    """One cell x a chunk of its questions (every repeat); `done` holds answers already written."""

    unit_id: str
    cell: Cell
    questions: tuple[Question, ...]
    done: Mapping[tuple[str, int, int], str] = field(default_factory=dict)  # (question_id, repeat, turn) -> output_text

    def with_done(self, more: Mapping[tuple[str, int, int], str]) -> WorkUnit:
        return dataclasses.replace(self, done={**self.done, **more})


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs besides its units."""

    suite: Suite
    run_id: str
    data: Mapping[str, Any]  # task -> question file description (sha256, ...), stamped on records
    bindings: Mapping[str, Any]  # model -> weights / head sha256, stamped on records
    execute_code: bool = False
    code_isolation: str = "sandbox"  # how HumanEval code runs when execute_code (harness.sandbox)
    threads: int | None = None  # torch CPU threads in the worker (the driver's --threads)
    code_root: str = ""  # folder holding the harness package the driver runs (put on the workers' PYTHONPATH)


@dataclass(frozen=True)
class ModelLoaded:
    model: str
    info: Mapping[str, Any]  # the runner's description of the loaded model (manifest `models`)
    read_bandwidth_bytes_per_s: float | None = None  # measured on the worker's device (manifest hardware)


@dataclass(frozen=True)
class UnitFailure:
    """Why a unit failed, as plain data (an exception object may not survive pickling)."""

    error_type: str
    error: str
    traceback: str
    question_id: str | None = None
    turn: int | None = None
    repeat: int | None = None

    @classmethod
    def from_exception(cls, error: BaseException) -> UnitFailure:
        from harness.runner import TurnFailed

        where: dict[str, Any] = {}
        cause: BaseException = error
        if isinstance(error, TurnFailed) and error.__cause__ is not None:
            where = {"question_id": error.question_id, "turn": error.turn, "repeat": error.repeat}
            cause = error.__cause__
        text = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__)[-6:])
        return cls(type(cause).__name__, str(cause), text, **where)

    def as_error(self) -> RemoteError:
        return RemoteError(self)


class RemoteError(Exception):
    """A worker's failure, handed to Runner._fail (which keeps its type name and traceback)."""

    def __init__(self, failure: UnitFailure) -> None:
        super().__init__(failure.error)
        self.error_type = failure.error_type
        self.remote_traceback = failure.traceback


WorkerItem = Union[dict, ModelLoaded, UnitFailure]  # what a worker yields while it runs a unit


@dataclass(frozen=True)
class WorkerStarted:
    worker: str
    info: Mapping[str, Any]  # host, pid, GPUs, torch threads, where the harness code came from


@dataclass(frozen=True)
class UnitStarted:
    unit: WorkUnit
    worker: str


@dataclass(frozen=True)
class Record:
    unit: WorkUnit
    worker: str
    row: Mapping[str, Any]


@dataclass(frozen=True)
class ModelReady:
    worker: str
    model: str
    info: Mapping[str, Any]
    read_bandwidth_bytes_per_s: float | None = None


@dataclass(frozen=True)
class UnitFinished:
    unit: WorkUnit
    worker: str


@dataclass(frozen=True)
class UnitFailed:
    unit: WorkUnit
    worker: str
    failure: UnitFailure
    final: bool  # False: it will be retried


Event = Union[WorkerStarted, UnitStarted, Record, ModelReady, UnitFinished, UnitFailed]


class Backend(Protocol):
    options: BackendOptions

    def execute(self, units: Sequence[WorkUnit], spec: WorkerSpec, out_dir: Path) -> Iterator[Event]:
        """Run every unit, retrying failed ones; yield events as they happen (the caller writes)."""
        ...


def plan_units(cells: Sequence[Cell], questions: Mapping[str, Sequence[Question]], done: Mapping[tuple[str, str, int, int], Any], chunk: int) -> list[WorkUnit]:
    """Units still to run, model by model, question chunk by chunk, every cell of the chunk in turn
    (so the methods of a model share the same stretch of machine time, as in the in-process runner)."""
    units: list[WorkUnit] = []
    models = list(dict.fromkeys(c.model.name for c in cells))
    for model in models:
        model_cells = [c for c in cells if c.model.name == model]
        for task in dict.fromkeys(c.task.name for c in model_cells):
            task_questions = list(questions[task])
            size = chunk or len(task_questions) or 1
            for start in range(0, len(task_questions), size):
                chunk_questions = task_questions[start : start + size]
                for cell in (c for c in model_cells if c.task.name == task):
                    todo, answers = [], {}
                    for question in chunk_questions:
                        turns = range(1, len(question.turns) + 1)
                        open_repeats = [r for r in range(cell.repeats) if any((cell.cell_id, question.question_id, r, t) not in done for t in turns)]
                        if not open_repeats:
                            continue
                        todo.append(question)
                        for r in range(cell.repeats):
                            for t in turns:
                                row = done.get((cell.cell_id, question.question_id, r, t))
                                if row is not None:
                                    answers[(question.question_id, r, t)] = str(row.get("output_text", ""))
                    if todo:
                        unit_id = f"{cell.cell_id}#{todo[0].question_id}" + (f"..{todo[-1].question_id}" if len(todo) > 1 else "")
                        units.append(WorkUnit(unit_id, cell, tuple(todo), answers))
    return units


class UnitQueue:
    """Pending units, attempts and the answers each unit already delivered (so a retry skips them)."""

    def __init__(self, units: Sequence[WorkUnit], retries: int) -> None:
        self.pending: deque[WorkUnit] = deque(units)
        self.retries = retries
        self.attempts: dict[str, int] = {}
        self.delivered: dict[str, dict[tuple[str, int, int], str]] = {}

    def __bool__(self) -> bool:
        return bool(self.pending)

    def take(self, model: str | None = None) -> WorkUnit | None:
        """The next unit, preferring one of `model` (the model a worker holds already)."""
        if not self.pending:
            return None
        if model is not None:
            for unit in self.pending:
                if unit.cell.model.name == model:
                    self.pending.remove(unit)
                    break
            else:
                unit = self.pending.popleft()
        else:
            unit = self.pending.popleft()
        self.attempts[unit.unit_id] = self.attempts.get(unit.unit_id, 0) + 1
        return unit.with_done(self.delivered.get(unit.unit_id, {}))

    def delivered_row(self, unit: WorkUnit, row: Mapping[str, Any]) -> None:
        self.delivered.setdefault(unit.unit_id, {})[(str(row["question_id"]), int(row["repeat"]), int(row["turn"]))] = str(row.get("output_text", ""))

    def failed(self, unit: WorkUnit) -> bool:
        """Requeue `unit` unless it has used its retries; True when this failure is final."""
        if self.attempts.get(unit.unit_id, 1) > self.retries:
            return True
        self.pending.appendleft(unit)
        return False

    def ended(self, unit: WorkUnit, worker: str, failure: UnitFailure | None) -> UnitFinished | UnitFailed:
        """The event for a unit that stopped running: finished, or failed with `failure` (what it
        reported, or its worker's death), requeued unless that was its last try."""
        if failure is None:
            return UnitFinished(unit, worker)
        return UnitFailed(unit, worker, failure, self.failed(unit))


def worker_failure(error: BaseException, what: str) -> UnitFailure:
    """A failure of the worker itself (it died, its job was cancelled), not of the unit's code."""
    return UnitFailure(type(error).__name__, f"{what}: {error}", "".join(traceback.format_exception_only(type(error), error)))


def code_root() -> str:
    """The folder holding the `harness` package this process runs: workers import the same code."""
    import harness

    return str(Path(harness.__file__).resolve().parents[1])


def make_backend(options: BackendOptions) -> Backend:
    """The backend for validated `options` (a distributed one: see BackendOptions.distributed)."""
    if options.backend == "ray":
        from harness.backends.ray_backend import RayBackend

        return RayBackend(options)
    if options.backend == "slurm":
        from harness.backends.slurm import SlurmBackend

        return SlurmBackend(options)
    from harness.backends.local import ProcessBackend

    return ProcessBackend(options)
