"""Task loaders and data sources: MT-bench, generic question files (any number of turns), GSM8K with
answer extraction, HumanEval with sandboxed pass@1; the data folder, the sha256-checked download
cache and the error when offline without data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DATA_DIR, SHARED_DATA_DIR

from harness.tasks import (
    PINNED,
    DataSource,
    PinnedFile,
    Question,
    ScoreContext,
    TASKS,
    gsm8k_prediction,
    gsm8k_reference,
    humaneval_code,
    select_questions,
    sha256_of,
)

def options(task: str, **given) -> dict:
    return {name: given.get(name, option.default) for name, option in TASKS[task].options.items()}


def offline(data_dir: Path | None, tmp_path: Path) -> DataSource:
    return DataSource(data_dir=data_dir, cache_dir=tmp_path / "cache", allow_download=False)


@pytest.mark.shared_data
def test_mt_bench():
    questions, file = TASKS["mt_bench"].load(options("mt_bench"), offline(SHARED_DATA_DIR, Path("/nonexistent")))
    assert len(questions) == 80 and file.describe()["matches_pinned"] is True
    assert all(len(q.turns) == 2 and isinstance(q.question_id, str) for q in questions)
    assert questions[0].question_id == "81" and questions[0].category == "writing"
    assert len({q.category for q in questions}) == 8
    spread = select_questions(questions, 8, "spread")
    assert len({q.category for q in spread}) == 8  # one question per category
    assert [q.question_id for q in select_questions(questions, 3, "first")] == ["81", "82", "83"]
    only = TASKS["mt_bench"].load(options("mt_bench", categories=("math",), turns=1), offline(SHARED_DATA_DIR, Path("/x")))[0]
    assert len(only) == 10 and all(q.category == "math" and len(q.turns) == 1 for q in only)
    with pytest.raises(ValueError, match="no questions in categories \\['maths'\\]; categories in the file"):
        TASKS["mt_bench"].load(options("mt_bench", categories=("maths",)), offline(SHARED_DATA_DIR, Path("/x")))


def test_mt_bench_loader_on_the_stand_in_file():
    questions, file = TASKS["mt_bench"].load(options("mt_bench"), offline(DATA_DIR, Path("/nonexistent")))
    assert len(questions) == 16 and file.origin == "data-dir" and file.describe()["matches_pinned"] is False  # not the real file
    assert all(len(q.turns) == 2 and isinstance(q.question_id, str) for q in questions)
    assert questions[0].question_id == "81" and questions[0].category == "writing"
    spread = select_questions(questions, 8, "spread")
    assert len({q.category for q in spread}) == 8  # one question per category
    assert [q.question_id for q in select_questions(questions, 3, "first")] == ["81", "82", "91"]
    only = TASKS["mt_bench"].load(options("mt_bench", categories=("math",), turns=1), offline(DATA_DIR, Path("/x")))[0]
    assert [q.question_id for q in only] == ["111", "112"] and all(len(q.turns) == 1 for q in only)
    with pytest.raises(ValueError, match="no questions in categories \\['maths'\\]; categories in the file"):
        TASKS["mt_bench"].load(options("mt_bench", categories=("maths",)), offline(DATA_DIR, Path("/x")))


def test_generic_question_file_any_number_of_turns(tmp_path):
    rows = [
        {"question_id": 1, "category": "summarization", "turns": ["Summarise: a b c"]},
        {"question_id": "q2", "category": "qa", "turns": ["one", "two", "three"]},
        {"question_id": 3, "turns": "a single string turn"},
    ]
    (tmp_path / "spec_bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions, _ = TASKS["questions"].load(options("questions", path="spec_bench.jsonl"), offline(tmp_path, tmp_path))
    assert [(q.question_id, q.category, len(q.turns)) for q in questions] == [("1", "summarization", 1), ("q2", "qa", 3), ("3", "none", 1)]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"category": "x", "turns": ["t"]}) + "\n")
    with pytest.raises(ValueError, match="lacks question_id"):
        TASKS["questions"].load(options("questions", path="bad.jsonl"), offline(tmp_path, tmp_path))
    (tmp_path / "dup.jsonl").write_text((json.dumps({"question_id": 1, "turns": ["t"]}) + "\n") * 2)
    with pytest.raises(ValueError, match="appears twice"):
        TASKS["questions"].load(options("questions", path="dup.jsonl"), offline(tmp_path, tmp_path))


def test_missing_data_offline_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        TASKS["mt_bench"].load(options("mt_bench"), offline(tmp_path / "empty", tmp_path))
    message = str(caught.value)
    assert "'mt_bench/question.jsonl' not found" in message and "--data-dir" in message
    assert PINNED["mt_bench/question.jsonl"].sha256 in message and "downloads are off" in message
    with pytest.raises(FileNotFoundError, match="'mine.jsonl' not found .*containing|'mine.jsonl' not found"):
        TASKS["questions"].load(options("questions", path="mine.jsonl"), offline(tmp_path, tmp_path))


def test_pinned_download_is_checked_and_cached(tmp_path):
    upstream = tmp_path / "upstream.jsonl"
    upstream.write_text(json.dumps({"question_id": 1, "category": "c", "turns": ["hi"]}) + "\n")
    good = {"qs.jsonl": PinnedFile(upstream.as_uri(), sha256_of(upstream), "a test file")}
    source = DataSource(data_dir=None, cache_dir=tmp_path / "cache", allow_download=True, pinned=good)
    first = source.resolve("qs.jsonl")
    assert first.origin == "download" and first.path == tmp_path / "cache" / "qs.jsonl"
    upstream.unlink()  # the cache serves it from now on
    assert source.resolve("qs.jsonl").origin == "cache"
    bad = {"other.jsonl": PinnedFile((tmp_path / "cache" / "qs.jsonl").as_uri(), "0" * 64, "a test file")}
    source = DataSource(data_dir=None, cache_dir=tmp_path / "cache2", allow_download=True, pinned=bad)
    with pytest.raises(ValueError, match="expected 0000"):
        source.resolve("other.jsonl")
    assert not (tmp_path / "cache2" / "other.jsonl").exists()
    gone = {"gone.jsonl": PinnedFile((tmp_path / "nope.jsonl").as_uri(), "0" * 64, "a test file")}
    with pytest.raises(FileNotFoundError, match="download failed"):
        DataSource(data_dir=None, cache_dir=tmp_path / "c3", allow_download=True, pinned=gone).resolve("gone.jsonl")


def test_gsm8k_answers():
    assert gsm8k_reference("Janet sells 9 eggs.\n#### 18") == "18"
    assert gsm8k_reference("so #### 1,234") == "1234"
    assert gsm8k_prediction("She makes 9 * 2 = $18 every day.") == "18"
    assert gsm8k_prediction("The answer is 42. (Earlier I said 7.)") == "42"
    assert gsm8k_prediction("#### 3.50") == "3.5"
    assert gsm8k_prediction("It costs $1,200.00 in total") == "1200"
    assert gsm8k_prediction("no numbers here") is None


@pytest.mark.parametrize(
    "data_dir, count, first_answer",
    [pytest.param(SHARED_DATA_DIR, 1319, "18", marks=pytest.mark.shared_data, id="real"), pytest.param(DATA_DIR, 6, "7", id="stand-in")],
)
def test_gsm8k_load_and_score(data_dir, count, first_answer):
    questions, _ = TASKS["gsm8k"].load(options("gsm8k"), offline(data_dir, Path("/x")))
    assert len(questions) == count and questions[0].question_id == "0" and questions[0].payload["answer"] == first_answer
    score = TASKS["gsm8k"].score
    assert score(questions[0], [f"... so the answer is ${first_answer}."], options("gsm8k"), ScoreContext()) is True
    assert score(questions[0], [f"I think {int(first_answer) - 1}"], options("gsm8k"), ScoreContext()) is False
    assert score(questions[0], [first_answer], options("gsm8k", score=False), ScoreContext()) is None


def test_humaneval_load():
    questions, file = TASKS["humaneval"].load(options("humaneval"), DataSource())
    assert len(questions) == 164 and questions[0].question_id == "HumanEval/0" and file.origin == "package"
    assert "```python" in questions[0].turns[0] and not questions[0].raw
    raw, _ = TASKS["humaneval"].load(options("humaneval", format="completion"), DataSource())
    assert raw[0].raw and raw[0].turns[0] == raw[0].payload["prompt"]


PROBLEM = Question(
    "HumanEval/x",
    "coding",
    ("...",),
    payload={
        "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
        "test": "def check(f):\n    assert f(2, 3) == 5\n",
        "entry_point": "add",
    },
)


def test_humaneval_code_and_checking():
    from harness.sandbox import Limits, run_check

    test, entry = PROBLEM.payload["test"], PROBLEM.payload["entry_point"]
    chat_answer = "Sure!\n```python\ndef add(a, b):\n    return a + b\n```\nThat adds."
    assert run_check(humaneval_code(PROBLEM, chat_answer, raw=False), test, entry).passed
    assert not run_check(humaneval_code(PROBLEM, "```python\ndef add(a, b):\n    return a - b\n```", raw=False), test, entry).passed
    completion = "    return a + b\n\ndef unrelated():\n    raise SystemExit(1)\n"
    code = humaneval_code(PROBLEM, completion, raw=True)
    assert "unrelated" not in code  # cut at the next top-level def
    assert run_check(code, test, entry).passed
    slow = run_check("while True:\n    pass\n", test, entry, limits=Limits(timeout_s=1.0, cpu_s=2))
    assert not slow.passed and "timed out" in slow.detail  # the timeout holds


def test_humaneval_scores_only_when_execution_is_allowed():
    score = TASKS["humaneval"].score
    answer = ["```python\ndef add(a, b):\n    return a + b\n```"]
    assert score(PROBLEM, answer, options("humaneval"), ScoreContext(execute_code=False)) is None
    assert score(PROBLEM, answer, options("humaneval"), ScoreContext(execute_code=True)) is True


@pytest.mark.parametrize("field, value", [("question", 17), ("answer", None), ("question", ["a", "list"])])
def test_gsm8k_rows_with_non_string_fields_name_the_file_and_row(tmp_path, field, value):
    rows = [{"question": "How many?", "answer": "It is 2.\n#### 2"}, {"question": "How many?", "answer": "#### 3"}]
    rows[1][field] = value
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=rf"{path}: row 2: GSM8K rows need string fields question and answer; got {field}="):
        TASKS["gsm8k"].load(options("gsm8k", path=str(path)), offline(None, tmp_path))


def test_a_non_utf8_question_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "questions.jsonl"
    good = json.dumps({"question_id": 1, "category": "x", "turns": ["hello"]}).encode()
    bad = '{"question_id": 2, "category": "x", "turns": ["caf\xe9"]}'.encode("latin-1")
    path.write_bytes(good + b"\n" + bad + b"\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not UTF-8 text \(byte 0xe9"):
        TASKS["questions"].load(options("questions", path=str(path)), offline(None, tmp_path))


def test_a_question_line_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=rf"{path}:1: each line must be a JSON object, got list"):
        TASKS["questions"].load(options("questions", path=str(path)), offline(None, tmp_path))
