"""Regression check: compare a run's summary with a committed baseline file.

Baseline file (JSON, written by ``python -m harness check RUN --baseline FILE --write-baseline``)::

    {
      "schema": 1,
      "kind": "eagle2-bench baseline",
      "created_at": "2025-01-01T00:00:00Z",
      "tolerances": {"tau_rel_tol": 0.05, "speedup_rel_tol": 0.15},   # what the check used when written
      "provenance": {"run_dirs": [...], "run_id": ..., "suite": ..., "git_sha": ..., "hardware": {...}, "versions": {...},
                     "questions": {"<task>": ["<question id>", ...]}},
      "groups": {
        "<model>|<task>|<method>|<params>|T=<temperature>": {
          "model": ..., "task": ..., "method": ..., "params": ..., "temperature": 0.0,
          "n_samples": 10, "tau": 3.21, "speedup": 2.05, "tokens_per_s": 41.7,
          "lossless_compared": 10, "lossless_mismatches": 0, "failures": 0
        }, ...
      }
    }

Rules (the tolerances are relative: |current - baseline| / baseline):

- ``tau``: fails when it moves by more than ``tau_rel_tol`` either way. τ is a property of the
  algorithm and the weights, not of the machine's load, so a change in either direction means the
  method changed; update the baseline deliberately when that is intended.
- ``speedup``: fails when it drops by more than ``speedup_rel_tol``; a rise passes (timing noise
  and improvements are not regressions). Skipped when the baseline has no speedup (no vanilla).
- ``lossless_mismatches``: fails when above the baseline's count (normally 0), whatever the tolerances.
- ``failures``: fails when above the baseline's count.
- A baseline group missing from the run fails; a group only in the run is listed as new and passes.

- The run must hold the baseline's questions, task by task: a run of other questions is refused
  (:class:`QuestionsDifferError`, exit status 2) unless ``allow_different_questions``, which turns
  the refusal into a warning at the top of the report.
- A baseline that cannot be checked against (not JSON, another kind or schema, no groups, a group
  without a number of samples or τ, counts that are not integers) is bad input
  (:class:`BaselineError`, exit status 2), never a vacuous pass and never a regression (exit 1).
- Cells timed while the machine was busy (see :mod:`harness.machine_load`) are listed with a
  warning: their speedups say more about the machine than about the method.

The tolerances passed to :func:`run_check` are the ones applied; the baseline's are shown for
reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.aggregate import RunData, group_key, load_runs, summarize, timing_warnings
from harness.results import write_json_atomic

BASELINE_SCHEMA = 1
BASELINE_KIND = "eagle2-bench baseline"
DEFAULT_TAU_REL_TOL = 0.05
DEFAULT_SPEEDUP_REL_TOL = 0.15
_METRICS = ("n_samples", "tau", "speedup", "tokens_per_s", "lossless_compared", "lossless_mismatches", "failures")
_COUNTS = ("n_samples", "lossless_compared", "lossless_mismatches", "failures")
WRITE_HINT = "make one from a run you trust with: python -m harness check RUN --baseline FILE --write-baseline"


class BaselineError(ValueError):
    """A baseline file that cannot be checked against: bad input (exit 2), not a regression."""


class QuestionsDifferError(ValueError):
    """The run's questions are not the baseline's: its numbers are not comparable (exit 2)."""


def _number(value: Any) -> float | int | None:
    """JSON-safe: NaN and missing become None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) or (hasattr(value, "dtype") and "int" in str(value.dtype)):
        return int(value)
    value = float(value)
    return None if not math.isfinite(value) else value


def _groups(run: RunData) -> dict[str, dict[str, Any]]:
    summary = summarize(run)
    out: dict[str, dict[str, Any]] = {}
    for _, row in summary.iterrows():
        out[group_key(row)] = {
            "model": row["model"], "task": row["task"], "method": row["method"], "params": row["params"],
            "temperature": float(row["temperature"]),
            **{m: _number(row[m]) for m in _METRICS},
        }
    return out


def _questions(run: RunData) -> dict[str, list[str]]:
    """task -> sorted question ids that have records."""
    if run.records.empty:
        return {}
    return {str(task): sorted(map(str, frame["question_id"].unique())) for task, frame in run.records.groupby("task")}


def _provenance(run: RunData) -> dict[str, Any]:
    first = run.manifests[0] if run.manifests else {}
    suite = first.get("suite")
    return {
        "questions": _questions(run),
        "run_dirs": [str(d) for d in run.run_dirs],
        "run_id": first.get("run_id"),
        "suite": suite.get("name") if isinstance(suite, dict) else suite,
        "git_sha": first.get("git_sha"),
        "hardware": first.get("hardware"),
        "versions": first.get("versions"),
    }


def _as_dirs(run_dir: Path | Sequence[Path]) -> list[Path]:
    return [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(d) for d in run_dir]


def write_baseline(
    run_dir: Path,
    path: Path,
    *,
    tau_rel_tol: float = DEFAULT_TAU_REL_TOL,
    speedup_rel_tol: float = DEFAULT_SPEEDUP_REL_TOL,
) -> Path:
    """Write the baseline file of a run (or of its shards, given a list of directories) to ``path``."""
    run = load_runs(_as_dirs(run_dir))
    groups = _groups(run)
    if not groups:
        raise ValueError(f"{run_dir} has no results to make a baseline from")
    baseline = {
        "schema": BASELINE_SCHEMA,
        "kind": BASELINE_KIND,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tolerances": {"tau_rel_tol": tau_rel_tol, "speedup_rel_tol": speedup_rel_tol},
        "provenance": _provenance(run),
        "groups": groups,
    }
    path = Path(path)
    write_json_atomic(path, baseline)
    return path


def load_baseline(path: Path) -> dict[str, Any]:
    """The baseline at `path`, validated; BaselineError (bad input) when it cannot be checked against."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline file {path} does not exist; {WRITE_HINT}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BaselineError(f"baseline {path} is not valid JSON ({error}); {WRITE_HINT}") from error
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise BaselineError(f"{path} is not an eagle2-bench baseline file (expected \"kind\": \"{BASELINE_KIND}\"); {WRITE_HINT}")
    if data.get("schema") != BASELINE_SCHEMA:
        raise BaselineError(f"{path}: baseline schema {data.get('schema')!r} is not supported (expected {BASELINE_SCHEMA})")
    groups = data.get("groups")
    if not isinstance(groups, dict) or not groups:
        raise BaselineError(f"{path}: \"groups\" must be a non-empty object keyed by group (got {json.dumps(groups)}): "
                            f"a baseline without groups would pass any run; {WRITE_HINT}")
    problems = []
    for key, entry in groups.items():
        if not isinstance(entry, dict):
            problems.append(f"group {key!r} is {json.dumps(entry)}, not an object")
            continue
        for name in _COUNTS:
            value = entry.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"group {key!r}: {name} is {json.dumps(value)}, expected an integer >= 0")
        for name in ("tau", "speedup"):
            value = entry.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0):
                problems.append(f"group {key!r}: {name} is {json.dumps(value)}, expected a positive number or null")
        if isinstance(entry.get("n_samples"), int) and entry["n_samples"] > 0 and entry.get("tau") is None:
            problems.append(f"group {key!r}: tau is null although n_samples is {entry['n_samples']}")
    if not problems and not any(isinstance(e, dict) and e.get("n_samples") for e in groups.values()):
        problems.append("no group has samples (every n_samples is 0): nothing to compare with")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems) - 5} more)" if len(problems) > 5 else "")
        raise BaselineError(f"{path}: not a usable baseline: {shown}")
    questions = (data.get("provenance") or {}).get("questions")
    if questions is not None and (not isinstance(questions, dict) or not all(isinstance(v, list) for v in questions.values())):
        raise BaselineError(f"{path}: provenance.questions must map task names to lists of question ids, got {json.dumps(questions)[:200]}")
    return data


def compare_questions(baseline: dict[str, list[str]] | None, run: dict[str, list[str]]) -> list[str]:
    """What differs between the baseline's and the run's questions, task by task ([] = the same)."""
    if baseline is None:
        return []
    out = []
    for task in sorted(set(baseline) | set(run)):
        base, mine = set(map(str, baseline.get(task, []))), set(run.get(task, []))
        if base == mine:
            continue
        missing, extra = sorted(base - mine), sorted(mine - base)
        parts = [f"{len(mine)} question(s) in the run vs {len(base)} in the baseline"]
        if missing:
            parts.append("missing " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        if extra:
            parts.append("not in the baseline " + ", ".join(extra[:8]) + (" ..." if len(extra) > 8 else ""))
        out.append(f"task {task}: " + "; ".join(parts))
    return out


@dataclass(frozen=True)
class Comparison:
    group: str
    metric: str
    baseline: float | int | None
    current: float | int | None
    tolerance: str
    passed: bool
    note: str = ""


def _rel(current: float, baseline: float) -> float:
    return (current - baseline) / abs(baseline) if baseline else (0.0 if current == baseline else math.inf)


def _compare(key: str, base: dict[str, Any], cur: dict[str, Any] | None, tau_tol: float, speed_tol: float) -> list[Comparison]:
    if cur is None or (base.get("n_samples") and not cur.get("n_samples")):
        why = "group missing from the run" if cur is None else "no successful samples in the run"
        return [Comparison(key, "group", base.get("n_samples"), None if cur is None else 0, "present", False, why)]
    out = []
    b, c = base.get("tau"), cur.get("tau")
    if b is not None:
        ok = c is not None and abs(_rel(c, b)) <= tau_tol
        out.append(Comparison(key, "tau", b, c, f"±{tau_tol:.0%}", ok))
    b, c = base.get("speedup"), cur.get("speedup")
    if b is not None:
        ok = c is not None and _rel(c, b) >= -speed_tol
        note = "improved" if ok and c is not None and _rel(c, b) > speed_tol else ""
        out.append(Comparison(key, "speedup", b, c, f"-{speed_tol:.0%}", ok, note))
    b, c = base.get("lossless_mismatches") or 0, cur.get("lossless_mismatches") or 0
    if base.get("lossless_compared") or cur.get("lossless_compared"):
        out.append(Comparison(key, "lossless_mismatches", b, c, f"≤ {b}", c <= b,
                              f"{c} of {cur.get('lossless_compared') or 0} greedy outputs differ from vanilla" if c else ""))
    b, c = base.get("failures") or 0, cur.get("failures") or 0
    out.append(Comparison(key, "failures", b, c, f"≤ {b}", c <= b))
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def _delta(c: Comparison) -> str:
    if c.baseline is None or c.current is None or c.metric == "group":
        return "—"
    if isinstance(c.baseline, int) and isinstance(c.current, int):
        return f"{c.current - c.baseline:+d}"
    rel = _rel(c.current, c.baseline)
    return f"{c.current - c.baseline:+.3f} ({rel:+.1%})" if math.isfinite(rel) else f"{c.current - c.baseline:+.3f}"


def run_check(
    run_dir: Path,
    baseline: Path,
    *,
    tau_rel_tol: float = DEFAULT_TAU_REL_TOL,
    speedup_rel_tol: float = DEFAULT_SPEEDUP_REL_TOL,
    allow_different_questions: bool = False,
) -> tuple[bool, str]:
    """Compare a run (a directory, or a list of shard directories) with a baseline file.

    Returns (passed, a Markdown report whose table lists every compared metric with baseline,
    current, delta, tolerance and PASS/FAIL).
    """
    base = load_baseline(baseline)
    run = load_runs(_as_dirs(run_dir))
    differences = compare_questions((base.get("provenance") or {}).get("questions"), _questions(run))
    if differences and not allow_different_questions:
        raise QuestionsDifferError(
            f"the run in {', '.join(map(str, run.run_dirs))} did not answer the questions of baseline {baseline}: "
            + "; ".join(differences)
            + ". Its numbers are not comparable; run the baseline's questions (same suite and --limit), "
            "or pass --allow-different-questions to compare anyway (with a warning)"
        )
    current = _groups(run)
    comparisons: list[Comparison] = []
    for key, entry in base["groups"].items():
        comparisons += _compare(key, entry, current.get(key), tau_rel_tol, speedup_rel_tol)
    new_groups = [k for k in current if k not in base["groups"]]
    passed = all(c.passed for c in comparisons)

    failed = [c for c in comparisons if not c.passed]
    prov, cur_prov = base.get("provenance", {}), _provenance(run)
    lines = [
        f"# Regression check: {'PASSED' if passed else 'FAILED'}",
        "",
        f"Run: {', '.join(f'`{d}`' for d in run.run_dirs)} (git `{cur_prov.get('git_sha')}`, hardware `{_hw(cur_prov.get('hardware'))}`)",
        f"Baseline: `{baseline}` from run `{prov.get('run_id')}` (git `{prov.get('git_sha')}`, hardware `{_hw(prov.get('hardware'))}`, "
        f"created {base.get('created_at')})",
        f"Tolerances applied: τ ±{tau_rel_tol:.0%} (relative), speedup −{speedup_rel_tol:.0%} (relative drop); lossless "
        f"mismatches and failures may not exceed the baseline's"
        + (f" (baseline written with τ ±{base['tolerances'].get('tau_rel_tol', 0):.0%}, speedup −{base['tolerances'].get('speedup_rel_tol', 0):.0%})"
           if base.get("tolerances") else "") + ".",
        "",
    ]
    if differences:
        lines += ["**Warning: the run's questions differ from the baseline's** (allowed by --allow-different-questions): "
                  + "; ".join(differences) + ". Differences below may come from the questions, not the code.", ""]
    if "questions" not in prov:
        lines += ["**Warning:** the baseline does not list its questions (written by an older version); the run's questions "
                  "could not be compared with them.", ""]
    for warning in timing_warnings(summarize(run)):
        lines += [f"**Warning (timing):** {warning}", ""]
    if prov.get("hardware") and cur_prov.get("hardware") and _hw(prov["hardware"]) != _hw(cur_prov["hardware"]):
        lines += ["**Warning:** the run's hardware differs from the baseline's; speedups are not comparable across machines.", ""]
    lines += [
        f"{len(comparisons) - len(failed)} of {len(comparisons)} checks passed over {len(base['groups'])} baseline groups.",
        "",
    ]
    if failed:
        lines += ["## Failed", "", _table(failed), ""]
    lines += ["## All checks", "", _table(comparisons), ""]
    if new_groups:
        lines += ["Groups in the run but not in the baseline (not checked): " + ", ".join(f"`{k}`" for k in new_groups), ""]
    return passed, "\n".join(lines)


def _hw(hardware: Any) -> str:
    if isinstance(hardware, dict):
        parts = [str(hardware[k]) for k in ("gpu", "cpu", "device", "name") if hardware.get(k)]
        return ", ".join(parts) or json.dumps(hardware)
    return str(hardware)


def _table(comparisons: Sequence[Comparison]) -> str:
    rows = ["| Group | Metric | Baseline | Current | Delta | Tolerance | Result |", "| :-- | :-- | --: | --: | --: | :-- | :-- |"]
    for c in comparisons:
        result = ("PASS" if c.passed else "**FAIL**") + (f" ({c.note})" if c.note else "")
        group = c.group.replace("|", "\\|")
        rows.append(f"| `{group}` | {c.metric} | {_fmt(c.baseline)} | {_fmt(c.current)} | {_delta(c)} | {c.tolerance} | {result} |")
    return "\n".join(rows)
