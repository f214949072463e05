"""Draft trees: the tokens a proposer sends to the target in one forward, and their structure.

A tree is stored flat, in topological order (every parent before its children). Node 0 is the root:
the token the target already chose at the end of the previous step, which is not yet in the target's
KV cache. Everything the target needs to verify the tree in one forward (attention mask, position
ids) and everything the verifier needs (children of each node) is derived from the parent pointers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Sequence

import torch

ROOT = 0


@dataclass(frozen=True)
class DraftTree:
    tokens: torch.Tensor  # [n] long, node 0 = root
    parents: torch.Tensor  # [n] long, parents[0] = -1, parents[i] < i
    depths: torch.Tensor  # [n] long, depths[0] = 0
    draft_probs: torch.Tensor  # [n] float32, the head's probability of each node given its parent; root 1.0
    path_scores: torch.Tensor  # [n] float32, log of the product of draft_probs from root to node; root 0.0

    @staticmethod
    def from_parents(
        tokens: torch.Tensor, parents: torch.Tensor, draft_probs: torch.Tensor | None = None
    ) -> "DraftTree":
        """Build a tree from parent pointers (topological order), computing depths and path scores."""
        n = tokens.shape[0]
        if parents.shape != (n,) or n == 0:
            raise ValueError(f"tokens and parents must be 1-D of the same non-zero length, got {tokens.shape}, {parents.shape}")
        parent_list = parents.tolist()
        if parent_list[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parent_list) if i > 0):
            raise ValueError(f"parents must be -1 for the root and point to an earlier node otherwise: {parent_list}")
        if draft_probs is None:
            draft_probs = torch.ones(n, dtype=torch.float32, device=tokens.device)
        depth_list = [0] * n
        score_list = [0.0] * n
        log_probs = draft_probs.float().clamp_min(1e-30).log().tolist()
        for i in range(1, n):
            depth_list[i] = depth_list[parent_list[i]] + 1
            score_list[i] = score_list[parent_list[i]] + log_probs[i]
        return DraftTree(
            tokens=tokens,
            parents=parents,
            depths=torch.tensor(depth_list, dtype=torch.long, device=tokens.device),
            draft_probs=draft_probs,
            path_scores=torch.tensor(score_list, dtype=torch.float32, device=tokens.device),
        )

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @cached_property
    def max_depth(self) -> int:
        return int(self.depths.max())

    @cached_property
    def ancestor_mask(self) -> torch.Tensor:
        """[n, n] bool: mask[i, j] is True when node j is node i or one of its ancestors."""
        n = self.size
        mask = torch.eye(n, dtype=torch.bool, device=self.tokens.device)
        # Rows of one depth only depend on rows of the depth above, so one gather per depth suffices.
        for depth in range(1, self.max_depth + 1):
            rows = (self.depths == depth).nonzero().squeeze(1)
            mask[rows] |= mask[self.parents[rows]]
        return mask

    @cached_property
    def children(self) -> list[list[int]]:
        """children[i]: the nodes whose parent is i, in node order (which proposers keep in draft-rank order)."""
        result: list[list[int]] = [[] for _ in range(self.size)]
        for node, parent in enumerate(self.parents.tolist()):
            if parent >= 0:
                result[parent].append(node)
        return result

    @cached_property
    def likely_chain(self) -> list[int]:
        """Root, then at each depth the most probable child (by draft probability) of the node before:
        the path a verifier most likely walks."""
        probs = self.draft_probs.tolist()
        chain = [0]
        while self.children[chain[-1]]:
            chain.append(max(self.children[chain[-1]], key=lambda child: probs[child]))
        return chain

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root to `node`, both included."""
        parents = self.parents.tolist()
        path = [node]
        while parents[path[-1]] >= 0:
            path.append(parents[path[-1]])
        return path[::-1]

    def leaf_paths(self) -> list[list[int]]:
        """Every root-to-leaf path, as node indices."""
        return [self.path_to(node) for node, kids in enumerate(self.children) if not kids]


def subtree(tree: DraftTree, keep: torch.Tensor) -> DraftTree:
    """The tree restricted to the nodes `keep` (sorted node indices, ancestor-closed, root included)."""
    n = tree.size
    new_index = torch.full((n,), -1, dtype=torch.long, device=tree.tokens.device)
    new_index[keep] = torch.arange(keep.shape[0], device=tree.tokens.device)
    old_parents = tree.parents[keep]
    new_parents = torch.where(old_parents >= 0, new_index[old_parents.clamp_min(0)], old_parents)
    assert bool((new_parents[1:] >= 0).all()), "subtree selection is not ancestor-closed"
    return DraftTree(
        tokens=tree.tokens[keep],
        parents=new_parents,
        depths=tree.depths[keep],
        draft_probs=tree.draft_probs[keep],
        path_scores=tree.path_scores[keep],
    )


@dataclass(frozen=True)
class StaticTreeShape:
    """A static (EAGLE-1 / Medusa style) tree, compiled once from its list of paths.

    Each path is a sequence of child ranks: [0, 2] is the third most likely child of the most likely
    child of the root. Nodes are numbered in breadth-first order, root first.
    """

    name: str
    paths: tuple[tuple[int, ...], ...]
    parents: tuple[int, ...]  # parent node of each node, root = -1
    ranks: tuple[int, ...]  # child rank of each node under its parent, root = -1
    depths: tuple[int, ...]

    @staticmethod
    def from_paths(paths: Sequence[Sequence[int]], name: str = "custom") -> "StaticTreeShape":
        normalized = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
        if not normalized:
            raise ValueError(f"tree {name!r} has no paths")
        for path in normalized:
            if not path or any(rank < 0 for rank in path):
                raise ValueError(f"tree {name!r}: every path must be a non-empty list of ranks >= 0, got {list(path)}")
            if len(path) > 1 and path[:-1] not in normalized:
                raise ValueError(f"tree {name!r}: path {list(path)} has no parent path {list(path[:-1])}")
        index = {(): 0}
        parents, ranks, depths = [-1], [-1], [0]
        for path in normalized:
            index[path] = len(parents)
            parents.append(index[path[:-1]])
            ranks.append(path[-1])
            depths.append(len(path))
        return StaticTreeShape(name, tuple(normalized), tuple(parents), tuple(ranks), tuple(depths))

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def max_depth(self) -> int:
        return max(self.depths)


def builtin_tree_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in resources.files("eagle2.trees").iterdir() if p.name.endswith(".json"))


def load_static_tree(spec: str | Sequence[Sequence[int]]) -> StaticTreeShape:
    """A built-in tree by name (see `builtin_tree_names`), or a tree given as a list of paths."""
    if not isinstance(spec, str):
        return StaticTreeShape.from_paths(spec)
    names = builtin_tree_names()
    if spec not in names:
        raise KeyError(f"unknown static tree {spec!r}; built-in trees: {', '.join(names)} (or give a list of paths)")
    paths = json.loads(resources.files("eagle2.trees").joinpath(f"{spec}.json").read_text())["paths"]
    return StaticTreeShape.from_paths(paths, name=spec)
