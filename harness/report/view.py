"""What the writers share: a run's aggregated tables in report order, with the labels to show."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.aggregate import RunTables
from harness.report.labels import Labels, in_run_order, ordered


@dataclass(frozen=True)
class FigureEntry:
    """A figure written as ``figures/<stem>.png`` and ``.pdf``, with its heading and caption."""

    stem: str
    title: str
    caption: str


@dataclass(frozen=True)
class ReportView:
    tables: RunTables
    summary: pd.DataFrame  # tables.summary in report order (labels.in_run_order)
    labels: Labels
    tasks: list[str]  # columns of the main tables, in run order
    temperatures: list[float]  # ascending

    @classmethod
    def of(cls, tables: RunTables) -> ReportView:
        summary = tables.summary
        tasks = list(tables.tasks)
        temperatures = [] if summary.empty else sorted(ordered(summary["temperature"].dropna()))
        summary = in_run_order(summary, tasks)
        return cls(tables, summary, Labels.from_summary(summary) if not summary.empty else Labels({}), tasks, temperatures)
