"""Acceptance over a draft tree: pure functions of the tree, the target's logits and a generator.

Greedy: follow, from the root, the child whose token equals the target's argmax at its parent; the
target's argmax at the last accepted node is the bonus token. The output is exactly vanilla greedy.

Sampling (temperature > 0, optional top-k / top-p): the drafts are deterministic (top-k of the
head), so at an accepted node with target distribution p the children x1, x2, ... are tried in turn:
x is accepted with probability r(x), where r is the residual distribution (initially p); a
rejected x is zeroed out of r and r is renormalised. If every child is rejected the bonus token is
drawn from r. Each token y then comes out with probability exactly p(y):
P(x1) = p(x1); P(x2) = (1 - p(x1)) * p(x2) / (1 - p(x1)) = p(x2); ...; and any other y gets
(1 - sum p(xi)) * p(y) / (1 - sum p(xi)) = p(y). Every draw uses the caller's generator, on the CPU
in float64, so a seed gives the same draws on any device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from eagle2.record import SamplingConfig
from eagle2.tree import DraftTree


class LazyLogits:
    """Target logits of tree nodes computed only when the verifier visits the node.

    On a CPU the lm_head over every node of a large tree (60 x 49k x 576 for SmolLM2) costs more
    than the few rows an accepted path needs; on a GPU one batched matmul is cheaper than several
    small ones, so the decode loop uses this on the CPU only.
    """

    def __init__(self, hidden: torch.Tensor, project: Callable[[torch.Tensor], torch.Tensor], likely: list[int] | None = None) -> None:
        self.hidden = hidden  # [n, H]
        self.project = project  # hidden rows [m, H] -> logits [m, V] (the target's lm_head)
        self.rows: dict[int, torch.Tensor] = {}
        # Nodes the verifier will probably visit (the tree's likely chain): their rows are computed in
        # one matmul at the first visit to any of them. On a CPU the lm_head is memory-bound, so a
        # few rows together cost about one weight pass, where row by row costs one pass each.
        self.likely = list(likely or ())

    def __getitem__(self, node: int) -> torch.Tensor:
        if node not in self.rows:
            nodes = self.likely if node in self.likely else [node]
            block = self.project(self.hidden[nodes])
            if block.dtype not in (torch.float32, torch.float64):
                block = block.float()
            for index, row_node in enumerate(nodes):
                self.rows[row_node] = block[index]
            self.likely = []
        return self.rows[node]


@dataclass(frozen=True)
class Verdict:
    path: list[int]  # accepted node indices, root (0) first, in depth order
    bonus: int  # the token the target chooses after the last accepted node


def target_distribution(logits: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p, in float64 on the CPU. logits: [..., V]."""
    scaled = logits.detach().to(device="cpu", dtype=torch.float64) / sampling.temperature
    if sampling.top_k and sampling.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, sampling.top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= sampling.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_token(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One draw from a [V] CPU distribution."""
    return int(torch.multinomial(probs, 1, generator=generator))


def choose_token(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None) -> int:
    """The target's next token from one row of logits [V]: exact argmax, or a draw."""
    if sampling.greedy:
        return int(logits.argmax())
    return sample_token(target_distribution(logits, sampling), generator)


def verify_greedy(tree: DraftTree, logits: torch.Tensor | LazyLogits) -> Verdict:
    """logits: [n, V] target logits at every tree node (or LazyLogits)."""
    if isinstance(logits, torch.Tensor):
        batched = logits.argmax(dim=-1).tolist()  # one device sync for the whole tree

        def argmax(node: int) -> int:
            return batched[node]
    else:

        def argmax(node: int) -> int:
            return int(logits[node].argmax())

    tokens = tree.tokens.tolist()
    children = tree.children
    node, path = 0, [0]
    while True:
        wanted = argmax(node)
        nxt = next((c for c in children[node] if tokens[c] == wanted), None)
        if nxt is None:
            return Verdict(path=path, bonus=wanted)
        path.append(nxt)
        node = nxt


def accept_among_siblings(
    residual: torch.Tensor, candidates: list[int], generator: torch.Generator | None
) -> tuple[int | None, torch.Tensor]:
    """Try candidate tokens in order against the residual distribution [V] (float64, CPU).

    Returns the index of the accepted candidate (or None) and the residual left after the
    rejections (the distribution to draw the bonus token from when none was accepted).
    """
    for index, token in enumerate(candidates):
        chance = float(residual[token])
        if chance > 0.0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < chance:
            return index, residual
        if chance > 0.0:
            residual = residual.clone()
            residual[token] = 0.0
            total = residual.sum()
            if total <= 0.0:
                # Rounding left no mass elsewhere although `token` held all of it: it is the only choice.
                return index, residual
            residual = residual / total
    return None, residual


def verify_sampling(
    tree: DraftTree, logits: torch.Tensor | LazyLogits, sampling: SamplingConfig, generator: torch.Generator | None
) -> Verdict:
    tokens = tree.tokens.tolist()
    children = tree.children
    node, path = 0, [0]
    while True:
        probs = target_distribution(logits[node], sampling)
        kids = children[node]
        accepted, residual = accept_among_siblings(probs, [tokens[c] for c in kids], generator)
        if accepted is None:
            return Verdict(path=path, bonus=sample_token(residual, generator))
        node = kids[accepted]
        path.append(node)


def verify(tree: DraftTree, logits: torch.Tensor | LazyLogits, sampling: SamplingConfig, generator: torch.Generator | None) -> Verdict:
    if sampling.greedy:
        return verify_greedy(tree, logits)
    return verify_sampling(tree, logits, sampling, generator)
