"""Lossless audit for half precision: is a greedy mismatch a near-tie, or a bug?

In float32/float64 greedy speculative output must equal vanilla's token for token. In bfloat16 or
float16 a tree forward sums in another order than a single-token forward, so the two can pick
different tokens where the target's two best logits are nearly equal. For each mismatch this module
finds the first differing position, recomputes the target's logits there on the common prefix in
float32 with a plain sequential forward (no cache, no tree), and compares the two chosen tokens'
float32 logits:

    near_tie     |logit32(a) - logit32(b)| <= margin(dtype) * max|logit32|
    unexplained  anything else (a gap that rounding in `dtype` cannot produce: a bug)

margin(dtype) = NEAR_TIE_ULPS * eps(dtype): a relative bound, in units of the dtype's machine
epsilon, on how far two orders of summation can move a logit relative to the largest logit. With
NEAR_TIE_ULPS = 4 it is 3.1% of max|logit| in bfloat16 (eps 2^-7) and 0.39% in float16 (eps 2^-10).
The measured gap is reported with every verdict, so a reader can apply a stricter bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eagle2.target import TargetModel

NEAR_TIE_ULPS = 4.0
HALF_PRECISION = (torch.bfloat16, torch.float16)

IDENTICAL = "identical"
NEAR_TIE = "near_tie"
UNEXPLAINED = "unexplained"


def near_tie_margin(dtype: torch.dtype) -> float:
    """The relative margin (fraction of max |logit|) under which a divergence in `dtype` is a near-tie."""
    if dtype not in HALF_PRECISION:
        # Exact losslessness is required in float32/float64: no divergence is explained by rounding.
        return 0.0
    return NEAR_TIE_ULPS * torch.finfo(dtype).eps


@dataclass(frozen=True)
class Divergence:
    """Where and why a candidate output left the reference (vanilla) output."""

    kind: str  # IDENTICAL | NEAR_TIE | UNEXPLAINED
    position: int  # index into the new tokens of the first difference; -1 when identical
    reference_token: int  # vanilla's token there (-1 when identical or past its end)
    candidate_token: int  # the speculative method's token there (-1 likewise)
    logit_gap: float  # |float32 logit(reference) - float32 logit(candidate)| (nan when not computed)
    logit_scale: float  # max |float32 logit| at that position (nan when not computed)
    margin: float  # allowed gap: near_tie_margin(dtype) * logit_scale
    float32_choice: int  # the float32 argmax at that position (-1 when not computed)

    @property
    def explained(self) -> bool:
        return self.kind in (IDENTICAL, NEAR_TIE)


def first_difference(reference: Sequence[int], candidate: Sequence[int]) -> int:
    """Index of the first differing token; len of the shorter when one is a prefix; -1 when equal."""
    for index, (a, b) in enumerate(zip(reference, candidate)):
        if a != b:
            return index
    return -1 if len(reference) == len(candidate) else min(len(reference), len(candidate))


@torch.inference_mode()
def float32_logits(reference_model: TargetModel, token_ids: Sequence[int]) -> torch.Tensor:
    """The target's float32 logits [V] for the token after `token_ids`, by one plain causal forward."""
    if reference_model.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the audit's reference model must be float32 or float64, got {reference_model.dtype}")
    ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=reference_model.device)[None]
    logits = reference_model.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    return logits.float()


def classify(
    reference_model: TargetModel,
    prompt_ids: Sequence[int],
    reference_output: Sequence[int],
    candidate_output: Sequence[int],
    dtype: torch.dtype,
) -> Divergence:
    """Classify how `candidate_output` differs from `reference_output`, both generated in `dtype`
    after `prompt_ids`; `reference_model` is the same target in float32."""
    position = first_difference(reference_output, candidate_output)
    if position < 0:
        return Divergence(IDENTICAL, -1, -1, -1, 0.0, 0.0, 0.0, -1)
    if position >= min(len(reference_output), len(candidate_output)):
        # One output stopped where the other went on without a token choice between them to compare:
        # that is not a rounding effect.
        ref = reference_output[position] if position < len(reference_output) else -1
        cand = candidate_output[position] if position < len(candidate_output) else -1
        return Divergence(UNEXPLAINED, position, ref, cand, float("nan"), float("nan"), 0.0, -1)
    ref, cand = int(reference_output[position]), int(candidate_output[position])
    logits = float32_logits(reference_model, [*prompt_ids, *reference_output[:position]])
    gap = abs(float(logits[ref]) - float(logits[cand]))
    scale = float(logits.abs().max())
    margin = near_tie_margin(dtype) * scale
    kind = NEAR_TIE if gap <= margin and dtype in HALF_PRECISION else UNEXPLAINED
    return Divergence(kind, position, ref, cand, gap, scale, margin, int(logits.argmax()))
