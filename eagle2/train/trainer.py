"""The training stage: fit an EAGLE head to the self-distilled records.

Loss (official EAGLE weights): 1.0 * smooth-L1(predicted feature, target feature), averaged over
the hidden size, + 0.1 * soft cross-entropy between the target's next-token distribution
softmax(lm_head(f_{t+1})) and the head's log_softmax(lm_head(predicted)), both through the frozen
lm_head; means over the pairs trained on. Input features get uniform noise U(-noise, noise).

CPU cost: lm_head (V x H) dominates. With a reduced draft vocabulary (the most frequent answer
tokens of the distilled data, FR-Spec style) the cross-entropy, the held-out accuracy's draft side
and the drafter at inference all use those rows only, and the head ships with that vocabulary.
The lm_head is applied only at the pairs trained on (answer positions), not at prompt positions.

Resume: a checkpoint (head, optimiser, step, RNG) is written atomically every `checkpoint_every`
steps and at the end of every epoch; the batch order of an epoch is a function of (seed, epoch),
so a resumed run continues with the very next batch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from eagle2.head import DraftHead
from eagle2.target import TargetModel, parse_dtype
from eagle2.train.dataset import (
    Batch,
    Record,
    answer_token_counts,
    batches,
    choose_draft_vocab,
    coverage,
    iterate,
    load_records,
    split,
)
from eagle2.train.io import atomic_torch_save, atomic_write_json, atomic_write_text, check_manifest

logger = logging.getLogger(__name__)

# Held-out batches are taken in one fixed shuffled order, so a max_heldout_pairs cap is a random
# subset (not the shortest records) and every evaluation sees the same pairs.
HELDOUT_ORDER_SEED = 20240531


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    lr: float = 1e-3  # peak AdamW learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 0.5  # max global gradient norm (official 0.5)
    tokens_per_batch: int = 4096  # padded pairs per optimiser step
    max_pairs: int = 1024  # longer records are cut
    feature_weight: float = 1.0  # smooth L1 on features (official 1.0)
    ce_weight: float = 0.1  # soft cross-entropy (official 0.1)
    noise: float = 0.1  # U(-noise, noise) added to input features (official U(-0.1, 0.1))
    draft_vocab_size: int = 0  # 0 = full vocabulary; else the N most frequent answer tokens
    heldout_fraction: float = 0.05
    eval_every: int = 200  # steps between held-out evaluations (also at each epoch end)
    checkpoint_every: int = 200
    log_every: int = 20
    num_layers: int = 1
    seed: int = 0
    max_heldout_pairs: int = 20000  # held-out evaluation uses at most this many pairs
    init_from: str = ""  # a head folder to start from (fine-tuning); "" = random initialisation
    # Further distillation folders (e.g. teacher-forced reference answers) used for training only;
    # their records whose id falls in the held-out split are left out, so no held-out prompt is seen.
    extra_distill: tuple[str, ...] = ()
    save_dtype: str = "float16"  # dtype of the saved weights (loaded back as float32)

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


@dataclass(frozen=True)
class Losses:
    feature: float
    ce: float
    total: float
    top1: float  # draft argmax (over the draft vocabulary) == the target's argmax over the full vocabulary
    pairs: int


class LossComputer:
    """The losses of a batch through the frozen lm_head (restricted to the draft vocabulary)."""

    def __init__(self, target: TargetModel, draft_vocab: torch.Tensor | None, config: TrainConfig, device: torch.device) -> None:
        weight = target.lm_head.weight.detach().to(device=device, dtype=torch.float32)
        self.full_weight = weight
        self.draft_vocab = None if draft_vocab is None else draft_vocab.to(device)
        self.weight = weight if draft_vocab is None else weight[self.draft_vocab].contiguous()
        self.embed = target.embed_tokens.weight.detach().to(device=device, dtype=torch.float32)
        self.config = config
        self.device = device
        # The target's full-vocabulary argmax of held-out batches (fixed), computed once per batch.
        self.target_argmax: dict[int, torch.Tensor] = {}

    def __call__(
        self, head: DraftHead, batch: Batch, *, noise: float, generator: torch.Generator | None, evaluate: bool = False, batch_key: int | None = None
    ):
        device = self.device
        features = batch.features.to(device=device, dtype=torch.float32)
        if noise > 0:
            features = features + (torch.rand(features.shape, generator=generator, device=device) * 2 - 1) * noise
        embeddings = F.embedding(batch.next_tokens.to(device), self.embed)
        length = features.shape[1]
        positions = torch.arange(length, device=device).expand(features.shape[0], -1)
        predicted = head(embeddings, features, positions)  # [b, q, H]
        weights = batch.weights.to(device)
        predicted = predicted[weights]  # [N, H]
        target = batch.target_features.to(device=device, dtype=torch.float32)[weights]
        feature_loss = F.smooth_l1_loss(predicted, target, reduction="none").mean(-1).mean()
        with torch.no_grad():
            target_probs = torch.softmax(target @ self.weight.T, dim=-1)
        log_probs = torch.log_softmax(predicted @ self.weight.T, dim=-1)
        ce_loss = -(target_probs * log_probs).sum(-1).mean()
        total = self.config.feature_weight * feature_loss + self.config.ce_weight * ce_loss
        top1 = None
        if evaluate:
            with torch.no_grad():
                draft = log_probs.argmax(-1)
                if self.draft_vocab is not None:
                    draft = self.draft_vocab[draft]
                reference = self.target_argmax.get(batch_key) if batch_key is not None else None
                if reference is None:
                    reference = (target @ self.full_weight.T).argmax(-1)
                    if batch_key is not None:
                        self.target_argmax[batch_key] = reference
                top1 = (draft == reference).float().sum()
        return total, feature_loss, ce_loss, top1, int(weights.sum())


def init_head(target: TargetModel, config: TrainConfig) -> DraftHead:
    """A random head (std 0.02, as the official training starts). Starting the layer from a copy of
    the target's last layer was tried and is far worse (its residual-stream scale does not match
    the normed features), so it is not offered."""
    return DraftHead.random(target.config, seed=config.seed, num_layers=config.num_layers).float()


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(head: DraftHead, records: list[Record], losses: LossComputer, config: TrainConfig) -> Losses:
    head.eval()
    totals = torch.zeros(4, dtype=torch.float64)
    pairs = 0
    for number, batch in iterate(records, batches(records, config.tokens_per_batch, seed=HELDOUT_ORDER_SEED, max_pairs=config.max_pairs), max_pairs=config.max_pairs):
        total, feature, ce, top1, count = losses(head, batch, noise=0.0, generator=None, evaluate=True, batch_key=number)
        if count == 0:
            continue
        totals += torch.tensor([float(total) * count, float(feature) * count, float(ce) * count, float(top1)], dtype=torch.float64)
        pairs += count
        if pairs >= config.max_heldout_pairs:
            break
    head.train()
    if pairs == 0:
        return Losses(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    total, feature, ce, top1 = (totals / pairs).tolist()
    return Losses(feature=feature, ce=ce, total=total, top1=top1, pairs=pairs)


def train(
    target: TargetModel,
    work: Path,
    out: Path,
    config: TrainConfig = TrainConfig(),
    *,
    stop_token_ids: tuple[int, ...] = (),
    device: str | torch.device | None = None,
    max_shards: int | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
) -> dict:
    """Train (or resume) and write the head to `out`; returns the run summary (also in work/train/)."""
    device = torch.device(device or target.device)
    folder = work / "train"
    folder.mkdir(parents=True, exist_ok=True)
    records = load_records(work / "distill", max_shards=max_shards)
    train_records, heldout = split(records, config.heldout_fraction, config.seed)
    for extra in config.extra_distill:
        extra_train, _ = split(load_records(Path(extra)), config.heldout_fraction, config.seed)
        logger.info("extra training records from %s: %d", extra, len(extra_train))
        train_records += extra_train
        records += extra_train
    if not train_records or not heldout:
        raise ValueError(f"{len(records)} records split into {len(train_records)} train / {len(heldout)} held-out; need both non-empty")
    check_manifest(
        folder / "train.config.json",
        {**asdict(config), "records": len(records), "train_records": len(train_records)},
        "train",
        outputs=[folder / "checkpoint.pt", folder / "summary.json"],
    )

    vocab_size = target.lm_head.weight.shape[0]
    counts = answer_token_counts(train_records, vocab_size)
    draft_vocab = None
    if 0 < config.draft_vocab_size < vocab_size:
        draft_vocab = choose_draft_vocab(counts, config.draft_vocab_size, always=stop_token_ids)
    heldout_counts = answer_token_counts(heldout, vocab_size)
    vocab_coverage = {"train": coverage(counts, draft_vocab), "heldout": coverage(heldout_counts, draft_vocab)} if draft_vocab is not None else {"train": 1.0, "heldout": 1.0}
    data = {
        "records": len(records),
        "train_records": len(train_records),
        "heldout_records": len(heldout),
        "train_pairs": sum(r.trained_pairs for r in train_records),
        "heldout_pairs": sum(r.trained_pairs for r in heldout),
        "all_tokens": sum(int(r.tokens.shape[0]) for r in records),
        "draft_vocab_size": int(draft_vocab.shape[0]) if draft_vocab is not None else vocab_size,
        "draft_vocab_coverage": vocab_coverage,
    }
    logger.info("data: %s", data)

    head = init_head(target, config).to(device)
    if config.init_from:
        start = DraftHead.from_pretrained(config.init_from, embedding_shape=tuple(target.embed_tokens.weight.shape))
        head.load_state_dict(start.float().state_dict())
        logger.info("initialised from %s", config.init_from)
    head.draft_vocab = draft_vocab
    losses = LossComputer(target, draft_vocab, config, device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    steps_per_epoch = len(batches(train_records, config.tokens_per_batch, seed=0, max_pairs=config.max_pairs))
    total_steps = steps_per_epoch * config.epochs
    generator = torch.Generator(device=device).manual_seed(config.seed)
    step, epoch, next_batch, elapsed = 0, 0, 0, 0.0
    checkpoint_path = folder / "checkpoint.pt"
    if checkpoint_path.is_file():
        state = _load_checkpoint(checkpoint_path, device)
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, epoch, next_batch, elapsed = state["step"], state["epoch"], state["next_batch"], state["elapsed_s"]
        logger.info("resumed at step %d (epoch %d, batch %d)", step, epoch, next_batch)
    log_path = folder / "train.log.jsonl"
    if log_path.is_file():
        # Rows written after the checkpoint belong to steps that are about to be redone.
        rows = [line for line in log_path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        atomic_write_text(log_path, "".join(line + "\n" for line in rows))

    def log(row: dict) -> None:
        with open(log_path, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")

    def save_checkpoint() -> None:
        atomic_torch_save(
            checkpoint_path,
            {
                "head": head.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step,
                "epoch": epoch,
                "next_batch": next_batch,
                "elapsed_s": elapsed,
            },
        )

    head.train()
    window = {"loss": 0.0, "feature": 0.0, "ce": 0.0, "pairs": 0, "seconds": 0.0, "steps": 0}
    last_eval: Losses | None = None
    while epoch < config.epochs:
        groups = batches(train_records, config.tokens_per_batch, seed=config.seed * 1000 + epoch, max_pairs=config.max_pairs)
        for number, batch in iterate(train_records, groups, start=next_batch, max_pairs=config.max_pairs):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, config)
            total, feature, ce, _, count = losses(head, batch, noise=config.noise, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            if count:
                total.backward()
                torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
                optimizer.step()
            seconds = time.perf_counter() - started
            elapsed += seconds
            step += 1
            next_batch = number + 1
            window["loss"] += float(total.detach()) * count
            window["feature"] += float(feature.detach()) * count
            window["ce"] += float(ce.detach()) * count
            window["pairs"] += count
            window["seconds"] += seconds
            window["steps"] += 1
            if step % config.log_every == 0 and window["pairs"]:
                row = {
                    "step": step,
                    "epoch": epoch + next_batch / len(groups),
                    "lr": optimizer.param_groups[0]["lr"],
                    "loss": window["loss"] / window["pairs"],
                    "feature_loss": window["feature"] / window["pairs"],
                    "ce_loss": window["ce"] / window["pairs"],
                    "pairs_per_s": window["pairs"] / window["seconds"],
                    "elapsed_s": round(elapsed, 1),
                }
                log(row)
                if progress is not None:
                    progress(step, total_steps, row)
                window = dict.fromkeys(window, 0.0)
            if step % config.eval_every == 0:
                last_eval = evaluate(head, heldout, losses, config)
                log({"step": step, "heldout": asdict(last_eval), "elapsed_s": round(elapsed, 1)})
                logger.info("step %d held-out: %s", step, last_eval)
            if step % config.checkpoint_every == 0:
                save_checkpoint()
        epoch += 1
        next_batch = 0
        last_eval = evaluate(head, heldout, losses, config)
        log({"step": step, "epoch_end": epoch, "heldout": asdict(last_eval), "elapsed_s": round(elapsed, 1)})
        logger.info("epoch %d done (step %d, %.0f s): held-out %s", epoch, step, elapsed, last_eval)
        save_checkpoint()

    if last_eval is None:
        last_eval = evaluate(head, heldout, losses, config)
    summary = {
        "config": asdict(config),
        "data": data,
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "heldout": asdict(last_eval),
        "last_train": _last_train_row(log_path),
        "torch": torch.__version__,
        "device": str(device),
    }
    saved = copy.deepcopy(head).to(device="cpu", dtype=parse_dtype(config.save_dtype))
    saved.draft_vocab = draft_vocab
    saved.save_pretrained(out, extra_config={"eagle2_training": {"steps": step, "heldout_top1": last_eval.top1}})
    atomic_write_json(folder / "summary.json", summary)
    atomic_write_text(out / "training.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    logger.info("head written to %s; held-out top-1 %.3f", out, last_eval.top1)
    return summary


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """The training checkpoint, loaded tensors-only (`weights_only=True`: tensors, numbers, strings,
    lists and dicts; a pickle that would build any other object is refused, so a planted checkpoint
    cannot run code). The optimizer and generator states are plain tensors and numbers."""
    import pickle

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(f"{path}: not a training checkpoint that loads tensors-only ({error}); delete it to start training afresh") from error
    missing = [key for key in ("head", "optimizer", "generator", "step", "epoch", "next_batch", "elapsed_s") if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path}: a training checkpoint needs the keys head, optimizer, generator, step, epoch, next_batch, elapsed_s; missing: {', '.join(missing)}")
    return state


def _last_train_row(log_path: Path) -> dict | None:
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    return rows[-1] if rows else None
