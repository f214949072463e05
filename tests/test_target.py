"""The tree forward must equal, node by node, running each root-to-leaf branch sequentially."""

import pytest
import torch

from eagle2.tree import DraftTree
from eagle2 import DynamicTreeProposer, StaticTreeProposer, generate
from conftest import random_prompt, tiny_head, tiny_model


def random_tree(vocab: int, size: int, seed: int) -> DraftTree:
    generator = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(max(0, i - 4), i, (), generator=generator)) for i in range(1, size)]
    tokens = torch.randint(0, vocab, (size,), generator=generator)
    return DraftTree.from_parents(tokens, torch.tensor(parents))


@pytest.mark.parametrize("seed", range(4))
def test_tree_forward_equals_sequential_branches(target, seed):
    prompt = torch.tensor(random_prompt(target.vocab_size, 9, seed))
    tree = random_tree(target.vocab_size, 12, seed)
    cache = target.new_cache(8)
    target.forward(prompt, cache)
    tree_out = target.forward(tree.tokens, cache, tree=tree)
    assert cache.length == prompt.numel() + tree.size
    for path in tree.leaf_paths():
        fresh = target.new_cache(8)
        sequential = target.forward(torch.cat((prompt, tree.tokens[path])), fresh)
        for offset, node in enumerate(path):
            row = prompt.numel() + offset
            torch.testing.assert_close(tree_out.logits[node], sequential.logits[row], rtol=0, atol=1e-10)
            torch.testing.assert_close(tree_out.hidden[node], sequential.hidden[row], rtol=0, atol=1e-10)


def test_kept_path_continues_like_a_sequential_cache(target):
    prompt = torch.tensor(random_prompt(target.vocab_size, 7, 11))
    tree = random_tree(target.vocab_size, 10, 5)
    path = tree.leaf_paths()[-1]
    cache = target.new_cache(4)
    target.forward(prompt, cache)
    target.forward(tree.tokens, cache, tree=tree)
    cache.keep(prompt.numel(), path)
    follow = torch.tensor([3, 1, 4])
    compacted = target.forward(follow, cache)
    reference_cache = target.new_cache(4)
    reference = target.forward(torch.cat((prompt, tree.tokens[path], follow)), reference_cache)
    torch.testing.assert_close(compacted.logits, reference.logits[-3:], rtol=0, atol=1e-10)


def test_logits_for_selects_rows(target):
    cache = target.new_cache(4)
    prompt = torch.tensor(random_prompt(target.vocab_size, 6, 2))
    last = target.forward(prompt, cache, logits_for=slice(-1, None))
    assert last.logits.shape == (1, target.vocab_size)
    assert last.hidden.shape == (6, target.hidden_size)
    assert last.logits.dtype == torch.float64


@pytest.mark.parametrize("architecture", ["mistral", "qwen2", "qwen3"])
def test_other_families_tree_forward_and_lossless_decoding(architecture):
    target = tiny_model(architecture)
    prompt = torch.tensor(random_prompt(target.vocab_size, 8, 1))
    tree = random_tree(target.vocab_size, 10, 2)
    cache = target.new_cache(8)
    target.forward(prompt, cache)
    tree_out = target.forward(tree.tokens, cache, tree=tree)
    for path in tree.leaf_paths():
        sequential = target.forward(torch.cat((prompt, tree.tokens[path])), target.new_cache(8))
        for offset, node in enumerate(path):
            torch.testing.assert_close(tree_out.logits[node], sequential.logits[prompt.numel() + offset], rtol=0, atol=1e-10)
    head = tiny_head(target)
    expected = generate(target, prompt.tolist(), max_new_tokens=24)
    for proposer in (DynamicTreeProposer(head, target, depth=4, top_k=3, total_tokens=12), StaticTreeProposer(head, target)):
        assert generate(target, prompt.tolist(), max_new_tokens=24, proposer=proposer).output_ids == expected.output_ids
