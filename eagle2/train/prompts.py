"""The prompts stage: collect user prompts, check them against evaluation sets, write prompts.jsonl.

Sources (any mix, each with an optional count):
* `shared:NAME[:N]` - a training set under the data folder (`gsm8k_train`, `mbpp`,
  `self_instruct_seed`, `gpteacher_codegen`, `gpteacher_roleplay`; see their SOURCE.md);
* `file:PATH[:N]` - a JSONL of prompts (field `prompt`, `instruction`(+`input`), `question` or
  `text`) or ShareGPT-style conversations (`conversations`/`messages` with the first human turn used),
  as JSONL or one JSON array;
* `magpie:N` - N prompts the target writes itself (Magpie): it is given its chat template's
  pre-query prefix (everything before a user message's text) and samples the user turn;
* `magpie:KIND:N` - N prompts of one kind (writing, roleplay, reasoning, math, code, translation,
  open_qa, summarisation, long_context_qa, extraction), synthesised from seeded openings or over a
  passage the target writes first (eagle2.train.mix);
* `multiturn:N` - N two-turn conversations: a Magpie first turn and a follow-up that refers to the
  first answer (the distill stage has the target answer both).

Every prompt carries its kind (eagle2.train.mix: shared sets by what they hold, `file` for files);
the summary counts prompts per source and per kind.

Every prompt is checked against evaluation texts that the caller gives (`EvalText`: a label such
as `mt_bench/81.1` and the text; the harness reads them from its task loaders, so this library knows
no evaluation file): a prompt whose normalised text (case folded, punctuation dropped, whitespace
collapsed) equals or contains an evaluation text, or shares a 13-word n-gram with one (the GPT-3
decontamination rule), is an overlap. Overlaps make the stage refuse (ContaminationError) unless
`drop_overlapping` is set, in which case they are dropped and listed in the stage's summary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from eagle2.target import TargetModel
from eagle2.train.generation import batched_generate
from eagle2.file_io import read_json_rows, read_jsonl, read_jsonl_input, write_json_atomic, write_jsonl_atomic
from eagle2.train.io import check_manifest
from eagle2.train.mix import MAGPIE_KINDS, PASSAGE_KINDS, PASSAGE_REQUEST, SHARED_KINDS, draw_seeds, follow_up, join_opening, kind_counts

logger = logging.getLogger(__name__)

SHARED_SETS = {
    # name: (relative file, how to read a prompt)
    "gsm8k_train": "train/gsm8k_train/train.jsonl",
    "mbpp": "train/mbpp/mbpp.jsonl",
    "self_instruct_seed": "train/self_instruct_seed/seed_tasks.jsonl",
    "gpteacher_codegen": "train/gpteacher/codegen-instruct.json",
    "gpteacher_roleplay": "train/gpteacher/roleplay-simple-deduped-roleplay-instruct.json",
}
NGRAM = 13  # words; shared n-grams of this length count as overlap
MIN_CONTAINED_WORDS = 6  # an evaluation text this long (or longer) found inside a prompt is an overlap


@dataclass(frozen=True)
class Turn:
    """A chat message; the same attributes as harness.chat.Message, so a ChatTemplate renders it."""

    role: str
    content: str


class ChatFormat(Protocol):
    """What the pipeline needs from a chat template and its tokenizer."""

    stop_token_ids: frozenset[int]

    def prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        """The conversation ending with a user turn, plus the assistant cue, as token ids."""

    def pre_query_ids(self) -> list[int]:
        """Everything a rendered conversation holds before the first user message's text (Magpie)."""

    def answer_ids(self, turns: Sequence[Turn], answer: str) -> list[int]:
        """The tokens that follow prompt_ids(turns) when the assistant answers `answer`, ending with
        the first stop token (the end-of-turn marker)."""

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens), e.g. the opening of a user turn."""


class TemplateChat:
    """ChatFormat over a chat template object (render / prompt_ids / stop_token_ids, e.g.
    harness.chat.ChatTemplate) and its tokenizer."""

    SENTINEL = "\x00MAGPIE-QUERY\x00"

    def __init__(self, template, tokenizer) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.stop_token_ids = frozenset(template.stop_token_ids)

    def prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        return list(self.template.prompt_ids(list(turns)))

    def pre_query_ids(self) -> list[int]:
        text = self.template.render([Turn("user", self.SENTINEL)], add_generation_prompt=False)
        if self.SENTINEL not in text:
            raise ValueError("the chat template does not place the user text verbatim; Magpie synthesis needs it to")
        prefix = text[: text.index(self.SENTINEL)]
        return list(self.tokenizer(prefix, add_special_tokens=False).input_ids)

    def answer_ids(self, turns: Sequence[Turn], answer: str) -> list[int]:
        prompt = self.template.render(list(turns), add_generation_prompt=True)
        full = self.template.render([*turns, Turn("assistant", answer)], add_generation_prompt=False)
        if not full.startswith(prompt):
            raise ValueError("the chat template renders the prompt differently inside a full conversation; cannot teacher-force answers")
        ids = list(self.tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids)
        for index, token in enumerate(ids):
            if token in self.stop_token_ids:
                return ids[: index + 1]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)


@dataclass(frozen=True)
class Prompt:
    id: str  # unique, stable: "<source>/<index>"
    source: str
    prompt: str
    response: str | None = None  # the source's own answer, when it has one (for teacher-forced distillation)
    kind: str = ""  # eagle2.train.mix kinds ("" in prompt files written before kinds existed)
    # Later user turns (multi-turn chat): the target answers `prompt`, then each of these in turn;
    # the distilled record is its answer to the last one, in the whole conversation.
    follow_ups: tuple[str, ...] = ()

    def turns(self) -> list[str]:
        return [self.prompt, *self.follow_ups]


class ContaminationError(ValueError):
    """Prompts overlap an evaluation set."""


# ---------------------------------------------------------------- normalisation and overlap


def normalize(text: str) -> str:
    """Case folded, every run of non-alphanumerics replaced by one space, stripped."""
    return re.sub(r"[^0-9a-z]+", " ", text.casefold()).strip()


@dataclass(frozen=True)
class Overlap:
    prompt_id: str
    eval_item: str  # "<eval set>/<id>"
    rule: str  # "exact" | "contains" | "ngram"


@dataclass(frozen=True)
class EvalText:
    """One evaluation text that training prompts must not overlap."""

    label: str  # "<evaluation set>/<item>", e.g. "mt_bench/81.1"; the set is counted in the stage's summary
    text: str


@dataclass
class EvalIndex:
    """Normalised evaluation texts, for overlap checks."""

    exact: dict[str, str] = field(default_factory=dict)  # normalised text -> label
    contained: dict[str, str] = field(default_factory=dict)  # normalised texts of >= MIN_CONTAINED_WORDS words
    ngrams: dict[tuple[str, ...], str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # texts indexed per evaluation set

    @classmethod
    def of(cls, texts: Iterable[EvalText]) -> EvalIndex:
        index = cls()
        for item in texts:
            index.add(item.label, item.text)
        return index

    def add(self, label: str, text: str) -> None:
        norm = normalize(text)
        if not norm:
            return
        self.exact.setdefault(norm, label)
        words = norm.split()
        if MIN_CONTAINED_WORDS <= len(words) < NGRAM:  # longer ones are caught by the n-gram rule
            self.contained.setdefault(norm, label)
        for i in range(len(words) - NGRAM + 1):
            self.ngrams.setdefault(tuple(words[i : i + NGRAM]), label)
        set_name = label.split("/", 1)[0]
        self.counts[set_name] = self.counts.get(set_name, 0) + 1

    def find(self, text: str) -> tuple[str, str] | None:
        """(evaluation item, rule) of the first overlap, or None."""
        norm = normalize(text)
        if norm in self.exact:
            return self.exact[norm], "exact"
        words = norm.split()
        for i in range(len(words) - NGRAM + 1):
            label = self.ngrams.get(tuple(words[i : i + NGRAM]))
            if label is not None:
                return label, "ngram"
        padded = f" {norm} "
        for item, label in self.contained.items():
            if f" {item} " in padded:
                return label, "contains"
        return None


def find_overlaps(prompts: Iterable[Prompt], index: EvalIndex) -> list[Overlap]:
    found = []
    for prompt in prompts:
        texts = [*prompt.turns(), *([prompt.response] if prompt.response else [])]
        hit = next((found for found in map(index.find, texts) if found is not None), None)
        if hit is not None:
            found.append(Overlap(prompt.id, hit[0], hit[1]))
    return found


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "shared" | "file" | "magpie" | "multiturn"
    name: str  # shared set name, file path, "magpie" (general Magpie), a Magpie kind, or "multiturn"
    count: int | None  # None = all

    @staticmethod
    def parse(text: str) -> "SourceSpec":
        kind, _, rest = text.partition(":")
        if kind == "magpie":
            name, _, number = rest.rpartition(":")
            if not number.isdigit():
                raise ValueError(f"source {text!r}: write magpie:N or magpie:KIND:N with N the number of prompts to synthesise; kinds: {', '.join(MAGPIE_KINDS)}")
            if name and name not in MAGPIE_KINDS:
                raise ValueError(f"source {text!r}: unknown Magpie kind {name!r}; kinds: {', '.join(MAGPIE_KINDS)}")
            return SourceSpec("magpie", "magpie" if name in ("", "general") else name, int(number))
        if kind == "multiturn":
            if not rest.isdigit():
                raise ValueError(f"source {text!r}: write multiturn:N with N the number of conversations to synthesise")
            return SourceSpec("multiturn", "multiturn", int(rest))
        if kind not in ("shared", "file") or not rest:
            raise ValueError(f"source {text!r}: use shared:NAME[:N], file:PATH[:N], magpie:[KIND:]N or multiturn:N; shared sets: {', '.join(SHARED_SETS)}")
        name, count = rest, None
        head, _, tail = rest.rpartition(":")
        if head and tail.isdigit():
            name, count = head, int(tail)
        if kind == "shared" and name not in SHARED_SETS:
            raise ValueError(f"unknown shared training set {name!r}; available: {', '.join(SHARED_SETS)}")
        return SourceSpec(kind, name, count)

    def label(self) -> str:
        if self.kind == "file":
            return f"file-{Path(self.name).stem}"
        if self.kind == "magpie" and self.name != "magpie":
            return f"magpie-{self.name}"
        return self.name

    def prompt_kind(self) -> str:
        """The kind of this source's prompts."""
        if self.kind == "shared":
            return SHARED_KINDS[self.name]
        if self.kind == "magpie":
            return "general" if self.name == "magpie" else self.name
        return self.kind  # "file" | "multiturn"

    @property
    def synthesised(self) -> bool:
        return self.kind in ("magpie", "multiturn")


def join_instruction(instruction: str, extra: str | None) -> str:
    """An instruction and its optional input, as one prompt."""
    instruction = instruction.strip()
    return f"{instruction}\n\n{extra.strip()}" if extra and extra.strip() else instruction


def _gsm8k_answer(text: str) -> str:
    """A GSM8K solution as prose: calculator annotations dropped, '#### X' -> 'The answer is X.'"""
    text = re.sub(r"<<[^>]*>>", "", text)
    return re.sub(r"\n?#### *(.+)$", r"\nThe answer is \1.", text.strip())


def read_shared_set(data_dir: Path, name: str) -> list[tuple[str, str | None]]:
    """(prompt, the set's own response) pairs of a shared training set."""
    path = data_dir / SHARED_SETS[name]
    if not path.is_file():
        raise FileNotFoundError(f"training set {name} not found at {path} (set --data-dir / EAGLE2_DATA_DIR)")
    if name == "gsm8k_train":
        return [(row["question"].strip(), _gsm8k_answer(row["answer"])) for row in read_jsonl_input(path)]
    if name == "mbpp":
        # The task text alone reads like a user request; the first test shows the expected signature.
        return [
            (f"{row['text'].strip()}\nYour code should pass this test: {row['test_list'][0]}", f"```python\n{row['code'].strip()}\n```")
            for row in read_jsonl_input(path)
        ]
    if name == "self_instruct_seed":
        return [
            (join_instruction(row["instruction"], row["instances"][0]["input"] if row["instances"] else ""), (row["instances"][0]["output"].strip() or None) if row["instances"] else None)
            for row in read_jsonl_input(path)
        ]
    rows = json.loads(path.read_text())
    return [(join_instruction(row["instruction"], row.get("input")), row.get("response", "").strip() or None) for row in rows]


def read_prompt_file(path: Path) -> list[tuple[str, str | None]]:
    """(prompt, response or None) from a JSONL / JSON array of {prompt|instruction(+input)|question|text
    [, response|output|answer]} or ShareGPT conversations (first human turn, and the reply after it)."""
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    rows = read_json_rows(path)
    prompts: list[tuple[str, str | None]] = []
    for number, row in enumerate(rows):
        if isinstance(row, str):
            prompts.append((row.strip(), None))
            continue
        conversation = row.get("conversations") or row.get("messages")
        if conversation:
            roles = [m.get("from") or m.get("role") for m in conversation]
            first = next((i for i, r in enumerate(roles) if r in ("human", "user")), None)
            if first is None:
                raise ValueError(f"{path}: conversation {number} has no human/user turn")
            content = lambda m: str(m.get("value", m.get("content", ""))).strip()  # noqa: E731
            reply = conversation[first + 1] if first + 1 < len(conversation) and roles[first + 1] in ("gpt", "assistant") else None
            prompts.append((content(conversation[first]), (content(reply) or None) if reply else None))
            continue
        for key in ("prompt", "instruction", "question", "text"):
            if key in row:
                response = next((str(row[k]).strip() for k in ("response", "output", "answer") if row.get(k)), None)
                prompts.append((join_instruction(str(row[key]), row.get("input") if key == "instruction" else None), response))
                break
        else:
            raise ValueError(f"{path}: row {number} has none of prompt, instruction, question, text, conversations, messages; keys: {sorted(row)}")
    return [(p, r) for p, r in prompts if p]


def _subset(items: list, count: int | None, seed: int, label: str) -> list[tuple[int, object]]:
    indexed = list(enumerate(items))
    if count is None or count >= len(indexed):
        return indexed
    rng = random.Random(f"{seed}/{label}")
    return sorted(rng.sample(indexed, count))


# ---------------------------------------------------------------- Magpie synthesis


@dataclass(frozen=True)
class MagpieConfig:
    batch_size: int = 32  # queries sampled per batch (one chunk file per batch, for resume)
    max_query_tokens: int = 128  # a query longer than this is discarded
    temperature: float = 1.0
    min_chars: int = 12  # shorter queries are discarded
    max_passage_tokens: int = 384  # passage kinds: length cap of the passage the target writes
    min_passage_chars: int = 200  # shorter passages are discarded
    passage_temperature: float = 0.7  # passages are sampled cooler than queries: they are the facts the prompt is about


def synthesise_magpie(
    target: TargetModel,
    chat: ChatFormat,
    count: int,
    folder: Path,
    *,
    seed: int,
    config: MagpieConfig = MagpieConfig(),
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Sample user queries from the pre-query prefix until `count` usable ones exist (resumable:
    each batch is one chunk file, and chunks already on disk are read, not regenerated)."""
    prefix = chat.pre_query_ids()

    def produce(chunk: int) -> list[str]:
        generator = torch.Generator().manual_seed(_seed(seed, "magpie", chunk))
        results = batched_generate(
            target,
            [prefix] * config.batch_size,
            max_new_tokens=config.max_query_tokens,
            temperature=config.temperature,
            stop_token_ids=chat.stop_token_ids,
            generator=generator,
            capture_features=False,
        )
        return [chat.decode(r.output_ids).strip() for r in results if r.stopped]

    return _collect_chunks(count, folder, produce, config, progress, what="Magpie")


def synthesise_kind(
    target: TargetModel,
    chat: ChatFormat,
    kind: str,
    count: int,
    folder: Path,
    *,
    seed: int,
    config: MagpieConfig = MagpieConfig(),
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """`count` prompts of a Magpie kind (eagle2.train.mix), resumable like synthesise_magpie: one
    chunk file per batch of seeds; a kind's chunks are a function of (seed, kind, chunk number)."""
    prefix = chat.pre_query_ids()

    def continue_user_turns(openings: list[str], chunk: int, stage: str) -> list[str]:
        generator = torch.Generator().manual_seed(_seed(seed, "magpie", kind, stage, chunk))
        results = batched_generate(
            target,
            [prefix + chat.encode(opening.rstrip()) if opening else prefix for opening in openings],
            max_new_tokens=config.max_query_tokens,
            temperature=config.temperature,
            stop_token_ids=chat.stop_token_ids,
            generator=generator,
            capture_features=False,
        )
        return [join_opening(opening.rstrip(), chat.decode(r.output_ids)) if r.stopped else "" for opening, r in zip(openings, results)]

    def produce(chunk: int) -> list[str]:
        seeds = draw_seeds(kind, config.batch_size, random.Random(f"{seed}/{kind}/{chunk}"))
        if kind not in PASSAGE_KINDS:
            return continue_user_turns([s.opening for s in seeds], chunk, "query")
        generator = torch.Generator().manual_seed(_seed(seed, "magpie", kind, "passage", chunk))
        requests = [chat.prompt_ids([Turn("user", PASSAGE_REQUEST.format(topic=s.passage_topic))]) for s in seeds]
        written = batched_generate(
            target, requests, max_new_tokens=config.max_passage_tokens, temperature=config.passage_temperature,
            stop_token_ids=chat.stop_token_ids, generator=generator, capture_features=False,
        )
        passages = [_whole_sentences(chat.decode(r.output_ids)) for r in written]
        kept = [(s, p) for s, p in zip(seeds, passages) if len(p) >= config.min_passage_chars]
        if kind == "long_context_qa":
            return continue_user_turns([s.template.format(passage=p) for s, p in kept], chunk, "question")
        return [s.template.format(passage=p) for s, p in kept]

    return _collect_chunks(count, folder, produce, config, progress, what=f"Magpie ({kind})")


def _whole_sentences(text: str) -> str:
    """The text up to its last sentence end (a passage cut by the token limit loses its last fragment)."""
    text = text.strip()
    end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"))
    if text.endswith((".", "!", "?")):
        return text
    return text[: end + 1].strip() if end > 0 else text


def _collect_chunks(
    count: int,
    folder: Path,
    produce: Callable[[int], list[str]],
    config: MagpieConfig,
    progress: Callable[[int], None] | None,
    *,
    what: str,
) -> list[str]:
    """Call produce(chunk) for chunk 0, 1, ... (a chunk on disk is read instead) until `count`
    distinct prompts of at least min_chars exist."""
    folder.mkdir(parents=True, exist_ok=True)
    prompts: list[str] = []
    seen: set[str] = set()
    chunk = 0
    attempts_without_gain = 0
    while len(prompts) < count:
        path = folder / f"chunk-{chunk:05d}.jsonl"
        if path.is_file():
            texts = [row["prompt"] for row in read_jsonl(path)]
        else:
            texts = [t for t in produce(chunk) if len(t) >= config.min_chars]
            write_jsonl_atomic(path, [{"prompt": t} for t in texts])
        before = len(prompts)
        for text in texts:
            key = normalize(text)
            if key and key not in seen and len(prompts) < count:
                seen.add(key)
                prompts.append(text)
        if progress is not None:
            progress(len(prompts) - before)
        attempts_without_gain = 0 if len(prompts) > before else attempts_without_gain + 1
        if attempts_without_gain >= 5:
            raise RuntimeError(f"{what} synthesis produced no new usable prompt in 5 batches ({len(prompts)}/{count}); check the chat template")
        chunk += 1
    return prompts


def _seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ---------------------------------------------------------------- the stage


@dataclass(frozen=True)
class PromptsConfig:
    sources: tuple[str, ...]  # SourceSpec strings, e.g. ("shared:gsm8k_train:500", "magpie:300")
    seed: int = 0  # which subset of each source is taken; Magpie's sampling seed
    # Where build_prompts' eval_texts come from (evaluation set names, question files): recorded in
    # the stage's manifest, so that a rerun against other evaluation data is refused.
    eval_sets: tuple[str, ...] = ()
    eval_questions: tuple[str, ...] = ()
    drop_overlapping: bool = False  # False: refuse on any overlap; True: drop and list them
    magpie: MagpieConfig = MagpieConfig()


def build_prompts(
    config: PromptsConfig,
    out_dir: Path,
    data_dir: Path,
    *,
    eval_texts: Iterable[EvalText],
    target: TargetModel | None = None,
    chat: ChatFormat | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write out_dir/prompts.jsonl (Prompt rows) and prompts.summary.json; skip if already done.

    ``data_dir`` holds the shared training sets; no prompt may overlap one of ``eval_texts``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / "prompts.jsonl"
    check_manifest(out_dir / "prompts.config.json", asdict(config), "prompts", outputs=[output, out_dir / "magpie", out_dir / "multiturn", *out_dir.glob("magpie-*")])
    if output.is_file():
        logger.info("prompts: %s exists, skipping", output)
        return output
    specs = [SourceSpec.parse(s) for s in config.sources]
    if not specs:
        raise ValueError("no prompt sources given; use e.g. --source shared:gsm8k_train:500 --source magpie:200")
    index = EvalIndex.of(eval_texts)
    prompts: list[Prompt] = []
    for spec in specs:
        if spec.kind == "shared":
            items = read_shared_set(data_dir, spec.name)
        elif spec.kind == "file":
            items = read_prompt_file(Path(spec.name))
        else:
            if target is None or chat is None:
                raise ValueError(f"source {spec.label()}: synthesis needs the target model and its chat format")
            if spec.name in ("magpie", "multiturn"):
                # multiturn first turns are plain Magpie queries of their own (folder and seed).
                folder, magpie_seed = (out_dir / "magpie", config.seed) if spec.name == "magpie" else (out_dir / "multiturn", _seed(config.seed, "multiturn"))
                queries = synthesise_magpie(target, chat, spec.count or 0, folder, seed=magpie_seed, config=config.magpie, progress=progress)
            else:
                queries = synthesise_kind(target, chat, spec.name, spec.count or 0, out_dir / spec.label(), seed=config.seed, config=config.magpie, progress=progress)
            items = [(q, None) for q in queries]
        for number, (text, response) in _subset(items, spec.count, config.seed, spec.label()):
            follow_ups = (follow_up(random.Random(f"{config.seed}/follow-up/{number}")),) if spec.kind == "multiturn" else ()
            prompts.append(Prompt(id=f"{spec.label()}/{number}", source=spec.label(), prompt=text, response=response, kind=spec.prompt_kind(), follow_ups=follow_ups))
    # Exact duplicates across sources are kept once (a conversation counts by all its user turns).
    unique: dict[str, Prompt] = {}
    for prompt in prompts:
        unique.setdefault(normalize("\n".join(prompt.turns())), prompt)
    duplicates = len(prompts) - len(unique)
    prompts = list(unique.values())
    overlaps = find_overlaps(prompts, index)
    if overlaps and not config.drop_overlapping:
        shown = "; ".join(f"{o.prompt_id} ~ {o.eval_item} ({o.rule})" for o in overlaps[:10])
        raise ContaminationError(
            f"{len(overlaps)} prompt(s) overlap evaluation sets: {shown}{' ...' if len(overlaps) > 10 else ''}; "
            "refusing to train on them (drop them with --drop-overlapping)"
        )
    dropped = {o.prompt_id for o in overlaps}
    kept = [p for p in prompts if p.id not in dropped]
    # Shuffled, so that any prefix of the distillation shards is a representative mix of sources.
    random.Random(f"{config.seed}/order").shuffle(kept)
    summary = {
        "prompts": len(kept),
        "by_source": {s: sum(p.source == s for p in kept) for s in sorted({p.source for p in kept})},
        "by_kind": kind_counts([p.kind for p in kept]),
        "duplicates_removed": duplicates,
        "eval_texts_indexed": index.counts,
        "overlaps_dropped": [asdict(o) for o in overlaps],
    }
    write_json_atomic(out_dir / "prompts.summary.json", summary, sort_keys=True)
    write_jsonl_atomic(output, [asdict(p) for p in kept])
    logger.info("prompts: %d written to %s (%s)", len(kept), output, summary["by_source"])
    return output


def read_prompts(path: Path) -> list[Prompt]:
    return [Prompt(**{**row, "follow_ups": tuple(row.get("follow_ups", ()))}) for row in read_jsonl(path)]
