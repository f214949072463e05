"""Aggregation on a hand-made two-shard run; every expected number is computed by hand in
results_fixture's docstring."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
from results_fixture import EAGLE1, EAGLE2, failure, record, write_run

from harness.aggregate import (
    calibration_table,
    canonical_params,
    depth_table,
    group_key,
    load_runs,
    lossless_table,
    paired_speedup,
    parse_params,
    summarize,
    tabulate,
)
from harness.results import write_jsonl_atomic


@pytest.fixture()
def run(tmp_path):
    return load_runs(write_run(tmp_path))


@pytest.fixture()
def summary(run):
    return summarize(run)


def row(summary: pd.DataFrame, task: str, method: str, temperature: float = 0.0) -> pd.Series:
    rows = summary[(summary["task"] == task) & (summary["method"] == method) & (summary["temperature"] == temperature)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_canonical_params_is_sorted_and_round_trips():
    text = canonical_params({"top_k": 2, "total_tokens": 8, "depth": 3})
    assert text == "depth=3, top_k=2, total_tokens=8"
    assert parse_params(text) == {"depth": 3, "top_k": 2, "total_tokens": 8}
    assert canonical_params({"tree": [[0], [0, 1]]}) == "tree=[[0],[0,1]]"
    assert parse_params("tree=[[0],[0,1]], x=a b") == {"tree": [[0], [0, 1]], "x": "a b"}
    assert canonical_params({}) == canonical_params(None) == ""


def test_shards_merge_and_the_last_duplicate_wins(run):
    # 6 + 10 records, one of them a stale duplicate of vanilla mtbench T=0 q1/t1.
    assert len(run.records) == 15
    vanilla = run.records[(run.records["method"] == "vanilla") & (run.records["temperature"] == 0) & (run.records["question_id"] == "q1") & (run.records["turn"] == 1)]
    assert vanilla["wall_time_s"].tolist() == [1.0]
    assert len(run.manifests) == 2
    # The shard-1 failure of a record that shard 2 completed is dropped; the other three remain.
    assert len(run.failures) == 3


def test_vanilla_tokens_per_s_and_tau(summary):
    vanilla = row(summary, "mtbench", "vanilla")
    assert vanilla["new_tokens"] == 60
    assert vanilla["time_s"] == pytest.approx(8.0)
    assert vanilla["tokens_per_s"] == pytest.approx(7.5)
    assert vanilla["tau"] == 1.0
    assert vanilla["speedup"] == pytest.approx(1.0)
    assert (vanilla["n_questions"], vanilla["n_samples"]) == (3, 4)


def test_eagle2_speed_tau_and_alpha(summary):
    e2 = row(summary, "mtbench", "eagle2")
    assert e2["params"] == EAGLE2
    assert e2["tokens_per_s"] == pytest.approx(20.0)
    assert e2["speedup"] == pytest.approx(8 / 3)
    assert e2["vanilla_tokens_per_s"] == pytest.approx(7.5)
    assert e2["n_paired"] == 4
    assert e2["tau"] == pytest.approx(2.5)
    assert e2["target_forwards"] == 24
    assert (e2["alpha_d1"], e2["alpha_d2"], e2["alpha_d3"]) == pytest.approx((0.8, 0.625, 0.4))
    assert e2["prefill_share"] == pytest.approx(0.4 / 3)
    assert e2["draft_share"] == pytest.approx(0.8 / 3)
    assert e2["verify_share"] == pytest.approx(0.5)
    assert e2["other_share"] == pytest.approx(0.1)
    assert e2["draft_tokens_per_step"] == pytest.approx(159 / 24)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate(run, summary):
    e2 = row(summary, "mtbench", "eagle2")
    # Per-question speedups are 2, 2 and 4: every resample lies in [2, 4].
    assert 2.0 <= e2["speedup_lo"] < e2["speedup"] < e2["speedup_hi"] <= 4.0
    again = summarize(run)
    assert row(again, "mtbench", "eagle2")["speedup_lo"] == e2["speedup_lo"]
    other_seed = summarize(run, seed=1)
    assert row(other_seed, "mtbench", "eagle2")["speedup"] == e2["speedup"]


def test_speedup_uses_only_the_samples_vanilla_shares(summary):
    e1 = row(summary, "mtbench", "eagle1")
    assert e1["params"] == EAGLE1
    assert e1["tokens_per_s"] == pytest.approx(15.0)
    assert e1["vanilla_tokens_per_s"] == pytest.approx(10.0)  # q1/t1 + q2/t1 only: 30 tok / 3 s
    assert e1["speedup"] == pytest.approx(1.5)
    assert e1["tau"] == pytest.approx(2.0)
    assert e1["alpha_d1"] == pytest.approx(9 / 13)


def test_temperature_one_pairs_with_vanilla_at_temperature_one(summary):
    e2 = row(summary, "mtbench", "eagle2", 1.0)
    assert e2["speedup"] == pytest.approx(2.4)
    assert e2["tau"] == pytest.approx(2.4)
    assert e2["failures"] == 1
    # Outputs at T > 0 are not compared.
    assert e2["lossless_compared"] == 0


def test_lossless_mismatch_is_counted_and_located(run, summary):
    e2 = row(summary, "mtbench", "eagle2")
    assert (e2["lossless_compared"], e2["lossless_mismatches"]) == (4, 1)
    assert "LOSSLESS CHECK FAILED" in e2["note"]
    e1 = row(summary, "mtbench", "eagle1")
    assert (e1["lossless_compared"], e1["lossless_mismatches"]) == (2, 0)
    table = lossless_table(run.records)
    bad = table[table["has_reference"] & ~table["match"]]
    assert bad[["question_id", "turn", "first_diff"]].values.tolist() == [["q3", 1, 19]]


def test_group_without_vanilla_gets_nan_speedup_and_a_note(summary):
    e2 = row(summary, "gsm8k", "eagle2")
    assert math.isnan(e2["speedup"])
    assert "no vanilla" in e2["note"]
    assert e2["tokens_per_s"] == pytest.approx(10.0)
    assert e2["accuracy"] == pytest.approx(0.5)
    assert e2["n_scored"] == 2
    assert e2["lossless_compared"] == 0


def test_group_that_only_failed_is_listed(summary):
    e1 = row(summary, "gsm8k", "eagle1")
    assert e1["failures"] == 2
    assert e1["n_samples"] == 0
    assert math.isnan(e1["tau"])


def test_per_category_speedup(run):
    by_cat = summarize(run, by=("category",))
    sel = by_cat[(by_cat["task"] == "mtbench") & (by_cat["method"] == "eagle2") & (by_cat["temperature"] == 0)]
    got = dict(zip(sel["category"], zip(sel["speedup"], sel["tau"])))
    # writing = q1 (two turns): 20 tok / 1 s vs 20 tok / 2 s -> 2; tau 20 / 9.
    # math = q2, q3: 40 tok / 2 s vs 40 tok / 6 s -> 3; tau 40 / 15.
    assert got["writing"] == pytest.approx((2.0, 20 / 9))
    assert got["math"] == pytest.approx((3.0, 40 / 15))


def test_depth_and_calibration_tables(run):
    depths = depth_table(run)
    e2 = depths[(depths["task"] == "mtbench") & (depths["method"] == "eagle2") & (depths["temperature"] == 0)]
    assert e2[["depth", "reached", "accepted"]].values.tolist() == [[1, 20, 16], [2, 16, 10], [3, 10, 4]]
    cal = calibration_table(run)
    cal = cal[cal["checked"] > 0]
    assert cal[["bin", "checked", "accepted"]].values.tolist() == [[2, 10, 1], [10, 4, 2], [19, 10, 9]]
    assert cal["rate"].tolist() == pytest.approx([0.1, 0.5, 0.9])
    assert cal["low"].tolist() == pytest.approx([0.1, 0.5, 0.95])


def test_paired_speedup_bootstrap_collapses_when_every_question_agrees():
    van = pd.DataFrame([record("vanilla", q, 1, 10, 2.0, 10) for q in ("q1", "q2", "q3")])
    fast = pd.DataFrame([record("eagle2", q, 1, 10, 1.0, 4) for q in ("q1", "q2", "q3")])
    result = paired_speedup(fast, van, n_boot=200, seed=3)
    assert (result.value, result.low, result.high) == pytest.approx((2.0, 2.0, 2.0))
    assert (result.samples, result.questions) == (3, 3)


def test_torn_last_line_is_skipped_and_bad_schema_is_an_error(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl_atomic(d / "results.jsonl", [record("vanilla", "q1", 1, 10, 1.0, 10)])
    with (d / "results.jsonl").open("a") as f:
        f.write('{"schema": 1, "cell_id": "x", "mo')
    assert len(load_runs(d).records) == 1
    write_jsonl_atomic(d / "results.jsonl", [{**record("vanilla", "q1", 1, 10, 1.0, 10), "schema": 2}])
    with pytest.raises(ValueError, match="schema 2"):
        load_runs(d)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        (tmp_path / "empty").mkdir()
        load_runs(tmp_path / "empty")


def test_group_key_is_stable(summary):
    assert group_key(row(summary, "mtbench", "eagle2")) == f"tiny|mtbench|eagle2|{EAGLE2}|T=0"
    assert json.loads(json.dumps(group_key(row(summary, "mtbench", "vanilla", 1.0)))) == "tiny|mtbench|vanilla||T=1"


def test_a_folder_of_shards_stands_for_all_of_them(tmp_path):
    write_run(tmp_path / "sharded")
    run = load_runs(tmp_path / "sharded")
    assert len(run.run_dirs) == 2
    assert len(run.records) == 15


def test_a_whole_cell_failure_is_cleared_once_the_cell_has_records(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl_atomic(d / "results.jsonl", [record("vanilla", "q1", 1, 10, 1.0, 10), record("eagle2", "q1", 1, 10, 0.5, 4)])
    # Model load failed before any question (question_id null), then a resumed run completed the cell.
    write_jsonl_atomic(d / "failures.jsonl", [failure("eagle2", None), failure("eagle1", None)])
    run = load_runs(d)
    assert run.failures["method"].tolist() == ["eagle1"]


def test_repeats_of_a_sample_do_not_trigger_the_partial_pairing_note(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    rows = []
    for repeat in (0, 1):
        for method, wall in (("vanilla", 1.0), ("eagle2", 0.5)):
            rows.append({**record(method, "q1", 1, 10, wall, 10), "repeat": repeat})
    write_jsonl_atomic(d / "results.jsonl", rows)
    e2 = row(summarize(load_runs(d)), "mtbench", "eagle2")
    assert e2["speedup"] == pytest.approx(2.0)
    assert "samples" not in e2["note"]


def test_a_group_pooling_different_heads_gets_a_note(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    write_jsonl_atomic(d / "results.jsonl", [
        record("vanilla", "q1", 1, 10, 1.0, 10),
        record("vanilla", "q2", 1, 10, 1.0, 10),
        {**record("eagle2", "q1", 1, 10, 0.5, 4), "head": "builtin:a"},
        {**record("eagle2", "q2", 1, 10, 0.5, 4), "head": "random"},
    ])
    summary = summarize(load_runs(d))
    assert "different head (builtin:a, random)" in row(summary, "mtbench", "eagle2")["note"]
    assert "pools" not in row(summary, "mtbench", "vanilla")["note"]


def test_audited_near_tie_is_explained_and_unexplained_stays_a_failure(tmp_path):
    """A half-precision audit row turns a difference into a near-tie (not a failure); an unexplained one stays."""
    from harness.aggregate import load_runs, summarize
    from harness.results import AUDIT_FILE

    dirs = write_run(tmp_path)
    run = load_runs(dirs)
    bad = lossless_table(run.records)
    bad = bad[bad["has_reference"] & ~bad["match"]].iloc[0]
    cell_id = run.records[(run.records["question_id"] == bad["question_id"]) & (run.records["method"] == "eagle2")
                          & (run.records["temperature"] == 0.0) & (run.records["task"] == "mtbench")]["cell_id"].iloc[0]
    for kind, near_ties, mismatches in (("near_tie", 1, 0), ("unexplained", 0, 1)):
        audit = {"schema": 1, "cell_id": cell_id, "repeat": 0, "question_id": bad["question_id"], "turn": int(bad["turn"]), "kind": kind,
                 "position": 19, "logit_gap": 0.01, "margin": 0.5}
        (dirs[-1] / AUDIT_FILE).write_text(json.dumps(audit) + "\n")
        e2 = row(summarize(load_runs(dirs), n_boot=50), "mtbench", "eagle2")
        assert (e2["lossless_compared"], e2["lossless_near_ties"], e2["lossless_mismatches"]) == (4, near_ties, mismatches)
        assert ("LOSSLESS CHECK FAILED" in e2["note"]) == bool(mismatches)


def test_the_committed_mtbench_run_aggregates_to_its_recorded_summary():
    """results/mtbench (committed) against the summary.csv its report had when it was recorded
    (tests/expected/): a change to reading or aggregating records shows up here."""
    from conftest import REPO_ROOT

    summary = summarize(load_runs(REPO_ROOT / "results" / "mtbench"))
    got = pd.read_csv(io.StringIO(summary.to_csv(index=False)))
    expected = pd.read_csv(REPO_ROOT / "tests" / "expected" / "results_mtbench_summary.csv")
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12)
    greedy = got[(got["method"] != "vanilla") & (got["temperature"] == 0)].set_index(["method", "params"])
    assert len(got) == 10 and len(greedy) == 3
    assert (greedy["lossless_compared"] == 12).all() and (greedy["lossless_mismatches"] == 0).all()
    cpu_tree = ("eagle2", "depth=3, draft_vocab_size=4096, top_k=4, total_tokens=8")
    assert greedy.loc[cpu_tree, "speedup"] == pytest.approx(0.8589, abs=1e-4)
    assert greedy.loc[cpu_tree, "tau"] == pytest.approx(2.2307, abs=1e-4)


def test_tabulate_holds_what_a_report_shows_without_records(run):
    tables = tabulate(run)
    assert tables.tasks == ("mtbench", "gsm8k") and tables.question_ids == ("q1", "q2", "q3")
    assert (tables.n_records, tables.n_failures) == (15, 3)
    assert tables.summary.equals(summarize(run))
    # The one greedy output that leaves vanilla's, with where it leaves it.
    assert tables.differences[["method", "question_id", "turn", "first_diff", "divergence"]].values.tolist() == [["eagle2", "q3", 1, 19, "unaudited"]]
    counts = tables.failure_counts
    assert counts[["task", "method", "temperature", "error_type", "n"]].values.tolist() == [
        ["gsm8k", "eagle1", 0.0, "OutOfMemoryError", 2], ["mtbench", "eagle2", 1.0, "OutOfMemoryError", 1]]
    assert list(tables.failure_examples["error_type"]) == ["OutOfMemoryError"]
    # Per category, since a task has several (the fixture's q1 is writing, the others math).
    assert set(tables.by_category["category"]) == {"math", "writing"} and set(tables.by_category["task"]) == {"mtbench", "gsm8k"}
