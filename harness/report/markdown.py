"""``report.md``: the report's Markdown, built from a run's aggregated tables only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from harness.aggregate import CONTENTION_CORES, MAX_REPEAT_SPREAD, MIN_CPU_PER_WALL, VANILLA, timing_warnings
from harness.report.labels import (
    fmt,
    full_label,
    ordered,
    pct,
    row_mean,
    run_title,
    sorted_configs,
    task_name,
    temperature_label,
)
from harness.report.view import FigureEntry, ReportView

MAX_MISMATCH_ROWS = 50


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (l, r, c)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "| " + " | ".join(rule[a] for a in align) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _lossless_totals(summary: pd.DataFrame) -> tuple[int, int]:
    if summary.empty:
        return 0, 0
    return int(summary["lossless_compared"].sum()), int(summary["lossless_mismatches"].sum())


def _cell(row: pd.Series | None) -> str:
    """``2.67× / 2.50`` (speedup / τ); ``†`` marks a group whose greedy outputs differ from vanilla."""
    if row is None:
        return ""
    if row.get("n_samples", 1) == 0:
        return "failed"
    text = f"{fmt(row['speedup'], 2, '×')} / {fmt(row['tau'])}"
    if row["lossless_mismatches"]:
        text += " †"
    if row.get("timing_flag"):
        text += " ‡"
    return text


def _main_table_rows(
    view: ReportView, temperature: float, value: Callable[[pd.Series | None], str], *, include_vanilla: bool, mean: bool
) -> tuple[list[str], list[list[str]]]:
    """Rows model × method, columns tasks (and a mean of speedup and τ over tasks when ``mean``)."""
    frame = view.summary[view.summary["temperature"] == temperature]
    header = ["Model", "Method", *(task_name(t) for t in view.tasks), *(["Mean"] if mean else [])]
    rows = []
    for model, method, params in sorted_configs(frame):
        if method == VANILLA and not include_vanilla:
            continue
        mine = frame[(frame["model"] == model) & (frame["method"] == method) & (frame["params"] == params)]
        cells = []
        for task in view.tasks:
            sel = mine[mine["task"] == task]
            cells.append(value(sel.iloc[0] if len(sel) else None))
        if mean:
            speed, tau, partial = row_mean(mine, len(view.tasks))
            text = value(pd.Series({"speedup": speed, "tau": tau, "lossless_mismatches": 0}))
            cells.append(text + (" *" if partial and text else ""))
        rows.append([model, view.labels(method, params), *cells])
    return header, rows


def _tps_cell(row: pd.Series | None) -> str:
    return "" if row is None else fmt(row["tokens_per_s"], 1) + (" ‡" if row.get("timing_flag") else "")


def markdown(view: ReportView, figures: Sequence[FigureEntry], skipped: Sequence[tuple[str, str]], generated: datetime) -> str:
    """``report.md``: lossless verdict, main tables, fastest vanilla, lossless check, timing, per category, all groups,
    figures (those made and those ``skipped``), failures and provenance."""
    s, tables = view.summary, view.tables
    out: list[str] = [f"# Benchmark report: {run_title(tables.manifests, tables.run_dirs)}", ""]
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
        f"Generated {generated.strftime('%Y-%m-%d %H:%M UTC')} from "
        + ", ".join(f"`{d}`" for d in tables.run_dirs)
        + f": {tables.n_records} records, {tables.n_failures} unresolved failures.",
        "",
    ]
    if s.empty:
        out += ["No results to report.", ""]
        out += _provenance_md(tables.manifests)
        return "\n".join(out)

    out += [
        "## Speedup and τ",
        "",
        "Each cell is *speedup × / τ*: speedup = tokens/s of the method ÷ tokens/s of vanilla decoding of the same "
        "model on the same (seed, question, turn) samples, wall time with prefill; τ = new tokens per target "
        "forward (the prefill counts as one forward, so vanilla's τ is 1). *Mean* averages the task columns "
        "(\\* : over the tasks that have a speedup only). — : no vanilla run to compare with. "
        "† : outputs differ from vanilla at T = 0. ‡ : timed while the machine was busy, with an implausible spread "
        "or while torch.compile built a graph (see *Timing conditions*). *failed*: every attempt failed (see *Failures*).",
        "",
    ]
    for t in view.temperatures:
        header, rows = _main_table_rows(view, t, _cell, include_vanilla=False, mean=len(view.tasks) > 1)
        out += [f"### {temperature_label(t)}", ""]
        out += [md_table(header, rows, "ll" + "r" * (len(header) - 2)) if rows else "Only vanilla was run.", ""]

    out += ["## Throughput (tokens/s)", ""]
    for t in view.temperatures:
        header, rows = _main_table_rows(view, t, _tps_cell, include_vanilla=True, mean=False)
        out += [f"### {temperature_label(t)}", "", md_table(header, rows, "ll" + "r" * (len(header) - 2)), ""]
    out += _fastest_vanilla_md(view)

    out += _lossless_md(view)
    out += _timing_md(view)
    out += _categories_md(view)
    out += _details_md(view)
    out += _figures_md(figures, skipped)
    out += _failures_md(view)
    out += _provenance_md(tables.manifests)
    return "\n".join(out)


def _lossless_md(view: ReportView) -> list[str]:
    s = view.summary
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
        rows.append([r["model"], task_name(r["task"]), view.labels(r["method"], r["params"]), str(r["lossless_compared"]), str(identical),
                     str(near_ties), str(r["lossless_mismatches"]), status])
    out += [md_table(["Model", "Task", "Method", "Compared", "Identical", "Near-tie", "Unexplained", "Status"], rows, "lllrrrrl"), ""]
    bad = view.tables.differences
    if len(bad):
        out += ["Differing outputs (first differing token position, lengths, audit verdict, float32 logit gap / margin):", ""]
        rows = [[r.model, task_name(r.task), view.labels(r.method, r.params), str(r.seed), str(r.question_id), str(r.turn),
                 str(r.first_diff), f"{r.method_len} / {r.vanilla_len}", r.divergence.replace("_", "-"),
                 "" if not np.isfinite(r.logit_gap) else f"{r.logit_gap:.3f} / {r.margin:.3f}"] for r in bad.head(MAX_MISMATCH_ROWS).itertuples()]
        out += [md_table(["Model", "Task", "Method", "Seed", "Question", "Turn", "First diff", "Length (method / vanilla)", "Verdict", "Gap / margin"],
                          rows, "lllrlrrrlr"), ""]
        if len(bad) > MAX_MISMATCH_ROWS:
            out += [f"… and {len(bad) - MAX_MISMATCH_ROWS} more.", ""]
    return out


def _timing_md(view: ReportView) -> list[str]:
    s = view.summary
    out = ["## Timing conditions", "",
           f"While each answer was timed the harness recorded the machine's load (`load` in results.jsonl). A cell is flagged ‡ "
           f"when other processes used ≥ {CONTENTION_CORES:g} core on average, when this process got < {MIN_CPU_PER_WALL:g} of a "
           f"core on a CPU, when repeats of one sample differ more than {MAX_REPEAT_SPREAD:g}× in tokens/s, when torch.compile "
           "built a graph during a timed answer (`load.graphs_compiled`), or when its vanilla reference is flagged.", ""]
    measured = s[np.isfinite(s["others_cores"].astype(float))] if "others_cores" in s else s.iloc[0:0]
    if measured.empty:
        return out + ["No load was recorded (records from an older harness).", ""]
    flagged = s[s["timing_flag"] != ""]
    if flagged.empty:
        worst = float(measured["others_cores"].max())
        return out + [f"No cell is flagged: other processes used at most {worst:.2f} cores on average while a cell was timed.", ""]
    rows = [[r.model, task_name(r.task), full_label(r.method, r.params), f"{r.temperature:g}", fmt(r.others_cores), fmt(r.cpu_per_wall),
             fmt(r.repeat_spread), r.timing_flag] for r in flagged.itertuples()]
    return out + [md_table(["Model", "Task", "Method", "T", "Other cores", "CPU/wall", "Repeat spread", "Why"], rows, "lllrrrrl"), ""]


def _categories_md(view: ReportView) -> list[str]:
    by_cat = view.tables.by_category
    multi = [t for t in view.tasks if by_cat[by_cat["task"] == t]["category"].nunique() > 1]
    if not multi:
        return []
    out = ["## Per category", "", "Cells: speedup × / τ over the questions of each category.", ""]
    for task in multi:
        frame = by_cat[by_cat["task"] == task]
        cats = sorted(ordered(frame["category"]))
        for t in view.temperatures:
            ft = frame[(frame["temperature"] == t) & (frame["method"] != VANILLA)]
            if ft.empty:
                continue
            overall = view.summary[(view.summary["task"] == task) & (view.summary["temperature"] == t)]
            rows = []
            for model, method, params in sorted_configs(ft):
                cells = []
                for c in cats:
                    sel = ft[(ft["model"] == model) & (ft["method"] == method) & (ft["params"] == params) & (ft["category"] == c)]
                    cells.append(_cell(sel.iloc[0]) if len(sel) else "")
                sel = overall[(overall["model"] == model) & (overall["method"] == method) & (overall["params"] == params)]
                cells.append(_cell(sel.iloc[0]) if len(sel) else "")
                rows.append([model, view.labels(method, params), *cells])
            out += [f"### {task_name(task)}, {temperature_label(t)}", "",
                    md_table(["Model", "Method", *cats, "All"], rows, "ll" + "r" * (len(cats) + 1)), ""]
    return out


def _model_info(manifests: Sequence[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Per model name: what the manifests say it loaded (dtype, device, weight bytes); per device: read bandwidth."""
    models: dict[str, dict[str, Any]] = {}
    bandwidth: dict[str, float] = {}
    for manifest in manifests:
        models.update(manifest.get("models") or {})
        measured = (manifest.get("hardware") or {}).get("read_bandwidth_bytes_per_s") or {}
        if isinstance(measured, dict):
            bandwidth.update({k: float(v) for k, v in measured.items() if v})
    return models, bandwidth


def _fastest_vanilla_md(view: ReportView) -> list[str]:
    """Every method against the fastest vanilla of the run (any dtype / compile setting of the same
    weights), and vanilla's ms/token against the memory floor."""
    s = view.summary
    vanilla = s[s["method"] == VANILLA]
    if vanilla.empty or s.empty:
        return []
    models, bandwidth = _model_info(view.tables.manifests)
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
            rows.append([task_name(task), f"{temperature:g}", r["model"], str(info.get("dtype", "")), view.labels(r["method"], r["params"]),
                         fmt(r["tokens_per_s"], 1), f"{fastest['model']} ({fmt(fastest['tokens_per_s'], 1)})",
                         fmt(r["tokens_per_s"] / fastest["tokens_per_s"], 2, "×")])
    out += [md_table(["Task", "T", "Model", "dtype", "Method", "Tokens/s", "Fastest vanilla (tokens/s)", "vs fastest vanilla"],
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
                md_table(["Model", "dtype", "Task", "T", "Vanilla ms/token", "Floor ms (weights / bandwidth)", "× floor"],
                          floor_rows, "lllrrrr"), ""]
    return out


def _details_md(view: ReportView) -> list[str]:
    s = view.summary
    alphas = [c for c in s.columns if c.startswith("alpha_d")]
    header = ["Model", "Task", "Method", "T", "Questions", "Samples", "Tokens/s", "Speedup [95% CI]", "τ",
              *(f"α{c[len('alpha_d'):]}" for c in alphas), "Draft / verify / other", "Draft tok/step", "Accuracy", "Failures", "Note"]
    rows = []
    for _, r in s.iterrows():
        ci = "" if not np.isfinite(r["speedup_lo"]) else f" [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]"
        shares = "—" if not np.isfinite(r["draft_share"]) else f"{pct(r['draft_share'])} / {pct(r['verify_share'])} / {pct(r['other_share'])}"
        acc = "—" if not np.isfinite(r["accuracy"]) else f"{pct(r['accuracy'])} (n={r['n_scored']})"
        rows.append([
            r["model"], task_name(r["task"]), full_label(r["method"], r["params"]), f"{r['temperature']:g}", str(r["n_questions"]),
            str(r["n_samples"]), fmt(r["tokens_per_s"], 1), fmt(r["speedup"], 2, "×") + ci, fmt(r["tau"]),
            *(fmt(r[c]) for c in alphas), shares, fmt(r["draft_tokens_per_step"], 1), acc, str(r["failures"]), r["note"],
        ])
    return ["## All groups", "",
            "Speedup interval: 95% percentile bootstrap over questions (2000 resamples, seeded). α*d*: share of steps "
            "that accepted the depth-*d* draft among those that reached depth *d*. Draft / verify / other: shares of "
            "wall time (the rest is prefill), when phases were profiled. The same numbers, unrounded, are in `summary.csv`.",
            "", md_table(header, rows, "lll" + "r" * (len(header) - 4) + "l"), ""]


def _figures_md(figures: Sequence[FigureEntry], skipped: Sequence[tuple[str, str]]) -> list[str]:
    out = ["## Figures", ""]
    for figure in figures:
        stem, title = figure.stem, figure.title
        out += [f"### {title}", "", f"![{title}](figures/{stem}.png)", "", figure.caption + f" ([PDF](figures/{stem}.pdf))", ""]
    if skipped:
        out += ["Skipped figures:", ""]
        out += [f"- `{name}`: {reason}" for name, reason in skipped]
        out += [""]
    return out


def _failures_md(view: ReportView) -> list[str]:
    tables = view.tables
    if not tables.n_failures:
        return []
    rows = [[r.model, task_name(r.task), full_label(r.method, r.params), f"{r.temperature:g}", r.error_type, str(r.n)]
            for r in tables.failure_counts.itertuples()]
    examples = tables.failure_examples.head(5)
    out = ["## Failures", "", md_table(["Model", "Task", "Method", "T", "Error", "Count"], rows, "lllrlr"), ""]
    out += ["First message of each error type:", ""]
    out += [f"- `{r.error_type}`: {str(r.error)[:300]}" for r in examples.itertuples()]
    return out + [""]


def _provenance_md(manifests: Sequence[dict[str, Any]]) -> list[str]:
    out = ["## Provenance", ""]
    if not manifests:
        return out + ["No manifest.json found in the run directories.", ""]
    for m in manifests:
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
