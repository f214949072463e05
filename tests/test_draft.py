"""The drafters' incremental head runs (KV cache, tree masks, positions) must equal running the
head from scratch on each node's full path; EAGLE-2's tree must be its documented selection."""

import math

import pytest
import torch

from eagle2 import DynamicTreeProposer, StaticTreeProposer, generate
from eagle2.tree import load_static_tree
from conftest import random_prompt


class RecordingProposer:
    """Delegates to a proposer and keeps every tree it proposed, with the text it was proposed after."""

    def __init__(self, inner):
        self.inner = inner
        self.max_tree_size = inner.max_tree_size
        self.trees = []
        self.context: list[int] = []

    def begin(self, prompt_ids, prompt_features, root):
        self.context = prompt_ids.tolist() + [root]
        self.inner.begin(prompt_ids, prompt_features, root)

    def propose(self, max_depth):
        tree = self.inner.propose(max_depth)
        self.trees.append((list(self.context), tree))
        return tree

    def advance(self, path_features, next_tokens):
        self.context += next_tokens.tolist()
        self.inner.advance(path_features, next_tokens)


def reference_draft_log_probs(target, head, context: list[int], path_tokens: list[int]) -> torch.Tensor:
    """Draft log-probabilities after context (ending with the root) + path_tokens, from scratch."""
    ids = torch.tensor(context)
    features = target.forward(ids[:-1], target.new_cache(4)).hidden  # f_0 .. f_{C-1}
    tokens = ids[1:]  # x_1 .. x_C (x_C = root)
    # Drafted entries: feature = the head's own prediction at the previous entry.
    for token in path_tokens:
        out = head(target.embed_tokens(tokens)[None], features[None], torch.arange(tokens.numel())[None])[0]
        features = torch.cat((features, out[-1:]))
        tokens = torch.cat((tokens, torch.tensor([token])))
    out = head(target.embed_tokens(tokens)[None], features[None], torch.arange(tokens.numel())[None])[0]
    return torch.log_softmax(target.lm_head(out[-1]), dim=-1)


def check_tree_against_reference(target, head, context, tree, top_k=None):
    tokens = tree.tokens.tolist()
    for node in range(1, tree.size):
        path = tree.path_to(node)
        parent_path_tokens = [tokens[n] for n in path[1:-1]]
        with torch.no_grad():
            log_probs = reference_draft_log_probs(target, head, context, parent_path_tokens)
        assert math.exp(log_probs[tokens[node]]) == pytest.approx(float(tree.draft_probs[node]), rel=1e-6)
        if top_k is not None:
            # every drafted child is among its parent's top_k draft tokens
            assert int((log_probs > log_probs[tokens[node]]).sum()) < top_k


@pytest.mark.parametrize("settings", [dict(depth=4, top_k=3, total_tokens=12), dict(depth=3, top_k=2, total_tokens=7)])
def test_eagle2_drafts_equal_the_head_run_from_scratch(small_vocab_target, small_vocab_head, settings):
    target, head = small_vocab_target, small_vocab_head
    recorder = RecordingProposer(DynamicTreeProposer(head, target, **settings))
    generate(target, random_prompt(5, 9, 3), max_new_tokens=16, proposer=recorder)
    assert len(recorder.trees) >= 4
    for context, tree in recorder.trees[:5]:
        check_tree_against_reference(target, head, context, tree, top_k=settings["top_k"])


def test_eagle1_drafts_equal_the_head_run_from_scratch(target, head):
    recorder = RecordingProposer(StaticTreeProposer(head, target, tree=[[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]]))
    generate(target, random_prompt(target.vocab_size, 8, 4), max_new_tokens=8, proposer=recorder)
    for context, tree in recorder.trees[:4]:
        check_tree_against_reference(target, head, context, tree)


def test_eagle1_tree_has_the_template_shape_and_ranks(target, head):
    recorder = RecordingProposer(StaticTreeProposer(head, target))
    generate(target, random_prompt(target.vocab_size, 8, 5), max_new_tokens=12, proposer=recorder)
    shape = load_static_tree("mc_sim_7b_63")
    context, tree = recorder.trees[0]
    assert tree.size == shape.size
    assert tree.parents.tolist() == list(shape.parents)
    # siblings appear in rank order, i.e. by decreasing draft probability
    for kids in tree.children:
        probs = [float(tree.draft_probs[k]) for k in kids]
        assert probs == sorted(probs, reverse=True)


def brute_force_eagle2(target, head, context, depth, top_k, total_tokens):
    """EAGLE-2's selection written the slow, obvious way: expand the top_k frontier by path score
    at each depth, then keep the total_tokens - 1 best drafted nodes."""
    drafted = []  # (score, token path)
    frontier = [(0.0, [])]
    for level in range(depth):
        children = []
        for score, path in frontier:
            with torch.no_grad():
                log_probs = reference_draft_log_probs(target, head, context, path)
            top = torch.topk(log_probs, top_k)
            for lp, token in zip(top.values.tolist(), top.indices.tolist()):
                children.append((score + lp, path + [token]))
        drafted += children
        frontier = sorted(children, key=lambda c: -c[0])[:top_k]
    best = sorted(drafted, key=lambda c: -c[0])[: total_tokens - 1]
    return {tuple(path) for _, path in best}


@pytest.mark.parametrize("settings", [dict(depth=3, top_k=3, total_tokens=10), dict(depth=4, top_k=2, total_tokens=8), dict(depth=2, top_k=4, total_tokens=30)])
def test_eagle2_selects_what_the_algorithm_says(target, head, settings):
    recorder = RecordingProposer(DynamicTreeProposer(head, target, **settings))
    generate(target, random_prompt(target.vocab_size, 7, 8), max_new_tokens=20, proposer=recorder)
    for context, tree in recorder.trees[:3]:
        tokens = tree.tokens.tolist()
        got = {tuple(tokens[n] for n in tree.path_to(node)[1:]) for node in range(1, tree.size)}
        assert got == brute_force_eagle2(target, head, context, **settings)
        # the selection is ancestor-closed and positions are depths
        for node in range(1, tree.size):
            assert int(tree.depths[node]) == len(tree.path_to(node)) - 1


def test_eagle2_parameter_validation(target, head):
    with pytest.raises(ValueError, match="top_k"):
        DynamicTreeProposer(head, target, top_k=0)
    with pytest.raises(ValueError, match="depth"):
        DynamicTreeProposer(head, target, depth=0)
