"""The half-precision lossless audit of a run: every greedy mismatch classified as near-tie or unexplained.

The runner calls :func:`audit_greedy_mismatches` after a model's cells, outside every timed region,
when the model runs in bfloat16 or float16. For each greedy (T = 0) record of a speculative method
whose output differs from vanilla's for the same (task, seed, question, turn), it asks
:func:`eagle2.audit.classify` for a verdict against the same target in float32, and appends one row
to ``audit.jsonl`` in the run folder. ``harness.aggregate`` reads those rows: a near-tie counts as
explained, an unexplained or unaudited difference as a lossless failure.

A later turn whose prompt differs from vanilla's (an earlier turn already diverged) cannot be
compared token by token; it inherits the verdict of the earliest diverging turn.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from eagle2.audit import HALF_PRECISION, IDENTICAL, UNEXPLAINED, Divergence, classify
from eagle2.target import TargetModel

logger = logging.getLogger(__name__)

AUDIT_SCHEMA = 1
VANILLA = "vanilla"


def _sample_key(record: Mapping[str, Any]) -> tuple:
    return (record["model"], record["task"], record["seed"], record["question_id"], record["repeat"])


def audit_greedy_mismatches(
    records: Sequence[Mapping[str, Any]],
    *,
    dtype: torch.dtype,
    prompt_for: Callable[[Mapping[str, Any]], list[int]],
    reference_model: Callable[[], TargetModel],
    already_audited: set[tuple] = frozenset(),
) -> list[dict[str, Any]]:
    """Audit rows for the mismatching greedy records among `records` (one model, run in `dtype`).

    prompt_for(record) rebuilds the token ids the record was generated from; reference_model()
    returns the target in float32 (called at most once, only when a mismatch needs it).
    `already_audited` holds (cell_id, repeat, question_id, turn) keys to skip (a resumed run).
    """
    if dtype not in HALF_PRECISION:
        return []
    greedy = [r for r in records if float(r["temperature"]) == 0.0]
    vanilla: dict[tuple, dict[int, Mapping[str, Any]]] = {}
    for record in greedy:
        if record["method"] == VANILLA:
            vanilla.setdefault(_sample_key(record), {})[int(record["turn"])] = record
    reference: TargetModel | None = None
    rows: list[dict[str, Any]] = []
    candidates = sorted(
        (r for r in greedy if r["method"] != VANILLA),
        key=lambda r: (r["cell_id"], r["repeat"], str(r["question_id"]), int(r["turn"])),
    )
    verdicts: dict[tuple, Divergence] = {}
    for record in candidates:
        turns = vanilla.get(_sample_key(record))
        turn = int(record["turn"])
        if not turns or turn not in turns:
            continue
        key = (record["cell_id"], record["repeat"], record["question_id"], turn)
        ours, theirs = list(record["output_ids"]), list(turns[turn]["output_ids"])
        earlier = [verdicts.get((record["cell_id"], record["repeat"], record["question_id"], t)) for t in range(1, turn)]
        inherited = next((v for v in earlier if v is not None and v.kind != IDENTICAL), None)
        if inherited is not None:
            # The prompt already holds a different earlier answer: this turn inherits that verdict.
            verdicts[key] = inherited
            if ours != theirs and key not in already_audited:
                rows.append(_row(record, inherited, inherited_from_turn=next(t for t, v in enumerate(earlier, 1) if v is inherited)))
            continue
        if ours == theirs:
            verdicts[key] = Divergence(IDENTICAL, -1, -1, -1, 0.0, 0.0, 0.0, -1)
            continue
        if key in already_audited:
            continue
        if reference is None:
            reference = reference_model()
        try:
            verdict = classify(reference, prompt_for(record), theirs, ours, dtype)
        except Exception as error:  # a prompt that cannot be rebuilt: say so rather than guess
            logger.warning("audit of %s question %s turn %d failed: %s", record["cell_id"], record["question_id"], turn, error)
            verdict = Divergence(UNEXPLAINED, -1, -1, -1, float("nan"), float("nan"), 0.0, -1)
        verdicts[key] = verdict
        rows.append(_row(record, verdict, inherited_from_turn=None))
    return rows


def _row(record: Mapping[str, Any], verdict: Divergence, *, inherited_from_turn: int | None) -> dict[str, Any]:
    return {
        "schema": AUDIT_SCHEMA,
        "cell_id": record["cell_id"],
        "repeat": record["repeat"],
        "question_id": record["question_id"],
        "turn": record["turn"],
        "kind": verdict.kind,
        "position": verdict.position,
        "reference_token": verdict.reference_token,
        "candidate_token": verdict.candidate_token,
        "float32_choice": verdict.float32_choice,
        "logit_gap": verdict.logit_gap,
        "logit_scale": verdict.logit_scale,
        "margin": verdict.margin,
        "inherited_from_turn": inherited_from_turn,
    }
