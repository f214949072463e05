"""The regression check: passes on the run that made the baseline, fails (and says why) on a
regressed one."""

from __future__ import annotations

import json

import pytest
from results_fixture import EAGLE2, failures, records, write_jsonl, write_run

from harness.check import load_baseline, run_check, write_baseline

E2_KEY = f"tiny|mtbench|eagle2|{EAGLE2}|T=0"


@pytest.fixture()
def baseline(tmp_path):
    dirs = write_run(tmp_path / "base")
    return dirs, write_baseline(dirs, tmp_path / "baselines" / "fixture.json")


def _single_dir_run(root, edit=None):
    """The fixture run merged into one directory, with ``edit(record)`` applied to each record."""
    shard1, shard2 = records()
    merged = {(r["cell_id"], r["question_id"], r["turn"]): r for r in shard1 + shard2}
    rows = [edit(dict(r)) if edit else r for r in merged.values()]
    root.mkdir(parents=True)
    write_jsonl(root / "results.jsonl", [r for r in rows if r is not None])
    write_jsonl(root / "failures.jsonl", failures()[1])
    return root


def test_baseline_format(baseline):
    _, path = baseline
    data = load_baseline(path)
    assert data["schema"] == 1 and data["kind"] == "eagle2-bench baseline"
    assert data["tolerances"] == {"tau_rel_tol": 0.05, "speedup_rel_tol": 0.15}
    assert data["provenance"]["git_sha"] == "0123456789abcdef0123456789abcdef01234567"
    e2 = data["groups"][E2_KEY]
    assert e2["tau"] == pytest.approx(2.5)
    assert e2["speedup"] == pytest.approx(8 / 3)
    assert (e2["lossless_compared"], e2["lossless_mismatches"]) == (4, 1)
    # No vanilla for gsm8k: the speedup is null (JSON has no NaN).
    assert data["groups"][f"tiny|gsm8k|eagle2|{EAGLE2}|T=0"]["speedup"] is None
    json.loads(path.read_text())  # strict JSON


def test_identical_run_passes(baseline):
    dirs, path = baseline
    passed, table = run_check(dirs, path)
    assert passed, table
    assert table.startswith("# Regression check: PASSED")
    assert "**FAIL**" not in table
    assert "| `tiny\\|mtbench\\|eagle2\\|depth=3, top_k=2, total_tokens=8\\|T=0` | tau | 2.500 | 2.500 | +0.000 (+0.0%) | ±5% | PASS |" in table


def test_slower_run_with_lower_tau_and_a_new_mismatch_fails(baseline, tmp_path):
    _, path = baseline

    def regress(r):
        if r["method"] == "eagle2" and r["task"] == "mtbench" and r["temperature"] == 0:
            r["wall_time_s"] *= 2  # speedup 8/3 -> 4/3
            r["target_forwards"] += 2  # tau 60/24 -> 60/32
            if r["question_id"] == "q2":
                r["output_ids"] = r["output_ids"][:-1] + [3]  # a second lossless mismatch
        return r

    passed, table = run_check(_single_dir_run(tmp_path / "bad", regress), path)
    assert not passed
    assert table.startswith("# Regression check: FAILED")
    failed = table.split("## All checks")[0]
    assert "| tau | 2.500 | 1.875 | -0.625 (-25.0%) | ±5% | **FAIL** |" in failed
    assert "| speedup | 2.667 | 1.333 | -1.333 (-50.0%) | -15% | **FAIL** |" in failed
    assert "| lossless_mismatches | 1 | 2 | +1 | ≤ 1 | **FAIL** (2 of 4 greedy outputs differ from vanilla) |" in failed
    assert "eagle1" not in failed  # untouched groups pass


def test_missing_group_fails_and_faster_passes(baseline, tmp_path):
    _, path = baseline

    def edit(r):
        if r["method"] == "eagle1":
            return None  # the eagle1 group disappears
        if r["method"] == "eagle2" and r["task"] == "mtbench" and r["temperature"] == 0:
            r["wall_time_s"] /= 2  # twice as fast: an improvement, not a failure
        return r

    passed, table = run_check(_single_dir_run(tmp_path / "edited", edit), path)
    assert not passed
    assert "tree=mc_sim_7b_63\\|T=0` | group | 2 | — | — | present | **FAIL** (group missing from the run) |" in table
    assert "| speedup | 2.667 | 5.333 | +2.667 (+100.0%) | -15% | PASS (improved) |" in table


def test_tolerances_are_applied(baseline, tmp_path):
    _, path = baseline

    def slower(r):
        if r["method"] == "eagle2" and r["task"] == "mtbench" and r["temperature"] == 0:
            r["wall_time_s"] *= 1.1  # speedup -9%
        return r

    run = _single_dir_run(tmp_path / "slower", slower)
    assert run_check(run, path)[0]
    passed, table = run_check(run, path, speedup_rel_tol=0.05)
    assert not passed
    assert "| -5% | **FAIL** |" in table


def test_bad_baseline_file_is_a_clear_error(tmp_path, baseline):
    dirs, _ = baseline
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_check(dirs, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"groups": {}}))
    with pytest.raises(ValueError, match="not an eagle2-bench baseline"):
        run_check(dirs, bad)
