"""The report's matplotlib figures (see the package doc for what each shows), from aggregated tables only."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.patches
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from harness.aggregate import VANILLA, parse_params
from harness.report.labels import method_name, ordered, slug, sorted_configs, task_name, temperature_label
from harness.report.view import FigureEntry, ReportView

FIGURE_DPI = 200
MAX_BARS_PER_TASK = 6  # beyond this, bar/line figures show each method's best configuration only
FEW_DEPTH_STEPS = 20  # below this many steps reaching a depth, α_d is drawn hollow: a step or two make it 0 or 1


METHOD_COLORS = {
    "vanilla": "#7f7f7f",
    "eagle1": "#4c72b0",
    "eagle2": "#c44e52",
    "eagle3": "#8172b3",
    "hf_generate": "#937860",
    "hf_prompt_lookup": "#55a868",
}
_SPARE_COLORS = ("#dd8452", "#da8bc3", "#ccb974", "#64b5cd", "#2f4f4f")
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


@contextmanager
def _style() -> Iterator[None]:
    with matplotlib.rc_context(_STYLE):
        yield


@dataclass
class _FigureWriter:
    """Saves figures under ``out_dir/figures`` and keeps, in order, what was made and what was skipped."""

    out_dir: Path
    made: list[FigureEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (figure, reason)

    def save(self, fig: Figure, stem: str, title: str, caption: str) -> None:
        for ext in ("png", "pdf"):
            fig.savefig(self.out_dir / "figures" / f"{stem}.{ext}", dpi=FIGURE_DPI)
        self.made.append(FigureEntry(stem, title, caption))

    def skip(self, figure: str, reason: str) -> None:
        self.skipped.append((figure, reason))


def make_figures(view: ReportView, out_dir: Path) -> tuple[list[FigureEntry], list[tuple[str, str]]]:
    """Write every figure the run has data for into ``out_dir/figures`` (PNG and PDF).

    Returns the figures made, in order, and (figure, reason) for each one skipped.
    """
    out = _FigureWriter(out_dir)
    if view.summary.empty:
        out.skip("all", "no results")
        return out.made, out.skipped
    with _style():
        for make in (_fig_speedup, _fig_heatmaps, _fig_tau_vs_total, _fig_depth, _fig_calibration):
            make(view, out)
    return out.made, out.skipped


def _shown_configs(frame: pd.DataFrame, score: str = "speedup") -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """(method, params) to draw for one model/temperature, and notes for configs chosen as best.

    All configs when they fit (MAX_BARS_PER_TASK); otherwise each method's configuration with the
    best mean ``score`` over tasks (τ when there is no speedup).
    """
    configs = [(m, p) for _, m, p in sorted_configs(frame)]
    if len(configs) <= MAX_BARS_PER_TASK:
        return configs, {}
    shown, notes = [], {}
    for method in ordered(m for m, _ in configs):
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


def _fig_speedup(view: ReportView, out: _FigureWriter) -> None:
    s = view.summary[(view.summary["method"] != VANILLA) & view.summary["speedup"].notna()]
    if s.empty:
        out.skip("speedup_by_task", "no method has a vanilla run of the same model/task/temperature to compare with")
        return
    models, temps = ordered(s["model"]), sorted(ordered(s["temperature"]))
    tasks = [t for t in view.tasks if t in set(s["task"])]
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
            label = view.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
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
        ax.set_title(f"{model}, {temperature_label(temp)}")
        ax.set_ylim(0, top * 1.18)
    axes[0][0].set_ylabel("Speedup over vanilla (×)")
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    out.save(fig, "speedup_by_task", "Speedup per task",
          "Speedup over vanilla decoding (tokens/s ratio on the same questions, prefill included) per task and method; "
          "error bars: bootstrap 95% interval over questions; dashed line: vanilla."
          + (" For swept methods only the configuration with the best mean speedup is shown." if best_notes else ""))


def _unique_legend(axes: Sequence[Axes]) -> tuple[list, list[str]]:
    seen: dict[str, Any] = {}
    for ax in axes:
        for h, l in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(l, h)
    return list(seen.values()), list(seen)


def _tree_frame(view: ReportView) -> pd.DataFrame:
    """Rows of methods parameterised by depth and top_k, with those parsed into columns."""
    s = view.summary[view.summary["method"] != VANILLA]
    rows = []
    for _, r in s.iterrows():
        p = parse_params(r["params"])
        if "depth" in p and "top_k" in p:
            rows.append({**r.to_dict(), "depth": p["depth"], "top_k_draft": p["top_k"], "total_tokens": p.get("total_tokens")})
    return pd.DataFrame(rows)


def _fig_heatmaps(view: ReportView, out: _FigureWriter) -> None:
    tree = _tree_frame(view)
    made = 0
    if not tree.empty:
        for (model, task, temp, method), frame in tree.groupby(["model", "task", "temperature", "method"], sort=False):
            frame = frame.assign(total_tokens=frame["total_tokens"].fillna(-1))
            totals = sorted(ordered(frame["total_tokens"]))
            swept = [n for n in totals if len(frame[frame["total_tokens"] == n][["depth", "top_k_draft"]].drop_duplicates()) >= 2]
            if not swept:
                continue
            frame = frame[frame["total_tokens"].isin(swept)]
            depths = sorted(ordered(frame["depth"]))
            ks = sorted(ordered(frame["top_k_draft"]))
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
            stem = f"tree_heatmap_{slug(model)}_{slug(task)}_T{slug(f'{temp:g}')}" + ("" if method == "eagle2" else f"_{slug(method)}")
            fig.suptitle(f"{method_name(method)} on {task_name(task)}: {model}, {temperature_label(temp)}", fontsize=8.5)
            out.save(fig, stem, f"{method_name(method)} tree shape: {task_name(task)}, {model}, {temperature_label(temp)}",
                  "Speedup (left) and τ (right) over draft depth (rows) × top_k expanded per depth (columns), one row of "
                  "panels per total_tokens (draft tokens verified per step); one color scale per metric; outlined and bold: "
                  "the best configuration; blank: not run.")
            made += 1
    if not made:
        out.skip("tree_heatmap", "no method swept depth and top_k (needs two or more (depth, top_k) pairs at one total_tokens)")


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


def _fig_tau_vs_total(view: ReportView, out: _FigureWriter) -> None:
    tree = _tree_frame(view)
    if tree.empty or tree["total_tokens"].dropna().nunique() < 2:
        out.skip("tau_vs_total_tokens", "needs runs of a tree method at two or more total_tokens values")
        return
    tree = tree[tree["total_tokens"].notna()]
    panels = ordered(zip(tree["model"], tree["temperature"], tree["method"]))
    panels = [p for p in panels if tree[(tree["model"] == p[0]) & (tree["temperature"] == p[1]) & (tree["method"] == p[2])]["total_tokens"].nunique() >= 2]
    fig, axes = _panel_grid(len(panels), 2, 3.0, 2.2)
    reduced = False
    for row_axes, (model, temp, method) in zip(axes, panels):
        frame = tree[(tree["model"] == model) & (tree["temperature"] == temp) & (tree["method"] == method)]
        tasks = [t for t in view.tasks if t in set(frame["task"])]
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
            ax.set_title(f"{method_name(method)}: {model}, {temperature_label(temp)}")
            if col == "speedup":
                ax.axhline(1.0, color="#333333", lw=0.8, ls="--", zorder=1)
        if len(tasks) > 1:
            row_axes[0].legend()
    out.save(fig, "tau_vs_total_tokens", "τ and speedup vs total_tokens",
          "Mean acceptance length τ (left) and speedup (right) against the number of drafted tokens verified per step"
          + ("; lines: best over depth × top_k at each total_tokens, dots: every configuration." if reduced else "."))


def _pooled(table: pd.DataFrame, keys: list[str], index: str) -> pd.DataFrame:
    """Sum counts over tasks: one row per keys + index."""
    return table.groupby([*keys, index], sort=False)[["reached", "accepted"] if "reached" in table else ["checked", "accepted"]].sum().reset_index()


def _fig_depth(view: ReportView, out: _FigureWriter) -> None:
    table = view.tables.depth
    table = table[table["reached"] > 0] if not table.empty else table
    if table.empty:
        out.skip("acceptance_by_depth", "no per-depth acceptance recorded (only vanilla or reference methods ran)")
        return
    pooled = _pooled(table, ["model", "temperature", "method", "params"], "depth")
    pooled["alpha"] = pooled["accepted"] / pooled["reached"]
    panels = ordered(zip(pooled["model"], pooled["temperature"]))
    fig, axes = _panel_grid(1, len(panels), 3.0, 2.4, sharey=True)
    for ax, (model, temp) in zip(axes[0], panels):
        frame = pooled[(pooled["model"] == model) & (pooled["temperature"] == temp)]
        summary = view.summary[(view.summary["model"] == model) & (view.summary["temperature"] == temp)]
        configs, notes = _shown_configs(summary[summary.apply(lambda r: (r["method"], r["params"]) in set(zip(frame["method"], frame["params"])), axis=1)])
        per_method: dict[str, list[str]] = {}
        for m, p in configs:
            per_method.setdefault(m, []).append(p)
        for method, params in configs:
            sub = frame[(frame["method"] == method) & (frame["params"] == params)].sort_values("depth")
            color = _shade(method_color(method), per_method[method].index(params), len(per_method[method]))
            label = view.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
            ax.plot(sub["depth"], sub["alpha"], marker="o", color=color, label=label)
            sparse = sub[sub["reached"] < FEW_DEPTH_STEPS]
            ax.scatter(sparse["depth"], sparse["alpha"], s=22, facecolors="white", edgecolors=color, linewidths=1.2, zorder=3)
        ax.set_xlabel("Draft depth $d$")
        ax.set_title(f"{model}, {temperature_label(temp)}")
        ax.set_ylim(-0.03, 1.03)
        depths = sorted(frame["depth"].unique())
        ax.set_xticks(depths if len(depths) <= 12 else depths[:: math.ceil(len(depths) / 12)])
    axes[0][0].set_ylabel("Acceptance rate $\\alpha_d$")
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    out.save(fig, "acceptance_by_depth", "Acceptance by draft depth",
          "α_d: among steps whose drafted path was accepted down to depth d − 1 (so a depth-d draft was checked), the "
          "share that accepted a depth-d token too; pooled over tasks. Hollow markers: fewer than "
          f"{FEW_DEPTH_STEPS} steps reached that depth, too few for the rate to mean much.")


def _fig_calibration(view: ReportView, out: _FigureWriter) -> None:
    table = view.tables.calibration
    if table.empty:
        out.skip("calibration", "no draft confidence recorded (only vanilla or reference methods ran)")
        return
    pooled = _pooled(table, ["model", "temperature", "method", "params"], "bin")
    bins = int(table["bin"].max()) + 1
    pooled["center"] = (pooled["bin"] + 0.5) / bins
    panels = ordered(zip(pooled["model"], pooled["temperature"]))
    fig = Figure(figsize=(max(3.3, 3.0 * len(panels)), 3.4), layout="constrained")
    axes = fig.subplots(2, len(panels), squeeze=False, sharex=True, height_ratios=[3, 1.2])
    for j, (model, temp) in enumerate(panels):
        ax, hax = axes[0][j], axes[1][j]
        frame = pooled[(pooled["model"] == model) & (pooled["temperature"] == temp)]
        summary = view.summary[(view.summary["model"] == model) & (view.summary["temperature"] == temp)]
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
            label = view.labels(method, params) + (f" [{notes[(method, params)]}]" if (method, params) in notes else "")
            ok = sub[sub["checked"] > 0]
            rate = ok["accepted"] / ok["checked"]
            ax.plot(ok["center"], rate, marker="o", color=color, label=label, zorder=3)
            hax.bar(sub["center"] + off, sub["checked"], width=0.9 / bins / max(1, len(configs)), color=color, zorder=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{model}, {temperature_label(temp)}")
        ax.set_ylabel("Actual acceptance rate")
        hax.set_xlabel("Draft confidence (draft-model probability)")
        hax.set_ylabel("Drafted\ntokens")
        if frame["checked"].max() > 50 * max(1, frame.loc[frame["checked"] > 0, "checked"].min()):
            hax.set_yscale("log")
        hax.grid(axis="x", visible=False)
    handles, labels = _unique_legend(axes[0])
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)))
    out.save(fig, "calibration", "Draft confidence vs acceptance",
          f"Drafted tokens that the target checked, binned by the draft's confidence ({bins} bins): the share the target "
          "accepted (top; dashed: a perfectly calibrated draft) and how many there were (bottom); pooled over tasks. "
          "EAGLE-2 builds its tree from these confidences, which works when the points lie near the diagonal.")
