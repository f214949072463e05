"""Training-time test (HASS / EAGLE-3 style): unroll k draft steps at every position of a batch, so
the head learns from its own predicted features as it meets them at draft time.

Indices (see eagle2.train.dataset): row t of a batch is pair t, fed (f_t, x_{t+1}); f are the
target's features, x the tokens, h^j_t the head's step-j output at row t.

* Step 0 is the ordinary EAGLE objective: row t feeds (f_t, x_{t+1}) at position t, attends
  causally to rows <= t, and h^0_t should be f_{t+1}.
* Step j >= 1 replays draft depth j: row t feeds (h^{j-1}_t, x_{t+j+1}) at position t + j (the
  position the drafter gives a depth-j node whose root is row t: eagle2.draft, "a node of depth d
  at C + d", with C - 1 = t), and h^j_t should be f_{t+j+1}. Tokens are teacher-forced (the data's
  x_{t+j+1}); on an accepted path they are the drafted ones, which is the path that matters.

Mask. Keys are laid out step by step: [step-0 keys of rows 0..q-1 | step-1 keys | ... | step-j
keys], q each. The query (step j, row t) may attend to
  - the step-0 keys of rows t' <= t: the real context f_0..f_t, i.e. the head's cache of the
    accepted text at draft time, whose last entry (row t) is the root;
  - the step-i keys of the same row t, for i = 1..j: its own drafted ancestors (positions
    t+1 .. t+j-1) and itself (position t+j);
and to nothing else: no other row's drafted entries, no real feature beyond f_t. Put in terms of
the predicted position p = t + j + 1: the step-j prediction of f_p sees target features only at
positions <= p - j - 1 (that is, < p - j), and its own predictions for positions p - j .. p - 1.
This is block 0 causal and blocks 1..j diagonal, as in the official EAGLE-3 training code; it
is exactly the ancestor mask eagle2.draft builds for a chain of depth j.

Loss rows. Step j trains row t when x_{t+1} is an answer token (the root is an accepted answer
token, as at draft time) and x_{t+j+1} is one too and lies inside the record; for j = 0 that is the
ordinary pair mask. Each step's feature and cross-entropy losses are means over its own rows; the
total is sum_j w_j * (feature_weight * feature_j + ce_weight * ce_j), with w_0 = 1 by default,
so k = 1 is the plain EAGLE objective exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from eagle2.head import DraftHead


def step_weights(steps: int, decay: float, weights: Sequence[float] = ()) -> tuple[float, ...]:
    """The loss weight of each unrolled step: `weights` when given (one per step), else decay**j."""
    if steps < 1:
        raise ValueError(f"ttt_steps must be >= 1, got {steps}")
    if weights:
        if len(weights) != steps:
            raise ValueError(f"ttt_weights has {len(weights)} value(s) {tuple(weights)} but ttt_steps is {steps}; give one weight per step")
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"ttt_weights must be >= 0 with at least one > 0, got {tuple(weights)}")
        return tuple(float(w) for w in weights)
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"ttt_decay must be in (0, 1], got {decay}")
    return tuple(float(decay**j) for j in range(steps))


class StepKeys:
    """A head layer's keys and values over the unrolled steps: each update appends one step's q
    entries (along the key axis) and returns all of them. Gradients flow through it (training only)."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # key, value: [b, kv_heads, q, head_dim]
        self.keys = key if self.keys is None else torch.cat((self.keys, key), dim=2)
        self.values = value if self.values is None else torch.cat((self.values, value), dim=2)
        return self.keys, self.values


def unroll_mask(length: int, step: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, q, (step + 1) q] additive mask of step `step` >= 1: block 0 causal, blocks 1..step diagonal."""
    visible = torch.zeros(length, (step + 1) * length, dtype=torch.bool, device=device)
    visible[:, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=device)
    for block in range(1, step + 1):
        visible[:, block * length : (block + 1) * length] = eye
    mask = torch.zeros(length, (step + 1) * length, dtype=dtype, device=device)
    return mask.masked_fill(~visible, torch.finfo(dtype).min)[None, None]


def shift_left(values: torch.Tensor, by: int) -> torch.Tensor:
    """values[:, t + by] at column t (zeros / False past the end), along dim 1."""
    if by == 0:
        return values
    pad = torch.zeros_like(values[:, :by])
    return torch.cat((values[:, by:], pad), dim=1)


@dataclass(frozen=True)
class UnrolledStep:
    predicted: torch.Tensor  # [b, q, H] h^j: row t predicts f_{t+j+1}
    rows: torch.Tensor  # [b, q] bool: rows trained at this step
    target_features: torch.Tensor  # [b, q, H] f_{t+j+1}
    next_tokens: torch.Tensor  # [b, q] long: x_{t+j+1}, the token fed at this step


def unroll(
    head: DraftHead,
    embed: torch.Tensor,  # [V, H] the target's input embedding
    features: torch.Tensor,  # [b, q, H] f_t (noise already added)
    next_tokens: torch.Tensor,  # [b, q] x_{t+1}
    target_features: torch.Tensor,  # [b, q, H] f_{t+1}
    weights: torch.Tensor,  # [b, q] bool: x_{t+1} is an answer token
    steps: int,
    *,
    detach_fed_back: bool = False,
) -> list[UnrolledStep]:
    """The head's predictions at steps 0..steps-1 (module docstring: positions, mask, rows)."""
    batch, length, _ = features.shape
    device = features.device
    positions = torch.arange(length, device=device).expand(batch, -1)
    caches = [StepKeys() for _ in range(head.num_layers)] if steps > 1 else None
    fed = features
    out: list[UnrolledStep] = []
    for step in range(steps):
        tokens = shift_left(next_tokens, step)
        # Step 0 runs with mask None (the head's plain causal attention), bit for bit the
        # un-unrolled objective; later steps attend through the block mask.
        mask = None if step == 0 else unroll_mask(length, step, features.dtype, device)
        predicted = head(F.embedding(tokens, embed), fed, positions + step, mask=mask, cache=caches)
        rows = weights & shift_left(weights, step)
        out.append(UnrolledStep(predicted, rows, shift_left(target_features, step), tokens))
        fed = predicted.detach() if detach_fed_back else predicted
    return out
