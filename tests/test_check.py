"""The regression check: passes on the run that made the baseline, fails (and says why) on a
regressed one."""

from __future__ import annotations

import json

import pytest
from results_fixture import EAGLE2, failures, records, write_run

from harness.check import load_baseline, run_check, write_baseline
from harness.results import write_jsonl_atomic

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
    write_jsonl_atomic(root / "results.jsonl", [r for r in rows if r is not None])
    write_jsonl_atomic(root / "failures.jsonl", failures()[1])
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


# -- bad baselines are bad input (exit 2), distinct from a regression (exit 1) ---------------------


def _cli(*argv: str) -> int:
    from harness.__main__ import main

    return main(["-q", *argv])


def test_missing_baseline_names_the_flag(baseline, tmp_path, capsys):
    dirs, _ = baseline
    assert _cli("check", str(dirs[0]), "--baseline", str(tmp_path / "none.json")) == 2
    err = capsys.readouterr().err
    assert "--write-baseline" in err and "write_baseline" not in err.replace("--write-baseline", "")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda b: b.update(groups={}), "non-empty object"),
        (lambda b: b.update(groups=None), "non-empty object"),
        (lambda b: [g.update(tau=None, n_samples=None) for g in b["groups"].values()], "n_samples is null"),
        (lambda b: [g.update(tau=None) for g in b["groups"].values() if g["n_samples"]], "tau is null although"),
        (lambda b: [g.update(speedup="fast") for g in b["groups"].values()], "speedup is \"fast\""),
        (lambda b: [g.update(n_samples=0) for g in b["groups"].values()], "no group has samples"),
    ],
)
def test_vacuous_or_null_baselines_are_refused(baseline, tmp_path, capsys, edit, message):
    dirs, path = baseline
    data = json.loads(path.read_text())
    edit(data)
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(data))
    from harness.check import BaselineError

    with pytest.raises(BaselineError, match=message):
        run_check(dirs, bad)
    assert _cli("check", str(dirs[0]), "--baseline", str(bad)) == 2  # bad input, not a regression (1) or a pass (0)
    assert message.split()[0] in capsys.readouterr().err


def test_malformed_baseline_exits_2_not_1(baseline, tmp_path, capsys):
    dirs, _ = baseline
    bad = tmp_path / "torn.json"
    bad.write_text('{"schema": 1, "kind": "eagle2-bench baseline", "groups": {"a": ')
    assert _cli("check", str(dirs[0]), "--baseline", str(bad)) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_a_run_of_other_questions_is_refused_or_warned(baseline, tmp_path, capsys):
    _, path = baseline
    fewer = _single_dir_run(tmp_path / "fewer", lambda r: None if r["question_id"] == "q3" else r)
    from harness.check import QuestionsDifferError

    with pytest.raises(QuestionsDifferError, match="task mtbench: 2 question.*missing q3"):
        run_check(fewer, path)
    assert _cli("check", str(fewer), "--baseline", str(path)) == 2
    assert "--allow-different-questions" in capsys.readouterr().err
    passed, table = run_check(fewer, path, allow_different_questions=True)
    assert "questions differ from the baseline's" in table
    code = _cli("check", str(fewer), "--baseline", str(path), "--allow-different-questions")
    captured = capsys.readouterr()
    assert code in (0, 1) and "warning: the run's questions differ" in captured.err
    same = _single_dir_run(tmp_path / "same")
    assert run_check(same, path)[0]  # the same questions: no refusal
    assert load_baseline(path)["provenance"]["questions"]["mtbench"] == ["q1", "q2", "q3"]
