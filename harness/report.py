"""Reports: paper-style tables (Markdown and LaTeX), a summary CSV and matplotlib figures.

Everything here is built from the aggregated tables of :mod:`harness.aggregate`, never from raw
records. :func:`write_report` writes into ``out_dir``::

    report.md        tables, lossless check, per-category tables, figures, failures, provenance
    report.tex       the main tables and the lossless check as booktabs tables
    summary.csv      one row per (model, task, method, params, temperature); see aggregate.summarize
    figures/*.png    150+ dpi, and the same figures as *.pdf

Figures (each skipped, with the reason given in report.md, when the run has no data for it):

- ``speedup_by_task``: speedup over vanilla per task and method, with bootstrap 95% intervals.
- ``tree_heatmap_<model>_<task>_T<t>``: speedup and τ over draft depth × top_k, one row of
  panels per total_tokens (when a run swept depth and top_k).
- ``tau_vs_total_tokens``: τ and speedup against the number of drafted tokens per step.
- ``acceptance_by_depth``: acceptance rate α_d at each draft depth, pooled over tasks.
- ``calibration``: actual acceptance rate against the draft's confidence, with the diagonal and
  the number of drafted tokens per confidence bin (EAGLE-2's premise: confidence ≈ acceptance).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from harness.aggregate import (
    CONTENTION_CORES,
    MAX_REPEAT_SPREAD,
    MIN_CPU_PER_WALL,
    VANILLA,
    RunData,
    calibration_table,
    depth_table,
    load_runs,
    lossless_table,
    parse_params,
    summarize,
    timing_warnings,
)

logger = logging.getLogger(__name__)

FIGURE_DPI = 200
MAX_BARS_PER_TASK = 6  # beyond this, bar/line figures show each method's best configuration only
MAX_MISMATCH_ROWS = 50

# Also the order of rows and bars: baselines first, then the methods under study.
METHOD_NAMES = {
    "vanilla": "Vanilla",
    "hf_generate": "HF generate",
    "hf_prompt_lookup": "HF prompt lookup",
    "eagle1": "EAGLE-1",
    "eagle2": "EAGLE-2",
    "eagle3": "EAGLE-3",
}
METHOD_COLORS = {
    "vanilla": "#7f7f7f",
    "eagle1": "#4c72b0",
    "eagle2": "#c44e52",
    "eagle3": "#8172b3",
    "hf_generate": "#937860",
    "hf_prompt_lookup": "#55a868",
}
_SPARE_COLORS = ("#dd8452", "#da8bc3", "#ccb974", "#64b5cd", "#2f4f4f")
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
# A paper-like look: small serif-free fonts, no top/right spines, light grid, embedded TrueType.
_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.5,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.4,
    "lines.markersize": 4,
    "legend.frameon": False,
    "savefig.dpi": FIGURE_DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.03,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
}


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def task_name(task: str) -> str:
    return TASK_NAMES.get(task.lower(), task)


def method_color(method: str) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    # Unknown methods get a spare color chosen by a stable hash of the name.
    return _SPARE_COLORS[sum(map(ord, method)) % len(_SPARE_COLORS)]


def _shade(color: str, i: int, n: int, spread: float = 0.5) -> tuple[float, float, float]:
    """The i-th of n shades of a color, from darker to lighter (n == 1: the color itself)."""
    rgb = np.array(to_rgb(color))
    if n <= 1:
        return tuple(rgb)
    t = i / (n - 1) - 0.5  # -0.5 (darkest) .. 0.5 (lightest)
    target = np.zeros(3) if t < 0 else np.ones(3)
    return tuple(rgb + (target - rgb) * abs(t) * 2 * spread * (0.7 if t < 0 else 1.0))


_MARKERS = ("o", "s", "^", "D", "v", "P")
_LINESTYLES = ("-", "--", ":", "-.")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-") or "x"


def _temp_label(t: float) -> str:
    return f"T = {t:g}"


# ------------------------------------------------------------------------------- labels and order


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


def _ordered(values: Sequence[Any]) -> list[Any]:
    return list(dict.fromkeys(values))


def _method_rank(method: str) -> int:
    order = list(METHOD_NAMES)
    return order.index(method) if method in order else len(order)


def _sorted_configs(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(model, method, params) rows in a stable order: models as they appear, vanilla, references, EAGLE."""
    triples = _ordered(zip(frame["model"], frame["method"], frame["params"]))
    models = _ordered(frame["model"])
    return sorted(triples, key=lambda t: (models.index(t[0]), _method_rank(t[1]), t[1], _params_sort_key(t[2])))


def _params_sort_key(params: str) -> tuple:
    values = parse_params(params)
    return tuple((k, (0, v) if isinstance(v, (int, float)) else (1, str(v))) for k, v in sorted(values.items()))


# ------------------------------------------------------------------------------ formatting helpers


def _fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, (int, np.integer)):
        return f"{int(value)}{suffix}"
    return f"{float(value):.{digits}f}{suffix}"


def _pct(value: Any) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * float(value):.0f}%"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (l, r, c)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(rule[a] for a in align) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: Any) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text)).replace("—", "--").replace("τ", r"$\tau$").replace("×", r"$\times$")


# ------------------------------------------------------------------------------------- the report


@dataclass
class _Context:
    run: RunData
    summary: pd.DataFrame
    labels: Labels
    tasks: list[str]
    temperatures: list[float]
    out_dir: Path
    figures: list[tuple[str, str, str]] = field(default_factory=list)  # (stem, title, caption)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (figure, reason)


def write_report(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Aggregate ``run_dirs`` (shards of a run are merged) and write the report into ``out_dir``.

    Returns the path of ``report.md``.
    """
    run = load_runs(list(run_dirs))
    summary = summarize(run)
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "summary.csv", index=False)
    if summary.empty:
        tasks, temperatures = [], []
    else:
        tasks = _ordered(list(run.records["task"]) + list(summary["task"])) if not run.records.empty else _ordered(summary["task"])
        temperatures = sorted(_ordered(summary["temperature"].dropna()))
    summary = _in_run_order(summary, tasks)
    ctx = _Context(run, summary, Labels.from_summary(summary) if not summary.empty else Labels({}), tasks, temperatures, out_dir)
    _make_figures(ctx)
    path = out_dir / "report.md"
    path.write_text(_markdown(ctx), encoding="utf-8")
    (out_dir / "report.tex").write_text(_latex(ctx), encoding="utf-8")
    logger.info("wrote %s (%d figures, %d skipped)", path, len(ctx.figures), len(ctx.skipped))
    return path


def _in_run_order(summary: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """Rows by model (as they appear), task (as run), temperature, method (baselines first), params."""
    if summary.empty:
        return summary
    models = _ordered(summary["model"])
    key = summary.apply(
        lambda r: (models.index(r["model"]), tasks.index(r["task"]) if r["task"] in tasks else len(tasks), r["temperature"],
                   _method_rank(r["method"]), r["method"], _params_sort_key(r["params"])), axis=1)
    return summary.iloc[sorted(range(len(summary)), key=lambda i: key.iloc[i])].reset_index(drop=True)


def _lossless_totals(summary: pd.DataFrame) -> tuple[int, int]:
    if summary.empty:
        return 0, 0
    return int(summary["lossless_compared"].sum()), int(summary["lossless_mismatches"].sum())


def _run_title(run: RunData) -> str:
    ids = _ordered(str(m.get("run_id", "")) for m in run.manifests if m.get("run_id"))
    if ids:
        return ", ".join(ids)
    return ", ".join(d.name for d in run.run_dirs)


def _cell(row: pd.Series | None) -> str:
    """``2.67× / 2.50`` (speedup / τ); ``†`` marks a group whose greedy outputs differ from vanilla."""
    if row is None:
        return ""
    if row.get("n_samples", 1) == 0:
        return "failed"
    text = f"{_fmt(row['speedup'], 2, '×')} / {_fmt(row['tau'])}"
    if row["lossless_mismatches"]:
        text += " †"
    if row.get("timing_flag"):
        text += " ‡"
    return text


def _main_table_rows(
    ctx: _Context, temperature: float, value: Callable[[pd.Series | None], str], *, include_vanilla: bool, mean: bool
) -> tuple[list[str], list[list[str]]]:
    """Rows model × method, columns tasks (and a mean of speedup and τ over tasks when ``mean``)."""
    frame = ctx.summary[ctx.summary["temperature"] == temperature]
    header = ["Model", "Method", *(task_name(t) for t in ctx.tasks), *(["Mean"] if mean else [])]
    rows = []
    for model, method, params in _sorted_configs(frame):
        if method == VANILLA and not include_vanilla:
            continue
        mine = frame[(frame["model"] == model) & (frame["method"] == method) & (frame["params"] == params)]
        cells = []
        for task in ctx.tasks:
            sel = mine[mine["task"] == task]
            cells.append(value(sel.iloc[0] if len(sel) else None))
        if mean:
            speed, tau, partial = _row_mean(mine, len(ctx.tasks))
            text = value(pd.Series({"speedup": speed, "tau": tau, "lossless_mismatches": 0}))
            cells.append(text + (" *" if partial and text else ""))
        rows.append([model, ctx.labels(method, params), *cells])
    return header, rows


def _row_mean(mine: pd.DataFrame, n_tasks: int) -> tuple[float, float, bool]:
    """Mean speedup and τ of one row over the same tasks: those with a speedup (or, when none has
    one, those with a τ); ``partial`` when that is fewer than the table's tasks."""
    with_speed = mine[np.isfinite(mine["speedup"].astype(float))]
    used = with_speed if len(with_speed) else mine[np.isfinite(mine["tau"].astype(float))]
    return _nanmean(used["speedup"]), _nanmean(used["tau"]), 0 < len(used) < n_tasks


def _nanmean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _tps_cell(row: pd.Series | None) -> str:
    return "" if row is None else _fmt(row["tokens_per_s"], 1) + (" ‡" if row.get("timing_flag") else "")


def _markdown(ctx: _Context) -> str:
    s, run = ctx.summary, ctx.run
    out: list[str] = [f"# Benchmark report: {_run_title(run)}", ""]
    compared, mismatches = _lossless_totals(s)
    if mismatches:
        out += [f"> **⚠ LOSSLESS CHECK FAILED: {mismatches} of {compared} greedy (T = 0) outputs differ from vanilla's.** "
                "Speculative decoding must reproduce vanilla decoding exactly at T = 0; affected cells are marked † "
                "and listed under *Lossless check*.", ""]
    elif compared:
        near_ties = int(s["lossless_near_ties"].sum()) if "lossless_near_ties" in s else 0
        if near_ties:
            out += [f"> ✓ Lossless check passed: of {compared} greedy (T = 0) speculative and reference outputs, "
                    f"{compared - near_ties} equal vanilla's and {near_ties} leave it at a half-precision near-tie "
                    "(audited in float32; see *Lossless check*); 0 unexplained.", ""]
        else:
            out += [f"> ✓ Lossless check passed: all {compared} greedy (T = 0) speculative and reference outputs equal vanilla's.", ""]
    else:
        out += ["> Lossless check: nothing to compare (no T = 0 run with both vanilla and another method).", ""]
    for warning in timing_warnings(s):
        out += [f"> **⚠ NOISY TIMING: {warning}** Cells marked ‡ are listed under *Timing conditions*.", ""]
    out += [
        f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from "
        + ", ".join(f"`{d}`" for d in run.run_dirs)
        + f": {len(run.records)} records, {len(run.failures)} unresolved failures.",
        "",
    ]
    if s.empty:
        out += ["No results to report.", ""]
        out += _provenance_md(run)
        return "\n".join(out)

    out += [
        "## Speedup and τ",
        "",
        "Each cell is *speedup × / τ*: speedup = tokens/s of the method ÷ tokens/s of vanilla decoding of the same "
        "model on the same (seed, question, turn) samples, wall time with prefill; τ = new tokens per target "
        "forward (the prefill counts as one forward, so vanilla's τ is 1). *Mean* averages the task columns "
        "(\\* : over the tasks that have a speedup only). — : no vanilla run to compare with. "
        "† : outputs differ from vanilla at T = 0. ‡ : timed while the machine was busy, or with an implausible spread "
        "(see *Timing conditions*). *failed*: every attempt failed (see *Failures*).",
        "",
    ]
    for t in ctx.temperatures:
        header, rows = _main_table_rows(ctx, t, _cell, include_vanilla=False, mean=len(ctx.tasks) > 1)
        out += [f"### {_temp_label(t)}", ""]
        out += [_md_table(header, rows, "ll" + "r" * (len(header) - 2)) if rows else "Only vanilla was run.", ""]

    out += ["## Throughput (tokens/s)", ""]
    for t in ctx.temperatures:
        header, rows = _main_table_rows(ctx, t, _tps_cell, include_vanilla=True, mean=False)
        out += [f"### {_temp_label(t)}", "", _md_table(header, rows, "ll" + "r" * (len(header) - 2)), ""]
    out += _fastest_vanilla_md(ctx)

    out += _lossless_md(ctx)
    out += _timing_md(ctx)
    out += _categories_md(ctx)
    out += _details_md(ctx)
    out += _figures_md(ctx)
    out += _failures_md(ctx)
    out += _provenance_md(run)
    return "\n".join(out)


def _lossless_md(ctx: _Context) -> list[str]:
    s = ctx.summary
    out = ["## Lossless check", "",
           "At T = 0 every speculative and reference output must equal vanilla's output ids for the same model, task, "
           "seed, question and turn.", ""]
    greedy = s[(s["temperature"] == 0) & (s["method"] != VANILLA)]
    if greedy.empty:
        return out + ["No T = 0 run of a method other than vanilla.", ""]
    out += ["In bfloat16/float16 a tree forward sums in another order than a single-token forward, so a greedy output may "
            "leave vanilla's where the target's two best tokens nearly tie. Each such difference is audited: the target's "
            "logits at the first differing position are recomputed in float32 on the common prefix; a *near-tie* is a gap "
            "between the two tokens' float32 logits within the dtype's margin (4 machine epsilons of the largest |logit|); "
            "anything else is *unexplained* and fails the check. In float32/float64 every difference fails.", ""]
    rows = []
    for _, r in greedy.iterrows():
        near_ties = int(r.get("lossless_near_ties", 0) or 0)
        if r["lossless_compared"] == 0:
            status = "not checked (no vanilla output)"
        elif r["lossless_mismatches"]:
            status = "**FAIL**"
        else:
            status = "pass"
        identical = r["lossless_compared"] - near_ties - r["lossless_mismatches"]
        rows.append([r["model"], task_name(r["task"]), ctx.labels(r["method"], r["params"]), str(r["lossless_compared"]), str(identical),
                     str(near_ties), str(r["lossless_mismatches"]), status])
    out += [_md_table(["Model", "Task", "Method", "Compared", "Identical", "Near-tie", "Unexplained", "Status"], rows, "lllrrrrl"), ""]
    table = lossless_table(ctx.run.records, ctx.run.audit)
    bad = table[table["has_reference"] & ~table["match"]] if not table.empty else table
    if len(bad):
        out += ["Differing outputs (first differing token position, lengths, audit verdict, float32 logit gap / margin):", ""]
        rows = [[r.model, task_name(r.task), ctx.labels(r.method, r.params), str(r.seed), str(r.question_id), str(r.turn),
                 str(r.first_diff), f"{r.method_len} / {r.vanilla_len}", r.divergence.replace("_", "-"),
                 "" if not np.isfinite(r.logit_gap) else f"{r.logit_gap:.3f} / {r.margin:.3f}"] for r in bad.head(MAX_MISMATCH_ROWS).itertuples()]
        out += [_md_table(["Model", "Task", "Method", "Seed", "Question", "Turn", "First diff", "Length (method / vanilla)", "Verdict", "Gap / margin"],
                          rows, "lllrlrrrlr"), ""]
        if len(bad) > MAX_MISMATCH_ROWS:
            out += [f"… and {len(bad) - MAX_MISMATCH_ROWS} more.", ""]
    return out


def _timing_md(ctx: _Context) -> list[str]:
    s = ctx.summary
    out = ["## Timing conditions", "",
           f"While each answer was timed the harness recorded the machine's load (`load` in results.jsonl). A cell is flagged ‡ "
           f"when other processes used ≥ {CONTENTION_CORES:g} core on average, when this process got < {MIN_CPU_PER_WALL:g} of a "
           f"core on a CPU, when repeats of one sample differ more than {MAX_REPEAT_SPREAD:g}× in tokens/s, or when its vanilla "
           "reference is flagged.", ""]
    measured = s[np.isfinite(s["others_cores"].astype(float))] if "others_cores" in s else s.iloc[0:0]
    if measured.empty:
        return out + ["No load was recorded (records from an older harness).", ""]
    flagged = s[s["timing_flag"] != ""]
    if flagged.empty:
        worst = float(measured["others_cores"].max())
        return out + [f"No cell is flagged: other processes used at most {worst:.2f} cores on average while a cell was timed.", ""]
    rows = [[r.model, task_name(r.task), _full_label(r.method, r.params), f"{r.temperature:g}", _fmt(r.others_cores), _fmt(r.cpu_per_wall),
             _fmt(r.repeat_spread), r.timing_flag] for r in flagged.itertuples()]
    return out + [_md_table(["Model", "Task", "Method", "T", "Other cores", "CPU/wall", "Repeat spread", "Why"], rows, "lllrrrrl"), ""]


def _categories_md(ctx: _Context) -> list[str]:
    records = ctx.run.records
    if records.empty:
        return []
    multi = [t for t in ctx.tasks if records[records["task"] == t]["category"].nunique() > 1]
    if not multi:
        return []
    by_cat = summarize(ctx.run, by=("category",))
    out = ["## Per category", "", "Cells: speedup × / τ over the questions of each category.", ""]
    for task in multi:
        frame = by_cat[by_cat["task"] == task]
        cats = sorted(_ordered(frame["category"]))
        for t in ctx.temperatures:
            ft = frame[(frame["temperature"] == t) & (frame["method"] != VANILLA)]
            if ft.empty:
                continue
            overall = ctx.summary[(ctx.summary["task"] == task) & (ctx.summary["temperature"] == t)]
            rows = []
            for model, method, params in _sorted_configs(ft):
                cells = []
                for c in cats:
                    sel = ft[(ft["model"] == model) & (ft["method"] == method) & (ft["params"] == params) & (ft["category"] == c)]
                    cells.append(_cell(sel.iloc[0]) if len(sel) else "")
                sel = overall[(overall["model"] == model) & (overall["method"] == method) & (overall["params"] == params)]
                cells.append(_cell(sel.iloc[0]) if len(sel) else "")
                rows.append([model, ctx.labels(method, params), *cells])
            out += [f"### {task_name(task)}, {_temp_label(t)}", "",
                    _md_table(["Model", "Method", *cats, "All"], rows, "ll" + "r" * (len(cats) + 1)), ""]
    return out


def _model_info(run: RunData) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Per model name: what the manifests say it loaded (dtype, device, weight bytes); per device: read bandwidth."""
    models: dict[str, dict[str, Any]] = {}
    bandwidth: dict[str, float] = {}
    for manifest in run.manifests:
        models.update(manifest.get("models") or {})
        measured = (manifest.get("hardware") or {}).get("read_bandwidth_bytes_per_s") or {}
        if isinstance(measured, dict):
            bandwidth.update({k: float(v) for k, v in measured.items() if v})
    return models, bandwidth


def _fastest_vanilla_md(ctx: _Context) -> list[str]:
    """Every method against the fastest vanilla of the run (any dtype / compile setting of the same
    weights), and vanilla's ms/token against the memory floor."""
    s = ctx.summary
    vanilla = s[s["method"] == VANILLA]
    if vanilla.empty or s.empty:
        return []
    models, bandwidth = _model_info(ctx.run)
    source = {name: str(info.get("source")) for name, info in models.items()}
    out = ["## Against the fastest vanilla of the run", "",
           "The speedups above compare each method with vanilla decoding of the *same* model entry (same dtype and "
           "compile setting). Here every method is set against the fastest vanilla of the run on the same weights, "
           "task and temperature, whatever its dtype or compile setting. Ratio of tokens/s (prefill included).", ""]
    rows = []
    for (task, temperature), frame in s.groupby(["task", "temperature"], sort=False):
        base = frame[frame["method"] == VANILLA]
        for _, r in frame.iterrows():
            same_weights = base[[source.get(m, m) == source.get(r["model"], r["model"]) for m in base["model"]]]
            if same_weights.empty or not np.isfinite(r["tokens_per_s"]):
                continue
            fastest = same_weights.loc[same_weights["tokens_per_s"].idxmax()]
            info = models.get(r["model"], {})
            rows.append([task_name(task), f"{temperature:g}", r["model"], str(info.get("dtype", "")), ctx.labels(r["method"], r["params"]),
                         _fmt(r["tokens_per_s"], 1), f"{fastest['model']} ({_fmt(fastest['tokens_per_s'], 1)})",
                         _fmt(r["tokens_per_s"] / fastest["tokens_per_s"], 2, "×")])
    out += [_md_table(["Task", "T", "Model", "dtype", "Method", "Tokens/s", "Fastest vanilla (tokens/s)", "vs fastest vanilla"],
                      rows, "lllllrrr"), ""]
    floor_rows = []
    for _, r in vanilla.iterrows():
        info = models.get(r["model"], {})
        weight_bytes, device = info.get("weight_bytes_per_token"), str(info.get("device", ""))
        if not weight_bytes or device not in bandwidth or not np.isfinite(r["tokens_per_s"]) or r["tokens_per_s"] <= 0:
            continue
        floor = 1000.0 * weight_bytes / bandwidth[device]
        per_token = 1000.0 / r["tokens_per_s"]
        floor_rows.append([r["model"], str(info.get("dtype", "")), task_name(r["task"]), f"{r['temperature']:g}", f"{per_token:.1f}",
                           f"{weight_bytes / 1e6:.0f} MB / {bandwidth[device] / 1e9:.1f} GB/s = {floor:.1f}", f"{per_token / floor:.2f}"])
    if floor_rows:
        out += ["**Memory floor.** A single-token step reads every weight once, so it cannot take less than weight bytes ÷ "
                "read bandwidth (measured by the run on its device with a streaming read). Vanilla's ms/token (prefill "
                "included) over that floor shows how close the baseline is to the hardware (1.0 = at the floor).", "",
                _md_table(["Model", "dtype", "Task", "T", "Vanilla ms/token", "Floor ms (weights / bandwidth)", "× floor"],
                          floor_rows, "lllrrrr"), ""]
    return out


def _details_md(ctx: _Context) -> list[str]:
    s = ctx.summary
    alphas = [c for c in s.columns if c.startswith("alpha_d")]
    header = ["Model", "Task", "Method", "T", "Questions", "Samples", "Tokens/s", "Speedup [95% CI]", "τ",
              *(f"α{c[len('alpha_d'):]}" for c in alphas), "Draft / verify / other", "Draft tok/step", "Accuracy", "Failures", "Note"]
    rows = []
    for _, r in s.iterrows():
        ci = "" if not np.isfinite(r["speedup_lo"]) else f" [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]"
        shares = "—" if not np.isfinite(r["draft_share"]) else f"{_pct(r['draft_share'])} / {_pct(r['verify_share'])} / {_pct(r['other_share'])}"
        acc = "—" if not np.isfinite(r["accuracy"]) else f"{_pct(r['accuracy'])} (n={r['n_scored']})"
        rows.append([
            r["model"], task_name(r["task"]), _full_label(r["method"], r["params"]), f"{r['temperature']:g}", str(r["n_questions"]),
            str(r["n_samples"]), _fmt(r["tokens_per_s"], 1), _fmt(r["speedup"], 2, "×") + ci, _fmt(r["tau"]),
            *(_fmt(r[c]) for c in alphas), shares, _fmt(r["draft_tokens_per_step"], 1), acc, str(r["failures"]), r["note"],
        ])
    return ["## All groups", "",
            "Speedup interval: 95% percentile bootstrap over questions (2000 resamples, seeded). α*d*: share of steps "
            "that accepted the depth-*d* draft among those that reached depth *d*. Draft / verify / other: shares of "
            "wall time (the rest is prefill), when phases were profiled. The same numbers, unrounded, are in `summary.csv`.",
            "", _md_table(header, rows, "lll" + "r" * (len(header) - 4) + "l"), ""]


def _full_label(method: str, params: str) -> str:
    return f"{method_name(method)} ({params})" if params else method_name(method)


def _figures_md(ctx: _Context) -> list[str]:
    out = ["## Figures", ""]
    for stem, title, caption in ctx.figures:
        out += [f"### {title}", "", f"![{title}](figures/{stem}.png)", "", caption + f" ([PDF](figures/{stem}.pdf))", ""]
    if ctx.skipped:
        out += ["Skipped figures:", ""]
        out += [f"- `{name}`: {reason}" for name, reason in ctx.skipped]
        out += [""]
    return out


def _failures_md(ctx: _Context) -> list[str]:
    f = ctx.run.failures
    if f.empty:
        return []
    counts = f.assign(error_type=f["error_type"].fillna("?")).groupby(
        ["model", "task", "method", "params", "temperature", "error_type"], dropna=False).size().reset_index(name="n")
    rows = [[r.model, task_name(r.task), _full_label(r.method, r.params), f"{r.temperature:g}", r.error_type, str(r.n)] for r in counts.itertuples()]
    examples = f.drop_duplicates("error_type").head(5)
    out = ["## Failures", "", _md_table(["Model", "Task", "Method", "T", "Error", "Count"], rows, "lllrlr"), ""]
    out += ["First message of each error type:", ""]
    out += [f"- `{r.error_type}`: {str(r.error)[:300]}" for r in examples.itertuples()]
    return out + [""]


def _provenance_md(run: RunData) -> list[str]:
    out = ["## Provenance", ""]
    if not run.manifests:
        return out + ["No manifest.json found in the run directories.", ""]
    for m in run.manifests:
        suite = m.get("suite")
        suite_name = suite.get("name", "") if isinstance(suite, dict) else str(suite or "")
        out += [f"### `{m.get('_run_dir', '')}`", ""]
        items = [("Run id", m.get("run_id")), ("Suite", suite_name), ("Shard", m.get("shard")), ("Cells", len(m.get("cells") or [])),
                 ("Git SHA", m.get("git_sha")), ("Started", m.get("started_at")), ("Finished", m.get("finished_at"))]
        out += [f"- {k}: `{v}`" for k, v in items if v not in (None, "", [])]
        for title, key in (("Hardware", "hardware"), ("Versions", "versions")):
            value = m.get(key)
            if isinstance(value, dict) and value:
                out += [f"- {title}: " + ", ".join(f"{k} `{v}`" for k, v in value.items())]
            elif value:
                out += [f"- {title}: `{value}`"]
        out += [""]
    return out


# ------------------------------------------------------------------------------------------ LaTeX


def _latex(ctx: _Context) -> str:
    s = ctx.summary
    out = [
        "% Generated by eagle2-bench (harness.report). Needs \\usepackage{booktabs}.",
        f"% Runs: {_tex(_run_title(ctx.run))}",
        "",
    ]
    if s.empty:
        return "\n".join(out + ["% No results."]) + "\n"
    for warning in timing_warnings(s):  # not for publication: say so where the table is copied from
        out[1:1] = [f"% WARNING, NOISY TIMING: {warning}"]
    for t in ctx.temperatures:
        frame = s[(s["temperature"] == t) & (s["method"] != VANILLA)]
        if frame.empty:
            continue
        mean = len(ctx.tasks) > 1
        n = len(ctx.tasks) + int(mean)
        notes = []
        if frame["lossless_mismatches"].sum():
            notes.append(f"$^\\dagger$Greedy outputs differ from vanilla decoding "
                         f"({int(frame['lossless_mismatches'].sum())} of {int(frame['lossless_compared'].sum())} compared).")
        body: list[str] = []
        partial_any = False
        previous_model = None
        for model, method, params in _sorted_configs(frame):
            mine = frame[(frame["model"] == model) & (frame["method"] == method) & (frame["params"] == params)]
            cells = []
            for task in ctx.tasks:
                sel = mine[mine["task"] == task]
                if not len(sel):
                    cells += ["", ""]
                elif sel.iloc[0]["n_samples"] == 0:
                    cells += ["\\multicolumn{2}{c}{failed}"]
                else:
                    r = sel.iloc[0]
                    cells += [_tex_speedup(r["speedup"], bool(r["lossless_mismatches"])), _tex(_fmt(r["tau"]))]
            if mean:
                speed, tau, partial = _row_mean(mine, len(ctx.tasks))
                partial_any |= partial
                cells += [_tex_speedup(speed, False) + ("$^*$" if partial else ""), _tex(_fmt(tau))]
            if previous_model is not None and model != previous_model:
                body.append("\\midrule")
            model_cell = _tex(model) if model != previous_model else ""
            previous_model = model
            body.append(f"{model_cell} & {_tex(ctx.labels(method, params))} & " + " & ".join(cells) + " \\\\")
        if partial_any:
            notes.append("$^*$Mean over the tasks that have a speedup.")
        out += [
            "\\begin{table}[t]", "\\centering", "\\small",
            f"\\caption{{Speedup over vanilla decoding and average acceptance length $\\tau$ at temperature {t:g}."
            + "".join(" " + x for x in notes) + "}",
            f"\\label{{tab:speedup-T{_slug(f'{t:g}')}}}",
            "\\begin{tabular}{ll" + "rr" * n + "}", "\\toprule",
            " & & " + " & ".join(f"\\multicolumn{{2}}{{c}}{{{_tex(task_name(k))}}}" for k in ctx.tasks)
            + (" & \\multicolumn{2}{c}{Mean}" if mean else "") + " \\\\",
            " ".join(f"\\cmidrule(lr){{{3 + 2 * i}-{4 + 2 * i}}}" for i in range(n)),
            "Model & Method & " + " & ".join(["Speedup & $\\tau$"] * n) + " \\\\", "\\midrule",
        ]
        out += body
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]

    greedy = s[(s["temperature"] == 0) & (s["method"] != VANILLA) & (s["lossless_compared"] > 0)]
    if len(greedy):
        out += [
            "\\begin{table}[t]", "\\centering", "\\small",
            "\\caption{Lossless check at temperature 0: outputs compared with vanilla decoding; differences that a float32 "
            "audit shows to be half-precision near-ties, and unexplained mismatches.}",
            "\\label{tab:lossless}", "\\begin{tabular}{lllrrr}", "\\toprule",
            "Model & Task & Method & Compared & Near-tie & Unexplained \\\\", "\\midrule",
        ]
        for _, r in greedy.iterrows():
            bad = r["lossless_mismatches"]
            bad_cell = "\\textbf{%d}" % bad if bad else "0"
            out.append(f"{_tex(r['model'])} & {_tex(task_name(r['task']))} & {_tex(ctx.labels(r['method'], r['params']))} & "
                       f"{r['lossless_compared']} & {int(r.get('lossless_near_ties', 0) or 0)} & {bad_cell} \\\\")
        out += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(out) + "\n"


def _tex_speedup(value: float, dagger: bool) -> str:
    if not np.isfinite(value):
        return "--"
    return f"{value:.2f}$\\times" + ("^\\dagger" if dagger else "") + "$"


# ---------------------------------------------------------------------------------------- figures


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


def _save(ctx: _Context, fig: Figure, stem: str, title: str, caption: str) -> None:
    for ext in ("png", "pdf"):
        fig.savefig(ctx.out_dir / "figures" / f"{stem}.{ext}", dpi=FIGURE_DPI)
    ctx.figures.append((stem, title, caption))


def _make_figures(ctx: _Context) -> None:
    if ctx.summary.empty:
        ctx.skipped.append(("all", "no results"))
        return
    with _style():
        for make in (_fig_speedup, _fig_heatmaps, _fig_tau_vs_total, _fig_depth, _fig_calibration):
            make(ctx)


def _shown_configs(frame: pd.DataFrame, score: str = "speedup") -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """(method, params) to draw for one model/temperature, and notes for configs chosen as best.

    All configs when they fit (MAX_BARS_PER_TASK); otherwise each method's configuration with the
    best mean ``score`` over tasks (τ when there is no speedup).
    """
    configs = [(m, p) for _, m, p in _sorted_configs(frame)]
    if len(configs) <= MAX_BARS_PER_TASK:
        return configs, {}
    shown, notes = [], {}
    for method in _ordered(m for m, _ in configs):
        mine = frame[frame["method"] == method]
        means = mine.groupby("params")[score].mean()
        if means.isna().all():
            means = mine.groupby("params")["tau"].mean()
        best = means.idxmax()
        shown.append((method, best))
        n = mine["params"].nunique()
        if n > 1:
            notes[(method, best)] = f"best of {n}"
    return shown, notes


def _panel_grid(n_rows: int, n_cols: int, panel_w: float, panel_h: float, **kw: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(max(3.3, panel_w * n_cols), panel_h * n_rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False, **kw))
    return fig, axes


def _fig_speedup(ctx: _Context) -> None:
    s = ctx.summary[(ctx.summary["method"] != VANILLA) & ctx.summary["speedup"].notna()]
    if s.empty:
        ctx.skipped.append(("speedup_by_task", "no method has a vanilla run of the same model/task/temperature to compare with"))
        return
    models, temps = _ordered(s["model"]), sorted(_ordered(s["temperature"]))
    tasks = [t for t in ctx.tasks if t in set(s["task"])]
    panels = [(m, t) for m in models for t in temps if len(s[(s["model"] == m) & (s["temperature"] == t)])]
    n_configs = max(len(_shown_configs(s[(s["model"] == m) & (s["temperature"] == t)])[0]) for m, t in panels)
    panel_w = max(3.0, 0.6 + len(tasks) * (0.28 * n_configs + 0.35))
    fig, axes = _panel_grid(1, len(panels), panel_w, 2.6, sharey=True)
    top = float(np.nanmax(np.concatenate([s["speedup_hi"].to_numpy(dtype=float), s["speedup"].to_numpy(dtype=float), [1.0]])))
    best_notes = False
    for ax, (model, temp) in zip(axes[0], panels):
        frame = s[(s["model"] == model) & (s["temperature"] == temp)]
        configs, notes = _shown_configs(frame)
        best_notes |= bool(notes)
        width = 0.8 / max(len(configs), 3)  # a lone bar stays a bar, not a slab
        per_method: dict[str, list[str]] = {}
        for m, p in configs:
            per_method.setdefault(m, []).append(p)
        x = np.arange(len(tasks))
        for i, (method, params) in enumerate(configs):
            shade = _shade(method_color(method), per_method[method].index(params), len(per_method[method]))
            vals, lo, hi = [], [], []
            for task in tasks:
                sel = frame[(frame["task"] == task) & (frame["method"] == method) & (frame["params"] == params)]
                v = sel["speedup"].iloc[0] if len(sel) else math.nan
                vals.append(v)
                lo.append(v - sel["speedup_lo"].iloc[0] if len(sel) else 0)
                hi.append(sel["speedup_hi"].iloc[0] - v if len(sel) else 0)
            label = ctx.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
            pos = x + width * (i - (len(configs) - 1) / 2)
            err = np.nan_to_num(np.array([lo, hi]), nan=0.0).clip(min=0)
            ax.bar(pos, vals, width * 0.92, color=shade, label=label, yerr=err, capsize=2,
                   error_kw={"elinewidth": 0.7, "capthick": 0.7, "ecolor": "#333333"}, zorder=2)
            for xp, v, h in zip(pos, vals, err[1]):
                if np.isfinite(v):
                    ax.text(xp, v + h + 0.02 * top, f"{v:.2f}", ha="center", va="bottom", fontsize=5.5,
                            rotation=90 if len(configs) > 3 else 0, zorder=4,
                            bbox={"boxstyle": "square,pad=0.08", "fc": "white", "ec": "none", "alpha": 0.85})
        ax.axhline(1.0, color="#333333", lw=0.8, ls="--", zorder=1)
        ax.set_xticks(x, [task_name(t) for t in tasks])
        ax.grid(axis="x", visible=False)
        ax.set_title(f"{model}, {_temp_label(temp)}")
        ax.set_ylim(0, top * 1.18)
    axes[0][0].set_ylabel("Speedup over vanilla (×)")
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    _save(ctx, fig, "speedup_by_task", "Speedup per task",
          "Speedup over vanilla decoding (tokens/s ratio on the same questions, prefill included) per task and method; "
          "error bars: bootstrap 95% interval over questions; dashed line: vanilla."
          + (" For swept methods only the configuration with the best mean speedup is shown." if best_notes else ""))


def _unique_legend(axes: Sequence[Axes]) -> tuple[list, list[str]]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    return list(seen.values()), list(seen)


def _tree_frame(ctx: _Context) -> pd.DataFrame:
    """Rows of methods parameterised by depth and top_k, with those parsed into columns."""
    s = ctx.summary[ctx.summary["method"] != VANILLA]
    rows = []
    for _, r in s.iterrows():
        p = parse_params(r["params"])
        if "depth" in p and "top_k" in p:
            rows.append({**r.to_dict(), "depth": p["depth"], "top_k_draft": p["top_k"], "total_tokens": p.get("total_tokens")})
    return pd.DataFrame(rows)


def _fig_heatmaps(ctx: _Context) -> None:
    tree = _tree_frame(ctx)
    made = 0
    if not tree.empty:
        for (model, task, temp, method), frame in tree.groupby(["model", "task", "temperature", "method"], sort=False):
            frame = frame.assign(total_tokens=frame["total_tokens"].fillna(-1))
            totals = sorted(_ordered(frame["total_tokens"]))
            swept = [n for n in totals if len(frame[frame["total_tokens"] == n][["depth", "top_k_draft"]].drop_duplicates()) >= 2]
            if not swept:
                continue
            frame = frame[frame["total_tokens"].isin(swept)]
            depths = sorted(_ordered(frame["depth"]))
            ks = sorted(_ordered(frame["top_k_draft"]))
            fig, axes = _panel_grid(len(swept), 2, max(2.7, 0.42 * len(ks) + 1.6), max(1.7, 0.3 * len(depths) + 0.9))
            metrics = (("speedup", "Speedup over vanilla (×)", "viridis"), ("tau", "τ (tokens / target forward)", "magma"))
            for j, (col, label, cmap) in enumerate(metrics):
                values = frame[col].to_numpy(dtype=float)
                if not np.isfinite(values).any():
                    for ax in axes[:, j]:
                        ax.set_axis_off()
                        ax.text(0.5, 0.5, "no vanilla run:\nspeedup not computed", ha="center", va="center", transform=ax.transAxes)
                    continue
                vmin, vmax = float(np.nanmin(values)), float(np.nanmax(values))
                best = frame.loc[frame[col].idxmax()]
                image = None
                for ax, n in zip(axes[:, j], swept):
                    sub = frame[frame["total_tokens"] == n]
                    grid = np.full((len(depths), len(ks)), np.nan)  # (depth, top_k)
                    for _, r in sub.iterrows():
                        grid[depths.index(r["depth"]), ks.index(r["top_k_draft"])] = r[col]
                    star = (depths.index(best["depth"]), ks.index(best["top_k_draft"])) if best["total_tokens"] == n and vmax > vmin else None
                    image = _heatmap(ax, grid, ks, depths, cmap, vmin, vmax, star)
                    ax.set_title(("Speedup" if col == "speedup" else "τ") + ("" if n == -1 else f", total_tokens = {int(n)}"))
                cbar = fig.colorbar(image, ax=list(axes[:, j]), shrink=0.9, pad=0.02, aspect=25 * len(swept))
                cbar.set_label(label, fontsize=7)
                cbar.ax.tick_params(labelsize=6.5)
                cbar.outline.set_visible(False)
            stem = f"tree_heatmap_{_slug(model)}_{_slug(task)}_T{_slug(f'{temp:g}')}" + ("" if method == "eagle2" else f"_{_slug(method)}")
            fig.suptitle(f"{method_name(method)} on {task_name(task)}: {model}, {_temp_label(temp)}", fontsize=8.5)
            _save(ctx, fig, stem, f"{method_name(method)} tree shape: {task_name(task)}, {model}, {_temp_label(temp)}",
                  "Speedup (left) and τ (right) over draft depth (rows) × top_k expanded per depth (columns), one row of "
                  "panels per total_tokens (draft tokens verified per step); one color scale per metric; outlined and bold: "
                  "the best configuration; blank: not run.")
            made += 1
    if not made:
        ctx.skipped.append(("tree_heatmap", "no method swept depth and top_k (needs two or more (depth, top_k) pairs at one total_tokens)"))


def _heatmap(ax: Axes, grid: np.ndarray, ks: list, depths: list, cmap: str, vmin: float, vmax: float,
             star: tuple[int, int] | None) -> Any:
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(depths)), [str(d) for d in depths])
    ax.set_xlabel("top_k (expanded per depth)")
    ax.set_ylabel("Draft depth")
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = grid[i, j]
            if np.isfinite(v):
                frac = 0.5 if vmax == vmin else (v - vmin) / (vmax - vmin)
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                        color="black" if frac > 0.55 else "white", fontweight="bold" if star == (i, j) else "normal")
    if star is not None:
        ax.add_patch(matplotlib.patches.Rectangle((star[1] - 0.5, star[0] - 0.5), 1, 1, fill=False, ec="black", lw=1.5))
    return image


def _fig_tau_vs_total(ctx: _Context) -> None:
    tree = _tree_frame(ctx)
    if tree.empty or tree["total_tokens"].dropna().nunique() < 2:
        ctx.skipped.append(("tau_vs_total_tokens", "needs runs of a tree method at two or more total_tokens values"))
        return
    tree = tree[tree["total_tokens"].notna()]
    panels = _ordered(zip(tree["model"], tree["temperature"], tree["method"]))
    panels = [p for p in panels if tree[(tree["model"] == p[0]) & (tree["temperature"] == p[1]) & (tree["method"] == p[2])]["total_tokens"].nunique() >= 2]
    fig, axes = _panel_grid(len(panels), 2, 3.0, 2.2)
    reduced = False
    for row_axes, (model, temp, method) in zip(axes, panels):
        frame = tree[(tree["model"] == model) & (tree["temperature"] == temp) & (tree["method"] == method)]
        tasks = [t for t in ctx.tasks if t in set(frame["task"])]
        for ax, (col, label) in zip(row_axes, (("tau", "τ (tokens / target forward)"), ("speedup", "Speedup over vanilla (×)"))):
            for i, task in enumerate(tasks):
                sub = frame[frame["task"] == task]
                best = sub.groupby("total_tokens")[col].max()
                if best.isna().all():
                    continue
                reduced |= bool((sub.groupby("total_tokens").size() > 1).any())
                color = _shade(method_color(method), i, len(tasks), spread=0.45)
                marker, style = _MARKERS[i % len(_MARKERS)], _LINESTYLES[i % len(_LINESTYLES)]
                ax.scatter(sub["total_tokens"], sub[col], s=7, color=color, marker=marker, alpha=0.3, lw=0, zorder=2)
                ax.plot(best.index, best.to_numpy(), marker=marker, ls=style, color=color, label=task_name(task), zorder=3)
            values = sorted(frame["total_tokens"].unique())
            if len(values) <= 10:
                ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.set_xlabel("total_tokens (draft tokens verified per step)")
            ax.set_ylabel(label)
            ax.set_title(f"{method_name(method)}: {model}, {_temp_label(temp)}")
            if col == "speedup":
                ax.axhline(1.0, color="#333333", lw=0.8, ls="--", zorder=1)
        if len(tasks) > 1:
            row_axes[0].legend()
    _save(ctx, fig, "tau_vs_total_tokens", "τ and speedup vs total_tokens",
          "Mean acceptance length τ (left) and speedup (right) against the number of drafted tokens verified per step"
          + ("; lines: best over depth × top_k at each total_tokens, dots: every configuration." if reduced else "."))


def _pooled(table: pd.DataFrame, keys: list[str], index: str) -> pd.DataFrame:
    """Sum counts over tasks: one row per keys + index."""
    return table.groupby([*keys, index], sort=False)[["reached", "accepted"] if "reached" in table else ["checked", "accepted"]].sum().reset_index()


def _fig_depth(ctx: _Context) -> None:
    table = depth_table(ctx.run)
    table = table[table["reached"] > 0] if not table.empty else table
    if table.empty:
        ctx.skipped.append(("acceptance_by_depth", "no per-depth acceptance recorded (only vanilla or reference methods ran)"))
        return
    pooled = _pooled(table, ["model", "temperature", "method", "params"], "depth")
    pooled["alpha"] = pooled["accepted"] / pooled["reached"]
    panels = _ordered(zip(pooled["model"], pooled["temperature"]))
    fig, axes = _panel_grid(1, len(panels), 3.0, 2.4, sharey=True)
    for ax, (model, temp) in zip(axes[0], panels):
        frame = pooled[(pooled["model"] == model) & (pooled["temperature"] == temp)]
        summary = ctx.summary[(ctx.summary["model"] == model) & (ctx.summary["temperature"] == temp)]
        configs, notes = _shown_configs(summary[summary.apply(lambda r: (r["method"], r["params"]) in set(zip(frame["method"], frame["params"])), axis=1)])
        per_method: dict[str, list[str]] = {}
        for m, p in configs:
            per_method.setdefault(m, []).append(p)
        for method, params in configs:
            sub = frame[(frame["method"] == method) & (frame["params"] == params)].sort_values("depth")
            color = _shade(method_color(method), per_method[method].index(params), len(per_method[method]))
            label = ctx.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
            ax.plot(sub["depth"], sub["alpha"], marker="o", color=color, label=label)
        ax.set_xlabel("Draft depth $d$")
        ax.set_title(f"{model}, {_temp_label(temp)}")
        ax.set_ylim(-0.03, 1.03)
        depths = sorted(frame["depth"].unique())
        ax.set_xticks(depths if len(depths) <= 12 else depths[:: math.ceil(len(depths) / 12)])
    axes[0][0].set_ylabel("Acceptance rate $\\alpha_d$")
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    _save(ctx, fig, "acceptance_by_depth", "Acceptance by draft depth",
          "α_d: among steps whose drafted path was accepted down to depth d − 1 (so a depth-d draft was checked), the "
          "share that accepted a depth-d token too; pooled over tasks.")


def _fig_calibration(ctx: _Context) -> None:
    table = calibration_table(ctx.run)
    if table.empty:
        ctx.skipped.append(("calibration", "no draft confidence recorded (only vanilla or reference methods ran)"))
        return
    pooled = _pooled(table, ["model", "temperature", "method", "params"], "bin")
    bins = int(table["bin"].max()) + 1
    pooled["center"] = (pooled["bin"] + 0.5) / bins
    panels = _ordered(zip(pooled["model"], pooled["temperature"]))
    fig = Figure(figsize=(max(3.3, 3.0 * len(panels)), 3.4), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex=True, height_ratios=[3, 1.2])
    for j, (model, temp) in enumerate(panels):
        ax, hax = axes[0][j], axes[1][j]
        frame = pooled[(pooled["model"] == model) & (pooled["temperature"] == temp)]
        summary = ctx.summary[(ctx.summary["model"] == model) & (ctx.summary["temperature"] == temp)]
        have = set(zip(frame["method"], frame["params"]))
        configs, notes = _shown_configs(summary[[(m, p) in have for m, p in zip(summary["method"], summary["params"])]])
        ax.plot([0, 1], [0, 1], ls="--", color="#555555", lw=0.8, label="perfect calibration", zorder=1)
        per_method: dict[str, list[str]] = {}
        for m, p in configs:
            per_method.setdefault(m, []).append(p)
        offsets = np.linspace(-0.3, 0.3, len(configs)) / bins if len(configs) > 1 else [0.0]
        for off, (method, params) in zip(offsets, configs):
            sub = frame[(frame["method"] == method) & (frame["params"] == params)].sort_values("bin")
            color = _shade(method_color(method), per_method[method].index(params), len(per_method[method]))
            label = ctx.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
            ok = sub[sub["checked"] > 0]
            rate = ok["accepted"] / ok["checked"]
            ax.plot(ok["center"], rate, marker="o", color=color, label=label, zorder=3)
            hax.bar(sub["center"] + off, sub["checked"], width=0.9 / bins / max(1, len(configs)), color=color, zorder=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{model}, {_temp_label(temp)}")
        ax.set_ylabel("Actual acceptance rate")
        hax.set_xlabel("Draft confidence (draft-model probability)")
        hax.set_ylabel("Drafted\ntokens")
        if frame["checked"].max() > 50 * max(1, frame.loc[frame["checked"] > 0, "checked"].min()):
            hax.set_yscale("log")
        hax.grid(axis="x", visible=False)
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    _save(ctx, fig, "calibration", "Draft confidence vs acceptance",
          f"Drafted tokens that the target checked, binned by the draft's confidence ({bins} bins): the share the target "
          "accepted (top; dashed: a perfectly calibrated draft) and how many there were (bottom); pooled over tasks. "
          "EAGLE-2 builds its tree from these confidences, which works when the points lie near the diagonal.")
