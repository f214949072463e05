"""EAGLE-3 training at tiny scale: the training-time test equals drafting at inference, masking,
draft vocabulary from the data, loss goes down, the trained head is lossless and round-trips."""

from dataclasses import replace

import pytest
import torch

from eagle2 import DynamicTreeProposer, Eagle3Head, generate
from eagle2.draft import make_drafter
from eagle2.train.dataset import Record
from eagle2.train.eagle3 import Eagle3TrainConfig, init_eagle3_head, target_signals, train_eagle3, ttt_forward, ttt_losses
from eagle2.train.trainer import lr_at
from conftest import random_prompt, tiny_llama

VOCAB = 23


@pytest.fixture(scope="module")
def target():
    """Peaked next-token distributions (a random init is near uniform: nothing to learn)."""
    model = tiny_llama(vocab_size=VOCAB, layers=8, seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model


def make_records(target, count: int, answer_tokens: int = 16) -> list[Record]:
    """Prompts + the target's greedy answers (loss mask on the answers), like distilled records."""
    records = []
    for index in range(count):
        prompt = random_prompt(VOCAB, 5 + index % 4, 1000 + index)
        answer = generate(target, prompt, max_new_tokens=answer_tokens).output_ids
        tokens = torch.tensor(prompt + list(answer))
        mask = torch.zeros(tokens.shape[0], dtype=torch.bool)
        mask[len(prompt):] = True
        records.append(Record(f"r{index}", "greedy", tokens, mask, torch.zeros(tokens.shape[0] - 1, target.hidden_size)))
    return records


def test_training_time_test_equals_drafting_a_chain_at_inference(target):
    """Step j at row t of the unrolled training forward is exactly what the drafter computes when
    it drafts the j-th token of a chain after the context s_0..s_{t+1} (same mask, same positions)."""
    head = Eagle3Head.random(target.config, seed=3).to(target.dtype)
    tokens = torch.tensor(random_prompt(VOCAB, 12, 5))
    features = target_signals(target, head, tokens).features
    steps = 3
    unrolled = ttt_forward(head, target, tokens, features, steps)
    for t in (0, 4, 7):
        drafter = make_drafter(head, target)
        drafter.begin(tokens[: t + 1], features[: t + 1], int(tokens[t + 1]), capacity=64)
        level = drafter.catch_up(1)
        torch.testing.assert_close(level.features[0], unrolled[0][t], rtol=0, atol=1e-10)
        for step in range(1, steps):
            visible = torch.ones(1, step, dtype=torch.bool)
            level = drafter.expand(tokens[t + 1 + step : t + 2 + step], level.features, step, visible, 1)
            torch.testing.assert_close(level.features[0], unrolled[step][t], rtol=0, atol=1e-10)


def test_rows_outside_the_draft_vocabulary_or_the_answer_are_masked(target):
    records = make_records(target, 1)
    record = records[0]
    full = Eagle3Head.random(target.config, seed=1).to(target.dtype)
    signals = target_signals(target, full, record.tokens)
    result = ttt_losses(full, target, record, signals, 2)
    n = record.tokens.shape[0]
    # Step j trains rows whose input token s_{t+1+j} exists and is an answer token.
    assert result.rows == tuple(int(record.loss_mask[1 + j : n].sum()) for j in range(2))
    # Leave the target's top-1 tokens out of the draft vocabulary: those rows are masked.
    top1 = signals.draft_logits.argmax(-1)
    kept = torch.tensor([i for i in range(VOCAB) if i not in set(top1[record.loss_mask].tolist())])
    reduced = Eagle3Head.random(target.config, seed=1, draft_vocab=kept).to(target.dtype)
    assert ttt_losses(reduced, target, record, target_signals(target, reduced, record.tokens), 2).rows == (0, 0)


def test_tiny_training_learns_ships_a_draft_vocabulary_and_stays_lossless(target, tmp_path):
    records = make_records(target, 10)
    config = Eagle3TrainConfig(epochs=6, lr=1e-2, warmup_steps=5, ttt_steps=3, draft_vocab_size=15, heldout_fraction=0.2, seed=0)
    rows = []
    head, summary = train_eagle3(target, records, config, progress=lambda step, total, row: rows.append(row))
    assert summary["steps"] == len(rows) == config.epochs * summary["train_records"]
    assert summary["epochs_done"] == config.epochs and not summary["stopped_by_time_budget"]
    first = sum(r["step0_loss"] for r in rows[: summary["train_records"]])
    last = sum(r["step0_loss"] for r in rows[-summary["train_records"] :])
    assert last < 0.9 * first  # the head learns the target's distribution (the floor is its entropy, not 0)
    assert head.draft_vocab_size == 15
    answers = torch.cat([r.tokens[r.loss_mask] for r in records])
    counts = torch.bincount(answers, minlength=VOCAB)
    vocab = head.draft_token_ids()
    assert counts[vocab].min() >= counts[[i for i in range(VOCAB) if i not in set(vocab.tolist())]].max()  # the most frequent
    assert summary["heldout"] is not None and len(summary["heldout"]["accuracy_by_step"]) == 3
    folder = head.save_pretrained(tmp_path / "eagle3-head", extra_config={"training": "tiny test"})
    again = Eagle3Head.from_pretrained(folder).to(target.dtype)
    prompt = random_prompt(VOCAB, 7, 77)
    expected = generate(target, prompt, max_new_tokens=24)
    for candidate in (head, again):
        record = generate(target, prompt, max_new_tokens=24, proposer=DynamicTreeProposer(candidate, target, depth=4, top_k=3, total_tokens=10))
        assert record.output_ids == expected.output_ids
    assert torch.equal(again.draft_token_ids(), head.draft_token_ids())


def test_a_time_budget_stops_training_and_ends_the_schedule_with_it(target):
    records = make_records(target, 6)
    config = Eagle3TrainConfig(epochs=50, ttt_steps=2, draft_vocab_size=15, heldout_fraction=0.2, seed=0, max_seconds=1e-9)
    rows = []
    head, summary = train_eagle3(target, records, config, progress=lambda step, total, row: rows.append(row))
    assert summary["stopped_by_time_budget"] and summary["epochs_done"] < 1 and summary["steps"] == len(rows) == 0
    assert summary["heldout"] is not None and not head.training  # still evaluated and returned ready to draft
    # The cosine schedule follows elapsed time when it is further along than the step count.
    planned = Eagle3TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=2)
    assert lr_at(10, 1000, planned, elapsed_fraction=1.0) == pytest.approx(1e-4)
    assert lr_at(10, 1000, planned, elapsed_fraction=0.5) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert lr_at(10, 1000, planned) > lr_at(10, 1000, planned, elapsed_fraction=0.5)


def test_the_head_can_start_from_the_targets_lm_head_rows_and_final_norm(target):
    records = make_records(target, 4)
    config = Eagle3TrainConfig(draft_vocab_size=15, seed=0)
    head = init_eagle3_head(target, records, config)
    vocab = head.draft_token_ids()
    assert torch.equal(head.lm_head.weight, target.lm_head.weight[vocab].float())
    assert torch.equal(head.norm.weight, target.decoder.norm.weight.float())
    scratch = init_eagle3_head(target, records, replace(config, lm_head_init="random"))
    assert torch.equal(scratch.draft_token_ids(), vocab) and not torch.equal(scratch.lm_head.weight, head.lm_head.weight)
    assert bool((scratch.norm.weight == 1).all())
    with pytest.raises(ValueError, match="lm_head_init must be one of target, random"):
        Eagle3TrainConfig(lm_head_init="zeros")


def test_cli_trains_an_eagle3_head_on_the_distilled_records(tmp_path):
    """`python -m harness train train --head-kind eagle3` on distilled shards of a local 8-layer model."""
    import json

    from conftest import save_tiny_llama_folder

    from eagle2.train.distill import DistillConfig, distill
    from eagle2.train.prompts import Prompt, TemplateChat
    from harness.__main__ import main
    from harness.models import chat_template_for, load_model

    save_tiny_llama_folder(tmp_path / "model")
    loaded = load_model(str(tmp_path / "model"), dtype="float32")
    chat = TemplateChat(chat_template_for(loaded), loaded.tokenizer)
    prompts = [Prompt(id=f"test/{i}", source="test", prompt=f"Say thing {i}.") for i in range(6)]
    work = tmp_path / "work"
    distill(loaded.target, chat, prompts, work / "distill", DistillConfig(max_new_tokens=8, batch_size=3, shard_size=3))
    out = tmp_path / "head3"
    argv = ["train", "train", "--work", str(work), "--out", str(out), "--head-kind", "eagle3", "--model", str(tmp_path / "model"),
            "--epochs", "1", "--ttt-steps", "2", "--draft-vocab-size", "64", "--heldout-fraction", "0.3"]
    assert main(argv) in (0, None)
    head = Eagle3Head.from_pretrained(out, embedding_shape=tuple(loaded.target.embed_tokens.weight.shape))
    assert head.draft_vocab_size == 64
    training = json.loads((out / "training.json").read_text())
    assert training["head_kind"] == "eagle3" and training["config"]["ttt_steps"] == 2 and training["steps"] >= 1
