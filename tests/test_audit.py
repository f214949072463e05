"""The half-precision lossless audit: crafted divergences that are not ties fail, real bf16 near-ties pass."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle2 import DynamicTreeProposer, TargetModel, generate
from eagle2.audit import IDENTICAL, NEAR_TIE, UNEXPLAINED, classify, first_difference, float32_logits, near_tie_margin
from harness.audit import audit_greedy_mismatches
from conftest import random_prompt, tiny_head, tiny_llama


def as_dtype(target: TargetModel, dtype: torch.dtype) -> TargetModel:
    return TargetModel(copy.deepcopy(target.model).to(dtype))


@pytest.fixture(scope="module")
def reference() -> TargetModel:
    return tiny_llama(vocab_size=97, seed=5, dtype=torch.float32)


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) == -1
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_margin_is_zero_in_full_precision():
    assert near_tie_margin(torch.float32) == 0.0 and near_tie_margin(torch.float64) == 0.0
    assert near_tie_margin(torch.bfloat16) == pytest.approx(4 * 2**-7)
    assert near_tie_margin(torch.float16) == pytest.approx(4 * 2**-10)


def test_identical_outputs_are_identical(reference):
    verdict = classify(reference, [1, 2, 3], [4, 5, 6], [4, 5, 6], torch.bfloat16)
    assert verdict.kind == IDENTICAL and verdict.explained


def test_crafted_divergence_that_is_not_a_tie_is_unexplained(reference):
    prompt = [3, 1, 4, 1, 5]
    logits = float32_logits(reference, prompt)
    best, worst = int(logits.argmax()), int(logits.argmin())
    verdict = classify(reference, prompt, [best], [worst], torch.bfloat16)
    assert verdict.kind == UNEXPLAINED and not verdict.explained
    assert verdict.position == 0 and verdict.reference_token == best and verdict.candidate_token == worst
    assert verdict.logit_gap > verdict.margin > 0


def test_close_tokens_are_a_near_tie_in_half_precision_only(reference):
    prompt = [2, 7, 1, 8]
    logits = float32_logits(reference, [*prompt, 9])
    order = torch.argsort(logits, descending=True)
    # The pair of neighbouring-ranked tokens whose logits are closest: well inside 4 bf16 epsilons.
    gaps = logits[order[:-1]] - logits[order[1:]]
    i = int(gaps.argmin())
    a, b = int(order[i]), int(order[i + 1])
    assert float(gaps[i]) < near_tie_margin(torch.bfloat16) * float(logits.abs().max())
    assert classify(reference, prompt, [9, a], [9, b], torch.bfloat16).kind == NEAR_TIE
    # In float32 the same divergence is a bug: exact losslessness is required there.
    assert classify(reference, prompt, [9, a], [9, b], torch.float32).kind == UNEXPLAINED


def test_one_output_stopping_early_is_unexplained(reference):
    assert classify(reference, [1, 2], [3, 4, 5], [3, 4], torch.bfloat16).kind == UNEXPLAINED


def test_real_bfloat16_divergences_are_near_ties():
    """Vanilla and EAGLE-2 both in bfloat16 on a tiny random Llama: wherever they part, it is a near-tie."""
    torch.manual_seed(11)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    full = TargetModel(LlamaForCausalLM(config).float())
    half = as_dtype(full, torch.bfloat16)
    head = tiny_head(half)
    records, prompts = [], {}
    for seed in range(12):
        prompt = random_prompt(full.vocab_size, 6 + seed, 700 + seed)
        prompts[str(seed)] = prompt
        for method, proposer in (("vanilla", None), ("eagle2", DynamicTreeProposer(head, half, depth=4, top_k=4, total_tokens=16))):
            out = generate(half, prompt, max_new_tokens=48, proposer=proposer)
            records.append({"model": "tiny", "task": "t", "seed": 0, "question_id": str(seed), "repeat": 0, "turn": 1,
                            "temperature": 0.0, "method": method, "cell_id": method, "output_ids": list(out.output_ids)})
    rows = audit_greedy_mismatches(records, dtype=torch.bfloat16, prompt_for=lambda r: prompts[r["question_id"]], reference_model=lambda: full)
    assert rows, "no bf16 divergence in 12 prompts: the test no longer exercises a real near-tie"
    assert all(row["kind"] == NEAR_TIE for row in rows), rows
    assert all(row["logit_gap"] <= row["margin"] for row in rows)


def test_audit_catches_a_broken_speculative_output(reference):
    """A 'speculative' output with a token the float32 model ranks far below is reported unexplained."""
    prompt = [5, 6, 7]
    logits = float32_logits(reference, prompt)
    good, bad = int(logits.argmax()), int(logits.argmin())
    records = [
        {"model": "m", "task": "t", "seed": 0, "question_id": "q", "repeat": 0, "turn": turn, "temperature": 0.0,
         "method": method, "cell_id": method, "output_ids": ids}
        for method, ids in (("vanilla", [good, 1]), ("eagle2", [bad, 1]))
        for turn in (1, 2)
    ]
    loads = []
    rows = audit_greedy_mismatches(records, dtype=torch.bfloat16, prompt_for=lambda r: prompt,
                                   reference_model=lambda: loads.append(1) or reference)
    assert [(r["turn"], r["kind"]) for r in rows] == [(1, UNEXPLAINED), (2, UNEXPLAINED)]
    assert rows[1]["inherited_from_turn"] == 1
    assert len(loads) == 1
    assert audit_greedy_mismatches(records, dtype=torch.float32, prompt_for=lambda r: prompt, reference_model=lambda: reference) == []
