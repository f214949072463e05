"""A run folder's files and the record schema: the names of the run files, the results schema
version and `ResultRow`, one line of results.jsonl. Reading and writing them goes through
eagle2.file_io (the one JSON-lines reader/appender and atomic writer; its module doc states the
damaged-line rule), re-exported here for the harness.

A run folder (harness.runner writes it, harness.aggregate reads it):

    results.jsonl   one ResultRow per successful (cell, question, repeat, turn)
    failures.jsonl  one object per failure: run_id, cell_id, model, task, method, method_params,
                    temperature, question_id (null: the whole cell), turn (null: the whole cell or
                    question), repeat, error_type, error, traceback, finished_at
    audit.jsonl     harness.audit's verdicts on half-precision greedy mismatches
    manifest.json   the run's description (see harness.runner)
    .lock           while a run or resume is writing (harness.lock)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from eagle2.file_io import (
    DamagedLine,
    JsonlContents,
    JsonlLog,
    OutputFolderError,
    make_folder,
    parse_jsonl,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from eagle2.record import GenerationRecord
    from harness.config import Cell

RESULTS_SCHEMA = 1  # the version of ResultRow, also stamped on the manifest; harness.aggregate refuses records of any other
RESULTS_FILE = "results.jsonl"
FAILURES_FILE = "failures.jsonl"
AUDIT_FILE = "audit.jsonl"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"

__all__ = [
    "AUDIT_FILE", "FAILURES_FILE", "FIELD_NAMES", "LOCK_FILE", "MANIFEST_FILE", "REQUIRED_FIELDS", "RESULTS_FILE", "RESULTS_SCHEMA",
    "DamagedLine", "JsonlContents", "JsonlLog", "OutputFolderError", "ResultRow", "make_folder", "parse_jsonl", "read_jsonl",
    "write_json_atomic", "write_jsonl_atomic", "write_text_atomic",
]

# Fields copied as they are from the engine's GenerationRecord (the lists become tuples).
_ENGINE_FIELDS = (
    "new_tokens", "prefill_time_s", "draft_time_s", "verify_time_s", "other_time_s", "target_forwards", "draft_tokens_per_step", "stop_reason",
)
_LIST_FIELDS = ("accept_lengths", "depth_reached", "depth_accepted", "confidence_checked", "confidence_accepted", "output_ids")


@dataclass(frozen=True, kw_only=True)
class ResultRow:
    """One line of results.jsonl: one generation (a turn of a question, one repeat) of one cell.

    Fields without a default are required of a stored record; a stored record that lacks one of the
    others, or holds null there, reads as the default ("not recorded"). Field order is line order.
    """

    schema: int = RESULTS_SCHEMA
    run_id: str = ""
    cell_id: str
    model: str
    model_source: str = ""  # where the weights came from (harness.models)
    head: str | None = None  # the draft head used; None for methods without one
    task: str
    method: str
    method_params: Mapping[str, Any] = field(default_factory=dict)  # resolved: every parameter
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    repeat: int = 0
    question_id: str
    category: str = ""
    turn: int  # 1-based
    max_new_tokens: int | None = None
    prompt_tokens: int = 0
    new_tokens: int
    wall_time_s: float  # the engine's total_time_s: prefill + decoding, device-synchronised, no tokenisation inside
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    other_time_s: float = 0.0
    target_forwards: int  # prefill included, so vanilla's tau = 1
    accept_lengths: tuple[int, ...] = ()
    depth_reached: tuple[int, ...] = ()
    depth_accepted: tuple[int, ...] = ()
    confidence_checked: tuple[int, ...] = ()
    confidence_accepted: tuple[int, ...] = ()
    draft_tokens_per_step: float = math.nan
    stop_reason: str = ""  # eos | max_new_tokens | context_limit
    output_ids: tuple[int, ...]
    output_text: str = ""
    correct: bool | None = None  # None: not scored
    data_sha256: str | None = None  # the question file
    weights_sha256: str | None = None  # None: not identifiable (e.g. tiny-random-llama)
    head_sha256: str | None = None  # None: no head, or a random one
    load: Mapping[str, Any] | None = None  # the machine's load over the timed region (harness.machine_load)
    finished_at: str = ""  # ISO 8601, UTC

    @classmethod
    def from_record(cls, cell: Cell, record: GenerationRecord, **context: Any) -> ResultRow:
        """The row of one generation: what the cell and the engine's record say, plus `context`
        (the other fields: run_id, question_id, turn, output_text, the sha256s, ...)."""
        from_engine = {name: getattr(record, name) for name in _ENGINE_FIELDS}
        from_engine.update({name: tuple(getattr(record, name)) for name in _LIST_FIELDS})
        return cls(
            cell_id=cell.cell_id,
            model=cell.model.name,
            task=cell.task.name,
            method=cell.method,
            method_params=dict(cell.method_params),
            temperature=cell.temperature,
            top_p=cell.top_p,
            top_k=cell.top_k,
            seed=cell.seed,
            max_new_tokens=cell.task.max_new_tokens,
            wall_time_s=record.total_time_s,
            **from_engine,
            **context,
        )

    @classmethod
    def parse(cls, stored: Mapping[str, Any], where: str) -> ResultRow:
        """A stored line, checked (schema, required fields) and normalised; `where` names it in errors.
        Keys this schema does not name are not read."""
        schema = stored.get("schema", RESULTS_SCHEMA)
        if schema != RESULTS_SCHEMA:
            raise ValueError(f"{where}: results schema {schema!r} is not supported (this harness reads schema {RESULTS_SCHEMA})")
        missing = [name for name in REQUIRED_FIELDS if name not in stored]
        if missing:
            raise ValueError(f"{where}: record lacks required field(s) {', '.join(missing)}")
        values = {name: stored[name] for name in FIELD_NAMES if stored.get(name) is not None}
        for name in _LIST_FIELDS:
            if name in values:
                values[name] = tuple(values[name])
        values["method_params"] = dict(values.get("method_params") or {})
        values["question_id"] = str(values["question_id"])
        values["temperature"] = float(values["temperature"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The row as its JSON line holds it (lists, not tuples)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in _LIST_FIELDS:
            out[name] = list(out[name])
        out["method_params"] = dict(self.method_params)
        return out


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultRow))
REQUIRED_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(ResultRow) if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
