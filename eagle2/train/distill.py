"""The self-distillation stage: the target answers every prompt, and we keep what training needs.

For each prompt (formatted with the same chat template the suites use) the target generates an
answer, greedily or by sampling (a fixed, seeded share of prompts is sampled). Each record stores
the token ids (prompt + answer), a loss mask (1 on the answer's tokens, the assistant's), and the
target's feature (last hidden state after the final norm) at every token it was fed, captured
during generation. Records are written in shards of `shard_size` prompts, one safetensors file
each, written atomically; a shard already on disk is not regenerated, so the stage resumes.

Shard layout (safetensors):
    tokens           int32 [T]       all records' token ids, concatenated
    loss_mask        uint8 [T]       1 on answer tokens
    token_offsets    int64 [R + 1]   record r is tokens[token_offsets[r]:token_offsets[r+1]]
    features         fp16  [T - R, H] every token's feature except each record's last token
    feature_offsets  int64 [R + 1]
and metadata["records"], a JSON list of {id, source, mode, prompt_tokens, new_tokens, stopped}.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from eagle2.target import TargetModel, parse_dtype
from eagle2.train.generation import batched_generate, prefill_features
from eagle2.train.io import atomic_save_safetensors, atomic_write_json, check_manifest
from eagle2.train.prompts import ChatFormat, Prompt, Turn, _seed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    max_new_tokens: int = 256  # answer length cap (MT-bench evaluation uses 128-256)
    max_prompt_tokens: int = 512  # longer formatted prompts are skipped (and counted)
    batch_size: int = 32  # prompts generated together
    shard_size: int = 128  # prompts per shard file (the unit of resume)
    sampled_fraction: float = 0.5  # share of prompts answered by sampling; the rest greedily
    temperature: float = 1.0  # sampling temperature for the sampled share
    seed: int = 0
    feature_dtype: str = "float16"  # storage dtype of the features
    # "generate": the target writes the answers (self-distillation). "reference": the prompt's own
    # response (when its source has one) is teacher-forced through the target in one forward, ~10x
    # cheaper per token on a CPU; prompts without a response are skipped. This is how the official
    # EAGLE heads were trained (fixed ShareGPT answers).
    answers: str = "generate"
    prefill_tokens: int = 8192  # padded tokens per teacher-forcing forward

    def __post_init__(self) -> None:
        if self.answers not in ("generate", "reference"):
            raise ValueError(f"answers must be 'generate' or 'reference', got {self.answers!r}")
        if not 0.0 <= self.sampled_fraction <= 1.0:
            raise ValueError(f"sampled_fraction must be in [0, 1], got {self.sampled_fraction}")
        if self.temperature <= 0:
            raise ValueError(f"temperature (of the sampled share) must be > 0, got {self.temperature}")
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def prompt_mode(prompt_id: str, config: DistillConfig) -> str:
    """'sampled' or 'greedy', fixed per prompt by a hash (so resume and re-runs agree)."""
    draw = _seed(config.seed, "mode", prompt_id) / float(1 << 63)
    return "sampled" if draw < config.sampled_fraction else "greedy"


def shard_path(out_dir: Path, number: int) -> Path:
    return out_dir / f"shard-{number:05d}.safetensors"


def distill(
    target: TargetModel,
    chat: ChatFormat,
    prompts: list[Prompt],
    out_dir: Path,
    config: DistillConfig = DistillConfig(),
    *,
    progress: Callable[[int], None] | None = None,
    worker: tuple[int, int] = (0, 1),
) -> list[Path]:
    """Generate and store every shard not yet on disk; return all shard paths.

    `worker` = (i, n): this process generates only shards whose number is i modulo n, so n
    processes can share the work (each with its own target copy); shards are independent files."""
    index, workers = worker
    if not 0 <= index < workers:
        raise ValueError(f"worker must be i/n with 0 <= i < n, got {index}/{workers}")
    out_dir.mkdir(parents=True, exist_ok=True)
    check_manifest(
        out_dir / "distill.config.json", {**asdict(config), "prompts": len(prompts)}, "distill", outputs=out_dir.glob("shard-*.safetensors")
    )
    feature_dtype = parse_dtype(config.feature_dtype)
    paths = []
    shards = (len(prompts) + config.shard_size - 1) // config.shard_size
    for number in range(shards):
        path = shard_path(out_dir, number)
        paths.append(path)
        chunk = prompts[number * config.shard_size : (number + 1) * config.shard_size]
        if path.is_file() or number % workers != index:
            if progress is not None:
                progress(len(chunk))
            continue
        started = time.perf_counter()
        records = _distill_shard(target, chat, chunk, config, number, feature_dtype, progress)
        _write_shard(path, records)
        seconds = time.perf_counter() - started
        new_tokens = sum(r["meta"]["new_tokens"] for r in records)
        logger.info(
            "shard %d/%d: %d records, %d new tokens in %.0f s (%.1f new tokens/s)", number + 1, shards, len(records), new_tokens, seconds, new_tokens / seconds
        )
        _append_timing(out_dir, {"shard": number, "records": len(records), "new_tokens": new_tokens, "seconds": round(seconds, 2)})
    summary = summarise(paths)
    atomic_write_json(out_dir / "distill.summary.json", summary)
    return paths


def _append_timing(out_dir: Path, row: dict) -> None:
    with open(out_dir / "distill.timing.jsonl", "a", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")


def _record(prompt: Prompt, mode: str, prompt_ids: Sequence[int], answer_ids: Sequence[int], features: torch.Tensor, stopped: bool) -> dict:
    """One shard record: the token ids, the target's feature at every fed token, and where it came from."""
    return {
        "tokens": list(prompt_ids) + list(answer_ids),
        "features": features,
        "meta": {
            "id": prompt.id,
            "source": prompt.source,
            "mode": mode,
            "prompt_tokens": len(prompt_ids),
            "new_tokens": len(answer_ids),
            "stopped": stopped,
        },
    }


def _distill_shard(
    target: TargetModel,
    chat: ChatFormat,
    chunk: list[Prompt],
    config: DistillConfig,
    number: int,
    feature_dtype: torch.dtype,
    progress: Callable[[int], None] | None,
) -> list[dict]:
    if config.answers == "reference":
        return _reference_shard(target, chat, chunk, config, number, feature_dtype, progress)
    items = []
    skipped = 0
    for prompt in chunk:
        ids = chat.prompt_ids([Turn("user", prompt.prompt)])
        if len(ids) > config.max_prompt_tokens:
            skipped += 1
            continue
        items.append((prompt, ids, prompt_mode(prompt.id, config)))
    if skipped:
        logger.info("shard %d: %d prompt(s) longer than %d tokens skipped", number, skipped, config.max_prompt_tokens)
    records: list[dict] = []
    for mode in ("greedy", "sampled"):
        group = sorted((it for it in items if it[2] == mode), key=lambda it: len(it[1]))
        generator = torch.Generator().manual_seed(_seed(config.seed, "distill", number, mode))
        for start in range(0, len(group), config.batch_size):
            batch = group[start : start + config.batch_size]
            results = batched_generate(
                target,
                [ids for _, ids, _ in batch],
                max_new_tokens=config.max_new_tokens,
                temperature=0.0 if mode == "greedy" else config.temperature,
                stop_token_ids=chat.stop_token_ids,
                generator=generator,
                feature_dtype=feature_dtype,
            )
            for (prompt, _, _), result in zip(batch, results):
                records.append(_record(prompt, mode, result.prompt_ids, result.output_ids, result.features, result.stopped))
            if progress is not None:
                progress(len(batch))
    if progress is not None and skipped:
        progress(skipped)
    records.sort(key=lambda r: r["meta"]["id"])
    return records


def _reference_shard(
    target: TargetModel,
    chat: ChatFormat,
    chunk: list[Prompt],
    config: DistillConfig,
    number: int,
    feature_dtype: torch.dtype,
    progress: Callable[[int], None] | None,
) -> list[dict]:
    """Teacher-forced records: prompt ids + the reference answer's ids (cut at max_new_tokens)."""
    items = []
    for prompt in chunk:
        if not prompt.response:
            continue
        turns = [Turn("user", prompt.prompt)]
        ids = chat.prompt_ids(turns)
        if len(ids) > config.max_prompt_tokens:
            continue
        answer = chat.answer_ids(turns, prompt.response)[: config.max_new_tokens]
        if answer:
            items.append((prompt, ids, answer))
    if len(items) < len(chunk):
        logger.info("shard %d: %d prompt(s) without a usable reference answer skipped", number, len(chunk) - len(items))
    items.sort(key=lambda it: len(it[1]) + len(it[2]))
    records: list[dict] = []
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and (end + 1 - start) * (len(items[end][1]) + len(items[end][2])) <= config.prefill_tokens:
            end += 1
        batch = items[start:end]
        features = prefill_features(target, [ids + answer for _, ids, answer in batch], feature_dtype=feature_dtype)
        for (prompt, ids, answer), feature in zip(batch, features):
            records.append(_record(prompt, "reference", ids, answer, feature, answer[-1] in chat.stop_token_ids))
        start = end
    if progress is not None:
        progress(len(chunk))
    records.sort(key=lambda r: r["meta"]["id"])
    return records


def _write_shard(path: Path, records: list[dict]) -> None:
    tokens, masks, features = [], [], []
    token_offsets, feature_offsets = [0], [0]
    for record in records:
        meta = record["meta"]
        ids = torch.tensor(record["tokens"], dtype=torch.int32)
        mask = torch.zeros(len(ids), dtype=torch.uint8)
        mask[meta["prompt_tokens"] :] = 1
        assert record["features"].shape[0] == len(ids) - 1, "one feature per fed token"
        tokens.append(ids)
        masks.append(mask)
        features.append(record["features"])
        token_offsets.append(token_offsets[-1] + len(ids))
        feature_offsets.append(feature_offsets[-1] + len(ids) - 1)
    hidden = features[0].shape[1] if features else 0
    atomic_save_safetensors(
        path,
        {
            "tokens": torch.cat(tokens) if tokens else torch.zeros(0, dtype=torch.int32),
            "loss_mask": torch.cat(masks) if masks else torch.zeros(0, dtype=torch.uint8),
            "token_offsets": torch.tensor(token_offsets, dtype=torch.int64),
            "features": torch.cat(features) if features else torch.zeros(0, hidden, dtype=torch.float16),
            "feature_offsets": torch.tensor(feature_offsets, dtype=torch.int64),
        },
        metadata={"records": json.dumps([r["meta"] for r in records])},
    )


def read_shard_metadata(path: Path) -> list[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        return json.loads(file.metadata()["records"])


def summarise(paths: list[Path]) -> dict:
    records = [m for p in paths if p.is_file() for m in read_shard_metadata(p)]
    return {
        "shards": sum(p.is_file() for p in paths),
        "records": len(records),
        "prompt_tokens": sum(r["prompt_tokens"] for r in records),
        "answer_tokens": sum(r["new_tokens"] for r in records),
        "stopped_fraction": (sum(r["stopped"] for r in records) / len(records)) if records else 0.0,
        "by_mode": {m: sum(r["mode"] == m for r in records) for m in sorted({r["mode"] for r in records})},
        "by_source": {s: sum(r["source"] == s for r in records) for s in sorted({r["source"] for r in records})},
    }
