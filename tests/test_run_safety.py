"""Accidents around a run folder: two runs racing into it (real processes), a stale lock, a resume
with other options or other data (question text, head weights), damaged result lines, folders that
cannot be written; and the progress bar's labels. All on the tiny random Llama."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO_ROOT

from harness.__main__ import main
from harness.config import apply_overrides, load_suite
from harness.lock import RunLock, RunLockedError
from harness.results import JsonlLog, OutputFolderError, parse_jsonl
from harness.runner import ResumeMismatchError, RunOptions, method_label, run_suite
from harness.tasks import DataSource


SUITE = """\
schema: 1
name: safety
models:
  - name: tiny
    source: tiny-random-llama
    dtype: float32
    device: cpu
    head: {head}
tasks:
  - name: mt_bench
    limit: 2
    max_new_tokens: {tokens}
    path: {questions}
methods:
  - vanilla
  - name: eagle2
    params: {{depth: 3, top_k: 3, total_tokens: 8}}
sampling:
  temperatures: [0]
warmup: {{generations: 0}}
"""


def write_suite(tmp_path: Path, *, head: str = "random", tokens: int = 4, questions: Path | None = None) -> Path:
    if questions is None:
        questions = tmp_path / "questions.jsonl"
        if not questions.exists():
            lines = (DATA_DIR / "mt_bench" / "question.jsonl").read_text(encoding="utf-8").splitlines()[:2]
            questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "safety.yaml"
    path.write_text(textwrap.dedent(SUITE.format(head=head, tokens=tokens, questions=questions)), encoding="utf-8")
    return path


def options(out: Path, **kw) -> RunOptions:
    return RunOptions(out_dir=out, data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=False, **kw)


def rows(folder: Path) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def key(row: dict) -> tuple:
    return row["cell_id"], row["question_id"], row["repeat"], row["turn"]


def cli_run(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "harness", "-q", "run", str(suite), "--out", str(out), "--no-progress",
               "--data-dir", str(DATA_DIR), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- the lock ------------------------------------------------------------------------------------


def test_two_processes_racing_into_one_folder(tmp_path):
    """Two real `run`s started together into one --out: one runs, the other is refused (exit 2)."""
    suite = write_suite(tmp_path, tokens=24)
    out = tmp_path / "out"
    first, second = cli_run(suite, out), cli_run(suite, out)
    results = [(p.wait(timeout=600), *p.communicate()) for p in (first, second)]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "in use by another run (pid" in refused or "already holds a run" in refused, refused
    records = rows(out)
    assert len(records) == len({key(r) for r in records}) == 2 * 2 * 2  # cells x questions x turns, each once
    assert not (out / ".lock").exists()  # released at the end


def test_a_second_run_or_resume_is_refused_while_one_holds_the_folder(tmp_path):
    """A real process holds the folder; a run and a resume from this process are refused, naming it."""
    suite_path = write_suite(tmp_path, tokens=48)
    out = tmp_path / "out"
    holder = cli_run(suite_path, out)
    try:
        deadline = time.monotonic() + 300
        while not (out / ".lock").exists() or not (out / ".lock").read_text().strip():
            assert holder.poll() is None, holder.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        suite = load_suite(suite_path)
        for resume in (False, True):
            with pytest.raises(RunLockedError, match=rf"in use by another run \(pid {holder.pid} on host .*command: .*run"):
                run_suite(suite, options(out, resume=resume))
    finally:
        assert holder.wait(timeout=600) == 0, holder.communicate()
    assert len(rows(out)) == 8


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    code = f"from harness.lock import RunLock; import time; RunLock({str(out)!r}, command='fake run').acquire(); print('locked', flush=True); time.sleep(600)"
    dead = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert dead.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {dead.pid}"):
        RunLock(out).acquire()
    dead.send_signal(signal.SIGKILL)
    dead.wait(timeout=30)
    assert json.loads((out / ".lock").read_text())["pid"] == dead.pid  # left behind by the killed process
    suite = load_suite(write_suite(tmp_path))
    with caplog.at_level(logging.WARNING, logger="harness.lock"):
        summary = run_suite(suite, options(out))
    assert summary.status == "complete" and summary.written == 8
    assert f"taking over a stale lock (pid {dead.pid}" in caplog.text and "fake run" in caplog.text


# -- resume: same options, same data ------------------------------------------------------------------


def test_resume_with_other_options_is_refused_and_sessions_are_kept(tmp_path, capsys):
    suite = write_suite(tmp_path)
    out = tmp_path / "out"
    argv = ["-q", "run", str(suite), "--data-dir", str(DATA_DIR), "--out", str(out), "--no-progress", "--limit", "1"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for extra, named in ((["--limit", "2"], "--limit: 1 when the run began, 2 now"), (["--max-new-tokens", "3"], "--max-new-tokens"),
                         (["--threads", "1"], "--threads: not given when the run began, 1 now")):
        changed = [a for a in argv if a not in ("--limit", "1")] + extra + ([] if "--limit" in extra else ["--limit", "1"])
        assert main(changed + ["--resume"]) == 2
        assert named in capsys.readouterr().err
        assert json.loads((out / "manifest.json").read_text()) == manifest  # nothing rewritten
    assert main(argv + ["--resume"]) == 0
    resumed = json.loads((out / "manifest.json").read_text())
    assert [s["options"] for s in resumed["sessions"]] == [{"limit": 1, "execute_code": False}] * 2
    for name in ("run_id", "started_at", "git_sha", "versions", "data", "bindings", "suite", "cells", "overrides"):
        assert resumed[name] == manifest[name], name  # what the first session recorded stays
    assert resumed["sessions"][0] == {**manifest["sessions"][0], "finished_at": resumed["sessions"][0]["finished_at"]}


def test_resume_after_the_question_text_changed_is_refused(tmp_path):
    suite_path = write_suite(tmp_path)
    suite = load_suite(suite_path)
    out = tmp_path / "out"
    run_suite(suite, options(out))
    questions = tmp_path / "questions.jsonl"
    first, *rest = questions.read_text().splitlines()
    edited = json.loads(first)
    edited["turns"][0] += " Answer in French."  # same question id, other text
    questions.write_text("\n".join([json.dumps(edited), *rest]) + "\n")
    before = (out / "results.jsonl").read_bytes()
    with pytest.raises(ResumeMismatchError, match=r"question file of task mt_bench \(.*questions.jsonl\): sha256 \w+ when the run began"):
        run_suite(suite, options(out, resume=True))
    assert (out / "results.jsonl").read_bytes() == before


def test_resume_after_the_head_changed_is_refused(tmp_path):
    from eagle2 import DraftHead
    from harness.models import load_model

    target = load_model("tiny-random-llama", dtype="float32").target
    head_dir = tmp_path / "head"
    DraftHead.random(target.config, seed=3).save_pretrained(head_dir, embedding=target.embed_tokens.weight.detach())
    suite = load_suite(write_suite(tmp_path, head=str(head_dir)))
    out = tmp_path / "out"
    assert run_suite(suite, options(out)).failures == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["bindings"]["tiny"]["head_sha256"] and manifest["bindings"]["tiny"]["head"] == str(head_dir)
    assert {r["head_sha256"] for r in rows(out) if r["method"] == "eagle2"} == {manifest["bindings"]["tiny"]["head_sha256"]}
    DraftHead.random(target.config, seed=4).save_pretrained(head_dir, embedding=target.embed_tokens.weight.detach())  # same path
    with pytest.raises(ResumeMismatchError, match=rf"draft head of model tiny \({head_dir}\): sha256 \w+ when the run began, \w+ now"):
        run_suite(suite, options(out, resume=True))


def test_weights_fingerprint_names_what_changed(tmp_path):
    from harness.models import head_fingerprint, weights_fingerprint

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    first = weights_fingerprint(str(folder))
    (folder / "model.safetensors").write_bytes(b"weights-2")
    assert weights_fingerprint(str(folder)) != first
    assert weights_fingerprint("tiny-random-llama") is None and head_fingerprint("random") is None and head_fingerprint(None) is None


# -- damaged lines --------------------------------------------------------------------------------------


def test_damaged_lines_are_skipped_then_regenerated_on_resume(tmp_path, caplog):
    suite = load_suite(write_suite(tmp_path))
    out = tmp_path / "out"
    run_suite(suite, options(out))
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8
    lost = {key(json.loads(lines[3])), key(json.loads(lines[7]))}
    lines[3] = lines[3][: len(lines[3]) // 2] + "\x00garbage"  # a damaged middle line
    (out / "results.jsonl").write_text("\n".join(lines[:7]) + "\n" + lines[7][:40])  # and a torn last one
    results = out / "results.jsonl"

    with caplog.at_level(logging.WARNING):
        assert main(["-q", "report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert f"{results}:4: skipping a damaged line" in caplog.text and f"{results}:8: skipping a damaged line" in caplog.text
    assert "6 records" in (tmp_path / "report" / "report.md").read_text()
    baseline = tmp_path / "baseline.json"
    assert main(["-q", "check", str(out), "--baseline", str(baseline), "--write-baseline"]) == 0

    summary = run_suite(suite, options(out, resume=True))
    assert summary.written == 2 and summary.skipped == 6
    records = rows(out)  # every line parses again
    assert len(records) == 8 and len({key(r) for r in records}) == 8
    assert {key(r) for r in records[-2:]} == lost
    assert len((out / "results.jsonl.damaged").read_bytes().splitlines()) == 2  # kept aside, not thrown away
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert parse_jsonl(results).damaged == []
    assert run_suite(suite, options(out, resume=True)).written == 0


def test_jsonl_reader_keeps_lines_after_a_damaged_one(tmp_path):
    log = JsonlLog(tmp_path / "x.jsonl")
    log.path.write_bytes(b'{"a": 1}\n[1, 2]\n\xff\xfe\n{"a": 2}\n{"a": 3}')  # a list, bad UTF-8, then a last line without newline
    contents = parse_jsonl(log.path)
    assert contents.rows == [{"a": 1}, {"a": 2}, {"a": 3}] and [d.number for d in contents.damaged] == [2, 3]
    assert log.read() == [{"a": 1}, {"a": 2}, {"a": 3}]
    log.append({"a": 4})  # not glued onto the last line
    assert [json.loads(line)["a"] for line in log.path.read_text().splitlines()] == [1, 2, 3, 4]


# -- folders that cannot be written ------------------------------------------------------------------


def test_unwritable_output_folders_exit_2_naming_the_path(tmp_path, capsys):
    suite = write_suite(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    common = ["-q", "run", str(suite), "--data-dir", str(DATA_DIR), "--no-progress"]
    assert main(common + ["--out", str(blocker / "out")]) == 2
    assert str(blocker / "out") in capsys.readouterr().err
    full = tmp_path / "full"
    full.mkdir()
    (full / "results.jsonl").symlink_to("/dev/full")  # every write: "No space left on device"
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    assert main(common + ["--out", str(full)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {full / 'results.jsonl'}" in err and "Traceback" not in err
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        readonly = tmp_path / "readonly"
        readonly.mkdir()
        readonly.chmod(0o500)
        assert main(common + ["--out", str(readonly)]) == 2
        assert str(readonly) in capsys.readouterr().err


def test_output_folder_error_is_raised_by_appends(tmp_path):
    (tmp_path / "x.jsonl").symlink_to("/dev/full")
    with pytest.raises(OutputFolderError, match="cannot write .*x.jsonl"):
        JsonlLog(tmp_path / "x.jsonl").append({"a": 1})


# -- progress bars --------------------------------------------------------------------------------------


def test_method_labels():
    assert method_label("eagle2", {"depth": 6, "top_k": 10, "total_tokens": 60}) == "eagle2 d6/k10/n60"
    assert method_label("eagle1", {"tree": "mc_sim_7b_63"}) == "eagle1 mc_sim_7b_63"
    assert method_label("eagle1", {"tree": [[0], [1], [0, 0]]}) == "eagle1 tree of 3 paths"
    assert method_label("vanilla", {}) == "vanilla"
    assert method_label("hf_prompt_lookup", {"num_tokens": 10, "max_ngram": 3}) == "hf_prompt_lookup max_ngram=3/num_tokens=10"


def test_progress_counts_answers_and_names_the_method(tmp_path, capsys):
    suite = load_suite(write_suite(tmp_path))
    run_suite(suite, RunOptions(out_dir=tmp_path / "out", data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=True))
    err = capsys.readouterr().err
    assert "8/8" in err and "answer" in err  # 2 cells x 2 questions x 2 turns
    assert "eagle2 d3/k3/n8 T=0" in err
    resumed = apply_overrides(suite)
    run_suite(resumed, RunOptions(out_dir=tmp_path / "out", data=DataSource(data_dir=DATA_DIR, allow_download=False), resume=True))
    assert "8/8" in capsys.readouterr().err


def test_fingerprint_ignores_hidden_and_non_weight_files(tmp_path):
    from harness.files import folder_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("a new evaluation")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "x.json").write_text("{}")
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    assert folder_fingerprint(tmp_path) != first
