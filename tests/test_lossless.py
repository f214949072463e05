"""Greedy speculative decoding must reproduce vanilla greedy decoding token for token (float64)."""

import pytest
import torch

from eagle2 import DynamicTreeProposer, StaticTreeProposer, generate
from eagle2.tree import DraftTree
from conftest import random_prompt, tiny_head, tiny_llama

EAGLE2_SETTINGS = [
    dict(depth=6, top_k=10, total_tokens=60),  # the official default (5/10/60)
    dict(depth=4, top_k=3, total_tokens=10),
    dict(depth=1, top_k=4, total_tokens=5),  # one level only
    dict(depth=5, top_k=1, total_tokens=6),  # a single chain
    dict(depth=3, top_k=2, total_tokens=1),  # root only: degenerates to vanilla
    dict(depth=8, top_k=4, total_tokens=200),  # more tokens than are ever drafted
]
EAGLE1_TREES = ["mc_sim_7b_63", "chain5", [[0], [1], [0, 0], [0, 0, 0], [1, 0]]]


def vanilla(target, prompt, max_new_tokens, stops=()):
    return generate(target, prompt, max_new_tokens=max_new_tokens, stop_token_ids=stops)


@pytest.mark.parametrize("fixture", ["target", "small_vocab_target"])
@pytest.mark.parametrize("settings", EAGLE2_SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_eagle2_greedy_equals_vanilla(request, fixture, settings):
    target = request.getfixturevalue(fixture)
    head = tiny_head(target)
    for seed in range(6):
        prompt = random_prompt(target.vocab_size, 5 + 3 * seed, seed)
        expected = vanilla(target, prompt, 40)
        record = generate(target, prompt, max_new_tokens=40, proposer=DynamicTreeProposer(head, target, **settings))
        assert record.output_ids == expected.output_ids, f"seed {seed}"
        assert sum(record.accept_lengths) == record.new_tokens == 40
        assert record.target_forwards == len(record.accept_lengths)


@pytest.mark.parametrize("lazy_logits", [True, False], ids=["lazy-logits", "batched-logits"])
@pytest.mark.parametrize("fixture", ["target", "small_vocab_target"])
def test_both_verification_logit_modes_are_lossless(request, fixture, lazy_logits):
    target = request.getfixturevalue(fixture)
    head = tiny_head(target)
    for seed in range(4):
        prompt = random_prompt(target.vocab_size, 6 + seed, 300 + seed)
        expected = vanilla(target, prompt, 30)
        for proposer in (DynamicTreeProposer(head, target, depth=5, top_k=4, total_tokens=20), StaticTreeProposer(head, target)):
            record = generate(target, prompt, max_new_tokens=30, proposer=proposer, lazy_logits=lazy_logits)
            assert record.output_ids == expected.output_ids


def test_cpu_verification_projects_small_trees_at_once_and_large_trees_lazily():
    """On a CPU a tree of <= BATCHED_LOGITS_MAX_NODES nodes gets all its logits in the verification
    forward (one lm_head pass per step, none afterwards); a larger one only the visited nodes'."""
    from eagle2.decode import BATCHED_LOGITS_MAX_NODES
    from eagle2.target import TargetModel

    class CountingTarget(TargetModel):
        projected_rows: list[int] = []

        def logits_of(self, hidden):
            self.projected_rows.append(hidden.shape[0])
            return super().logits_of(hidden)

    target = CountingTarget(tiny_llama().model)
    head = tiny_head(target)
    prompt = random_prompt(target.vocab_size, 8, 7)
    expected = vanilla(target, prompt, 20)
    for total, lazy in ((BATCHED_LOGITS_MAX_NODES, False), (BATCHED_LOGITS_MAX_NODES + 8, True)):
        target.projected_rows.clear()
        proposer = DynamicTreeProposer(head, target, depth=4, top_k=4, total_tokens=total)
        record = generate(target, prompt, max_new_tokens=20, proposer=proposer)
        assert record.output_ids == expected.output_ids
        verifications = record.target_forwards - 1  # the first forward is the prefill
        passes = target.projected_rows[1:]
        if lazy:
            assert len(passes) >= verifications and max(passes) < total
        else:
            assert len(passes) == verifications and max(passes) == total


@pytest.mark.parametrize("fixture", ["target", "small_vocab_target"])
@pytest.mark.parametrize("tree", EAGLE1_TREES, ids=str)
def test_eagle1_greedy_equals_vanilla(request, fixture, tree):
    target = request.getfixturevalue(fixture)
    head = tiny_head(target)
    for seed in range(6):
        prompt = random_prompt(target.vocab_size, 4 + 2 * seed, 100 + seed)
        expected = vanilla(target, prompt, 40)
        record = generate(target, prompt, max_new_tokens=40, proposer=StaticTreeProposer(head, target, tree=tree))
        assert record.output_ids == expected.output_ids, f"seed {seed}"


def test_small_vocabulary_really_accepts_long_paths(small_vocab_target, small_vocab_head):
    """Guard for the tests above: they must exercise accepted paths, not only rejections."""
    record = generate(
        small_vocab_target,
        random_prompt(5, 10, 1),
        max_new_tokens=60,
        proposer=DynamicTreeProposer(small_vocab_head, small_vocab_target, depth=5, top_k=4, total_tokens=30),
    )
    assert record.mean_accept_length > 1.8
    assert max(record.accept_lengths) >= 3


class OracleProposer:
    """Random tree shapes in which the true greedy continuation hides at a random sibling position,
    among random distractors: long, scattered accepted paths for the loop and the cache compaction."""

    def __init__(self, continuation: list[int], vocab_size: int, seed: int, size: int = 14):
        self.continuation = continuation
        self.vocab_size = vocab_size
        self.generator = torch.Generator().manual_seed(seed)
        self.max_tree_size = size
        self.emitted = 0

    def begin(self, prompt_ids, prompt_features, root):
        self.emitted = 1

    def advance(self, path_features, next_tokens):
        self.emitted += next_tokens.numel()

    def propose(self, max_depth):
        tokens, parents, truth_node = [self.continuation[self.emitted - 1]], [-1], 0
        for depth in range(1, max_depth + 1):
            if len(tokens) >= self.max_tree_size or self.emitted - 1 + depth >= len(self.continuation):
                break
            siblings = int(torch.randint(1, 4, (), generator=self.generator))
            truth_at = int(torch.randint(0, siblings, (), generator=self.generator))
            truth = self.continuation[self.emitted - 1 + depth]
            distractors = [t for t in torch.randperm(self.vocab_size, generator=self.generator).tolist() if t != truth]
            for rank in range(siblings):
                tokens.append(truth if rank == truth_at else distractors[rank])
                parents.append(truth_node)
                if rank == truth_at:
                    truth_node_next = len(tokens) - 1
                elif int(torch.randint(0, 2, (), generator=self.generator)):
                    tokens.append(distractors[-1 - rank])  # a dead branch below a distractor
                    parents.append(len(tokens) - 2)
            truth_node = truth_node_next
        return DraftTree.from_parents(torch.tensor(tokens), torch.tensor(parents))


@pytest.mark.parametrize("seed", range(8))
def test_long_scattered_accepted_paths_keep_the_cache_exact(target, seed):
    prompt = random_prompt(target.vocab_size, 6 + seed, 50 + seed)
    expected = vanilla(target, prompt, 48)
    proposer = OracleProposer(list(expected.output_ids), target.vocab_size, seed)
    record = generate(target, prompt, max_new_tokens=48, proposer=proposer)
    assert record.output_ids == expected.output_ids
    assert record.mean_accept_length > 3


@pytest.mark.parametrize("max_new_tokens", [1, 2, 3, 7])
def test_stops_exactly_at_max_new_tokens_with_a_tree_deeper_than_the_budget(small_vocab_target, small_vocab_head, max_new_tokens):
    prompt = random_prompt(5, 8, 4)
    expected = vanilla(small_vocab_target, prompt, max_new_tokens)
    for proposer in (
        DynamicTreeProposer(small_vocab_head, small_vocab_target, depth=8, top_k=4, total_tokens=40),
        StaticTreeProposer(small_vocab_head, small_vocab_target),
    ):
        record = generate(small_vocab_target, prompt, max_new_tokens=max_new_tokens, proposer=proposer)
        assert record.output_ids == expected.output_ids
        assert record.new_tokens == max_new_tokens
        assert record.stop_reason == "max_new_tokens"


def test_stops_at_any_stop_token_inside_an_accepted_path(target, head):
    prompt = random_prompt(target.vocab_size, 8, 9)
    free_run = vanilla(target, prompt, 50).output_ids
    stop = free_run[20]
    expected = vanilla(target, prompt, 50, stops=[stop, 999])
    assert expected.output_ids[-1] == stop and expected.stop_reason == "eos"
    oracle = OracleProposer(list(free_run), target.vocab_size, seed=1)
    for proposer in (
        oracle,
        DynamicTreeProposer(head, target, depth=6, top_k=4, total_tokens=30),
        StaticTreeProposer(head, target),
    ):
        record = generate(target, prompt, max_new_tokens=50, stop_token_ids=[stop, 999], proposer=proposer)
        assert record.output_ids == expected.output_ids
        assert record.stop_reason == "eos"
    # the oracle's steps accept several tokens each, so the stop token fell inside a path and was cut there
    record = generate(target, prompt, max_new_tokens=50, stop_token_ids=[stop], proposer=OracleProposer(list(free_run), target.vocab_size, seed=1))
    assert record.target_forwards < record.new_tokens / 2
    assert sum(record.accept_lengths) == record.new_tokens


def test_stops_before_the_context_limit():
    target = tiny_llama(vocab_size=5, seed=3, max_positions=40)
    head = tiny_head(target)
    prompt = random_prompt(5, 30, 2)
    expected = vanilla(target, prompt, 50)
    # The last token may sit at position 39; a token there is emitted from the forward at 38 ... 39.
    assert expected.stop_reason == "context_limit"
    assert len(prompt) + expected.new_tokens == 41
    for proposer in (DynamicTreeProposer(head, target, depth=6, top_k=3, total_tokens=20), StaticTreeProposer(head, target)):
        record = generate(target, prompt, max_new_tokens=50, proposer=proposer)
        assert record.output_ids == expected.output_ids
        assert record.stop_reason == "context_limit"


def test_prompt_at_the_context_limit_is_refused():
    target = tiny_llama(max_positions=16)
    with pytest.raises(ValueError, match="context"):
        generate(target, list(range(16)), max_new_tokens=4)


def test_acceptance_statistics_are_consistent(small_vocab_target, small_vocab_head):
    record = generate(
        small_vocab_target,
        random_prompt(5, 12, 5),
        max_new_tokens=50,
        proposer=DynamicTreeProposer(small_vocab_head, small_vocab_target, depth=5, top_k=3, total_tokens=20),
    )
    # Step i accepted accept_lengths[i] - 1 drafts: depth d was accepted in exactly the steps that accepted >= d.
    drafts = [n - 1 for n in record.accept_lengths[1:]]
    for depth, accepted in enumerate(record.depth_accepted, start=1):
        assert accepted >= sum(1 for a in drafts[:-1] if a >= depth)
        assert accepted <= sum(1 for a in drafts if a >= depth)
    assert all(a <= r for a, r in zip(record.depth_accepted, record.depth_reached))
    assert sum(record.confidence_accepted) <= sum(record.confidence_checked)
    assert 1.0 <= record.draft_tokens_per_step <= 20
