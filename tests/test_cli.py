"""The command line: help, ls, validate (good and bad files), run with overrides + resume + report +
check, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import DATA_DIR, REPO_ROOT

from harness.__main__ import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main



def test_help_for_every_command(capsys):
    for argv in (["--help"], ["run", "--help"], ["report", "--help"], ["check", "--help"], ["ls", "--help"], ["validate", "--help"],
                 ["train", "--help"], ["train", "train", "--help"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "--resume" in out and "--shard" in out and "--execute-code" in out and "--baseline" in out
    assert "prompts" in out and "distill" in out and "--init-from" in out and "--draft-vocab-size" in out


def test_ls(capsys):
    assert main(["ls"]) == EXIT_OK
    out = capsys.readouterr().out
    for word in ("mt_bench", "humaneval", "gsm8k", "questions", "vanilla", "eagle1", "eagle2", "hf_prompt_lookup", "smoke.yaml", "paper/"):
        assert word in out, word
    assert "INVALID" not in out


def test_validate_good_and_bad(tmp_path, capsys):
    assert main(["validate", "smoke", str(REPO_ROOT / "suites" / "mtbench.yaml"), "--cells"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "ok:" in out and "-> 24 cells" in out and "tiny-random.mt_bench.vanilla.T0.s0." in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: 1\nname: x\nmodels: [{name: m, head: random}]\ntasks: [mt_bench]\nmethods: [eagel2]\n")
    assert main(["validate", str(bad)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert str(bad) in err and "line 5: methods[0].name: unknown method 'eagel2'; did you mean 'eagle2'? available: vanilla, eagle1" in err


def test_bad_arguments_exit_2(capsys):
    for argv in (["run", "smoke", "--shard", "3/2"], ["run", "smoke", "--temperatures", "x"], ["run", "smoke", "--limit", "0"]):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2
    assert main(["run", "no-such-suite"]) == EXIT_USAGE
    assert "not found" in capsys.readouterr().err


def test_run_resume_report_check(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["-q", "run", "smoke", "--data-dir", str(DATA_DIR), "--out", str(out), "--limit", "1",
            "--max-new-tokens", "3", "--temperatures", "0", "--no-progress"]
    assert main(argv) == EXIT_OK
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # smoke: 3 tasks x 4 methods at one temperature; MT-bench has 2 turns.
    assert len(records) == 4 * (2 + 1 + 1) and {r["temperature"] for r in records} == {0.0}
    assert all(r["new_tokens"] <= 3 for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["overrides"] == {"limit": 1, "max_new_tokens": 3, "temperatures": [0.0]}
    assert main(argv) == EXIT_USAGE  # the folder holds a run: --resume or a new --out
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == EXIT_OK
    assert "0 records written, 16 already there" in capsys.readouterr().out

    report = tmp_path / "report"
    assert main(["-q", "report", str(out), "--out", str(report)]) == EXIT_OK
    assert (report / "report.md").is_file()
    baseline = tmp_path / "baseline.json"
    assert main(["-q", "check", str(out), "--baseline", str(baseline), "--write-baseline"]) == EXIT_OK
    assert baseline.is_file()
    assert main(["-q", "check", str(out), "--baseline", str(baseline)]) == EXIT_OK


def test_bad_model_path_exits_1_with_failures(tmp_path, capsys):
    suite = tmp_path / "broken.yaml"
    suite.write_text(
        "schema: 1\nname: broken\nmodels: [{name: m, source: /nonexistent/folder}]\n"
        "tasks: [{name: mt_bench, limit: 1, max_new_tokens: 2}]\nmethods: [vanilla]\n"
    )
    assert main(["-q", "run", str(suite), "--data-dir", str(DATA_DIR), "--out", str(tmp_path / "out"), "--no-progress"]) == EXIT_FAILED
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and failures[0]["model"] == "m" and failures[0]["question_id"] is None
    assert "failures.jsonl" in capsys.readouterr().err


def test_offline_without_data_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EAGLE2_BENCH_OFFLINE", "1")
    monkeypatch.setenv("EAGLE2_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EAGLE2_DATA_DIR", raising=False)
    code = main(["-q", "run", "smoke", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "mt_bench/question.jsonl" in err and "--data-dir" in err


def test_module_entry_point():
    done = subprocess.run([sys.executable, "-m", "harness", "--help"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0 and "validate" in done.stdout


def test_train_stages_end_to_end_on_a_tiny_model(tmp_path, capsys):
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in (
        "Write a haiku about autumn leaves.", "List three uses of a paperclip.",
        "Explain what a prime number is.", "Give me a tip for learning to juggle.")))
    work, head, model = tmp_path / "work", tmp_path / "head", ["--model", "tiny-random-llama", "--threads", "1"]
    assert main(["-q", "train", "prompts", "--work", str(work), "--source", f"file:{prompts}", "--data-dir", str(DATA_DIR), *model]) == EXIT_OK
    assert main(["-q", "train", "distill", "--work", str(work), "--max-new-tokens", "8", "--batch-size", "2", "--shard-size", "2", *model]) == EXIT_OK
    assert main(["-q", "train", "train", "--work", str(work), "--out", str(head), "--epochs", "1", "--heldout-fraction", "0.3", *model]) == EXIT_OK
    assert (head / "config.json").is_file() and (head / "model.safetensors").is_file()
    report = tmp_path / "eval.json"
    assert main(["-q", "train", "evaluate", "--head", str(head), "--questions", "2", "--max-new-tokens", "8", "--temperatures", "0",
                 "--data-dir", str(DATA_DIR), "--out", str(report), "--run-dir", str(tmp_path / "eval-run"), *model]) == EXIT_OK
    results = json.loads(report.read_text())["results"]
    assert results["T=0 eagle2:6/10/60"]["greedy_mismatches_vs_vanilla"] == 0
    # The measurement is an ordinary run folder: its report states the same τ.
    assert main(["-q", "report", str(tmp_path / "eval-run"), "--out", str(tmp_path / "eval-report")]) == EXIT_OK
    tau = results["T=0 eagle2:6/10/60"]["tau"]
    row = next(line for line in (tmp_path / "eval-report" / "report.md").read_text().splitlines() if line.startswith("| target | EAGLE-2 |"))
    assert f"/ {tau:.2f}" in row
    # An evaluation prompt in the training file is refused with exit status 2, naming the flag that drops it.
    mt_bench_turn = json.loads((DATA_DIR / "mt_bench" / "question.jsonl").read_text().splitlines()[0])["turns"][0]
    prompts.write_text(json.dumps({"prompt": mt_bench_turn}) + "\n")
    capsys.readouterr()
    assert main(["train", "prompts", "--work", str(tmp_path / "other"), "--source", f"file:{prompts}", "--data-dir", str(DATA_DIR)]) == EXIT_USAGE
    assert "--drop-overlapping" in capsys.readouterr().err


def test_default_folders_report_and_check_by_suite_name_twice_in_a_row(tmp_path, monkeypatch, capsys):
    """The main command block as a new user types it: runs land in runs/<suite>/<timestamp>, report and
    check take the suite name, and the same commands work again (a new run, not an error)."""
    monkeypatch.chdir(tmp_path)
    run = ["-q", "run", "smoke", "--data-dir", str(DATA_DIR), "--limit", "1", "--max-new-tokens", "2", "--temperatures", "0", "--no-progress"]
    folders = []
    for attempt in range(2):
        assert main(run) == EXIT_OK
        out = capsys.readouterr().out
        folder = out.rsplit("-> ", 1)[1].strip()
        assert folder.startswith("runs/smoke/") and (tmp_path / folder / "results.jsonl").is_file()
        folders.append(folder)
        assert main(["-q", "report", "smoke"]) == EXIT_OK
        assert f"report: {folder}/report/report.md" in capsys.readouterr().out  # the latest run, beside it
    assert folders[0] != folders[1] and sorted(folders) == folders
    assert main(["-q", "report", str(REPO_ROOT / "suites" / "smoke.yaml"), "--out", "rep"]) == EXIT_OK and (tmp_path / "rep" / "report.md").is_file()
    assert main(["-q", "check", "smoke", "--baseline", "base.json", "--write-baseline"]) == EXIT_OK
    assert main(["-q", "check", "smoke", "--baseline", "base.json"]) == EXIT_OK
    assert main(run + ["--resume"]) == EXIT_OK  # continues the latest run: nothing left to do
    assert "0 records written, 16 already there" in capsys.readouterr().out
    assert main(["-q", "report", "gsm8k"]) == EXIT_USAGE  # a suite without runs
    err = capsys.readouterr().err
    assert "no run of suite 'gsm8k' in runs/gsm8k/" in err
    assert main(["-q", "report", "no-such-thing"]) == EXIT_USAGE
    assert "neither a run folder nor a suite" in capsys.readouterr().err


def test_help_documents_exit_statuses(capsys):
    for argv in (["--help"], ["run", "--help"], ["check", "--help"], ["report", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert "exit status: 0" in out and "2 bad input" in out, argv
        if argv[0] == "check":
            assert "malformed baseline" in out and "regression" in out
