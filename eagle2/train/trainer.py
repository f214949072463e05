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
from typing import TYPE_CHECKING

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
from eagle2.file_io import JsonlLog, read_jsonl, write_json_atomic, write_jsonl_atomic
from eagle2.train.io import atomic_torch_save, check_manifest
from eagle2.train.unroll import step_weights, unroll

if TYPE_CHECKING:
    from eagle2.train.eagle3 import Eagle3TrainConfig

logger = logging.getLogger(__name__)

# Held-out batches are taken in one fixed shuffled order, so a max_heldout_pairs cap is a random
# subset (not the shortest records) and every evaluation sees the same pairs.
HELDOUT_ORDER_SEED = 20240531


COMPUTE_DTYPES = ("float32", "bfloat16")


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
    # Training-time test (eagle2.train.unroll): draft steps unrolled per position (1 = the plain
    # EAGLE objective), loss weight of step j (ttt_decay**j unless ttt_weights lists one per
    # step), and whether the fed-back predicted features are cut from the gradient.
    ttt_steps: int = 1
    ttt_decay: float = 0.8  # the official EAGLE-3 training's 0.8**j
    ttt_weights: tuple[float, ...] = ()
    ttt_detach: bool = False
    # Also write the head after every epoch to work/train/epochs/epoch-NNN (official layout, with
    # its training.json), for learning curves over epochs.
    save_epoch_heads: bool = False
    # Time budget of this invocation in seconds (0 = none): training stops after the step that
    # crosses it, checkpoints, evaluates and writes the head (summary: stopped_by_time_budget);
    # run again (with the same settings) to continue.
    max_seconds: float = 0.0
    # Dtype of the training steps' matmuls: "bfloat16" runs each step under torch.autocast (the
    # weights, optimiser state and losses stay float32), which a CPU with AVX512-BF16/AMX or a GPU
    # computes about twice as fast. Held-out evaluations always run in float32, so their numbers
    # compare across runs.
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype {self.compute_dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}")
        step_weights(self.ttt_steps, self.ttt_decay, self.ttt_weights)  # raises on a bad combination

    @property
    def resolved_step_weights(self) -> tuple[float, ...]:
        return step_weights(self.ttt_steps, self.ttt_decay, self.ttt_weights)


@dataclass(frozen=True)
class Losses:
    feature: float  # step 0 (the plain EAGLE objective), comparable across ttt_steps
    ce: float
    total: float  # the trained objective: weighted sum over the unrolled steps
    top1: float  # step 0: draft argmax (over the draft vocabulary) == the target's argmax over the full vocabulary
    pairs: int
    # Per unrolled step j (training-time test; one entry when ttt_steps = 1): the same measures,
    # step j predicting f_{t+j+1} from the head's own step-(j-1) feature.
    step_feature: tuple[float, ...] = ()
    step_ce: tuple[float, ...] = ()
    step_top1: tuple[float, ...] = ()
    step_pairs: tuple[int, ...] = ()


@dataclass(frozen=True)
class BatchLosses:
    """The losses of one batch: `total` is what is minimised; the rest is for logs."""

    total: torch.Tensor  # scalar, differentiable
    feature: torch.Tensor  # step 0, scalar
    ce: torch.Tensor  # step 0, scalar
    pairs: int  # step-0 pairs
    step_feature: tuple[float, ...]  # mean per step (nan where a step has no rows)
    step_ce: tuple[float, ...]
    step_pairs: tuple[int, ...]
    step_correct: tuple[float, ...] | None  # evaluation only: correct top-1 count per step


class LossComputer:
    """The losses of a batch through the frozen lm_head (restricted to the draft vocabulary),
    unrolled over `ttt_steps` draft steps (eagle2.train.unroll)."""

    def __init__(self, target: TargetModel, draft_vocab: torch.Tensor | None, config: TrainConfig, device: torch.device) -> None:
        weight = target.lm_head.weight.detach().to(device=device, dtype=torch.float32)
        self.full_weight = weight
        self.draft_vocab = None if draft_vocab is None else draft_vocab.to(device)
        self.weight = weight if draft_vocab is None else weight[self.draft_vocab].contiguous()
        self.embed = target.embed_tokens.weight.detach().to(device=device, dtype=torch.float32)
        self.config = config
        self.step_weights = step_weights(config.ttt_steps, config.ttt_decay, config.ttt_weights)
        self.device = device
        # The target's full-vocabulary argmax of held-out batches (fixed), per (batch, step), computed once.
        self.target_argmax: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(
        self, head: DraftHead, batch: Batch, *, noise: float, generator: torch.Generator | None, evaluate: bool = False, batch_key: int | None = None
    ) -> BatchLosses:
        device = self.device
        features = batch.features.to(device=device, dtype=torch.float32)
        if noise > 0:
            features = features + (torch.rand(features.shape, generator=generator, device=device) * 2 - 1) * noise
        steps = unroll(
            head,
            self.embed,
            features,
            batch.next_tokens.to(device),
            batch.target_features.to(device=device, dtype=torch.float32),
            batch.weights.to(device),
            self.config.ttt_steps,
            detach_fed_back=self.config.ttt_detach,
        )
        total: torch.Tensor | None = None
        feature_losses, ce_losses, counts, correct = [], [], [], []
        for number, (step, weight) in enumerate(zip(steps, self.step_weights)):
            predicted = step.predicted[step.rows]  # [N, H]
            target = step.target_features[step.rows]
            count = int(step.rows.sum())
            # Under bf16 autocast the matmuls run in bf16; the losses are taken in float32.
            feature_loss = F.smooth_l1_loss(predicted.float(), target, reduction="none").mean(-1).mean()
            with torch.no_grad():
                target_probs = torch.softmax((target @ self.weight.T).float(), dim=-1)
            log_probs = torch.log_softmax((predicted @ self.weight.T).float(), dim=-1)
            ce_loss = -(target_probs * log_probs).sum(-1).mean()
            loss = self.config.feature_weight * feature_loss + self.config.ce_weight * ce_loss
            if number == 0:
                total = weight * loss if weight != 1.0 else loss
            elif count:
                total = total + weight * loss
            feature_losses.append(feature_loss)
            ce_losses.append(ce_loss)
            counts.append(count)
            if evaluate:
                correct.append(self._correct(log_probs, target, batch_key, number))
        assert total is not None
        return BatchLosses(
            total=total,
            feature=feature_losses[0],
            ce=ce_losses[0],
            pairs=counts[0],
            step_feature=tuple(float(f.detach()) for f in feature_losses),
            step_ce=tuple(float(c.detach()) for c in ce_losses),
            step_pairs=tuple(counts),
            step_correct=tuple(correct) if evaluate else None,
        )

    @torch.no_grad()
    def _correct(self, log_probs: torch.Tensor, target: torch.Tensor, batch_key: int | None, step: int) -> float:
        draft = log_probs.argmax(-1)
        if self.draft_vocab is not None:
            draft = self.draft_vocab[draft]
        reference = self.target_argmax.get((batch_key, step)) if batch_key is not None else None
        if reference is None:
            reference = (target @ self.full_weight.T).argmax(-1)
            if batch_key is not None:
                self.target_argmax[(batch_key, step)] = reference
        return float((draft == reference).float().sum())


def inherited_tokens(init_from: str) -> int | None:
    """Distilled tokens the starting head was trained on, over its whole line of fine-tunes (0 from
    scratch), so a learning curve can place a fine-tuned head by all the data behind it; None when
    the starting head has no training.json to say."""
    if not init_from:
        return 0
    path = Path(init_from) / "training.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())["data"]
    before = data.get("inherited_tokens", 0)
    return None if before is None else before + int(data["all_tokens"])


def init_head(target: TargetModel, config: TrainConfig) -> DraftHead:
    """A random head (std 0.02, as the official training starts). Starting the layer from a copy of
    the target's last layer was tried and is far worse (its residual-stream scale does not match
    the normed features), so it is not offered."""
    return DraftHead.random(target.config, seed=config.seed, num_layers=config.num_layers).float()


def load_into(head: DraftHead, start: DraftHead) -> None:
    """`head` takes `start`'s weights. A head with more layers than `start` is grown: the layers they
    share are copied, and each further layer's attention and MLP output projections are zeroed, so
    it adds nothing to the residual stream at first and the grown head drafts exactly as `start`
    until training moves it."""
    if start.num_layers > head.num_layers:
        raise ValueError(f"init_from has {start.num_layers} layers, more than the {head.num_layers} of the head to train (num_layers)")
    if start.config.hidden_size != head.config.hidden_size:
        raise ValueError(f"init_from has hidden size {start.config.hidden_size}, the head to train {head.config.hidden_size}: another target's head")
    state = head.state_dict()
    shared = start.float().state_dict()
    state.update(shared)
    head.load_state_dict(state, strict=True)
    with torch.no_grad():
        for layer in head.layers[start.num_layers :]:
            for projection in (layer.self_attn.o_proj, layer.mlp.down_proj):
                projection.weight.zero_()
                if projection.bias is not None:
                    projection.bias.zero_()


def lr_at(step: int, total: int, config: TrainConfig | Eagle3TrainConfig, elapsed_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to lr * min_lr_ratio over `total` steps, or over the time
    budget when `elapsed_fraction` (share of --max-seconds spent) is further along, so a run the
    budget stops has finished its decay rather than stopping at a high learning rate."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, max((step - config.warmup_steps) / max(1, total - config.warmup_steps), elapsed_fraction))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def evaluate(head: DraftHead, records: list[Record], losses: LossComputer, config: TrainConfig) -> Losses:
    head.eval()
    steps = config.ttt_steps
    totals = torch.zeros(2, dtype=torch.float64)  # total * pairs, step-0 pairs
    sums = torch.zeros(3, steps, dtype=torch.float64)  # feature * rows, ce * rows, correct; per step
    rows = torch.zeros(steps, dtype=torch.float64)
    for number, batch in iterate(records, batches(records, config.tokens_per_batch, seed=HELDOUT_ORDER_SEED, max_pairs=config.max_pairs), max_pairs=config.max_pairs):
        result = losses(head, batch, noise=0.0, generator=None, evaluate=True, batch_key=number)
        if result.pairs == 0:
            continue
        totals += torch.tensor([float(result.total) * result.pairs, result.pairs], dtype=torch.float64)
        for j, count in enumerate(result.step_pairs):
            if count:
                sums[:, j] += torch.tensor([result.step_feature[j] * count, result.step_ce[j] * count, result.step_correct[j]], dtype=torch.float64)
                rows[j] += count
        if totals[1] >= config.max_heldout_pairs:
            break
    head.train()
    pairs = int(totals[1])
    if pairs == 0:
        return Losses(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    means = (sums / rows.clamp(min=1)).where(rows > 0, torch.tensor(float("nan"), dtype=torch.float64))
    feature, ce, top1 = means.tolist()
    return Losses(
        feature=feature[0],
        ce=ce[0],
        total=float(totals[0]) / pairs,
        top1=top1[0],
        pairs=pairs,
        step_feature=tuple(feature),
        step_ce=tuple(ce),
        step_top1=tuple(top1),
        step_pairs=tuple(int(r) for r in rows.tolist()),
    )


def train_step(
    head: DraftHead, optimizer: torch.optim.Optimizer, losses: LossComputer, batch: Batch, config: TrainConfig, generator: torch.Generator | None
) -> BatchLosses:
    """One optimiser step on `batch` (the learning rate is the caller's); returns its losses."""
    with torch.autocast(losses.device.type, dtype=torch.bfloat16, enabled=config.compute_dtype == "bfloat16"):
        result = losses(head, batch, noise=config.noise, generator=generator)
    optimizer.zero_grad(set_to_none=True)
    if result.pairs:
        result.total.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
        optimizer.step()
    return result


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
    state_dir: Path | None = None,
) -> dict:
    """Train (or resume) and write the head to `out`; returns the run summary (also in the state
    folder, work/train/ unless `state_dir` names another: several runs over the same distilled
    data, e.g. on the first N shards for a learning curve, each keep their own)."""
    device = torch.device(device or target.device)
    folder = state_dir or work / "train"
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
        # The time budget is how long this invocation may run, not a training setting.
        {**{k: v for k, v in asdict(config).items() if k != "max_seconds"}, "records": len(records), "train_records": len(train_records)},
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
        "inherited_tokens": inherited_tokens(config.init_from),
        "draft_vocab_size": int(draft_vocab.shape[0]) if draft_vocab is not None else vocab_size,
        "draft_vocab_coverage": vocab_coverage,
    }
    logger.info("data: %s", data)

    head = init_head(target, config).to(device)
    if config.init_from:
        start = DraftHead.from_pretrained(config.init_from, embedding_shape=tuple(target.embed_tokens.weight.shape))
        load_into(head, start)
        logger.info("initialised from %s (%d layer(s) into %d)", config.init_from, start.num_layers, head.num_layers)
    head.draft_vocab = draft_vocab
    head.draft_vocab_counts = None if draft_vocab is None else counts[draft_vocab]  # lets a drafter keep the most frequent
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
    training_log = JsonlLog(log_path)
    if log_path.is_file():
        # Rows written after the checkpoint belong to steps that are about to be redone.
        write_jsonl_atomic(log_path, [row for row in training_log.read() if row["step"] <= step])

    def summary_of(epochs_done: int, steps: int, seconds: float, heldout_losses: Losses) -> dict:
        return {
            "config": asdict(config),
            "ttt_step_weights": list(config.resolved_step_weights),
            "data": data,
            "epochs_done": epochs_done,
            "steps": steps,
            "train_seconds": round(seconds, 1),
            "heldout": asdict(heldout_losses),
            "last_train": _last_train_row(log_path),
            "torch": torch.__version__,
            "device": str(device),
        }

    def log(row: dict) -> None:
        training_log.append(row)

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
    run_started = time.perf_counter()
    out_of_time = False
    window = {"loss": 0.0, "feature": 0.0, "ce": 0.0, "pairs": 0, "seconds": 0.0, "steps": 0}
    last_eval: Losses | None = None
    while epoch < config.epochs:
        groups = batches(train_records, config.tokens_per_batch, seed=config.seed * 1000 + epoch, max_pairs=config.max_pairs)
        for number, batch in iterate(train_records, groups, start=next_batch, max_pairs=config.max_pairs):
            started = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, config,
                                    (time.perf_counter() - run_started) / config.max_seconds if config.max_seconds else 0.0)
            result = train_step(head, optimizer, losses, batch, config, generator)
            total, feature, ce, count = result.total, result.feature, result.ce, result.pairs
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
            if config.max_seconds and time.perf_counter() - run_started >= config.max_seconds:
                out_of_time = True
                break
        if out_of_time:
            logger.info("time budget of %.0f s reached at step %d (epoch %d, batch %d); stopping", config.max_seconds, step, epoch, next_batch)
            save_checkpoint()
            last_eval = evaluate(head, heldout, losses, config)
            break
        epoch += 1
        next_batch = 0
        last_eval = evaluate(head, heldout, losses, config)
        log({"step": step, "epoch_end": epoch, "heldout": asdict(last_eval), "elapsed_s": round(elapsed, 1)})
        logger.info("epoch %d done (step %d, %.0f s): held-out %s", epoch, step, elapsed, last_eval)
        if config.save_epoch_heads:
            write_head(head, draft_vocab, folder / "epochs" / f"epoch-{epoch:03d}", summary_of(epoch, step, elapsed, last_eval), config)
        save_checkpoint()

    if last_eval is None:
        last_eval = evaluate(head, heldout, losses, config)
    summary = {**summary_of(epoch, step, elapsed, last_eval), "stopped_by_time_budget": out_of_time}
    write_head(head, draft_vocab, out, summary, config)
    write_json_atomic(folder / "summary.json", summary, sort_keys=True)
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


def write_head(head: DraftHead, draft_vocab: torch.Tensor | None, out: Path, summary: dict, config: TrainConfig) -> None:
    """The head in the official layout (weights in config.save_dtype) plus training.json (`summary`)."""
    saved = copy.deepcopy(head).to(device="cpu", dtype=parse_dtype(config.save_dtype))
    saved.draft_vocab = draft_vocab
    heldout = summary["heldout"]
    training = {
        "steps": summary["steps"],
        "epochs_done": summary["epochs_done"],
        "heldout_top1": heldout["top1"],
        "heldout_step_top1": list(heldout["step_top1"]),
        "ttt_steps": config.ttt_steps,
        "ttt_step_weights": list(config.resolved_step_weights),
        "ttt_detach": config.ttt_detach,
    }
    saved.save_pretrained(out, extra_config={"eagle2_training": training})
    write_json_atomic(out / "training.json", summary, sort_keys=True)


def _last_train_row(log_path: Path) -> dict | None:
    if not log_path.is_file():
        return None
    rows = [r for r in read_jsonl(log_path) if "loss" in r]
    return rows[-1] if rows else None
