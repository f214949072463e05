"""The runner end to end on a tiny random Llama: the results contract, losslessness at T = 0, turn 2
built on the method's own turn-1 answer, failures recorded while the sweep goes on, resume after an
interruption (and a torn last line) without duplicate or lost records, and sharding."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import DATA_DIR, tiny_suite_text

from harness.chat import ChatTemplate, Message
from harness.config import expand, load_suite
from harness.models import tiny_tokenizer
from harness.results import JsonlLog
from harness.files import sha256_of
from harness.runner import ResumeMismatchError, Runner, RunExistsError, RunOptions, run_suite
from harness.tasks import DataSource


# Written out on purpose, not taken from harness.results.ResultRow: a change to the file format must
# show up here (and bump RESULTS_SCHEMA where old readers would misread it).
RESULT_KEYS = {
    "schema", "run_id", "cell_id", "model", "model_source", "head", "task", "method", "method_params", "temperature",
    "top_p", "top_k", "seed", "repeat", "question_id", "category", "turn", "max_new_tokens", "prompt_tokens", "new_tokens", "wall_time_s",
    "prefill_time_s", "draft_time_s", "verify_time_s", "other_time_s", "target_forwards", "accept_lengths",
    "depth_reached", "depth_accepted", "confidence_checked", "confidence_accepted", "draft_tokens_per_step",
    "stop_reason", "output_ids", "output_text", "correct", "data_sha256", "weights_sha256", "head_sha256", "load", "finished_at",
}
FAILURE_KEYS = {"cell_id", "model", "task", "method", "method_params", "temperature", "question_id", "turn", "error_type", "error", "finished_at"}
MANIFEST_KEYS = {"schema", "run_id", "suite_path", "suite", "cells", "shard", "versions", "git_sha", "git_dirty", "hardware", "started_at", "finished_at"}

SUITE = tiny_suite_text("tiny-run")


def make_suite(tmp_path: Path, text: str = SUITE, name: str = "suite.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_suite(path)


def options(out: Path, **kw) -> RunOptions:
    return RunOptions(out_dir=out, data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=False, **kw)


def rows(folder: Path, name: str = "results.jsonl") -> list[dict]:
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def key(row: dict) -> tuple:
    return row["cell_id"], row["question_id"], row["repeat"], row["turn"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    suite = make_suite(tmp)
    summary = run_suite(suite, options(tmp / "out"))
    return suite, tmp / "out", summary


def test_results_contract(full_run):
    suite, out, summary = full_run
    records = rows(out)
    cells = expand(suite)
    assert summary.status == "complete" and summary.failures == 0 and summary.cells == len(cells) == 6
    assert len(records) == summary.written == 6 * 2 * 2  # cells x questions x turns
    assert len({key(r) for r in records}) == len(records)
    for record in records:
        assert set(record) == RESULT_KEYS
        assert record["schema"] == 1 and record["model"] == "tiny" and record["model_source"] == "tiny-random-llama"
        assert isinstance(record["question_id"], str) and record["turn"] in (1, 2)
        assert record["new_tokens"] == len(record["output_ids"]) == sum(record["accept_lengths"])
        assert record["target_forwards"] == len(record["accept_lengths"])
        assert 0 < record["prefill_time_s"] <= record["wall_time_s"]
        assert record["head"] == (None if record["method"] == "vanilla" else "random")
        if record["method"] == "vanilla":
            assert record["target_forwards"] == record["new_tokens"]  # tau = 1 exactly
    assert {r["category"] for r in records} == {"writing", "roleplay"}  # spread: one per category
    assert not (out / "failures.jsonl").exists() or not rows(out, "failures.jsonl")


def test_manifest(full_run):
    suite, out, summary = full_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert MANIFEST_KEYS <= set(manifest)
    assert manifest["status"] == "complete" and manifest["shard"] is None and manifest["run_id"] == summary.run_id
    assert manifest["suite"]["name"] == "tiny-run" and manifest["suite_path"] == suite.path
    assert [c["cell_id"] for c in manifest["cells"]] == [c.cell_id for c in expand(suite)]
    assert {"python", "torch", "transformers", "eagle2-bench"} <= set(manifest["versions"])
    assert {"cpu", "cpu_cores", "ram_gib", "gpu", "devices"} <= set(manifest["hardware"])
    assert manifest["hardware"]["devices"] == {"tiny": "cpu"}
    assert manifest["data"]["mt_bench"]["sha256"] == sha256_of(DATA_DIR / "mt_bench" / "question.jsonl")
    assert manifest["models"]["tiny"]["head"] == "random"
    assert manifest["started_at"] <= manifest["finished_at"]
    assert all(r["run_id"] == manifest["run_id"] for r in rows(out))


def test_greedy_is_lossless_and_seeds_reproduce(full_run):
    _, out, _ = full_run
    by = {}
    for r in rows(out):
        by.setdefault((r["temperature"], r["question_id"], r["turn"]), {})[r["method"]] = r["output_ids"]
    for (temperature, _, turn), outputs in by.items():
        if temperature == 0 and turn == 1:
            assert outputs["eagle1"] == outputs["vanilla"] == outputs["eagle2"]


def test_turn_two_follows_the_methods_own_answer(full_run):
    suite, out, _ = full_run
    from harness.tasks import TASKS

    questions = {q.question_id: q for q in TASKS["mt_bench"].load(suite.tasks[0].options, DataSource(data_dir=DATA_DIR))[0]}
    chat = ChatTemplate(tiny_tokenizer())
    records = {key(r): r for r in rows(out)}
    for (cell_id, qid, repeat, turn), record in records.items():
        if turn != 2:
            continue
        first = records[(cell_id, qid, repeat, 1)]
        q = questions[qid]
        expected = chat.prompt_ids([Message("user", q.turns[0]), Message("assistant", first["output_text"].strip()), Message("user", q.turns[1])])
        assert record["prompt_tokens"] == len(expected)


def test_existing_run_needs_resume(full_run, tmp_path):
    suite, out, _ = full_run
    with pytest.raises(RunExistsError, match="--resume"):
        run_suite(suite, options(out))


def test_resume_after_interruption_and_torn_line(full_run, tmp_path, monkeypatch):
    suite, full_out, _ = full_run
    out = tmp_path / "run"
    original = JsonlLog.append
    written = []

    def interrupt_after_seven(self, row):
        if self.path.name == "results.jsonl" and len(written) == 7:
            raise KeyboardInterrupt
        original(self, row)
        written.append(row)

    monkeypatch.setattr(JsonlLog, "append", interrupt_after_seven)
    with pytest.raises(KeyboardInterrupt):
        run_suite(suite, options(out))
    monkeypatch.setattr(JsonlLog, "append", original)
    assert len(rows(out)) == 7
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    with open(out / "results.jsonl", "a") as handle:  # a crash mid-write
        handle.write('{"schema": 1, "cell_id": "tiny.mt_bench.eag')

    summary = run_suite(suite, options(out, resume=True))
    assert summary.status == "complete" and summary.skipped == 7 and summary.written == 24 - 7
    resumed = rows(out)  # every line parses: the torn one is gone
    assert len(resumed) == 24 and len({key(r) for r in resumed}) == 24
    # Identical to the uninterrupted run, sampled cells included (per-turn seeds).
    assert {key(r): r["output_ids"] for r in resumed} == {key(r): r["output_ids"] for r in rows(full_out)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["sessions"]) == 2 and manifest["sessions"][0]["status"] == "interrupted"
    assert len({r["run_id"] for r in resumed}) == 1
    again = run_suite(suite, options(out, resume=True))  # nothing left to do
    assert again.written == 0 and len(rows(out)) == 24
    from harness.config import apply_overrides

    before = (out / "manifest.json").read_text()
    with pytest.raises(ResumeMismatchError, match="--limit: not given when the run began, 3 now"):  # other options: refused
        run_suite(apply_overrides(suite, limit=3), options(out, resume=True, overrides={"limit": 3}))
    with pytest.raises(ResumeMismatchError, match="tasks differ"):  # another suite: refused, nothing mixed
        run_suite(apply_overrides(suite, max_new_tokens=3), options(out, resume=True))
    assert (out / "manifest.json").read_text() == before and len(rows(out)) == 24  # a refused resume writes nothing


def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    text = SUITE.replace("models:\n", "models:\n  - name: broken\n    source: /nonexistent/model-folder\n    head: random\n")
    text = text.replace("  temperatures: [0, 1]", "  temperatures: [0]")
    suite = make_suite(tmp_path, text)
    original = Runner._generate

    def flaky(self, loaded, decoder, cell, question, repeat, turn, answers):
        if cell.method == "eagle2" and question.question_id == "81" and turn == 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return original(self, loaded, decoder, cell, question, repeat, turn, answers)

    monkeypatch.setattr(Runner, "_generate", flaky)
    summary = run_suite(suite, options(tmp_path / "out"))
    failures = rows(tmp_path / "out", "failures.jsonl")
    assert summary.status == "complete" and summary.failures == len(failures) == 3 + 1
    broken = [f for f in failures if f["model"] == "broken"]
    assert len(broken) == 3 and all(f["question_id"] is None and f["turn"] is None for f in broken)
    assert all(FAILURE_KEYS <= set(f) for f in failures)
    oom = [f for f in failures if f["model"] == "tiny"][0]
    assert (oom["method"], oom["question_id"], oom["turn"], oom["error_type"]) == ("eagle2", "81", 2, "RuntimeError")
    records = rows(tmp_path / "out")
    assert len(records) == 3 * 2 * 2 - 1 and all(r["model"] == "tiny" for r in records)
    # A resume retries what failed (the flaky generation now succeeds).
    monkeypatch.setattr(Runner, "_generate", original)
    again = run_suite(suite, options(tmp_path / "out", resume=True))
    assert again.written == 1 and len(rows(tmp_path / "out")) == 12


def test_shards_together_equal_the_full_run(full_run, tmp_path):
    suite, full_out, _ = full_run
    merged = []
    for index in (1, 2):
        summary = run_suite(suite, options(tmp_path / f"shard{index}", shard=(index, 2)))
        assert summary.cells == 3
        manifest = json.loads((tmp_path / f"shard{index}" / "manifest.json").read_text())
        assert manifest["shard"] == f"{index}/2"
        merged += rows(tmp_path / f"shard{index}")
    assert len(merged) == 24
    assert {key(r): r["output_ids"] for r in merged} == {key(r): r["output_ids"] for r in rows(full_out)}
    with pytest.raises(ValueError, match="holds shard 1/2, this run is shard 2/2"):
        run_suite(suite, options(tmp_path / "shard1", shard=(2, 2), resume=True))


def test_scored_tasks(tmp_path):
    text = SUITE.replace(
        "  - name: mt_bench\n    limit: 2\n    select: spread\n    max_new_tokens: 4\n",
        "  - name: gsm8k\n    limit: 1\n    max_new_tokens: 3\n  - name: humaneval\n    limit: 1\n    max_new_tokens: 3\n",
    ).replace("  - name: eagle1\n    params: {tree: small_12}\n", "").replace("[0, 1]", "[0]")
    suite = make_suite(tmp_path, text)
    run_suite(suite, options(tmp_path / "out"))
    records = rows(tmp_path / "out")
    assert len(records) == 2 * 2
    assert all(r["correct"] is False for r in records if r["task"] == "gsm8k")  # 3 random bytes are not "18"
    assert all(r["correct"] is None for r in records if r["task"] == "humaneval")  # no --execute-code
    from harness.sandbox import sandbox_unavailable

    isolation = "sandbox" if sandbox_unavailable() is None else "unsafe"
    run_suite(suite, options(tmp_path / "exec", execute_code=True, code_isolation=isolation))
    assert all(r["correct"] is False for r in rows(tmp_path / "exec") if r["task"] == "humaneval")


def test_torn_line_repair(tmp_path):
    log = JsonlLog(tmp_path / "x.jsonl")
    log.append({"a": 1})
    log.append({"a": 2})
    with open(log.path, "ab") as handle:
        handle.write(b'{"a": 3, "b": [1, 2')
    assert log.read() == [{"a": 1}, {"a": 2}]
    log.append({"a": 4})
    assert [json.loads(line)["a"] for line in log.path.read_text().splitlines()] == [1, 2, 4]
    log.append({"a": 5, "text": "half a pair \ud800 é"})  # undecodable text must not crash a run
    assert log.read()[-1] == {"a": 5, "text": "half a pair \ud800 é"}


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path):
    """The real embedded SmolLM2-135M with a random head: one MT-bench question, greedy, lossless."""
    text = SUITE.replace("    source: tiny-random-llama\n    dtype: float64\n", "    source: embedded\n    dtype: float32\n")
    text = text.replace("limit: 2", "limit: 1").replace("max_new_tokens: 4", "max_new_tokens: 8").replace("[0, 1]", "[0]")
    text = text.replace("  - name: eagle1\n    params: {tree: small_12}\n", "")
    suite = make_suite(tmp_path, text)
    summary = run_suite(suite, options(tmp_path / "out"))
    records = rows(tmp_path / "out")
    assert summary.failures == 0 and len(records) == 2 * 2
    by = {(r["method"], r["turn"]): r for r in records}
    assert by[("vanilla", 1)]["output_ids"] == by[("eagle2", 1)]["output_ids"]
    assert by[("vanilla", 1)]["output_text"].strip()


def test_the_chat_template_also_stops_at_the_generation_config_eos_ids():
    from harness.models import chat_template_for, load_model

    loaded = load_model("tiny-random-llama")
    plain = chat_template_for(loaded).stop_token_ids
    loaded.target.model.generation_config.eos_token_id = [5, 7]
    assert chat_template_for(loaded).stop_token_ids == plain | {5, 7}
    loaded.target.model.generation_config.eos_token_id = 9
    assert chat_template_for(loaded).stop_token_ids == plain | {9}


def test_eagle3_cells_run_with_their_own_head_and_are_lossless(tmp_path):
    """A local 8-layer model folder with an EAGLE-2-layout head and an EAGLE-3 head folder: each
    method drafts with its own head kind, the records say which, and greedy output equals vanilla."""
    import torch
    from conftest import save_tiny_llama_folder

    from eagle2 import DraftHead, Eagle3Head

    config = save_tiny_llama_folder(tmp_path / "model", max_positions=4096)
    DraftHead.random(config, seed=1).save_pretrained(tmp_path / "eagle-head")
    Eagle3Head.random(config, seed=2, draft_vocab=torch.arange(0, config.vocab_size, 2)).save_pretrained(tmp_path / "eagle3-head")
    suite = make_suite(tmp_path, f"""\
        schema: 1
        name: eagle3-run
        models:
          - name: deep
            source: {tmp_path / "model"}
            dtype: float64
            device: cpu
            head: {tmp_path / "eagle-head"}
            eagle3_head: {tmp_path / "eagle3-head"}
        tasks:
          - name: mt_bench
            limit: 1
            max_new_tokens: 6
        methods:
          - vanilla
          - name: eagle2
            params: {{depth: 3, top_k: 3, total_tokens: 8}}
          - name: eagle3
            params: {{depth: 3, top_k: 3, total_tokens: 8}}
        sampling:
          temperatures: [0]
        warmup: {{generations: 0}}
        """)
    summary = run_suite(suite, options(tmp_path / "out"))
    assert summary.status == "complete" and summary.failures == 0
    records = rows(tmp_path / "out")
    heads = {r["method"]: r["head"] for r in records}
    assert heads == {"vanilla": None, "eagle2": str(tmp_path / "eagle-head"), "eagle3": str(tmp_path / "eagle3-head")}
    outputs = {(r["method"], r["turn"]): r["output_ids"] for r in records}
    assert outputs[("eagle3", 1)] == outputs[("vanilla", 1)] == outputs[("eagle2", 1)]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"]["deep"]["eagle3_head"] == str(tmp_path / "eagle3-head")
    head_sha = {r["method"]: r["head_sha256"] for r in records}
    assert head_sha["vanilla"] is None and None not in (head_sha["eagle2"], head_sha["eagle3"]) and head_sha["eagle2"] != head_sha["eagle3"]


def test_a_broken_head_fails_only_the_cells_that_need_it(tmp_path):
    head = tmp_path / "broken-head"
    head.mkdir()
    (head / "config.json").write_text(json.dumps({"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 259}))
    (head / "model.safetensors").write_bytes(b"\x00\x01 not safetensors")
    text = SUITE.replace("head: random", f"head: {head}").replace("[0, 1]", "[0]").replace("limit: 2", "limit: 1")
    summary = run_suite(make_suite(tmp_path, text), options(tmp_path / "out"))
    failures = rows(tmp_path / "out", "failures.jsonl")
    assert summary.status == "complete" and summary.failures == 2
    assert sorted(f["method"] for f in failures) == ["eagle1", "eagle2"]
    assert all(f["error_type"] == "ValueError" and str(head / "model.safetensors") in f["error"] for f in failures)
    records = rows(tmp_path / "out")
    assert records and {r["method"] for r in records} == {"vanilla"} and len(records) == 2  # both turns of the question
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "not a readable safetensors file" in manifest["models"]["tiny"]["head_error"]


def test_bfloat16_run_is_audited_and_reported(tmp_path):
    """A half-precision run writes audit verdicts for its greedy mismatches; the report counts them."""
    from harness.aggregate import load_runs, summarize

    # compile: static keeps the audited path free of torch.compile's warm-up (compile: auto would
    # compile a bf16 CPU run; the compiled path has its own tests).
    suite = make_suite(tmp_path, SUITE.replace("dtype: float64", "dtype: bfloat16\n    compile: static")
                       .replace("max_new_tokens: 4", "max_new_tokens: 24").replace("temperatures: [0, 1]", "temperatures: [0]"))
    summary = run_suite(suite, options(tmp_path / "out"))
    assert summary.status == "complete" and summary.failures == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["models"]["tiny"]["dtype"] == "bfloat16" and manifest["models"]["tiny"]["engine_path"] == "static"
    assert manifest["models"]["tiny"]["weight_bytes_per_token"] > 0
    assert all(v > 0 for v in manifest["hardware"]["read_bandwidth_bytes_per_s"].values())
    table = summarize(load_runs(tmp_path / "out"), n_boot=20)
    greedy = table[table["method"] != "vanilla"]
    audit = rows(tmp_path / "out", "audit.jsonl")
    differing = int((greedy["lossless_near_ties"] + greedy["lossless_mismatches"]).sum())
    assert differing == len(audit)  # every difference was audited (none left "unaudited")
    assert int(greedy["lossless_mismatches"].sum()) == sum(r["kind"] == "unexplained" for r in audit)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_outputs(tmp_path):
    """compile: true runs the static-shape, torch.compile'd path (on a CPU with inductor's C++ wrapper,
    cpp_wrapper: auto); greedy outputs, vanilla's and the drafting methods', equal the eager run's."""
    text = SUITE.replace("dtype: float64", "dtype: float32").replace("temperatures: [0, 1]", "temperatures: [0]").replace("limit: 2", "limit: 1")
    eager = run_suite(make_suite(tmp_path, text), options(tmp_path / "eager"))
    compiled = run_suite(make_suite(tmp_path, text.replace("head: random", "head: random\n    compile: true"), "c.yaml"), options(tmp_path / "compiled"))
    assert eager.status == compiled.status == "complete" and compiled.failures == 0
    outputs = {key(r): r["output_ids"] for r in rows(tmp_path / "eager")}
    assert {key(r): r["output_ids"] for r in rows(tmp_path / "compiled")} == outputs
    manifest = json.loads((tmp_path / "compiled" / "manifest.json").read_text())
    assert manifest["models"]["tiny"]["compile"] is True and manifest["warmup_seconds"]
    # cpp_wrapper: auto on a CPU's compiled path is the C++ wrapper: the harness runs it here.
    assert manifest["models"]["tiny"]["cpp_wrapper"] is True and manifest["models"]["tiny"]["cpp_wrapper_requested"] == "auto"


def test_interleaved_schedule_rotates_model_entries_question_by_question(tmp_path):
    """schedule: interleaved loads every model entry first, then runs each question on every
    (entry, method) in turn with the order rotated per question; the static-shape entry (compile:
    static) gives the eager entry's greedy outputs."""
    text = (SUITE.replace("temperatures: [0, 1]", "temperatures: [0]")
            .replace("    head: random\n", "    head: random\n  - name: tiny-static\n    source: tiny-random-llama\n    dtype: float64\n"
                     "    device: cpu\n    head: random\n    compile: static\n")
            + "schedule: interleaved\n")
    suite = make_suite(tmp_path, text)
    summary = run_suite(suite, options(tmp_path / "out"))
    assert summary.status == "complete" and summary.failures == 0
    records = rows(tmp_path / "out")
    by_entry = {(r["model"], r["method"], r["question_id"], r["turn"]): r["output_ids"] for r in records}
    assert {k[1:]: v for k, v in by_entry.items() if k[0] == "tiny-static"} == {k[1:]: v for k, v in by_entry.items() if k[0] == "tiny"}
    questions = list(dict.fromkeys(r["question_id"] for r in records))
    assert len(questions) == 2 and [r["question_id"] for r in records] == sorted((r["question_id"] for r in records), key=questions.index)
    first_turns = [[(r["model"], r["method"]) for r in records if r["question_id"] == q and r["turn"] == 1] for q in questions]
    assert len(first_turns[0]) == 6 and first_turns[1] == first_turns[0][1:] + first_turns[0][:1]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert {m: info["engine_path"] for m, info in manifest["models"].items()} == {"tiny": "eager", "tiny-static": "static"}
    assert len(manifest["warmup_seconds"]) == 6


def test_interleaved_schedule_refuses_a_backend(tmp_path):
    from harness.backends import BackendOptions, make_backend

    suite = make_suite(tmp_path, SUITE + "schedule: interleaved\n")
    with pytest.raises(ValueError, match="schedule: interleaved"):
        run_suite(suite, options(tmp_path / "out", backend=make_backend(BackendOptions(workers=2))))


def test_a_method_registry_of_ones_own_refuses_a_backend(tmp_path):
    from eagle2.methods import METHODS
    from harness.backends import BackendOptions, make_backend

    with pytest.raises(ValueError, match="a method registry other than eagle2.methods.METHODS runs in this process only"):
        run_suite(make_suite(tmp_path), options(tmp_path / "out", backend=make_backend(BackendOptions(workers=2)), methods=METHODS))


def test_a_run_from_before_a_new_suite_setting_resumes_at_its_default(full_run, tmp_path):
    """A manifest written before `schedule` existed lacks the key; at its default the suite is the same."""
    import shutil

    suite, out, _ = full_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["suite"]["schedule"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    again = run_suite(suite, options(copy, resume=True))
    assert again.status == "complete" and again.written == 0
    interleaved = make_suite(tmp_path, SUITE + "schedule: interleaved\n", "other.yaml")
    with pytest.raises(ResumeMismatchError, match="schedule"):
        run_suite(interleaved, options(copy, resume=True))
