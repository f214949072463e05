"""Report generation: files, table cells, the lossless flag, figures made or skipped."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # the report itself never touches pyplot; this guards anything else the tests import

import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO_ROOT
from results_fixture import write_run, write_sweep_run

from harness.report import write_report


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = write_report(write_run(root), root / "out")
    return path, path.read_text(encoding="utf-8")


def test_files_exist(fixture_report):
    path, _ = fixture_report
    out = path.parent
    assert path.name == "report.md"
    for name in ("report.tex", "summary.csv"):
        assert (out / name).is_file()
    for stem in ("speedup_by_task", "acceptance_by_depth", "calibration"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000


def test_main_table_has_paper_cells(fixture_report):
    _, md = fixture_report
    # T = 0: rows model x method, columns tasks (MT-bench first, as run), cells "speedup× / τ".
    assert "| Model | Method | MT-bench | GSM8K | Mean |" in md
    assert "| tiny | EAGLE-1 (tree=mc_sim_7b_63) | 1.50× / 2.00 |  | 1.50× / 2.00 * |" in md
    # EAGLE-2 mismatches vanilla on one output: the cell carries the dagger; GSM8K has no vanilla.
    assert "| tiny | EAGLE-2 | 2.67× / 2.50 † | — / 2.00 | 2.67× / 2.50 * |" in md
    # The group that only failed says so.
    assert "| tiny | EAGLE-1 (defaults) |  | failed |" in md
    # T = 1 gets its own table (one task, no mean column).
    assert "### T = 1" in md
    assert "| tiny | EAGLE-2 | 2.40× / 2.40 |" in md


def test_lossless_failure_is_flagged(fixture_report):
    _, md = fixture_report
    assert md.splitlines()[2].startswith("> **⚠ LOSSLESS CHECK FAILED: 1 of 6 greedy (T = 0) outputs differ")
    # Compared / identical / near-tie / unexplained: a float32 fixture has no audit, so the difference is unexplained.
    assert "| tiny | MT-bench | EAGLE-2 | 4 | 3 | 0 | 1 | **FAIL** |" in md
    assert "| tiny | MT-bench | EAGLE-2 | 0 | q3 | 1 | 19 | 20 / 20 | unaudited |  |" in md


def test_details_categories_failures_provenance(fixture_report):
    _, md = fixture_report
    assert "2.67× [2.00, 4.00]" in md  # bootstrap interval in the detail table
    assert "| 0.80 | 0.62 | 0.40 |" in md  # α1..α3
    assert "### MT-bench, T = 0" in md
    assert "| tiny | EAGLE-2 | 3.00× / 2.67 | 2.00× / 2.22 | 2.67× / 2.50 † |" in md
    assert "| tiny | GSM8K | EAGLE-1 | 0 | OutOfMemoryError | 2 |" in md
    assert "Git SHA: `0123456789abcdef0123456789abcdef01234567`" in md
    assert "torch `2.5.0`" in md
    assert "- `tree_heatmap`: no method swept depth and top_k" in md
    assert "- `tau_vs_total_tokens`: needs runs" in md


def test_latex_is_booktabs(fixture_report):
    path, _ = fixture_report
    tex = (path.parent / "report.tex").read_text(encoding="utf-8")
    assert tex.count("\\begin{tabular}") == tex.count("\\end{tabular}") == 3  # T = 0, T = 1, lossless
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert "\\multicolumn{2}{c}{MT-bench}" in tex
    assert "2.67$\\times^\\dagger$ & 2.50" in tex
    assert "EAGLE-1 (tree=mc\\_sim\\_7b\\_63)" in tex
    assert "& \\textbf{1} \\\\" in tex
    # Every row of the T = 0 table has the header's number of columns (2 + 2 per task + 2 for the mean).
    table = tex.split("\\midrule", 1)[1].split("\\bottomrule")[0]
    for line in table.strip().splitlines():
        if "multicolumn" not in line and line.strip() != "\\midrule":
            assert line.count("&") == 2 + 2 * 2 + 2 - 1, line


def test_summary_csv_round_trips(fixture_report):
    path, _ = fixture_report
    summary = pd.read_csv(path.parent / "summary.csv")
    e2 = summary[(summary["task"] == "mtbench") & (summary["method"] == "eagle2") & (summary["temperature"] == 0)].iloc[0]
    assert e2["speedup"] == pytest.approx(8 / 3)
    assert e2["lossless_mismatches"] == 1


def test_sweep_makes_every_figure(tmp_path):
    run_dir = write_sweep_run(tmp_path, questions=2, temperatures=(0.0,))  # one temperature keeps it fast
    md = write_report([run_dir], tmp_path / "out").read_text(encoding="utf-8")
    figures = tmp_path / "out" / "figures"
    for stem in ("speedup_by_task", "tau_vs_total_tokens", "acceptance_by_depth", "calibration",
                 "tree_heatmap_tiny_mtbench_T0"):
        assert (figures / f"{stem}.png").is_file(), stem
        assert f"(figures/{stem}.png)" in md
    assert "Skipped figures" not in md
    assert "✓ Lossless check passed" in md
    # The swept method is shown in the bar chart by its best configuration; tables list all 12.
    assert md.count("| tiny | EAGLE-2 (depth=") >= 2 * 12
    assert not (figures / "tree_heatmap_tiny_gsm8k_T0.png").exists()


def test_only_vanilla_skips_figures_cleanly(tmp_path):
    from results_fixture import record

    from harness.results import write_jsonl_atomic

    d = tmp_path / "run"
    d.mkdir()
    write_jsonl_atomic(d / "results.jsonl", [record("vanilla", "q1", 1, 10, 1.0, 10), record("vanilla", "q2", 1, 10, 1.0, 10)])
    md = write_report([d], tmp_path / "out").read_text(encoding="utf-8")
    assert "Lossless check: nothing to compare" in md
    for name in ("speedup_by_task", "tree_heatmap", "tau_vs_total_tokens", "acceptance_by_depth", "calibration"):
        assert f"- `{name}`:" in md
    assert "No manifest.json found" in md


def _without_timestamp(markdown: str) -> str:
    return re.sub(r"^Generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "Generated <time>", markdown, count=1, flags=re.MULTILINE)


def test_committed_mtbench_report_is_reproduced(tmp_path, monkeypatch):
    """The committed run renders to the committed report, but for the time it was generated."""
    monkeypatch.chdir(REPO_ROOT)  # the report names the run folder as given, and the committed one was given relatively
    path = write_report([Path("results/mtbench")], tmp_path / "out")
    committed = REPO_ROOT / "reports" / "mtbench"
    assert _without_timestamp(path.read_text(encoding="utf-8")) == _without_timestamp((committed / "report.md").read_text(encoding="utf-8"))
    assert (path.parent / "report.tex").read_text(encoding="utf-8") == (committed / "report.tex").read_text(encoding="utf-8")
    assert sorted(p.name for p in (path.parent / "figures").iterdir()) == sorted(p.name for p in (committed / "figures").iterdir())
