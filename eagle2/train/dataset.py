"""Training data from the distillation shards: records, the held-out split, the draft vocabulary,
and padded batches of aligned (feature, next token) -> next feature pairs.

Alignment (EAGLE): for a record x_0..x_{n-1} with target features f_0..f_{n-2}, pair t (t = 0..n-3)
feeds the head the feature f_t and the embedding of x_{t+1}; it should predict f_{t+1}, and
lm_head(f_{t+1}) is the target's distribution of x_{t+2}. A pair is trained on when x_{t+1} is an
answer token (loss mask 1): those are the pairs the drafter uses at inference, where the context
catch-up feeds accepted answer tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    id: str
    mode: str  # "greedy" | "sampled"
    tokens: torch.Tensor  # [n] long
    loss_mask: torch.Tensor  # [n] bool, True on answer tokens
    features: torch.Tensor  # [n - 1, H] storage dtype (fp16)

    @property
    def pairs(self) -> int:
        return max(self.tokens.shape[0] - 2, 0)

    @property
    def trained_pairs(self) -> int:
        return int(self.loss_mask[1 : self.tokens.shape[0] - 1].sum())


def shard_files(distill_dir: Path) -> list[Path]:
    return sorted(distill_dir.glob("shard-*.safetensors"))


def load_records(distill_dir: Path, *, max_shards: int | None = None) -> list[Record]:
    """Every record of every complete shard (files are renamed into place only when complete)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    paths = shard_files(distill_dir)[:max_shards]
    if not paths:
        raise FileNotFoundError(f"no distillation shards (shard-*.safetensors) in {distill_dir}; run the distill stage first")
    records: list[Record] = []
    for path in paths:
        with safe_open(str(path), framework="pt") as file:
            metas = json.loads(file.metadata()["records"])
        tensors = load_file(str(path))
        offsets = tensors["token_offsets"].tolist()
        feature_offsets = tensors["feature_offsets"].tolist()
        for r, meta in enumerate(metas):
            records.append(
                Record(
                    id=meta["id"],
                    mode=meta["mode"],
                    tokens=tensors["tokens"][offsets[r] : offsets[r + 1]].long(),
                    loss_mask=tensors["loss_mask"][offsets[r] : offsets[r + 1]].bool(),
                    features=tensors["features"][feature_offsets[r] : feature_offsets[r + 1]],
                )
            )
    return [r for r in records if r.pairs > 0]


def is_heldout(record_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}/heldout/{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / float(1 << 64) < fraction


def split(records: Sequence[Record], heldout_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held-out) by a hash of the record id, so the split never changes as shards are added."""
    train, heldout = [], []
    for record in records:
        (heldout if is_heldout(record.id, heldout_fraction, seed) else train).append(record)
    return train, heldout


def answer_token_counts(records: Sequence[Record], vocab_size: int) -> torch.Tensor:
    """[V] how often each token is an answer token."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for record in records:
        counts += torch.bincount(record.tokens[record.loss_mask], minlength=vocab_size)
    return counts


def choose_draft_vocab(counts: torch.Tensor, size: int, always: Sequence[int] = ()) -> torch.Tensor:
    """The `size` most frequent answer tokens (ties broken by id), plus `always` (e.g. stop ids); sorted."""
    if size >= counts.shape[0]:
        return torch.arange(counts.shape[0])
    order = sorted(range(counts.shape[0]), key=lambda t: (-int(counts[t]), t))
    chosen = set(int(t) for t in always)
    for token in order:
        if len(chosen) >= size:
            break
        chosen.add(token)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def coverage(counts: torch.Tensor, vocab: torch.Tensor) -> float:
    total = int(counts.sum())
    return float(counts[vocab].sum()) / total if total else 1.0


@dataclass(frozen=True)
class Batch:
    """Right-padded pairs of several records; pad rows have weight 0 (the causal mask keeps real
    positions from seeing them)."""

    features: torch.Tensor  # [b, q, H] f_t, storage dtype
    next_tokens: torch.Tensor  # [b, q] long, x_{t+1}
    target_features: torch.Tensor  # [b, q, H] f_{t+1}
    weights: torch.Tensor  # [b, q] bool, pairs trained on
    next_next_tokens: torch.Tensor  # [b, q] long, x_{t+2} (the token that followed, for reference)


def make_batch(records: Sequence[Record], max_pairs: int | None = None) -> Batch:
    lengths = [min(r.pairs, max_pairs or r.pairs) for r in records]
    width = max(lengths)
    hidden = records[0].features.shape[1]
    dtype = records[0].features.dtype
    features = torch.zeros(len(records), width, hidden, dtype=dtype)
    targets = torch.zeros(len(records), width, hidden, dtype=dtype)
    tokens = torch.zeros(len(records), width, dtype=torch.long)
    after = torch.zeros(len(records), width, dtype=torch.long)
    weights = torch.zeros(len(records), width, dtype=torch.bool)
    for row, (record, length) in enumerate(zip(records, lengths)):
        features[row, :length] = record.features[:length]
        targets[row, :length] = record.features[1 : length + 1]
        tokens[row, :length] = record.tokens[1 : length + 1]
        after[row, :length] = record.tokens[2 : length + 2]
        weights[row, :length] = record.loss_mask[1 : length + 1]
    return Batch(features, tokens, targets, weights, after)


def batches(records: Sequence[Record], tokens_per_batch: int, *, seed: int | None, max_pairs: int | None = None) -> list[list[int]]:
    """Record indices grouped into batches of about `tokens_per_batch` padded pairs: records are
    sorted by length (little padding) and the batches shuffled with `seed` (None: in order)."""
    order = sorted(range(len(records)), key=lambda i: (records[i].pairs, records[i].id))
    groups: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = max([min(records[i].pairs, max_pairs or records[i].pairs) for i in current + [index]])
        if current and width * (len(current) + 1) > tokens_per_batch:
            groups.append(current)
            current = []
        current.append(index)
    if current:
        groups.append(current)
    if seed is not None:
        random.Random(seed).shuffle(groups)
    return groups


def iterate(records: Sequence[Record], groups: Sequence[Sequence[int]], start: int = 0, max_pairs: int | None = None) -> Iterator[tuple[int, Batch]]:
    for number in range(start, len(groups)):
        yield number, make_batch([records[i] for i in groups[number]], max_pairs)
