"""Names, labels, order and number formatting shared by the Markdown, LaTeX and figure writers."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from harness.aggregate import parse_params

# Also the order of rows and bars: baselines first, then the methods under study.
METHOD_NAMES = {
    "vanilla": "Vanilla",
    "hf_generate": "HF generate",
    "hf_prompt_lookup": "HF prompt lookup",
    "eagle1": "EAGLE-1",
    "eagle2": "EAGLE-2",
    "eagle3": "EAGLE-3",
}
TASK_NAMES = {
    "mtbench": "MT-bench",
    "mt_bench": "MT-bench",
    "mt-bench": "MT-bench",
    "humaneval": "HumanEval",
    "gsm8k": "GSM8K",
    "alpaca": "Alpaca",
    "cnndm": "CNN/DM",
    "cnn_dm": "CNN/DM",
    "natural_questions": "Natural Ques.",
    "nq": "Natural Ques.",
    "specbench": "Spec-Bench",
    "spec_bench": "Spec-Bench",
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def task_name(task: str) -> str:
    return TASK_NAMES.get(task.lower(), task)


def full_label(method: str, params: str) -> str:
    """The method's name with all its params, e.g. ``EAGLE-2 (depth=6, top_k=10)``."""
    return f"{method_name(method)} ({params})" if params else method_name(method)


def temperature_label(t: float) -> str:
    return f"T = {t:g}"


def slug(text: str) -> str:
    """``text`` as a file-name and LaTeX-label part."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


@dataclass(frozen=True)
class Labels:
    """Display labels of (method, params): the method's name plus only the params that vary."""

    by_config: dict[tuple[str, str], str]

    @classmethod
    def from_summary(cls, summary: pd.DataFrame) -> Labels:
        out: dict[tuple[str, str], str] = {}
        for method, frame in summary.groupby("method", sort=False):
            configs = list(dict.fromkeys(frame["params"]))
            parsed = [parse_params(p) for p in configs]
            varying = sorted({k for p in parsed for k in p if len({repr(q.get(k)) for q in parsed}) > 1})
            for params, values in zip(configs, parsed):
                shown = ", ".join(f"{k}={_short(values[k])}" for k in varying if k in values)
                if not shown and varying:
                    shown = "defaults"
                out[(method, params)] = f"{method_name(method)} ({shown})" if shown else method_name(method)
        return cls(out)

    def __call__(self, method: str, params: str) -> str:
        return self.by_config.get((method, params), method_name(method))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


# ------------------------------------------------------------------------------------------ order


def ordered(values: Sequence[Any]) -> list[Any]:
    """``values`` without repeats, in first-seen order."""
    return list(dict.fromkeys(values))


def method_rank(method: str) -> int:
    order = list(METHOD_NAMES)
    return order.index(method) if method in order else len(order)


def params_sort_key(params: str) -> tuple:
    values = parse_params(params)
    return tuple((k, (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in sorted(values.items()))


def sorted_configs(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(model, method, params) rows in a stable order: models as they appear, vanilla, references, EAGLE."""
    triples = ordered(zip(frame["model"], frame["method"], frame["params"]))
    models = ordered(frame["model"])
    return sorted(triples, key=lambda t: (models.index(t[0]), method_rank(t[1]), t[1], params_sort_key(t[2])))


def in_run_order(summary: pd.DataFrame, tasks: Sequence[str]) -> pd.DataFrame:
    """Rows by model (as they appear), task (as run), temperature, method (baselines first), params."""
    if summary.empty:
        return summary
    models = ordered(summary["model"])
    key = summary.apply(
        lambda r: (models.index(r["model"]), tasks.index(r["task"]) if r["task"] in tasks else len(tasks), r["temperature"],
                   method_rank(r["method"]), r["method"], params_sort_key(r["params"])), axis=1)
    return summary.iloc[sorted(range(len(summary)), key=lambda i: key.iloc[i])].reset_index(drop=True)


# ------------------------------------------------------------------------------------ formatting


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A number with ``digits`` decimals (integers as they are); ``—`` for a missing or non-finite one."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return f"{int(value)}{suffix}"
    return f"{float(value):.{digits}f}{suffix}"


def pct(value: Any) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * float(value):.0f}%"


def nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def row_mean(mine: pd.DataFrame, n_tasks: int) -> tuple[float, float, bool]:
    """Mean speedup and τ of one row over the same tasks: those with a speedup (or, when none has
    one, those with a τ); ``partial`` when that is fewer than the table's tasks."""
    with_speed = mine[np.isfinite(mine["speedup"].astype(float))]
    used = with_speed if len(with_speed) else mine[np.isfinite(mine["tau"].astype(float))]
    return nanmean(used["speedup"]), nanmean(used["tau"]), 0 < len(used) < n_tasks


def run_title(manifests: Sequence[dict[str, Any]], run_dirs: Sequence[Any]) -> str:
    ids = ordered(str(m.get("run_id", "")) for m in manifests if m.get("run_id"))
    if ids:
        return ", ".join(ids)
    return ", ".join(d.name for d in run_dirs)
