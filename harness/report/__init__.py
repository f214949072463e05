"""Reports: paper-style tables (Markdown and LaTeX), a summary CSV and matplotlib figures.

Everything here is built from the aggregated tables of :mod:`harness.aggregate`
(:class:`~harness.aggregate.RunTables`), never from raw records. :func:`write_report` writes into
``out_dir``::

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
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from harness.aggregate import RunTables, load_runs, tabulate
from harness.report.figures import make_figures
from harness.report.latex import latex
from harness.report.markdown import markdown
from harness.report.view import ReportView

logger = logging.getLogger(__name__)

__all__ = ["write_report", "write_report_from_tables"]


def write_report(run_dirs: Sequence[Path], out_dir: Path) -> Path:
    """Aggregate ``run_dirs`` (shards of a run are merged) and write the report into ``out_dir``.

    Returns the path of ``report.md``.
    """
    return write_report_from_tables(tabulate(load_runs(list(run_dirs))), out_dir)


def write_report_from_tables(tables: RunTables, out_dir: Path) -> Path:
    """Write the report of already aggregated ``tables`` into ``out_dir``; returns the path of ``report.md``."""
    out_dir = Path(out_dir)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    tables.summary.to_csv(out_dir / "summary.csv", index=False)
    view = ReportView.of(tables)
    figures, skipped = make_figures(view, out_dir)
    path = out_dir / "report.md"
    path.write_text(markdown(view, figures, skipped, datetime.now(timezone.utc)), encoding="utf-8")
    (out_dir / "report.tex").write_text(latex(view), encoding="utf-8")
    logger.info("wrote %s (%d figures, %d skipped)", path, len(figures), len(skipped))
    return path
