"""Regression check: compare a run's summary with a committed baseline file.

Baseline file (JSON, written by :func:`write_baseline`)::

    {
      "schema": 1,
      "kind": "eagle2-bench baseline",
      "created_at": "2025-01-01T00:00:00Z",
      "tolerances": {"tau_rel_tol": 0.05, "speedup_rel_tol": 0.15},   # what the check used when written
      "provenance": {"run_dirs": [...], "run_id": ..., "suite": ..., "git_sha": ..., "hardware": {...}, "versions": {...}},
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

from harness.aggregate import RunData, group_key, load_runs, summarize

BASELINE_SCHEMA = 1
BASELINE_KIND = "eagle2-bench baseline"
DEFAULT_TAU_REL_TOL = 0.05
DEFAULT_SPEEDUP_REL_TOL = 0.15
_METRICS = ("n_samples", "tau", "speedup", "tokens_per_s", "lossless_compared", "lossless_mismatches", "failures")


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


def _provenance(run: RunData) -> dict[str, Any]:
    first = run.manifests[0] if run.manifests else {}
    suite = first.get("suite")
    return {
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(baseline, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def load_baseline(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline file {path} does not exist (make one with harness.check.write_baseline)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise ValueError(f"{path} is not an eagle2-bench baseline file (expected \"kind\": \"{BASELINE_KIND}\")")
    if data.get("schema") != BASELINE_SCHEMA:
        raise ValueError(f"{path}: baseline schema {data.get('schema')!r} is not supported (expected {BASELINE_SCHEMA})")
    if not isinstance(data.get("groups"), dict):
        raise ValueError(f"{path}: \"groups\" must be an object keyed by group")
    return data


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
) -> tuple[bool, str]:
    """Compare a run (a directory, or a list of shard directories) with a baseline file.

    Returns (passed, a Markdown report whose table lists every compared metric with baseline,
    current, delta, tolerance and PASS/FAIL).
    """
    base = load_baseline(baseline)
    run = load_runs(_as_dirs(run_dir))
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
