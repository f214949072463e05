"""Running a suite: every cell's questions and turns, one JSON line each, resumable.

Output contract (a run folder; harness.aggregate reads exactly this; the file names and the
record schema are harness.results'):

    results.jsonl   one harness.results.ResultRow per successful (cell, question, repeat, turn),
                    appended, flushed and fsync'ed as it finishes
    failures.jsonl  one object per failure, and the sweep goes on (fields: harness.results)
    manifest.json   schema, run_id, suite_path, suite (resolved, overrides applied), overrides, cells,
                    shard ("I/N" or null), versions, git_sha, git_dirty, hardware, seeds, data (file,
                    sha256 per task), bindings (per model: weights and head sha256), models (what
                    was loaded), started_at, finished_at, status (running | complete | interrupted |
                    failed), counts, sessions (one per run/resume: its options, versions, git sha,
                    hardware, status, records written). A resume changes only status, finished_at,
                    counts and sessions, and adds what it loads; everything else stays as recorded.
    .lock           while a run or resume is writing: its pid, host, start time and command
                    (harness.lock); removed when it ends.

Default folder: runs/<suite name>/<UTC timestamp>/ (git-ignored); results/ holds curated runs.
Resume (same folder, same command plus --resume) is refused when the options, the suite, the
question files, the model weights or the head differ from those the run began with.

Order of work: per model (loaded once), per task, per question, every cell of that model and task
in turn. Interleaving the methods question by question keeps them under the same machine
conditions, so a slow patch of a shared machine does not land on one method alone.

Sampling seeds: each (cell seed, question, repeat, turn) has its own generator seed, the same for
every method, so a resumed run draws what an uninterrupted one would have drawn.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import hashlib
import json
import logging
import os
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eagle2 import SamplingConfig
from eagle2.audit import HALF_PRECISION
from eagle2.methods import METHODS
from harness.audit import audit_greedy_mismatches
from harness.chat import ChatTemplate, Message
from harness.memory import measure_read_bandwidth, weight_bytes_per_token
from harness.config import Cell, ModelConfig, Suite, effective_head, expand, shard_cells
from harness.lock import RunLock
from harness.machine_load import measure, snapshot
from harness.environment import git_state, hardware_info, package_versions
from harness.results import AUDIT_FILE, FAILURES_FILE, MANIFEST_FILE, RESULTS_FILE, RESULTS_SCHEMA, JsonlLog, ResultRow, make_folder, write_json_atomic
from harness.tasks import DataSource, Question, ScoreContext, get_task, select_questions

logger = logging.getLogger(__name__)


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunExistsError(FileExistsError):
    pass


class ResumeMismatchError(ValueError):
    """A --resume whose options, suite or data differ from what the folder's run recorded."""


# ----------------------------------------------------------------------------------------------
# The run.


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    data: DataSource = field(default_factory=DataSource.from_env)
    resume: bool = False
    shard: tuple[int, int] | None = None  # (I, N), 1-based
    execute_code: bool = False  # HumanEval pass@1: run model-written code (see harness.sandbox)
    code_isolation: str = "sandbox"  # sandbox: namespaces, refused where unavailable | unsafe: a plain subprocess
    progress: bool = True  # tqdm bars
    overrides: Mapping[str, Any] = field(default_factory=dict)  # recorded in the manifest
    backend: Any = None  # a harness.backends.Backend that fans units out to workers; None: this process runs every cell
    # The method registry the suite was read with (eagle2.schema.Registry of MethodSpec, e.g.
    # METHODS.with_entry(a new method)); None: the shipped eagle2.methods.METHODS.
    methods: Any = None


@dataclass(frozen=True)
class RunSummary:
    out_dir: Path
    run_id: str
    status: str
    cells: int
    written: int  # records written in this session
    skipped: int  # records already present (resume)
    failures: int  # failures recorded in this session


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_compile(setting: str | bool, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The engine path a model's `compile` setting selects: eager (the dynamic engine), static (fixed
    shapes, eagle2.static, not compiled) or compiled (fixed shapes + torch.compile).

    `auto` is compiled on CUDA (CUDA graphs remove the per-kernel launch cost) and, on a CPU, for
    bfloat16/float16, where inductor's fused kernels measured 15-30% faster per forward than eager;
    float32 on a CPU measured no faster compiled, so it stays eager (benchmarks/forward_step.py,
    results/engine-bench/)."""
    if setting == "auto":
        return "compiled" if device.type == "cuda" or (device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)) else "eager"
    if setting == "static":
        return "static"
    return "compiled" if setting else "eager"


def resolve_linear_kernel(setting: str, engine_path: str, device: torch.device, dtype: torch.dtype) -> str:
    """The linear-layer kernels a model's `linear_kernel` setting selects: default, autotune or few_row.

    `auto` is autotune for the compiled engine in bfloat16/float16 on a CPU (inductor times its C++
    GEMM template against oneDNN per shape and fuses linear layers sharing an input: side by side,
    vanilla 16.5 ms/token against 23.5 with few_row and 30.0 with oneDNN alone,
    results/engine-bench/cpu-smollm2-linear-kernels.txt), else default. Asking for a kernel where it
    cannot run is an error that says why."""
    on_cpu_half = device.type == "cpu" and dtype in (torch.bfloat16, torch.float16)
    if setting == "default" or (setting == "auto" and not (engine_path == "compiled" and on_cpu_half)):
        return "default"
    if setting in ("auto", "autotune"):
        if engine_path != "compiled":
            raise ValueError(f"linear_kernel: autotune needs the compiled engine (compile: true | auto); this model runs {engine_path}")
        return "autotune"
    if engine_path == "eager" or device.type != "cpu" or dtype != torch.bfloat16:
        raise ValueError(
            f"linear_kernel: few_row runs only on the static/compiled engine (compile: true | static | auto) in "
            f"bfloat16 on a CPU; this model runs {engine_path} in {str(dtype).removeprefix('torch.')} on {device.type}"
        )
    from eagle2.kernels import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(f"linear_kernel: few_row cannot run here: {reason} (use default, autotune or auto)")
    return "few_row"


def resolve_cpp_wrapper(setting: str | bool, engine_path: str, device: torch.device) -> bool:
    """Whether the compiled engine's graphs get inductor's C++ wrapper (eagle2.static.compiled_for).

    `auto` is on for the compiled engine on a CPU, where the Python wrapper's per-kernel calls cost
    2-5 ms of a speculative step (side by side in two runs: EAGLE-2 +4-15% tokens/s, vanilla
    unchanged; results/engine-bench/cpu-smollm2-cpp-wrapper*.txt); CUDA graphs already replay a
    graph's kernels without it. `true` elsewhere is an error that says why."""
    if setting == "auto":
        return engine_path == "compiled" and device.type == "cpu"
    if setting and (engine_path != "compiled" or device.type != "cpu"):
        raise ValueError(f"cpp_wrapper: true needs the compiled engine (compile: true | auto) on a CPU; this model runs {engine_path} on {device.type}")
    return bool(setting)


def compiled_graph_count() -> int:
    """Graphs torch.compile has built in this process so far (dynamo's own statistics counter)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def turn_seed(seed: int, question_id: str, repeat: int, turn: int) -> int:
    """The sampling seed of one generation: a function of the cell's seed and the work item only."""
    digest = hashlib.sha256(f"{seed}|{question_id}|{repeat}|{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


RUNS_ROOT = Path("runs")  # default output root, git-ignored; results/ holds curated, committed runs
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"


def default_output_dir(suite: Suite, shard: tuple[int, int] | None = None, *, root: Path = RUNS_ROOT, now: dt.datetime | None = None) -> Path:
    """`runs/<suite name>/<UTC timestamp>[/shard-I-of-N]`: a new folder for every run.

    Two runs started in the same second get `<timestamp>-2`, `-3`, ... (the folder lock settles any
    remaining race).
    """
    stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime(TIMESTAMP_FORMAT)
    base = Path(root) / suite.name / stamp
    number = 1
    while base.exists():
        number += 1
        base = Path(root) / suite.name / f"{stamp}-{number}"
    return base / f"shard-{shard[0]}-of-{shard[1]}" if shard else base


def latest_run_dir(suite_name: str, *, root: Path = RUNS_ROOT, shard: tuple[int, int] | None = None) -> Path:
    """The newest run folder of a suite under `root` (by its timestamp name); with `shard`, its shard folder."""
    folder = Path(root) / suite_name
    runs = sorted((p for p in folder.iterdir() if p.is_dir() and p.name[:1].isdigit()), key=_run_sort_key) if folder.is_dir() else []
    if not runs:
        raise FileNotFoundError(
            f"no run of suite {suite_name!r} in {folder}/ (runs go there by default); "
            f"run it first (python -m harness run {suite_name}) or give a run folder"
        )
    latest = runs[-1]
    return latest / f"shard-{shard[0]}-of-{shard[1]}" if shard else latest


def _run_sort_key(path: Path) -> tuple[str, int]:
    stamp, _, number = path.name.partition("-")
    return stamp, int(number) if number.isdigit() else 1


class TurnFailed(Exception):
    """A generation failed; the cause is the original error."""

    def __init__(self, question_id: str, turn: int, repeat: int) -> None:
        super().__init__(f"question {question_id} turn {turn} repeat {repeat}")
        self.question_id, self.turn, self.repeat = question_id, turn, repeat


@dataclass
class WorkerCache:
    """What a worker keeps between units: one loaded model (each model is loaded once per worker), its decoders, warmed cells."""

    model: str | None = None
    loaded: Any = None  # _Loaded
    decoders: dict[str, Any] = field(default_factory=dict)
    warmed: set[str] = field(default_factory=set)


@dataclass
class _Loaded:
    target: Any
    tokenizer: Any
    chat: ChatTemplate
    heads: dict[str, Any]  # head kind (eagle, eagle3) -> the loaded head
    heads_used: dict[str, str | None]  # head kind -> what was loaded (a fallback, perhaps)
    source: str
    info: dict[str, Any]
    head_errors: dict[str, Exception] = field(default_factory=dict)  # head kind -> why it failed to load: only its cells fail


@dataclass
class _Prepared:
    """A loaded model entry with the decoders of its cells that still have work."""

    config: ModelConfig
    loaded: _Loaded
    cells: list[Cell]  # unfinished cells whose decoder was built
    decoders: dict[str, Any]  # cell id -> decoder


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Runner:
    """One run (or resumed run) of a suite into one output folder."""

    def __init__(self, suite: Suite, options: RunOptions) -> None:
        self.suite = suite
        self.options = options
        self.out = options.out_dir
        self.methods = options.methods if options.methods is not None else METHODS
        all_cells = expand(suite, self.methods)
        self.cells = shard_cells(all_cells, *options.shard) if options.shard else all_cells
        self.results = JsonlLog(self.out / RESULTS_FILE)
        self.failures = JsonlLog(self.out / FAILURES_FILE)
        self.score_context = ScoreContext(execute_code=options.execute_code, isolation=options.code_isolation)
        self.audit = JsonlLog(self.out / AUDIT_FILE)
        self.done: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.written = 0
        self.failed = 0
        self.manifest: dict[str, Any] = {}
        self.questions: dict[str, list[Question]] = {}
        self.data: dict[str, dict[str, Any]] = {}  # task -> question file (path, sha256, ...) and selected ids
        self.bindings: dict[str, Any] = {}

    # -- set-up ------------------------------------------------------------------------------

    def _read_folder(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The folder's manifest and records, after refusing a run it cannot continue (nothing written)."""
        manifest_path = self.out / MANIFEST_FILE
        try:
            old_manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{manifest_path} is not valid JSON ({error}); this folder cannot be resumed, use a new --out") from error
        if old_manifest is not None and not isinstance(old_manifest, dict):
            raise ValueError(f"{manifest_path} is not a JSON object; this folder cannot be resumed, use a new --out")
        previous = self.results.read(repair=False)
        old_failures = self.failures.read(repair=False)
        holds_run = old_manifest is not None or any(
            path.is_file() and path.stat().st_size > 0 for path in (self.results.path, self.failures.path)
        )
        if holds_run and not self.options.resume:
            raise RunExistsError(
                f"{self.out} already holds a run ({len(previous)} records, {len(old_failures)} failures); "
                "pass --resume to continue it with the same options, or leave out --out for a new folder under runs/"
            )
        if not self.options.resume or old_manifest is None:
            return None, previous
        problems: list[str] = []
        shard = self._shard_text()
        if old_manifest.get("shard") != shard:
            problems.append(f"shard: the folder holds shard {old_manifest.get('shard')}, this run is shard {shard} (--shard)")
        recorded = _session_options(old_manifest)
        for name in sorted(set(recorded) | set(self._options_record())):
            before, now = recorded.get(name), self._options_record().get(name)
            if before != now:
                flag = "--" + name.replace("_", "-")
                problems.append(f"{flag}: {_show(before)} when the run began, {_show(now)} now")
        new_suite = {k: v for k, v in _plain_json(self.suite.to_dict()).items() if k != "path"}
        old_suite = {k: v for k, v in (old_manifest.get("suite") or {}).items() if k != "path"}
        if old_suite:  # a setting added since the run began is absent from its manifest: equal when at its default
            defaults = _plain_json(dataclasses.replace(self.suite, **{
                f.name: f.default for f in dataclasses.fields(Suite) if f.default is not dataclasses.MISSING}).to_dict())
            old_suite.update({k: defaults[k] for k in new_suite.keys() - old_suite.keys() if k in defaults})
        changed = sorted(k for k in set(old_suite) | set(new_suite) if old_suite.get(k) != new_suite.get(k))
        if old_suite and changed:
            problems.append(f"suite {self.suite.path}: {', '.join(changed)} differ from the suite the run began with")
        current = {cell.cell_id for cell in self.cells}
        foreign = sorted({row.get("cell_id") for row in previous} - current, key=str)
        if foreign and not changed:
            problems.append(f"{self.results.path} holds records of {len(foreign)} cell(s) this suite does not have (e.g. {foreign[0]})")
        if problems:
            raise ResumeMismatchError(
                f"cannot resume {self.out}: " + "; ".join(problems)
                + ". A resume must repeat the run's command exactly (records are never rewritten or mixed); "
                "for other options start a new run (leave out --resume and --out)"
            )
        return old_manifest, previous

    def _shard_text(self) -> str | None:
        return f"{self.options.shard[0]}/{self.options.shard[1]}" if self.options.shard else None

    def _options_record(self) -> dict[str, Any]:
        """The options of this session that decide what is generated and how it is timed."""
        return _plain_json({**dict(self.options.overrides), "execute_code": self.options.execute_code})

    def _bindings(self) -> dict[str, Any]:
        """sha256 of what each model's records depend on: its weights and its head (None: not identifiable)."""
        from harness.models import head_fingerprint, weights_fingerprint

        out: dict[str, Any] = {}
        for config in _unique(c.model for c in self.cells):
            kinds = {self.methods[c.method].head_kind for c in self.cells if c.model.name == config.name and self.methods[c.method].needs_head}
            head = effective_head(config) if "eagle" in kinds else None
            try:
                weights = weights_fingerprint(config.source, gguf_file=config.gguf_file, revision=config.revision)
            except OSError as error:  # the load will fail and say so; nothing to bind to
                logger.warning("model %s: cannot fingerprint its weights (%s)", config.name, error)
                weights = None
            try:
                head_sha = head_fingerprint(head)
            except OSError as error:
                logger.warning("model %s: cannot fingerprint head %s (%s)", config.name, head, error)
                head_sha = None
            out[config.name] = {"source": config.source, "weights_sha256": weights, "head": head, "head_sha256": head_sha}
            if "eagle3" in kinds:  # the EAGLE-3 head of method eagle3, bound the same way
                eagle3 = effective_head(config, "eagle3")
                try:
                    out[config.name].update(eagle3_head=eagle3, eagle3_head_sha256=head_fingerprint(eagle3))
                except OSError as error:
                    logger.warning("model %s: cannot fingerprint head %s (%s)", config.name, eagle3, error)
                    out[config.name].update(eagle3_head=eagle3, eagle3_head_sha256=None)
        return out

    def _check_data_versions(self, old_manifest: dict[str, Any], bindings: dict[str, Any]) -> None:
        """Refuse a resume whose question files, weights or heads differ from the recorded ones."""
        changed: list[str] = []
        for task, entry in (old_manifest.get("data") or {}).items():
            now = self.data.get(task)
            if now is not None and entry.get("sha256") != now["sha256"]:
                changed.append(f"question file of task {task} ({now['path']}): sha256 {entry.get('sha256')} when the run began, {now['sha256']} now")
            elif now is not None and entry.get("questions") not in (None, now["questions"]):
                changed.append(f"questions of task {task}: {len(entry['questions'])} selected when the run began, {len(now['questions'])} now")
        old_bindings = old_manifest.get("bindings") or {}
        for model, now in bindings.items():
            before = old_bindings.get(model)
            if before is None:
                continue
            if before.get("weights_sha256") != now["weights_sha256"]:
                changed.append(f"weights of model {model} ({now['source']}): sha256 {before.get('weights_sha256')} when the run began, "
                               f"{now['weights_sha256']} now")
            for prefix in ("", "eagle3_"):
                key = f"{prefix}head"
                if key in now and before.get(key) == now[key] and before.get(f"{key}_sha256") != now[f"{key}_sha256"]:
                    changed.append(f"draft head of model {model} ({now[key]}): sha256 {before.get(f'{key}_sha256')} when the run began, "
                                   f"{now[f'{key}_sha256']} now")
        if changed:
            raise ResumeMismatchError(
                f"cannot resume {self.out}: its records were made from other data: " + "; ".join(changed)
                + ". Mixing them would compare different inputs; start a new run (leave out --resume and --out)"
            )

    def _start_manifest(self, old_manifest: dict[str, Any] | None, bindings: dict[str, Any], previous: list[dict[str, Any]]) -> None:
        if self.options.resume:  # checks passed: now damaged lines may be set aside (see harness.results)
            previous = self.results.read(repair=True)
            self.failures.read(repair=True)
        for row in previous:
            key = (row.get("cell_id"), str(row.get("question_id")), int(row.get("repeat", 0)), int(row.get("turn", 0)))
            if key in self.done:
                logger.warning("%s: duplicate record for %s; keeping the first", self.results.path, key)
                continue
            self.done[key] = row
        now = utc_now()
        git_sha, git_dirty = git_state()
        hardware = hardware_info()
        session = {"started_at": now, "finished_at": None, "status": "running", "options": self._options_record(),
                   "overrides": dict(self.options.overrides), "records_before": len(self.done),
                   "hardware": {k: v for k, v in hardware.items() if k != "devices"},
                   "versions": package_versions(), "git_sha": git_sha, "git_dirty": git_dirty}
        if old_manifest is not None:  # what earlier sessions recorded stays as it was; this one adds a session
            self.manifest = dict(old_manifest)
            self.manifest["sessions"] = list(old_manifest.get("sessions") or []) + [session]
            self.manifest["models"] = dict(old_manifest.get("models") or {})
            self.manifest["hardware"] = dict(old_manifest.get("hardware") or {})
            self.manifest["hardware"]["devices"] = dict(self.manifest["hardware"].get("devices") or {})
            self.manifest.setdefault("bindings", bindings)
            self.manifest.update(status="running", finished_at=None)
        else:
            self.manifest = {
                "schema": RESULTS_SCHEMA,
                "run_id": f"{self.suite.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
                + (f"-shard{self.options.shard[0]}of{self.options.shard[1]}" if self.options.shard else ""),
                "suite_path": self.suite.path,
                "suite": self.suite.to_dict(),
                "overrides": dict(self.options.overrides),
                "cells": [cell.to_dict() for cell in self.cells],
                "shard": self._shard_text(),
                "seeds": list(self.suite.seeds),
                "versions": session["versions"],
                "git_sha": git_sha,
                "git_dirty": git_dirty,
                "hardware": hardware,
                "data": self.data,
                "bindings": bindings,
                "models": {},
                "execute_code": self.options.execute_code,
                "code_isolation": self.options.code_isolation if self.options.execute_code else None,
                "started_at": now,
                "finished_at": None,
                "status": "running",
                "counts": {},
                "sessions": [session],
            }
        self._write_manifest()

    def _write_manifest(self) -> None:
        write_json_atomic(self.out / MANIFEST_FILE, self.manifest)

    def _load_questions(self) -> None:
        """Every task's questions, before any model loads: missing data fails the run at once."""
        for task in {cell.task.name: cell.task for cell in self.cells}.values():
            spec = get_task(task.type)
            questions, file = spec.load(task.options, self.options.data)
            if not questions:
                raise ValueError(f"task {task.name!r}: no questions selected from {file.path}")
            self.questions[task.name] = select_questions(questions, task.limit, task.select)
            self.data[task.name] = {**file.describe(), "questions": [q.question_id for q in self.questions[task.name]]}

    # -- records -----------------------------------------------------------------------------

    def _fail(self, cell: Cell, error: BaseException, question_id: str | None = None, turn: int | None = None, repeat: int | None = None) -> None:
        self.failed += 1
        where = f"{cell.cell_id}" + (f" question {question_id}" if question_id is not None else "") + (f" turn {turn}" if turn else "")
        logger.error("failed: %s: %s: %s", where, getattr(error, "error_type", type(error).__name__), error)
        self.failures.append(
            {
                "run_id": self.manifest["run_id"],
                "cell_id": cell.cell_id,
                "model": cell.model.name,
                "task": cell.task.name,
                "method": cell.method,
                "method_params": dict(cell.method_params),
                "temperature": cell.temperature,
                "question_id": question_id,
                "turn": turn,
                "repeat": repeat,
                "error_type": getattr(error, "error_type", type(error).__name__),  # a worker's failure keeps its own
                "error": str(error),
                "traceback": getattr(error, "remote_traceback", None)
                or "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:]),
                "finished_at": utc_now(),
            }
        )

    # -- models ------------------------------------------------------------------------------

    def _load_model(self, config: ModelConfig, head_kinds: set[str]) -> _Loaded:
        from harness.models import chat_template_for, load_head, load_model

        device = None if config.device_map else resolve_device(config.device)
        loaded = load_model(
            config.source, gguf_file=config.gguf_file, dtype=config.dtype, device=device, device_map=config.device_map, revision=config.revision
        )
        engine_path = resolve_compile(config.compile, loaded.target.device, loaded.target.dtype)
        linear_kernel = resolve_linear_kernel(config.linear_kernel, engine_path, loaded.target.device, loaded.target.dtype)
        cpp_wrapper = resolve_cpp_wrapper(config.cpp_wrapper, engine_path, loaded.target.device)
        if engine_path != "eager":
            from eagle2.static import StaticTargetModel

            target = StaticTargetModel(loaded.target.model, compile=engine_path == "compiled", linear_kernel=linear_kernel, cpp_wrapper=cpp_wrapper)
            loaded = dataclasses.replace(loaded, target=target)
        heads: dict[str, Any] = {}
        heads_used: dict[str, str | None] = {}
        head_errors: dict[str, Exception] = {}
        for kind in sorted(head_kinds):
            heads_used[kind] = effective_head(config, kind)
            if kind == "eagle" and heads_used[kind] != config.head:
                logger.warning(
                    "model %s: draft head %s is not installed; using the fallback %r (its results say head=%s)",
                    config.name, config.head, heads_used[kind], heads_used[kind],
                )
            try:
                heads[kind] = load_head(heads_used[kind], loaded.target, kind=kind)
            except Exception as error:  # a broken head fails the cells that draft with it, not vanilla's
                logger.error("model %s: draft head %s failed to load: %s", config.name, heads_used[kind], error)
                head_errors[kind] = error
        chat = chat_template_for(loaded, config.chat_template, config.system_message)
        info = {
            "source": loaded.source,
            "weights_sha256": loaded.weights_sha256,
            "head": heads_used.get("eagle"),
            "head_requested": config.head,
            **({"eagle3_head": heads_used["eagle3"]} if "eagle3" in heads_used else {}),
            "device": str(loaded.target.device),
            "dtype": str(loaded.target.dtype).removeprefix("torch."),
            "dtype_requested": config.dtype,
            "compile": engine_path == "compiled",
            "engine_path": engine_path,
            "compile_requested": config.compile,
            "linear_kernel": linear_kernel,
            "linear_kernel_requested": config.linear_kernel,
            "cpp_wrapper": cpp_wrapper,
            "cpp_wrapper_requested": config.cpp_wrapper,
            # transformers' attention implementation the target ran (a CPU compile switches it to eager)
            "attention": getattr(loaded.target.config, "_attn_implementation", None),
            "dtype_reason": loaded.dtype_reason,
            "parameters": sum(p.numel() for p in loaded.target.model.parameters()),
            "weight_bytes_per_token": weight_bytes_per_token(loaded.target.model),
            "stop_token_ids": sorted(chat.stop_token_ids),
            "max_context": loaded.target.max_context,
        }
        for kind, error in head_errors.items():
            info["head_error" if kind == "eagle" else f"{kind}_head_error"] = f"{type(error).__name__}: {error}"
        return _Loaded(loaded.target, loaded.tokenizer, chat, heads, heads_used, loaded.source, info, head_errors)

    # -- generation --------------------------------------------------------------------------

    def _prompt_ids(self, loaded: _Loaded, question: Question, turn: int, answers: Sequence[str]) -> list[int]:
        """Prompt of `turn` (1-based): turns 1..turn with this cell's own answers in between."""
        if question.raw:
            return loaded.tokenizer(question.turns[0]).input_ids
        messages: list[Message] = []
        for index in range(turn):
            messages.append(Message("user", question.turns[index]))
            if index < turn - 1:
                messages.append(Message("assistant", answers[index]))
        return loaded.chat.prompt_ids(messages)

    def _warm_up(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question) -> None:
        warmup = self.suite.warmup
        if warmup.generations <= 0:
            return
        prompt = self._prompt_ids(loaded, question, 1, [])
        sampling = SamplingConfig(cell.temperature, cell.top_p, cell.top_k)
        for index in range(warmup.generations):
            decoder(
                prompt,
                max_new_tokens=warmup.max_new_tokens,
                sampling=sampling,
                stop_token_ids=loaded.chat.stop_token_ids,
                generator=torch.Generator().manual_seed(index),
                profile=self.suite.profile,
            )
        # A generation compiles the shapes it meets; the decoder's own warm-up covers the others.
        if hasattr(decoder, "warm_up"):
            decoder.warm_up()

    def _generate(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question, repeat: int, turn: int, answers: list[str]) -> dict[str, Any]:
        prompt = self._prompt_ids(loaded, question, turn, answers)  # tokenised outside the timed region
        sampling = SamplingConfig(cell.temperature, cell.top_p, cell.top_k)
        generator = torch.Generator().manual_seed(turn_seed(cell.seed, question.question_id, repeat, turn))
        before = snapshot()  # machine load around (not inside) the timed region
        graphs_before = compiled_graph_count()
        record = decoder(
            prompt,
            max_new_tokens=cell.task.max_new_tokens,
            sampling=sampling,
            stop_token_ids=loaded.chat.stop_token_ids,
            generator=generator,
            profile=self.suite.profile,
        )
        load = measure(before, snapshot(), threads=torch.get_num_threads(), device=loaded.target.device.type)
        # A graph compiled here was timed as generation: the warm-up missed a shape (the report flags it).
        load["graphs_compiled"] = compiled_graph_count() - graphs_before
        text = loaded.tokenizer.decode(list(record.output_ids), skip_special_tokens=True)  # after timing
        binding = self.bindings.get(cell.model.name, {})
        uses_head = self.methods[cell.method].needs_head
        head_kind = self.methods[cell.method].head_kind
        head_binding = "head_sha256" if head_kind == "eagle" else f"{head_kind}_head_sha256"
        return ResultRow.from_record(
            cell,
            record,
            run_id=self.manifest["run_id"],
            model_source=loaded.source,
            head=loaded.heads_used.get(head_kind) if uses_head else None,
            repeat=repeat,
            question_id=question.question_id,
            category=question.category,
            turn=turn,
            prompt_tokens=len(prompt),
            output_text=text,
            data_sha256=self.data[cell.task.name]["sha256"],
            weights_sha256=binding.get("weights_sha256"),
            head_sha256=binding.get(head_binding) if uses_head else None,
            load=load,
        ).as_dict()

    def _question_rows(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question, repeat: int) -> Iterator[dict[str, Any]]:
        """The finished records (scored, stamped) of one question's turns not in self.done, in turn order.

        A failed generation raises TurnFailed (its cause: the error)."""
        answers: list[str] = []
        spec = get_task(cell.task.type)
        for turn in range(1, len(question.turns) + 1):
            previous = self.done.get((cell.cell_id, question.question_id, repeat, turn))
            if previous is not None:
                answers.append(str(previous.get("output_text", "")).strip())
                continue
            try:
                row = self._generate(loaded, decoder, cell, question, repeat, turn, answers)
            except Exception as error:  # OOM, a bad prompt, an engine bug
                if loaded.target.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise TurnFailed(question.question_id, turn, repeat) from error
            answers.append(row["output_text"].strip())
            if turn == len(question.turns) and spec.score is not None:
                try:
                    row["correct"] = spec.score(question, answers, cell.task.options, self.score_context)
                except Exception as error:
                    logger.warning("scoring %s question %s failed: %s", cell.cell_id, question.question_id, error)
            row["finished_at"] = utc_now()
            yield row

    def _run_question(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question, repeat: int, progress: Any) -> None:
        try:
            for row in self._question_rows(loaded, decoder, cell, question, repeat):
                self._write(row, progress)
        except TurnFailed as failed:  # record it and go on
            self._fail(cell, failed.__cause__ or failed, failed.question_id, failed.turn, failed.repeat)
            if progress is not None:  # this turn and the later ones (they need its answer) are given up
                progress.update(len(question.turns) - failed.turn + 1)

    def _write(self, row: dict[str, Any], progress: Any) -> bool:
        """Append one finished record (the only writer of results.jsonl); False when it is already there."""
        key = (row["cell_id"], str(row["question_id"]), int(row["repeat"]), int(row["turn"]))
        if key in self.done:  # a unit retried after its worker died can bring a record back twice
            return False
        self.results.append(row)
        self.done[key] = row
        self.written += 1
        if progress is not None:
            if row["wall_time_s"] > 0:
                progress.set_postfix_str(
                    f"{row['new_tokens'] / row['wall_time_s']:.1f} tok/s tau={row['new_tokens'] / max(row['target_forwards'], 1):.2f}",
                    refresh=False,
                )
            progress.update(1)
        return True

    def _answers_left(self, cell: Cell) -> int:
        return sum(
            1 for q in self.questions[cell.task.name] for r in range(cell.repeats) for t in range(1, len(q.turns) + 1)
            if (cell.cell_id, q.question_id, r, t) not in self.done
        )

    # -- units, for harness.backends ---------------------------------------------------------

    @classmethod
    def for_worker(
        cls, suite: Suite, run_id: str, data: Mapping[str, Any], bindings: Mapping[str, Any], execute_code: bool = False, code_isolation: str = "sandbox"
    ) -> Runner:
        """A runner that writes nothing: it runs units (run_unit) for a driver's Runner, which writes.
        `data` and `bindings` are the driver's (question files' and models' sha256, stamped on records)."""
        runner = cls(suite, RunOptions(out_dir=Path(os.devnull), progress=False, execute_code=execute_code, code_isolation=code_isolation))
        runner.manifest = {"run_id": run_id}
        runner.data = dict(data)
        runner.bindings = dict(bindings)
        return runner

    def run_unit(
        self, cell: Cell, questions: Sequence[Question], done: Mapping[tuple[str, int, int], str], cache: WorkerCache
    ) -> Iterator[dict[str, Any]]:
        """One unit of work (a cell x a chunk of its questions, every repeat): yields each finished record.

        `done` maps (question_id, repeat, turn) to the answer text of turns already written (they are
        skipped; a later turn is prompted with them). The cell's model is loaded into `cache` unless it
        is there already. Any failure raises (TurnFailed for a generation); the driver retries the unit.
        """
        for (question_id, repeat, turn), text in done.items():
            self.done[(cell.cell_id, question_id, repeat, turn)] = {"output_text": text}
        if cache.model != cell.model.name:
            cache.model, cache.loaded = None, None
            cache.decoders.clear()
            cache.warmed.clear()
            gc.collect()
            head_kinds = {self.methods[c.method].head_kind for c in self.cells if c.model.name == cell.model.name and self.methods[c.method].needs_head}
            cache.loaded = self._load_model(cell.model, head_kinds)
            cache.model = cell.model.name
        loaded = cache.loaded
        spec = self.methods[cell.method]
        if spec.needs_head and spec.head_kind in loaded.head_errors:
            raise loaded.head_errors[spec.head_kind]
        if cell.cell_id not in cache.decoders:
            cache.decoders[cell.cell_id] = spec.create(loaded.target, loaded.heads.get(spec.head_kind), cell.method_params)
        decoder = cache.decoders[cell.cell_id]
        if cell.cell_id not in cache.warmed and questions:
            cache.warmed.add(cell.cell_id)
            try:
                self._warm_up(loaded, decoder, cell, questions[0])
            except Exception as error:  # as in _run_model: the timed generations will say whether it matters
                logger.warning("warm-up of %s failed: %s", cell.cell_id, error)
        for question in questions:
            for repeat in range(cell.repeats):
                yield from self._question_rows(loaded, decoder, cell, question, repeat)

    def _unit_done(self, cell: Cell, question: Question, repeat: int) -> bool:
        return all((cell.cell_id, question.question_id, repeat, t) in self.done for t in range(1, len(question.turns) + 1))

    def _prepare_model(self, config: ModelConfig, cells: list[Cell], progress: Any) -> _Prepared | None:
        """Load a model with its heads and build the decoders of its unfinished cells (None: nothing
        to do, or the load failed and its cells were recorded as failures)."""
        todo = [c for c in cells if not all(self._unit_done(c, q, r) for q in self.questions[c.task.name] for r in range(c.repeats))]
        if not todo:
            return None
        head_kinds = {self.methods[c.method].head_kind for c in todo if self.methods[c.method].needs_head}
        logger.info("loading model %s (%s)", config.name, config.source)
        try:
            loaded = self._load_model(config, head_kinds)
        except Exception as error:  # a bad path, no network, OOM: every cell of this model fails
            for cell in todo:
                self._fail(cell, error)
                if progress is not None:
                    progress.update(self._answers_left(cell))
            return None
        bandwidths = self.manifest["hardware"].setdefault("read_bandwidth_bytes_per_s", {})
        if loaded.info["device"] not in bandwidths:  # for the memory floor in reports; untimed
            bandwidths[loaded.info["device"]] = measure_read_bandwidth(loaded.target.device)
        self.manifest["models"][config.name] = loaded.info
        self.manifest["hardware"]["devices"][config.name] = loaded.info["device"]
        self._write_manifest()
        decoders: dict[str, Any] = {}
        for cell in todo:
            if self.methods[cell.method].needs_head and self.methods[cell.method].head_kind in loaded.head_errors:
                self._fail(cell, loaded.head_errors[self.methods[cell.method].head_kind])
                continue
            try:
                spec = self.methods[cell.method]
                decoders[cell.cell_id] = spec.create(loaded.target, loaded.heads.get(spec.head_kind), cell.method_params)
            except Exception as error:
                self._fail(cell, error)
        for cell in todo:
            if cell.cell_id not in decoders and progress is not None:
                progress.update(self._answers_left(cell))
        return _Prepared(config, loaded, [c for c in todo if c.cell_id in decoders], decoders)

    def _warm_up_once(self, prepared: _Prepared, cell: Cell, warmed: set[str]) -> None:
        if cell.cell_id in warmed:
            return
        warmed.add(cell.cell_id)
        started = time.perf_counter()
        try:
            self._warm_up(prepared.loaded, prepared.decoders[cell.cell_id], cell, self.questions[cell.task.name][0])
        except Exception as error:
            logger.warning("warm-up of %s failed: %s", cell.cell_id, error)
        # With compile on, the warm-up compiles this cell's shapes: never inside a timed region.
        self.manifest.setdefault("warmup_seconds", {})[cell.cell_id] = round(time.perf_counter() - started, 3)

    def _run_cell_question(self, prepared: _Prepared, cell: Cell, question: Question, repeat: int, warmed: set[str], progress: Any) -> None:
        if self._unit_done(cell, question, repeat):
            return
        self._warm_up_once(prepared, cell, warmed)
        if progress is not None:
            progress.set_description_str(
                f"{self.suite.name}: {cell.model.name} {cell.task.name} {method_label(cell.method, cell.method_params)} T={cell.temperature:g}",
                refresh=False,
            )
        self._run_question(prepared.loaded, prepared.decoders[cell.cell_id], cell, question, repeat, progress)

    def _run_model(self, config: ModelConfig, cells: list[Cell], progress: Any) -> None:
        """schedule: by_model: this model's cells, question by question, then the next model is loaded."""
        prepared = self._prepare_model(config, cells, progress)
        if prepared is None:
            return
        warmed: set[str] = set()
        for task in _unique(c.task for c in prepared.cells):
            task_cells = [c for c in prepared.cells if c.task.name == task.name]
            for question in self.questions[task.name]:
                for cell in task_cells:
                    for repeat in range(cell.repeats):
                        self._run_cell_question(prepared, cell, question, repeat, warmed, progress)
        if prepared.loaded.target.dtype in HALF_PRECISION:
            self._audit(prepared)
        del prepared
        _free_memory()

    def _run_interleaved(self, progress: Any) -> None:
        """schedule: interleaved: every model entry is loaded and warmed up before anything is timed;
        then each question runs on every (model, method configuration) in turn, the order rotated by
        one per question and repeat, so a slow drift of a shared machine hits all of them alike."""
        prepared = [p for model in _unique(c.model for c in self.cells)
                    if (p := self._prepare_model(model, [c for c in self.cells if c.model.name == model.name], progress)) is not None]
        warmed: set[str] = set()
        pairs = [(p, cell) for p in prepared for cell in p.cells]
        for p, cell in pairs:
            self._warm_up_once(p, cell, warmed)
        for task in _unique(cell.task for _, cell in pairs):
            task_pairs = [(p, cell) for p, cell in pairs if cell.task.name == task.name]
            for index, question in enumerate(self.questions[task.name]):
                for repeat in range(max(cell.repeats for _, cell in task_pairs)):
                    rotation = (index + repeat) % len(task_pairs)
                    for p, cell in task_pairs[rotation:] + task_pairs[:rotation]:
                        if repeat < cell.repeats:
                            self._run_cell_question(p, cell, question, repeat, warmed, progress)
        for p in prepared:
            if p.loaded.target.dtype in HALF_PRECISION:
                # A float32 eager entry of the same weights in this run is the audit's reference.
                reference = next((o.loaded.target for o in prepared if o.loaded.source == p.loaded.source
                                  and o.loaded.info["engine_path"] == "eager" and o.loaded.target.dtype == torch.float32), None)
                self._audit(p, reference)
        del prepared, pairs
        _free_memory()

    def _check_code_isolation(self) -> None:
        """--execute-code on a task that executes code needs the sandbox, or an explicit `unsafe`."""
        from harness.sandbox import ISOLATION_MODES, sandbox_unavailable

        if self.options.code_isolation not in ISOLATION_MODES:
            raise ValueError(f"code isolation {self.options.code_isolation!r} is not one of: {', '.join(ISOLATION_MODES)}")
        if not self.options.execute_code or self.options.code_isolation != "sandbox":
            return
        executing = sorted({c.task.name for c in self.cells if c.task.type == "humaneval"})
        if not executing:
            return
        reason = sandbox_unavailable()
        if reason is not None:
            raise ValueError(
                f"--execute-code would run model-written code for task(s) {', '.join(executing)}, but it cannot be "
                f"isolated here: {reason}. Install util-linux / allow namespaces, or pass --execute-code=unsafe to run "
                "it in a plain subprocess (no network, filesystem or user isolation), or drop --execute-code"
            )

    def _audit(self, prepared: _Prepared, reference_target: Any = None) -> None:
        """Classify this model's greedy half-precision mismatches with vanilla (harness.audit); untimed.
        The float32 reference is `reference_target` when given, else loaded on demand."""
        from harness.models import load_model

        config, loaded = prepared.config, prepared.loaded

        questions = {(task, q.question_id): q for task, items in self.questions.items() for q in items}

        def prompt_for(record: Mapping[str, Any]) -> list[int]:
            question_id, repeat, turn = str(record["question_id"]), int(record["repeat"]), int(record["turn"])
            answers = [str(self.done[(record["cell_id"], question_id, repeat, t)].get("output_text", "")).strip() for t in range(1, turn)]
            return self._prompt_ids(loaded, questions[(record["task"], question_id)], turn, answers)

        def reference() -> Any:
            if reference_target is not None:
                return reference_target
            logger.info("lossless audit: loading %s in float32 to classify half-precision mismatches", config.name)
            device = None if config.device_map else str(loaded.target.device)
            return load_model(
                config.source, gguf_file=config.gguf_file, dtype="float32", device=device, device_map=config.device_map, revision=config.revision
            ).target

        audited = {(r.get("cell_id"), r.get("repeat"), str(r.get("question_id")), r.get("turn")) for r in self.audit.read()}
        records = [r for r in self.done.values() if r.get("model") == config.name]
        try:
            rows = audit_greedy_mismatches(records, dtype=loaded.target.dtype, prompt_for=prompt_for, reference_model=reference, already_audited=audited)
        except Exception as error:  # the audit must not lose the run; unaudited mismatches count as unexplained
            logger.warning("lossless audit of %s failed: %s", config.name, error)
            return
        for row in rows:
            self.audit.append(row)

    def _run_units(self, progress: Any) -> None:
        """Fan the units out through options.backend (harness.backends); this process alone writes."""
        from harness import backends

        backend = self.options.backend
        units = backends.plan_units(self.cells, self.questions, self.done, backend.options.unit_chunk())
        threads = self.options.overrides.get("threads")
        spec = backends.WorkerSpec(
            self.suite, self.manifest["run_id"], self.data, self.bindings, self.options.execute_code, self.options.code_isolation, threads, backends.code_root()
        )
        workers = self.manifest.setdefault("workers", {})  # worker -> where it runs; models it loaded
        self.manifest["backend"] = self.manifest["sessions"][-1]["backend"] = backend.options.describe()
        self._write_manifest()
        if not units:  # a resume with nothing left: start no workers
            return
        busy: set[str] = set()
        retried = 0
        for event in backend.execute(units, spec, self.out):
            if isinstance(event, backends.Record):
                self._write(dict(event.row), progress)
            elif isinstance(event, backends.UnitStarted):
                busy.add(event.worker)
            elif isinstance(event, (backends.UnitFinished, backends.UnitFailed)):
                busy.discard(event.worker)
                if isinstance(event, backends.UnitFailed):
                    failure = event.failure
                    if not event.final:
                        retried += 1
                        logger.warning("unit %s failed on %s (%s: %s); retrying", event.unit.unit_id, event.worker, failure.error_type, failure.error)
                        continue
                    self._fail(event.unit.cell, failure.as_error(), failure.question_id, failure.turn, failure.repeat)
                    if progress is not None:  # its answers not written are given up (written ones counted as they came)
                        cell = event.unit.cell
                        progress.update(sum(1 for q in event.unit.questions for r in range(cell.repeats) for t in range(1, len(q.turns) + 1)
                                            if (cell.cell_id, q.question_id, r, t) not in self.done))
            elif isinstance(event, backends.WorkerStarted):
                workers[event.worker] = {**dict(event.info), "models": workers.get(event.worker, {}).get("models", {})}
                self._write_manifest()
            elif isinstance(event, backends.ModelReady):
                workers.setdefault(event.worker, {}).setdefault("models", {})[event.model] = event.info.get("device")
                self.manifest["models"].setdefault(event.model, dict(event.info))
                self.manifest["hardware"]["devices"].setdefault(event.model, event.info.get("device"))
                if event.read_bandwidth_bytes_per_s is not None:  # as _run_model measures it, but on the worker
                    workers[event.worker]["read_bandwidth_bytes_per_s"] = event.read_bandwidth_bytes_per_s
                    bandwidths = self.manifest["hardware"].setdefault("read_bandwidth_bytes_per_s", {})
                    bandwidths.setdefault(str(event.info.get("device")), event.read_bandwidth_bytes_per_s)
                self._write_manifest()
            if progress is not None:
                progress.set_description(f"{self.suite.name} [{len(busy)} busy / {len(workers)} workers]", refresh=False)
        self.manifest["sessions"][-1]["unit_retries"] = retried
        half = sorted(name for name, info in self.manifest["models"].items() if info.get("dtype") in ("float16", "bfloat16"))
        if half:  # _audit needs the model in this process; not done for workers yet
            logger.warning("the half-precision lossless audit (audit.jsonl) does not run with a backend; models: %s", ", ".join(half))

    def run(self) -> RunSummary:
        if self.options.backend is not None:
            from harness.backends import check_runs_on_workers

            check_runs_on_workers(self.suite, self.options.backend.options.backend, custom_methods=self.options.methods is not None)
        self._check_code_isolation()
        make_folder(self.out)
        with RunLock(self.out):  # held until the manifest is final: no second run or resume meanwhile
            return self._run_locked()

    def _run_locked(self) -> RunSummary:
        old_manifest, previous = self._read_folder()
        self._load_questions()
        self.bindings = self._bindings()
        if old_manifest is not None:
            self._check_data_versions(old_manifest, self.bindings)
        self._start_manifest(old_manifest, self.bindings, previous)
        status = "failed"
        try:
            todo = [(c, q, r) for c in self.cells for q in self.questions[c.task.name] for r in range(c.repeats)]
            answers = sum(len(q.turns) for _, q, _ in todo)
            skipped = sum(1 for c, q, r in todo for t in range(1, len(q.turns) + 1) if (c.cell_id, q.question_id, r, t) in self.done)
            if skipped:
                logger.info("resuming: %d of %d answers already done", skipped, answers)
            progress = None
            if self.options.progress:
                from tqdm.auto import tqdm

                # One step = one answer (a question's turn, for one method configuration and repeat).
                progress = tqdm(total=answers, initial=skipped, unit="answer", desc=self.suite.name, dynamic_ncols=True)
            try:
                if self.options.backend is not None:
                    self._run_units(progress)
                elif self.suite.schedule == "interleaved":
                    self._run_interleaved(progress)
                else:
                    for model in _unique(c.model for c in self.cells):
                        self._run_model(model, [c for c in self.cells if c.model.name == model.name], progress)
            finally:
                if progress is not None:
                    progress.close()
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            now = utc_now()
            self.manifest["finished_at"] = now
            self.manifest["status"] = status
            self.manifest["sessions"][-1].update({"finished_at": now, "status": status, "records_written": self.written, "failures": self.failed})
            self.manifest["counts"] = {"cells": len(self.cells), "records": len(self.done), "failures_this_session": self.failed}
            self._write_manifest()
        return RunSummary(self.out, self.manifest["run_id"], status, len(self.cells), self.written, skipped, self.failed)


def method_label(method: str, params: Mapping[str, Any]) -> str:
    """A method configuration in a few characters: `eagle2 d6/k10/n60`, `eagle1 mc_sim_7b_63`, `vanilla`."""
    if method == "eagle2" and {"depth", "top_k", "total_tokens"} <= set(params):
        return f"eagle2 d{params['depth']}/k{params['top_k']}/n{params['total_tokens']}"
    if method == "eagle1" and "tree" in params:
        tree = params["tree"]
        return f"eagle1 {tree}" if isinstance(tree, str) else f"eagle1 tree of {len(tree)} paths"
    if not params:
        return method
    return f"{method} " + "/".join(f"{name}={value}" for name, value in sorted(params.items()))


def _session_options(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The options the run in a folder began with (its first session; older manifests: its overrides)."""
    sessions = manifest.get("sessions") or []
    first = sessions[0] if sessions and isinstance(sessions[0], dict) else {}
    if "options" in first:
        return dict(first["options"])
    return {**dict(first.get("overrides", manifest.get("overrides") or {})), "execute_code": bool(manifest.get("execute_code", False))}


def _plain_json(value: Any) -> Any:
    """`value` as JSON would give it back (tuples become lists), for comparing with a stored manifest."""
    return json.loads(json.dumps(value))


def _show(value: Any) -> str:
    return "not given" if value is None else json.dumps(value)


def _unique(items: Iterable[Any]) -> list[Any]:
    """First occurrence of each item by `.name`, in order."""
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(item.name, item)
    return list(seen.values())


def run_suite(suite: Suite, options: RunOptions) -> RunSummary:
    """Run (or resume) `suite` into `options.out_dir`; see the module docstring for the files."""
    return Runner(suite, options).run()
