"""The prompt mix at tiny scale: every shared set and every synthesised kind with its quota, kinds
counted in the summary, multi-turn conversations distilled as conversations."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import DATA_DIR

from eagle2.train.distill import DistillConfig, distill, read_shard_metadata
from eagle2.train.dataset import load_records
from eagle2.train.mix import ALL_KINDS, FOLLOW_UPS, MAGPIE_KINDS, SHARED_KINDS, default_mix_sources, draw_seeds, join_opening
from eagle2.train.prompts import SHARED_SETS, MagpieConfig, PromptsConfig, SourceSpec, Turn, build_prompts, read_prompts
from harness.train import eval_texts
from tests.test_train import CharChat, tiny_target



def test_kind_sources_parse_and_unknown_kinds_are_named() -> None:
    assert SourceSpec.parse("magpie:translation:20") == SourceSpec("magpie", "translation", 20)
    assert SourceSpec.parse("magpie:general:5") == SourceSpec("magpie", "magpie", 5)
    assert SourceSpec.parse("multiturn:7") == SourceSpec("multiturn", "multiturn", 7)
    assert SourceSpec.parse("magpie:summarisation:3").label() == "magpie-summarisation"
    with pytest.raises(ValueError, match="unknown Magpie kind 'poetry'; kinds: general, writing"):
        SourceSpec.parse("magpie:poetry:3")
    with pytest.raises(ValueError, match="write multiturn:N"):
        SourceSpec.parse("multiturn:many")


def test_the_default_mix_uses_every_shared_set_and_every_kind() -> None:
    specs = [SourceSpec.parse(s) for s in default_mix_sources(1000)]
    assert {s.name for s in specs if s.kind == "shared"} == set(SHARED_SETS) == set(SHARED_KINDS)
    assert {s.prompt_kind() for s in specs} >= set(ALL_KINDS)
    assert 900 <= sum(s.count or 175 for s in specs) <= 1300
    seeds = draw_seeds("translation", 50, random.Random(0))
    assert len({s.opening for s in seeds}) > 5 and all(s.opening.startswith("Translate the following") for s in seeds)
    assert join_opening("Write a poem about", " the sea") == "Write a poem about the sea"
    assert join_opening("Write a poem about", "") == ""


def test_a_tiny_mix_of_every_set_and_kind_is_built_counted_and_distilled(tmp_path: Path) -> None:
    target, chat = tiny_target(), CharChat()
    sources = tuple(f"{s}:2" if not s.rsplit(":", 1)[-1].isdigit() else f"{s.rsplit(':', 1)[0]}:2" for s in default_mix_sources(100))
    magpie = MagpieConfig(batch_size=8, max_query_tokens=16, min_chars=1, max_passage_tokens=24, min_passage_chars=1)
    config = PromptsConfig(sources=sources, eval_sets=("mt_bench", "gsm8k_test"), magpie=magpie)
    work = tmp_path / "work"
    texts = eval_texts(DATA_DIR, config.eval_sets)
    prompts = read_prompts(build_prompts(config, work, DATA_DIR, eval_texts=texts, target=target, chat=chat))
    summary = json.loads((work / "prompts.summary.json").read_text())
    assert set(summary["by_kind"]) == set(ALL_KINDS)
    assert sum(summary["by_kind"].values()) == summary["prompts"] == len(prompts)
    # Quotas: 2 of each synthesised kind; the shared sets by their kinds (2 each, code and math twice).
    for kind in MAGPIE_KINDS[1:]:
        expected = 2 + 2 * sum(k == kind for k in SHARED_KINDS.values())
        assert summary["by_kind"][kind] == expected, kind
    assert summary["by_kind"]["multiturn"] == 2 and summary["by_kind"]["general"] == 2 + 2
    by_kind = {p.kind: p for p in prompts}
    assert by_kind["translation"].prompt.startswith("Translate the following")
    assert by_kind["long_context_qa"].prompt.count("Based on the passage above,") == 1
    conversations = [p for p in prompts if p.kind == "multiturn"]
    assert all(len(p.follow_ups) == 1 and p.follow_ups[0] in FOLLOW_UPS for p in conversations)

    # Distil the two conversations: the record's prompt is the whole conversation up to the follow-up.
    distill(target, chat, conversations, work / "distill", DistillConfig(max_new_tokens=6, batch_size=4, shard_size=4, sampled_fraction=0.5))
    records = {r.id: r for r in load_records(work / "distill")}
    metas = {m["id"]: m for m in read_shard_metadata(work / "distill" / "shard-00000.safetensors")}
    for prompt in conversations:
        record = records[prompt.id]
        tokens = record.tokens.tolist()
        first = chat.prompt_ids([Turn("user", prompt.prompt)])[:-1]  # CharChat cues the assistant only at the end
        assert tokens[: len(first)] == first
        follow = chat.encode(prompt.follow_ups[0]) + [2, 3]  # the follow-up, end of turn, assistant cue
        prompt_tokens = metas[prompt.id]["prompt_tokens"]
        assert tokens[prompt_tokens - len(follow) : prompt_tokens] == follow and prompt_tokens > len(first) + len(follow)
        assert not record.loss_mask[:prompt_tokens].any() and record.loss_mask[prompt_tokens:].all()
