"""Training an EAGLE-3 head with the training-time test, on the same distilled records as EAGLE-2.

Signals from the target. The distilled records hold the token ids (and EAGLE-2's final-norm
features); an EAGLE-3 head needs the inputs of decoder layers 2, N // 2 and N - 3 instead, and
the target's next-token distributions. They are captured here, one target forward per record (in
no-grad mode), when the record is trained on — not stored at distillation, so the EAGLE-2 and
EAGLE-3 heads train on the very same token records.

Alignment. For a record s_0..s_{n-1} with features f_t (t = 0..n-2): row t of step 0 feeds fc(f_t)
and the embedding of s_{t+1} at position t and predicts the target's distribution after s_{t+1}.

Training-time test (k unrolled steps). Step j feeds, at row t, the head's own step-(j-1) output
of row t (no fc) with the embedding of s_{t+1+j} at position t + j, and predicts the target's
distribution after s_{t+1+j} — what drafting j tokens ahead sees. Its attention sees the step-0
entries of rows <= t (the accepted context) and its own chain: rows t of steps 1..j (a diagonal).
Loss of a step: soft cross-entropy between the target's distribution restricted to the draft
vocabulary (softmax over those logits) and the head's log-softmax, at rows whose input token is
an answer token and whose target top-1 token lies inside the draft vocabulary (others masked);
steps weighted decay**j (official 0.8, 7 steps).

Draft vocabulary: the `draft_vocab_size` most frequent answer tokens of the training records.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from eagle2.eagle3_head import Eagle3Head
from eagle2.target import TargetModel
from eagle2.train.dataset import Record, answer_token_counts, choose_draft_vocab, coverage, split
from eagle2.train.trainer import lr_at

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Eagle3TrainConfig:
    epochs: int = 4
    lr: float = 1e-3  # peak AdamW learning rate (linear warm-up, then cosine to lr * min_lr_ratio)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    grad_clip: float = 0.5  # max global gradient norm
    ttt_steps: int = 7  # unrolled training-time-test steps (official 7)
    step_decay: float = 0.8  # weight of step j is step_decay ** j (official 0.8)
    draft_vocab_size: int = 0  # 0 = the whole vocabulary; else the N most frequent answer tokens
    max_pairs: int = 512  # longer records are cut
    heldout_fraction: float = 0.05
    seed: int = 0
    # Wall-clock budget of the training loop in seconds (0 = none). With a budget the learning-rate
    # schedule runs on whichever is further along, steps or time, so the cosine ends when the budget
    # does; training stops there (summary: stopped_by_time_budget, epochs_done).
    max_seconds: float = 0.0
    # The head's own lm_head (draft-vocabulary rows) and final norm start as the target's (`target`),
    # or at random (`random`): the head's output then only has to approach the target's last hidden
    # state to score like the target, as an EAGLE-1/2 head does through the target's frozen lm_head.
    # Both stay trainable; the checkpoint layout is the official one either way.
    lm_head_init: str = "target"

    def __post_init__(self) -> None:
        if self.lm_head_init not in LM_HEAD_INITS:
            raise ValueError(f"lm_head_init must be one of {', '.join(LM_HEAD_INITS)}, got {self.lm_head_init!r}")


LM_HEAD_INITS = ("target", "random")


@dataclass(frozen=True)
class TargetSignals:
    """What the target says about one record, for training an EAGLE-3 head."""

    features: torch.Tensor  # [n - 1, 3H] inputs of the three layers at s_0 .. s_{n-2}
    draft_logits: torch.Tensor  # [n, Vd] float32 target logits restricted to the draft vocabulary
    in_draft_vocab: torch.Tensor  # [n] bool: the target's top-1 token at each position is in it


@dataclass(frozen=True)
class StepLosses:
    losses: tuple[torch.Tensor, ...]  # per TTT step, scalar (0 when a step has no row)
    correct: tuple[int, ...]  # rows whose draft top-1 equals the target's top-1, per step
    rows: tuple[int, ...]  # rows trained on, per step


class _ConcatKV:
    """Keys/values of every TTT step, concatenated along the sequence axis (autograd-friendly)."""

    def __init__(self) -> None:
        self.key: torch.Tensor | None = None
        self.value: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.key = key if self.key is None else torch.cat((self.key, key), dim=2)
        self.value = value if self.value is None else torch.cat((self.value, value), dim=2)
        return self.key, self.value


def target_signals(target: TargetModel, head: Eagle3Head, tokens: torch.Tensor) -> TargetSignals:
    """One target forward over a record: the three layer inputs and the draft-vocabulary logits."""
    spec = head.feature_spec(target.num_layers)
    out = target.forward(tokens.to(target.device), target.new_cache(4), features=spec)
    draft_ids = head.draft_token_ids().to(out.logits.device)
    in_vocab = head.t2d.to(out.logits.device)[out.logits.argmax(-1)]
    # clone(): tensors made in inference mode cannot take part in autograd.
    return TargetSignals(
        features=out.features[:-1].clone(),
        draft_logits=out.logits[:, draft_ids].float().clone(),
        in_draft_vocab=in_vocab.clone(),
    )


def ttt_forward(head: Eagle3Head, target: TargetModel, tokens: torch.Tensor, features: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """The head's outputs [n - 1, H] at every training-time-test step, for a record's tokens [n]
    and target features [n - 1, 3H] (rows whose input token would lie past the record see a copy
    of the last token; callers mask them)."""
    tokens = tokens.to(target.device)
    n = tokens.shape[0]
    rows = n - 1
    device, dtype = features.device, features.dtype
    causal = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
    diagonal = torch.eye(rows, dtype=torch.bool, device=device)
    index = torch.arange(rows, device=device)
    cache = [_ConcatKV()]
    hidden = features[None]
    outputs = []
    for step in range(steps):
        with torch.no_grad():
            embeddings = target.embed_tokens(tokens[(index + 1 + step).clamp(max=n - 1)]).to(dtype)
        # Step 0 entries of rows <= t (the context), then row t of steps 1..step (its own chain).
        visible = torch.cat([causal] + [diagonal] * step, dim=1)
        mask = torch.zeros(1, 1, rows, rows * (step + 1), dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
        hidden = head(embeddings[None], hidden, (index + step)[None], mask=mask, cache=cache, from_target=step == 0)
        outputs.append(hidden[0])
    return outputs


def ttt_losses(head: Eagle3Head, target: TargetModel, record: Record, signals: TargetSignals, steps: int) -> StepLosses:
    """Per-step soft cross-entropy of the training-time test over one record."""
    n = record.tokens.shape[0]
    device = signals.features.device
    target_probs = torch.softmax(signals.draft_logits, dim=-1)  # [n, Vd]
    answer = record.loss_mask.to(device)
    index = torch.arange(n - 1, device=device)
    losses, correct, counted = [], [], []
    for step, out in enumerate(ttt_forward(head, target, record.tokens, signals.features, steps)):
        source = index + 1 + step  # each row's input token, and the position whose distribution it predicts
        clamped = source.clamp(max=n - 1)
        weight = (source <= n - 1) & answer[clamped] & signals.in_draft_vocab[clamped]
        log_q = torch.log_softmax(head.logits(out).float(), dim=-1)
        p = target_probs[clamped]
        count = int(weight.sum())
        losses.append((-(p * log_q).sum(-1) * weight).sum() / max(count, 1))
        with torch.no_grad():
            correct.append(int(((log_q.argmax(-1) == p.argmax(-1)) & weight).sum()))
        counted.append(count)
    return StepLosses(tuple(losses), tuple(correct), tuple(counted))


def init_eagle3_head(target: TargetModel, records: Sequence[Record], config: Eagle3TrainConfig, always: Sequence[int] = ()) -> Eagle3Head:
    """A head whose draft vocabulary is the most frequent answer tokens of `records`: random, with
    the lm_head rows and final norm copied from the target when `config.lm_head_init` is `target`."""
    counts = answer_token_counts(records, target.vocab_size)
    size = config.draft_vocab_size or target.vocab_size
    vocab = choose_draft_vocab(counts, size, always)
    logger.info("draft vocabulary: %d tokens, %.1f%% of answer tokens", vocab.numel(), 100 * coverage(counts, vocab))
    head = Eagle3Head.random(target.config, seed=config.seed, draft_vocab=vocab)
    if config.lm_head_init == "target":
        final_norm = getattr(target.decoder, "norm", None)
        with torch.no_grad():
            head.lm_head.weight.copy_(target.lm_head.weight.detach()[vocab.to(target.device)].to("cpu", torch.float32))
            if final_norm is not None and tuple(final_norm.weight.shape) == tuple(head.norm.weight.shape):
                head.norm.weight.copy_(final_norm.weight.detach().to("cpu", torch.float32))
            else:
                logger.warning("the target has no final norm at decoder.norm of the head's width; the head's norm starts at 1")
    return head


def _cut(record: Record, max_pairs: int) -> Record:
    keep = max_pairs + 2
    if record.tokens.shape[0] <= keep:
        return record
    return Record(record.id, record.mode, record.tokens[:keep], record.loss_mask[:keep], record.features[: keep - 1])


def evaluate_eagle3(head: Eagle3Head, target: TargetModel, records: Sequence[Record], config: Eagle3TrainConfig) -> dict:
    """Held-out per-step top-1 accuracy (draft top-1 == target top-1 at the rows trained on)."""
    head.eval()
    correct = [0] * config.ttt_steps
    rows = [0] * config.ttt_steps
    with torch.no_grad():
        for record in records:
            record = _cut(record, config.max_pairs)
            if record.tokens.shape[0] < 3:
                continue
            result = ttt_losses(head, target, record, target_signals(target, head, record.tokens), config.ttt_steps)
            correct = [a + b for a, b in zip(correct, result.correct)]
            rows = [a + b for a, b in zip(rows, result.rows)]
    head.train()
    return {"accuracy_by_step": [c / r if r else None for c, r in zip(correct, rows)], "rows_by_step": rows}


def train_eagle3(
    target: TargetModel,
    records: Sequence[Record],
    config: Eagle3TrainConfig,
    *,
    stop_token_ids: Sequence[int] = (),
    progress: Callable[[int, int, dict], None] | None = None,
) -> tuple[Eagle3Head, dict]:
    """Train an EAGLE-3 head on distilled records (one record per optimiser step); returns the head
    (in the target's dtype, eval mode) and a summary with the held-out per-step accuracy."""
    train_records, heldout = split(records, config.heldout_fraction, config.seed)
    if not train_records:
        raise ValueError(f"no training records among {len(records)} (held-out fraction {config.heldout_fraction})")
    head = init_eagle3_head(target, train_records, config, always=stop_token_ids).to(device=target.device, dtype=target.dtype)
    head.train()
    for parameter in target.model.parameters():
        parameter.requires_grad_(False)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    order = random.Random(config.seed)
    total = config.epochs * len(train_records)
    weights = [config.step_decay**j for j in range(config.ttt_steps)]
    step = 0
    started = time.perf_counter()
    history = []
    out_of_time = False
    epochs_done = 0.0
    for epoch in range(config.epochs):
        indices = list(range(len(train_records)))
        order.shuffle(indices)
        for done, index in enumerate(indices):
            elapsed = time.perf_counter() - started
            if config.max_seconds and elapsed >= config.max_seconds:
                out_of_time = True
                epochs_done = epoch + done / len(indices)
                break
            record = _cut(train_records[index], config.max_pairs)
            if record.tokens.shape[0] < 3:
                step += 1
                continue
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step, total, config, elapsed / config.max_seconds if config.max_seconds else 0.0)
            result = ttt_losses(head, target, record, target_signals(target, head, record.tokens), config.ttt_steps)
            loss = sum(w * l for w, l in zip(weights, result.losses))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), config.grad_clip)
            optimiser.step()
            step += 1
            row = {"step": step, "epoch": epoch, "loss": float(loss.detach()), "step0_loss": float(result.losses[0].detach())}
            history.append(row)
            if progress is not None:
                progress(step, total, row)
        if out_of_time:
            logger.info("time budget of %.0f s reached at step %d (%.2f epochs); stopping", config.max_seconds, step, epochs_done)
            break
        epochs_done = epoch + 1.0
    head.eval()
    summary = {
        "config": asdict(config),
        "train_records": len(train_records),
        "heldout_records": len(heldout),
        "steps": step,
        "epochs_done": epochs_done,
        "stopped_by_time_budget": out_of_time,
        "seconds": time.perf_counter() - started,
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "draft_vocab_size": head.draft_vocab_size,
        "heldout": evaluate_eagle3(head, target, heldout, config) if heldout else None,
    }
    head.eval()
    return head, summary
