"""Aggregation of run results: per-group speed, speedup vs vanilla, acceptance and the lossless check.

Input is one or more run directories written by the runner (``results.jsonl``, ``failures.jsonl``,
``manifest.json``); shards of one run are merged, and a record that appears twice (same cell,
repeat, question and turn, e.g. after a resume or an overlapping shard) is kept once, the last
one read. Everything here is pure pandas/numpy; figures and files are ``harness.report``'s job.

A *group* is (model, task, method, params, temperature), ``params`` being the canonical string of
``method_params``. For each group :func:`summarize` reports:

- ``tokens_per_s``: total new tokens / total wall time (prefill included) over the group's records.
- ``speedup``: tokens/s of the group divided by tokens/s of vanilla decoding of the same model,
  task and temperature, both computed over the (seed, question, turn) samples that the two share
  (ratio of totals, so long answers weigh more, as in the EAGLE papers), with a 95% percentile
  bootstrap interval that resamples questions (all turns, seeds and repeats of a question move
  together) with a seeded ``numpy.random.Generator``. No vanilla: NaN and a ``note``.
- ``tau``: total new tokens / total target forwards (the prefill counts as one forward, so vanilla
  is exactly 1).
- ``alpha_d<N>``: acceptance rate at draft depth N = steps that accepted a depth-N draft / steps
  in which a depth-N draft was checked (its whole path above it had been accepted).
- ``prefill_share``, ``draft_share``, ``verify_share``, ``other_share``: fractions of the total
  wall time, over the records whose phases were profiled (NaN when none were).
- ``draft_tokens_per_step``: tokens sent to the target per forward, pooled over forwards.
- ``accuracy``: mean of ``correct`` over the records that have it (GSM8K, HumanEval).
- ``failures``: recorded failures of the group that no later record superseded.
- ``others_cores``: CPU cores that other processes used, on average, while the group's answers
  were timed (the larger of the per-process and the whole-machine count, plus hypervisor steal);
  ``cpu_per_wall``: this process's CPU time per wall second over the same regions;
  ``repeat_spread``: the largest max/min ratio of tokens/s among repeats of one sample (NaN
  without repeats). ``timing_flag`` says why the group's timing is not trustworthy ("" when it
  is): others used ≥ ``CONTENTION_CORES`` cores, the process got < ``MIN_CPU_PER_WALL`` of a core
  on a CPU device, repeats spread more than ``MAX_REPEAT_SPREAD``×, or its vanilla reference has
  such a flag (a speedup is only as good as both timings).
- ``lossless_compared`` / ``lossless_near_ties`` / ``lossless_mismatches``: at temperature 0, every
  non-vanilla output is compared with vanilla's ``output_ids`` for the same (model, task, seed,
  question, turn). In float32/float64 any difference is a mismatch (speculative decoding must be
  lossless under greedy decoding). In half precision the run's ``audit.jsonl`` (harness.audit)
  classifies each difference: a near-tie (the two tokens' float32 logits within the dtype's margin)
  is counted in ``lossless_near_ties``; an unexplained or unaudited difference is a mismatch.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.results import AUDIT_FILE, FAILURES_FILE, FIELD_NAMES, MANIFEST_FILE, RESULTS_FILE, ResultRow, read_jsonl

logger = logging.getLogger(__name__)

VANILLA = "vanilla"
GROUP_KEYS: tuple[str, ...] = ("model", "task", "method", "params", "temperature")
# A record is identified by these; a later duplicate replaces an earlier one.
RECORD_KEYS: tuple[str, ...] = ("cell_id", "repeat", "question_id", "turn")
# What a speculative sample and its vanilla counterpart share (model, task, temperature are fixed
# within a comparison).
SAMPLE_KEYS: tuple[str, ...] = ("seed", "question_id", "turn")
# Parts of a cell's identity that GROUP_KEYS leave out: one group mixing them (runs or shards run
# with other overrides, a head fallback) gets a note instead of silently pooled numbers.
POOLING_WARNING_KEYS: tuple[str, ...] = ("head", "max_new_tokens", "top_p", "top_k", "model_source")

# Timing under contention (see harness.machine_load): thresholds of the flag.
CONTENTION_CORES = 0.5  # other processes using at least half a core on average during the timed regions
MIN_CPU_PER_WALL = 0.5  # this process getting less than half a core while it ran (CPU devices only)
MAX_REPEAT_SPREAD = 1.5  # tokens/s of repeats of one sample differing by more than this factor

BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE_LEVEL = 0.95

# ---------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunData:
    """The merged contents of one or more run directories (shards)."""

    records: pd.DataFrame  # one row per (cell, repeat, question, turn); adds a ``params`` column
    failures: pd.DataFrame  # failures not superseded by a record; adds ``params``
    manifests: tuple[dict[str, Any], ...]  # one per run dir that has a manifest, in the order given
    run_dirs: tuple[Path, ...]
    audit: pd.DataFrame = field(default_factory=pd.DataFrame)  # rows of audit.jsonl (harness.audit), keyed like records


def canonical_params(params: Mapping[str, Any] | None) -> str:
    """``{"top_k": 10, "depth": 6}`` -> ``"depth=6, top_k=10"``: sorted, stable, readable.

    Strings are written bare, everything else as compact JSON (so a tree given as a path list
    stays exact). An empty mapping gives ``""``.
    """
    if not params:
        return ""
    parts = []
    for name in sorted(params):
        value = params[name]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
        parts.append(f"{name}={text}")
    return ", ".join(parts)


def parse_params(params: str) -> dict[str, Any]:
    """Inverse of :func:`canonical_params` for scalar values (strings stay strings)."""
    out: dict[str, Any] = {}
    if not params:
        return out
    for part in _split_params(params):
        name, _, text = part.partition("=")
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def _split_params(params: str) -> list[str]:
    # Split on ", " at bracket depth 0 (JSON values are compact, so they never contain ", ").
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0 and params[i + 1 : i + 2] == " ":
            parts.append(params[start:i])
            start = i + 2
    parts.append(params[start:])
    return parts


def _shard_dirs(path: Path) -> list[Path]:
    """A run directory as given; one without run files stands for its run subfolders (shards)."""
    if not path.is_dir() or any((path / name).exists() for name in (RESULTS_FILE, FAILURES_FILE, MANIFEST_FILE)):
        return [path]
    inner = sorted(p.parent for p in path.glob(f"*/{RESULTS_FILE}"))
    return inner or [path]


def _normalise_record(row: dict[str, Any], where: str) -> dict[str, Any]:
    out = ResultRow.parse(row, where).as_dict()
    out["params"] = canonical_params(out["method_params"])
    return out


def load_runs(run_dirs: Path | str | Sequence[Path | str]) -> RunData:
    """Read and merge run directories (shards), later ones overriding earlier duplicates."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    dirs = tuple(d for given in run_dirs for d in _shard_dirs(Path(given)))
    if not dirs:
        raise ValueError("no run directory given")
    records: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    manifests: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    for run_dir in dirs:
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory {run_dir} does not exist")
        results_path, failures_path, manifest_path = (run_dir / RESULTS_FILE, run_dir / FAILURES_FILE, run_dir / MANIFEST_FILE)
        if not (results_path.exists() or failures_path.exists() or manifest_path.exists()):
            raise FileNotFoundError(
                f"{run_dir} is not a run directory: expected {RESULTS_FILE}, {FAILURES_FILE} or {MANIFEST_FILE} in it"
            )
        if results_path.exists():
            for i, row in enumerate(read_jsonl(results_path)):
                records.append(_normalise_record(row, f"{results_path} record {i + 1}"))
        if failures_path.exists():
            for row in read_jsonl(failures_path):
                row = dict(row)
                row["params"] = canonical_params(row.get("method_params"))
                row["temperature"] = float(row["temperature"]) if row.get("temperature") is not None else math.nan
                row["question_id"] = None if row.get("question_id") is None else str(row["question_id"])
                failures.append(row)
        if (run_dir / AUDIT_FILE).exists():
            audits.extend(read_jsonl(run_dir / AUDIT_FILE))
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            manifest = dict(manifest, _run_dir=str(run_dir))
            manifests.append(manifest)

    record_frame = pd.DataFrame.from_records(records)
    if record_frame.empty:
        record_frame = pd.DataFrame(columns=[*FIELD_NAMES, "params"])
    else:
        before = len(record_frame)
        record_frame = record_frame.drop_duplicates(subset=list(RECORD_KEYS), keep="last").reset_index(drop=True)
        if len(record_frame) < before:
            logger.info("merged %d duplicate record(s) (kept the last of each)", before - len(record_frame))

    failure_frame = pd.DataFrame.from_records(failures)
    failure_columns = ["cell_id", "model", "task", "method", "params", "temperature", "question_id", "turn", "error_type", "error"]
    if failure_frame.empty:
        failure_frame = pd.DataFrame(columns=failure_columns)
    else:
        for name in failure_columns:
            if name not in failure_frame:
                failure_frame[name] = None
        if "repeat" not in failure_frame:
            failure_frame["repeat"] = None
        keys = ["cell_id", "question_id", "repeat", "turn"]
        failure_frame = failure_frame.drop_duplicates(subset=keys, keep="last")
        # A failure that a later (resumed) run turned into a record no longer counts; so does a
        # whole-cell failure (model load, bad method: no question) of a cell that now has records.
        if not record_frame.empty:
            done = set(zip(record_frame["cell_id"], record_frame["question_id"], record_frame["repeat"], record_frame["turn"]))
            cells_with_records = set(record_frame["cell_id"])
            keep = [
                (c, q, 0 if r is None or r != r else int(r), t) not in done
                and not (q is None and c in cells_with_records)
                for c, q, r, t in zip(*(failure_frame[k] for k in keys))
            ]
            failure_frame = failure_frame[keep]
        failure_frame = failure_frame.reset_index(drop=True)
    audit_frame = pd.DataFrame.from_records(audits, columns=[*RECORD_KEYS, "kind", "position", "logit_gap", "margin"])
    if not audit_frame.empty:
        audit_frame["question_id"] = audit_frame["question_id"].astype(str)
        audit_frame = audit_frame.drop_duplicates(subset=list(RECORD_KEYS), keep="last").reset_index(drop=True)
    return RunData(records=record_frame, failures=failure_frame, manifests=tuple(manifests), run_dirs=dirs, audit=audit_frame)


# ------------------------------------------------------------------------------------ aggregation


@dataclass(frozen=True)
class Speedup:
    value: float  # ratio of tokens/s over the shared samples; NaN without vanilla
    low: float  # bootstrap percentile interval
    high: float
    samples: int  # shared (seed, question, turn) samples
    questions: int  # distinct questions among them
    vanilla_tokens_per_s: float  # vanilla's tokens/s over the same samples


_NO_SPEEDUP = Speedup(math.nan, math.nan, math.nan, 0, 0, math.nan)


def paired_speedup(
    method_records: pd.DataFrame,
    vanilla_records: pd.DataFrame,
    *,
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = CONFIDENCE_LEVEL,
) -> Speedup:
    """Speedup of ``method_records`` over ``vanilla_records`` on the samples both have.

    Both frames hold one model, task and temperature. Repeats of a sample are summed (tokens and
    time) on each side. The interval resamples questions with replacement ``n_boot`` times with
    ``numpy.random.default_rng(seed)``, so it does not depend on which other groups exist.
    """
    if method_records.empty or vanilla_records.empty:
        return _NO_SPEEDUP
    keys = list(SAMPLE_KEYS)
    ours = method_records.groupby(keys, sort=False)[["new_tokens", "wall_time_s"]].sum()
    theirs = vanilla_records.groupby(keys, sort=False)[["new_tokens", "wall_time_s"]].sum()
    shared = ours.add_suffix("_m").join(theirs.add_suffix("_v"), how="inner")
    if shared.empty:
        return _NO_SPEEDUP
    per_question = shared.groupby(level="question_id", sort=True).sum()
    m_tok, m_time, v_tok, v_time = (
        per_question[c].to_numpy(dtype=float) for c in ("new_tokens_m", "wall_time_s_m", "new_tokens_v", "wall_time_s_v")
    )

    def ratio(mt: np.ndarray, ms: np.ndarray, vt: np.ndarray, vs: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (mt / ms) / (vt / vs)

    value = float(ratio(m_tok.sum(), m_time.sum(), v_tok.sum(), v_time.sum()))
    n = len(per_question)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n): question indices per resample
    boots = ratio(m_tok[index].sum(1), m_time[index].sum(1), v_tok[index].sum(1), v_time[index].sum(1))
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.nanpercentile(boots, [tail, 100.0 - tail]) if np.isfinite(boots).any() else (math.nan, math.nan)
    vanilla_tps = float(v_tok.sum() / v_time.sum()) if v_time.sum() > 0 else math.nan
    return Speedup(value, float(low), float(high), len(shared), n, vanilla_tps)


def _sum_lists(lists: Iterable[Sequence[int]]) -> np.ndarray:
    lists = [np.asarray(x, dtype=float) for x in lists if len(x)]
    if not lists:
        return np.zeros(0)
    width = max(len(x) for x in lists)
    total = np.zeros(width)
    for x in lists:
        total[: len(x)] += x
    return total


def _paired_counts(group: pd.DataFrame, totals: str, hits: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-index sums of two list columns (e.g. depth reached / accepted), the second padded to the first."""
    total = _sum_lists(group[totals])
    hit = _sum_lists(group[hits])
    return total, np.pad(hit, (0, max(0, len(total) - len(hit))))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def lossless_table(records: pd.DataFrame, audit: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per temperature-0, non-vanilla record: whether its output equals vanilla's.

    The reference is vanilla's record for the same (model, task, seed, question, turn), its lowest
    repeat. Columns: the group keys, ``seed, question_id, turn, repeat, has_reference, match,
    first_diff`` (first differing position, -1 when equal or no reference), ``method_len``,
    ``vanilla_len``, ``divergence`` (``identical``; for a difference the audit's verdict
    ``near_tie`` / ``unexplained``, or ``unaudited``) and the audit's ``logit_gap`` / ``margin``.
    """
    columns = [*GROUP_KEYS, "seed", "question_id", "turn", "repeat", "has_reference", "match", "first_diff", "method_len", "vanilla_len",
               "divergence", "logit_gap", "margin"]
    verdicts: dict[tuple, Any] = {}
    if audit is not None and not audit.empty:
        for row in audit.itertuples(index=False):
            verdicts[(row.cell_id, int(row.repeat), str(row.question_id), int(row.turn))] = row
    if records.empty:
        return pd.DataFrame(columns=columns)
    greedy = records[records["temperature"] == 0.0]
    reference: dict[tuple, list[int]] = {}
    for row in greedy[greedy["method"] == VANILLA].sort_values("repeat", kind="stable").itertuples(index=False):
        reference.setdefault((row.model, row.task, row.seed, row.question_id, row.turn), row.output_ids)
    rows = []
    for row in greedy[greedy["method"] != VANILLA].itertuples(index=False):
        ref = reference.get((row.model, row.task, row.seed, row.question_id, row.turn))
        ours = list(row.output_ids)
        if ref is None:
            match, first_diff = False, -1
        else:
            ref = list(ref)
            match = ours == ref
            first_diff = -1 if match else next((i for i, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
        verdict = None if match else verdicts.get((row.cell_id, int(row.repeat), str(row.question_id), int(row.turn)))
        rows.append(
            {
                **{k: getattr(row, k) for k in GROUP_KEYS},
                "seed": row.seed, "question_id": row.question_id, "turn": row.turn, "repeat": row.repeat,
                "has_reference": ref is not None, "match": bool(match), "first_diff": first_diff,
                "method_len": len(ours), "vanilla_len": -1 if ref is None else len(ref),
                "divergence": "identical" if match else ("unaudited" if verdict is None else verdict.kind),
                "logit_gap": math.nan if verdict is None else verdict.logit_gap,
                "margin": math.nan if verdict is None else verdict.margin,
            }
        )
    return pd.DataFrame(rows, columns=columns)


def summarize(
    run: RunData,
    *,
    by: Sequence[str] = (),
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """One row per group (plus the extra ``by`` columns, e.g. ``("category",)``); see the module doc.

    Groups that only have failures appear with ``n_samples == 0`` and NaN metrics. Rows are sorted
    by model, task, temperature, method and params, vanilla first.
    """
    records = run.records
    keys = [*GROUP_KEYS, *by]
    lossless = lossless_table(records, run.audit)
    rows: list[dict[str, Any]] = []
    max_depth = 0
    if not records.empty:
        vanilla_by_setting = {
            key: frame for key, frame in records[records["method"] == VANILLA].groupby(["model", "task", "temperature"], sort=False)
        }
        for key, group in records.groupby(keys, sort=False, dropna=False):
            row: dict[str, Any] = dict(zip(keys, key))
            notes: list[str] = []
            for column in POOLING_WARNING_KEYS:
                if column in group and group[column].nunique(dropna=False) > 1:
                    values = ", ".join(sorted(map(str, group[column].unique())))
                    notes.append(f"pools records with different {column} ({values}): merged runs that differ")
            new_tokens = int(group["new_tokens"].sum())
            wall = float(group["wall_time_s"].sum())
            forwards = int(group["target_forwards"].sum())
            row.update(
                n_questions=int(group["question_id"].nunique()),
                n_samples=len(group),
                new_tokens=new_tokens,
                time_s=wall,
                tokens_per_s=_ratio(new_tokens, wall),
                tau=_ratio(new_tokens, forwards),
                target_forwards=forwards,
            )
            vanilla = vanilla_by_setting.get((row["model"], row["task"], row["temperature"]))
            if vanilla is None:
                speed = _NO_SPEEDUP
                notes.append("no vanilla run of this model/task/temperature: speedup not computed")
            else:
                speed = paired_speedup(group, vanilla, n_boot=n_boot, seed=seed)
                if speed.samples == 0:
                    notes.append("no (seed, question, turn) in common with vanilla: speedup not computed")
                elif speed.samples < (n_samples := group.groupby(list(SAMPLE_KEYS)).ngroups):
                    notes.append(f"speedup over {speed.samples} of {n_samples} samples (those vanilla also has)")
            row.update(
                vanilla_tokens_per_s=speed.vanilla_tokens_per_s,
                speedup=speed.value,
                speedup_lo=speed.low,
                speedup_hi=speed.high,
                n_paired=speed.samples,
            )
            # Phase shares, over the records whose phases were profiled.
            profiled = group[(group["draft_time_s"] + group["verify_time_s"] + group["other_time_s"]) > 0]
            profiled_wall = float(profiled["wall_time_s"].sum())
            for phase in ("prefill", "draft", "verify", "other"):
                row[f"{phase}_share"] = _ratio(profiled[f"{phase}_time_s"].sum(), profiled_wall) if len(profiled) else math.nan
            # Pooled over forwards: each record's mean weighted by its number of forwards.
            dtps = group[["draft_tokens_per_step", "target_forwards"]].dropna()
            dtps = dtps[dtps["draft_tokens_per_step"] > 0]
            row["draft_tokens_per_step"] = _ratio((dtps["draft_tokens_per_step"] * dtps["target_forwards"]).sum(), dtps["target_forwards"].sum())
            scored = group["correct"].dropna()
            row["accuracy"] = float(scored.astype(bool).mean()) if len(scored) else math.nan
            row["n_scored"] = len(scored)
            reached, accepted = _paired_counts(group, "depth_reached", "depth_accepted")
            for d, (r, a) in enumerate(zip(reached, accepted), start=1):
                row[f"alpha_d{d}"] = _ratio(a, r)
            max_depth = max(max_depth, len(reached))
            if not lossless.empty and not by:
                mask = np.ones(len(lossless), dtype=bool)
                for k in GROUP_KEYS:
                    mask &= (lossless[k] == row[k]).to_numpy()
                mine = lossless[mask & lossless["has_reference"].to_numpy()]
                row["lossless_compared"] = len(mine)
                near_tie = (mine["divergence"] == "near_tie").to_numpy()
                row["lossless_near_ties"] = int(near_tie.sum())
                row["lossless_mismatches"] = int((~mine["match"].to_numpy() & ~near_tie).sum())
                if len(mine) < int(mask.sum()):
                    notes.append(f"{int(mask.sum()) - len(mine)} greedy output(s) without a vanilla counterpart")
            else:
                row["lossless_compared"] = 0
                row["lossless_near_ties"] = 0
                row["lossless_mismatches"] = 0
            if row["lossless_mismatches"]:
                notes.append(f"LOSSLESS CHECK FAILED: {row['lossless_mismatches']} of {row['lossless_compared']} outputs differ from vanilla"
                             + (" (unexplained by a near-tie)" if row["lossless_near_ties"] else ""))
            row.update(_timing(group))
            row["note"] = "; ".join(notes)
            rows.append(row)
        vanilla_flags = {(r["model"], r["task"], r["temperature"]): r["timing_flag"] for r in rows if r["method"] == VANILLA}
        for row in rows:
            flag = vanilla_flags.get((row["model"], row["task"], row["temperature"]), "")
            if row["method"] != VANILLA and flag:
                row["timing_flag"] = "; ".join(filter(None, [row["timing_flag"], f"its vanilla reference: {flag}"]))

    # Failures: counted per group; a group that only failed still gets a row.
    failure_counts: dict[tuple, int] = {}
    if not run.failures.empty and not by:
        for key, frame in run.failures.groupby(list(GROUP_KEYS), sort=False, dropna=False):
            failure_counts[key] = len(frame)
    seen = set()
    for row in rows:
        key = tuple(row[k] for k in GROUP_KEYS)
        seen.add(key)
        row["failures"] = failure_counts.get(key, 0)
    for key, count in failure_counts.items():
        if key in seen:
            continue
        row = dict(zip(GROUP_KEYS, key), n_questions=0, n_samples=0, new_tokens=0, time_s=0.0, failures=count,
                   lossless_compared=0, lossless_near_ties=0, lossless_mismatches=0, note=f"all {count} attempt(s) failed")
        rows.append(row)

    columns = [
        *keys, "n_questions", "n_samples", "new_tokens", "time_s", "tokens_per_s", "vanilla_tokens_per_s",
        "speedup", "speedup_lo", "speedup_hi", "n_paired", "tau", "target_forwards",
        *(f"alpha_d{d}" for d in range(1, max_depth + 1)),
        "prefill_share", "draft_share", "verify_share", "other_share", "draft_tokens_per_step",
        "accuracy", "n_scored", "failures", "lossless_compared", "lossless_near_ties", "lossless_mismatches",
        "others_cores", "cpu_per_wall", "repeat_spread", "timing_flag", "note",
    ]
    summary = pd.DataFrame(rows, columns=columns)
    if summary.empty:
        return summary
    for name in ("n_questions", "n_samples", "new_tokens", "n_paired", "target_forwards", "n_scored", "failures", "lossless_compared", "lossless_near_ties", "lossless_mismatches"):
        summary[name] = summary[name].fillna(0).astype(int)
    summary["note"] = summary["note"].fillna("")
    summary["timing_flag"] = summary["timing_flag"].fillna("")
    summary["_vanilla_last"] = summary["method"] != VANILLA
    summary = summary.sort_values(["model", "task", "temperature", *by, "_vanilla_last", "method", "params"], kind="stable")
    return summary.drop(columns="_vanilla_last").reset_index(drop=True)


def _timing(group: pd.DataFrame) -> dict[str, Any]:
    """Machine load and repeat spread of one group's timed regions, and the flag (see the module doc)."""
    loads = [x for x in group["load"] if isinstance(x, Mapping) and x.get("wall_s")] if "load" in group else []
    wall = sum(float(x["wall_s"]) for x in loads)
    others = sum(
        max(float(x.get("others_cpu_s") or 0.0), float(x.get("system_others_cpu_s") or 0.0)) + float(x.get("steal_s") or 0.0)
        for x in loads
    )
    own = sum(float(x.get("own_cpu_s") or 0.0) for x in loads)
    others_cores = others / wall if wall > 0 else math.nan
    cpu_per_wall = own / wall if wall > 0 else math.nan
    on_cpu = bool(loads) and all(x.get("device", "cpu") == "cpu" for x in loads)
    compiled = sum(int(x.get("graphs_compiled") or 0) for x in loads)
    spread = math.nan
    if "repeat" in group and group["repeat"].nunique() > 1:
        tps = group["new_tokens"] / group["wall_time_s"].where(group["wall_time_s"] > 0)
        per_sample = tps.groupby([group[k] for k in SAMPLE_KEYS]).agg(["max", "min", "count"])
        per_sample = per_sample[(per_sample["count"] > 1) & (per_sample["min"] > 0)]
        if len(per_sample):
            spread = float((per_sample["max"] / per_sample["min"]).max())
    flags = []
    if others_cores >= CONTENTION_CORES:
        busiest = _busiest(loads)
        flags.append(f"timed under contention: other processes used {others_cores:.2f} cores on average" + (f" ({busiest})" if busiest else ""))
    if on_cpu and cpu_per_wall < MIN_CPU_PER_WALL:
        flags.append(f"the run got only {cpu_per_wall:.2f} of a core while timed")
    if spread > MAX_REPEAT_SPREAD:
        flags.append(f"repeats of one sample differ up to {spread:.2f}x in tokens/s")
    if compiled:
        flags.append(f"torch.compile built {compiled} graph(s) inside timed generations (the warm-up missed a shape)")
    return {"others_cores": others_cores, "cpu_per_wall": cpu_per_wall, "repeat_spread": spread, "timing_flag": "; ".join(flags)}


def _busiest(loads: Sequence[Mapping[str, Any]]) -> str:
    """The other processes seen busy most often, e.g. `python (pid 123)`."""
    seen: dict[tuple[int, str], float] = {}
    for load in loads:
        for proc in load.get("busy_processes") or []:
            key = (int(proc.get("pid", 0)), str(proc.get("name", "?")))
            seen[key] = seen.get(key, 0.0) + float(proc.get("cores", 0.0)) * float(load["wall_s"])
    top = sorted(seen.items(), key=lambda item: -item[1])[:3]
    return ", ".join(f"{name} (pid {pid})" for (pid, name), _ in top)


def timing_warnings(summary: pd.DataFrame) -> list[str]:
    """One sentence per kind of untrustworthy timing in a summary (empty when every group is fine)."""
    if summary.empty or "timing_flag" not in summary:
        return []
    flagged = summary[summary["timing_flag"] != ""]
    if flagged.empty:
        return []
    names = [f"{r.model}/{r.task}/{r.method}{' ' + r.params if r.params else ''}/T={r.temperature:g}" for r in flagged.itertuples()]
    worst = flagged["others_cores"].max()
    return [
        f"{len(flagged)} of {len(summary)} cells have untrustworthy timings ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"
        + (f"; up to {worst:.2f} cores were used by other processes while they were timed" if np.isfinite(worst) and worst >= CONTENTION_CORES else "")
        + ". Their tokens/s and speedups are not publishable: rerun them on a quiet machine."
    ]


def depth_table(run: RunData) -> pd.DataFrame:
    """Long format: per group and depth d (1-based), steps that reached / accepted depth d, α_d."""
    rows = []
    if not run.records.empty:
        for key, group in run.records.groupby(list(GROUP_KEYS), sort=False):
            reached, accepted = _paired_counts(group, "depth_reached", "depth_accepted")
            for d, (r, a) in enumerate(zip(reached, accepted), start=1):
                rows.append({**dict(zip(GROUP_KEYS, key)), "depth": d, "reached": int(r), "accepted": int(a), "alpha": _ratio(a, r)})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "depth", "reached", "accepted", "alpha"])


def calibration_table(run: RunData) -> pd.DataFrame:
    """Long format: per group and confidence bin, drafted tokens checked / accepted by the target.

    Bin i of B covers draft probability [i/B, (i+1)/B); ``rate`` = accepted / checked.
    """
    rows = []
    if not run.records.empty:
        for key, group in run.records.groupby(list(GROUP_KEYS), sort=False):
            checked, accepted = _paired_counts(group, "confidence_checked", "confidence_accepted")
            if not len(checked) or checked.sum() == 0:
                continue
            bins = len(checked)
            for i, (c, a) in enumerate(zip(checked, accepted)):
                rows.append(
                    {**dict(zip(GROUP_KEYS, key)), "bin": i, "low": i / bins, "high": (i + 1) / bins,
                     "checked": int(c), "accepted": int(a), "rate": _ratio(a, c)}
                )
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "bin", "low", "high", "checked", "accepted", "rate"])


def group_key(row: Mapping[str, Any]) -> str:
    """A stable string for a group, used as the key of baseline files: ``model|task|method|params|T=t``."""
    return f"{row['model']}|{row['task']}|{row['method']}|{row['params']}|T={float(row['temperature']):g}"


# --------------------------------------------------------------------------- the tables of a report


@dataclass(frozen=True)
class RunTables:
    """All a report shows of a run, aggregated: no per-record rows, no raw records.

    Built by :func:`tabulate`; ``harness.report`` reads nothing else.
    """

    summary: pd.DataFrame  # summarize(run)
    by_category: pd.DataFrame  # summarize(run, by=("category",)); empty unless some task has two or more categories
    differences: pd.DataFrame  # lossless_table rows of greedy outputs that differ from their vanilla reference
    depth: pd.DataFrame  # depth_table(run)
    calibration: pd.DataFrame  # calibration_table(run)
    failure_counts: pd.DataFrame  # unresolved failures per group and error type: GROUP_KEYS, error_type ("?" if none), n
    failure_examples: pd.DataFrame  # error_type, error: the first failure of each error type
    tasks: tuple[str, ...]  # in the order the run met them
    question_ids: tuple[str, ...]  # every question with a record, in the order the run met them
    n_records: int
    n_failures: int  # unresolved failures
    manifests: tuple[dict[str, Any], ...]
    run_dirs: tuple[Path, ...]


def tabulate(run: RunData) -> RunTables:
    """The aggregated tables of ``run`` (see :class:`RunTables`)."""
    summary = summarize(run)
    records = run.records
    if summary.empty:
        tasks: list[str] = []
    elif records.empty:
        tasks = list(dict.fromkeys(summary["task"]))
    else:
        tasks = list(dict.fromkeys([*records["task"], *summary["task"]]))
    has_categories = not records.empty and bool((records.groupby("task")["category"].nunique() > 1).any())
    differences = lossless_table(records, run.audit)
    if not differences.empty:
        differences = differences[differences["has_reference"] & ~differences["match"]].reset_index(drop=True)
    failures = run.failures
    failure_counts = (
        failures.assign(error_type=failures["error_type"].fillna("?"))
        .groupby([*GROUP_KEYS, "error_type"], dropna=False).size().reset_index(name="n")
    )
    return RunTables(
        summary=summary,
        by_category=summarize(run, by=("category",)) if has_categories else pd.DataFrame(columns=[*GROUP_KEYS, "category"]),
        differences=differences,
        depth=depth_table(run),
        calibration=calibration_table(run),
        failure_counts=failure_counts,
        failure_examples=failures.drop_duplicates("error_type")[["error_type", "error"]].reset_index(drop=True),
        tasks=tuple(tasks),
        question_ids=tuple(dict.fromkeys(records["question_id"])),
        n_records=len(records),
        n_failures=len(failures),
        manifests=run.manifests,
        run_dirs=run.run_dirs,
    )
