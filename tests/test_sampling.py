"""Speculative sampling must reproduce the target's sampling distribution exactly.

Goodness-of-fit by a chi-square test against exact probabilities; each test also shows it has
the power to catch a broken residual update (the mutant must be rejected).
"""

import itertools

import pytest
import torch

import eagle2.verify as verify_module
from eagle2 import DynamicTreeProposer, Eagle3Head, SamplingConfig, StaticTreeProposer, generate
from eagle2.tree import DraftTree
from eagle2.verify import target_distribution, verify_sampling
from conftest import random_prompt, tiny_head, tiny_llama


def chi_square_p_value(counts: dict, expected_probs: dict, total: int) -> float:
    """Pearson chi-square test; cells with tiny expectation are pooled into one."""
    statistic, cells, pooled_observed, pooled_expected = 0.0, 0, 0.0, 0.0
    for key, prob in expected_probs.items():
        expected = prob * total
        observed = counts.get(key, 0)
        if expected < 5:
            pooled_observed += observed
            pooled_expected += expected
            continue
        statistic += (observed - expected) ** 2 / expected
        cells += 1
    if pooled_expected > 0:
        statistic += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
        cells += 1
    unexpected = sum(v for k, v in counts.items() if expected_probs.get(k, 0.0) == 0.0)
    if unexpected:
        return 0.0
    dof = max(cells - 1, 1)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)))


def synthetic_case(seed: int, vocab: int = 8):
    """A tree with three root children (the first with two children of its own) and random
    target logits at every node, peaked enough that drafts are often accepted."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, vocab, generator=generator, dtype=torch.float64)
    tokens = torch.tensor([0, 1, 2, 3, 4, 5])
    parents = torch.tensor([-1, 0, 0, 0, 1, 1])
    # Like real drafts, the drafted children are likely (but not certain) under the target.
    logits[0, 1:4] += torch.tensor([1.5, 1.0, 0.5], dtype=torch.float64)
    logits[1, 4:6] += 1.0
    return DraftTree.from_parents(tokens, parents), logits


def sample_two_tokens(tree, logits, sampling, runs, seed):
    generator = torch.Generator().manual_seed(seed)
    first, pairs = {}, {}
    tokens = tree.tokens.tolist()
    for _ in range(runs):
        verdict = verify_sampling(tree, logits, sampling, generator)
        emitted = [tokens[n] for n in verdict.path[1:]] + [verdict.bonus]
        first[emitted[0]] = first.get(emitted[0], 0) + 1
        if len(emitted) >= 2:
            pairs[tuple(emitted[:2])] = pairs.get(tuple(emitted[:2]), 0) + 1
    return first, pairs


def exact_distributions(tree, logits, sampling):
    root = target_distribution(logits[0], sampling)
    first = {t: float(root[t]) for t in range(root.numel())}
    # Two tokens come out of one step only when the first is a drafted child of the root.
    pairs = {}
    children = {int(tree.tokens[c]): c for c in tree.children[0]}
    pair_mass = sum(first[t] for t in children)
    for token, node in children.items():
        second = target_distribution(logits[node], sampling)
        for t in range(second.numel()):
            pairs[(token, t)] = first[token] * float(second[t]) / pair_mass
    return first, pairs


SAMPLINGS = [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_p=0.8), SamplingConfig(temperature=1.3, top_k=4)]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=str)
def test_tree_sampling_reproduces_the_target_distribution(sampling):
    tree, logits = synthetic_case(seed=1)
    runs = 20000
    first, pairs = sample_two_tokens(tree, logits, sampling, runs, seed=2)
    exact_first, exact_pairs = exact_distributions(tree, logits, sampling)
    assert chi_square_p_value(first, exact_first, runs) > 1e-3
    assert chi_square_p_value(pairs, exact_pairs, sum(pairs.values())) > 1e-3


@pytest.mark.parametrize(
    "mutant",
    ["no_renormalisation", "no_zeroing", "accept_by_original_probability"],
)
def test_the_check_catches_a_broken_residual_update(monkeypatch, mutant):
    """The same statistical check must reject a verifier whose residual update is wrong."""

    def broken(residual, candidates, generator):
        original = residual
        for index, token in enumerate(candidates):
            chance = float((original if mutant == "accept_by_original_probability" else residual)[token])
            if float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
                return index, residual
            if mutant != "no_zeroing":
                residual = residual.clone()
                residual[token] = 0.0
                if mutant != "no_renormalisation":
                    residual = residual / residual.sum()
        if mutant == "no_renormalisation":
            residual = residual / residual.sum()  # multinomial would renormalise anyway
        return None, residual

    monkeypatch.setattr(verify_module, "accept_among_siblings", broken)
    tree, logits = synthetic_case(seed=1)
    sampling = SamplingConfig(temperature=1.0)
    runs = 20000
    first, _ = sample_two_tokens(tree, logits, sampling, runs, seed=2)
    exact_first, _ = exact_distributions(tree, logits, sampling)
    assert chi_square_p_value(first, exact_first, runs) < 1e-6


def peaked_tiny_target(layers: int = 2):
    """A tiny random model whose next-token distributions are far from uniform."""
    target = tiny_llama(vocab_size=5, seed=11, layers=layers)
    with torch.no_grad():
        target.lm_head.weight.mul_(12.0)
    return target


def exact_sequence_probs(target, prompt, length, sampling):
    probs = {}
    for sequence in itertools.product(range(target.vocab_size), repeat=length):
        logits = target.forward(torch.tensor(prompt + list(sequence[:-1])), target.new_cache(8)).logits
        prob = 1.0
        for step, token in enumerate(sequence):
            prob *= float(target_distribution(logits[len(prompt) - 1 + step], sampling)[token])
        probs[sequence] = prob
    return probs


@pytest.mark.parametrize("method,lazy_logits", [("eagle2", True), ("eagle1", True), ("eagle2", False), ("eagle3", True)])
def test_end_to_end_speculative_sampling_matches_the_target(method, lazy_logits):
    if method == "eagle3":  # EAGLE-3 reads layers 2, N // 2 and N - 3: at least 7 layers
        target = peaked_tiny_target(layers=7)
        head = Eagle3Head.random(target.config, seed=4).to(target.dtype)
    else:
        target = peaked_tiny_target()
        head = tiny_head(target, seed=4)
    prompt = random_prompt(5, 6, 7)
    sampling = SamplingConfig(temperature=1.0)
    length, runs = 3, 1500
    exact = exact_sequence_probs(target, prompt, length, sampling)
    generator = torch.Generator().manual_seed(3)
    counts, forwards = {}, 0
    for _ in range(runs):
        proposer = (
            DynamicTreeProposer(head, target, depth=3, top_k=3, total_tokens=10)
            if method in ("eagle2", "eagle3")
            else StaticTreeProposer(head, target, tree=[[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]])
        )
        record = generate(target, prompt, max_new_tokens=length, proposer=proposer, sampling=sampling, generator=generator, lazy_logits=lazy_logits)
        counts[record.output_ids] = counts.get(record.output_ids, 0) + 1
        forwards += record.target_forwards
    assert forwards < runs * length  # drafts were accepted, so the tree path was exercised
    assert chi_square_p_value(counts, exact, runs) > 1e-3


def test_vanilla_sampling_matches_the_target_and_is_seeded():
    target = peaked_tiny_target()
    prompt = random_prompt(5, 6, 7)
    sampling = SamplingConfig(temperature=1.0)
    exact = exact_sequence_probs(target, prompt, 2, sampling)
    generator = torch.Generator().manual_seed(5)
    counts = {}
    for _ in range(1500):
        ids = generate(target, prompt, max_new_tokens=2, sampling=sampling, generator=generator).output_ids
        counts[ids] = counts.get(ids, 0) + 1
    assert chi_square_p_value(counts, exact, 1500) > 1e-3
    first = generate(target, prompt, max_new_tokens=8, sampling=sampling, generator=torch.Generator().manual_seed(9))
    again = generate(target, prompt, max_new_tokens=8, sampling=sampling, generator=torch.Generator().manual_seed(9))
    assert first.output_ids == again.output_ids


def test_top_p_and_top_k_filters():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0, -1.0])
    kept = target_distribution(logits, SamplingConfig(temperature=1.0, top_k=2))
    assert (kept > 0).tolist() == [True, True, False, False, False]
    probs = torch.softmax(logits.double(), -1)
    nucleus = target_distribution(logits, SamplingConfig(temperature=1.0, top_p=float(probs[0] + probs[1]) - 1e-6))
    assert (nucleus > 0).tolist() == [True, True, False, False, False]
    assert float(nucleus.sum()) == pytest.approx(1.0)
