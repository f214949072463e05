"""Proposers: draft a tree of candidate tokens with the EAGLE head, for the target to verify.

Both proposers share `HeadDrafter`, which keeps the head's KV cache in step with the accepted text
and feeds drafted nodes through the head with an ancestor mask. They differ only in which nodes
they expand:

* StaticTreeProposer (EAGLE-1): a fixed tree of child ranks, the same every step.
* DynamicTreeProposer (EAGLE-2): expand, at each depth, the `top_k` nodes of highest path
  confidence (product of draft probabilities from the root), each with its `top_k` most likely
  children; then rerank every drafted node by path confidence and keep the best
  `total_tokens - 1` (plus the root) as the tree to verify.

The head kind is the drafter's business, not the proposers': `make_drafter` gives an EAGLE-1/2
head a HeadDrafter (scores through the target's lm_head, reads the final-norm feature) and an
EAGLE-3 head an Eagle3Drafter (reads three layer inputs, scores through its own lm_head over its
draft vocabulary); a proposer exposes its drafter's `features` so the decode loop asks the target
for them.

Positions: with C tokens in the accepted context the root sits at position C, a node of depth d
at C + d, and the head's entry that drafts the children of a node of depth d sits at C + d - 1
(the head predicts the feature of the *next* position from the current feature and next token).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch

from eagle2.cache import PositionIndexedLayer
from eagle2.eagle3_head import Eagle3Head
from eagle2.head import DraftHead
from eagle2.kernels import use_few_row_linears
from eagle2.static import VIEW_MULTIPLE, FixedSlotLayer, SlotCursor, StaticTargetModel, compiled_for, round_up
from eagle2.target import FINAL_NORM, FeatureSpec, TargetModel
from eagle2.tree import DraftTree, StaticTreeShape, load_static_tree

logger = logging.getLogger(__name__)


class Proposer(Protocol):
    """What the decode loop needs from a drafting method."""

    max_tree_size: int  # most tokens (root included) a proposed tree can have
    features: FeatureSpec  # the target features begin/advance take (the decode loop assumes FINAL_NORM if absent)

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int) -> None:
        """Start a generation: prompt ids [P], the target's features at them [P, H], the first new token."""

    def propose(self, max_depth: int) -> DraftTree:
        """A tree rooted at the current root token, no deeper than `max_depth` (>= 0)."""

    def advance(self, path_features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """The target accepted a path: its nodes' features [a, H] and the a tokens that follow each
        (the accepted drafts after the root, then the bonus token, which becomes the new root)."""

    def warm_up(self) -> None:
        """Before any timed generation: compile the shapes a generation may meet that a short
        warm-up generation need not (a no-op on eager paths)."""


@dataclass(frozen=True)
class DraftLevel:
    """Children drafted for a batch of nodes: row i holds the top children of node i."""

    tokens: torch.Tensor  # [rows, k] long
    log_probs: torch.Tensor  # [rows, k] float32
    features: torch.Tensor  # [rows, H] the head's predicted feature at each parent (input for its children)


class HeadDrafter:
    """Runs the draft head for one generation: context catch-up, then tree expansion on top of it."""

    features: FeatureSpec = FINAL_NORM  # EAGLE-1/2 heads read the target's final-norm output

    def __init__(self, head: DraftHead, target: TargetModel, draft_vocab: torch.Tensor | None = None) -> None:
        self.head = head.to(device=target.device, dtype=target.dtype).eval()
        self.target = target
        if draft_vocab is None:
            draft_vocab = head.draft_vocab
        # With a reduced draft vocabulary (FR-Spec), only those rows of lm_head are scored.
        self.draft_vocab = None if draft_vocab is None else draft_vocab.to(target.device)
        self.scorer = target.draft_scorer(self.draft_vocab)
        self.vocab_size = self.scorer.out_features  # how many distinct tokens the drafter can propose
        self.cache: list[PositionIndexedLayer] = []
        self.context_length = 0  # head entries that belong to accepted text
        self.pending_features: torch.Tensor | None = None  # [m, H] not yet fed to the head
        self.pending_tokens: torch.Tensor | None = None  # [m]
        self.root = -1

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int, capacity: int) -> None:
        self.cache = self.head.new_cache(capacity)
        self.context_length = 0
        device = prompt_ids.device
        self.pending_features = prompt_features
        self.pending_tokens = torch.cat((prompt_ids[1:], torch.tensor([root], device=device)))
        self.root = root

    def advance(self, path_features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.pending_features = path_features
        self.pending_tokens = next_tokens
        self.root = int(next_tokens[-1])

    def draft_children(self, features: torch.Tensor, k: int) -> DraftLevel:
        """Top-k draft tokens after each of the head outputs `features` [rows, H]."""
        logits = self.scorer(features).float()
        log_probs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(log_probs, k, dim=-1)
        tokens = top.indices if self.draft_vocab is None else self.draft_vocab[top.indices]
        return DraftLevel(tokens=tokens, log_probs=top.values, features=features)

    def catch_up(self, k: int) -> DraftLevel:
        """Feed the pending accepted tokens to the head; return the root's top-k children."""
        count = self.pending_tokens.shape[0]
        positions = torch.arange(self.context_length, self.context_length + count, device=self.pending_tokens.device)
        out = self._run_head(
            self.target.embed_tokens(self.pending_tokens)[None],
            self.pending_features[None].to(self.target.dtype),
            positions[None],
            self._causal_mask(count),
            from_target=True,
        )[0]
        self.context_length += count
        return self.draft_children(out[-1:], k)

    def _causal_mask(self, count: int) -> torch.Tensor | None:
        if count == 1:
            return None
        device, dtype = self.target.device, self.target.dtype
        mask = torch.zeros(1, 1, count, self.context_length + count, dtype=dtype, device=device)
        future = torch.ones(count, count, dtype=torch.bool, device=device).triu(1)
        mask[0, 0, :, self.context_length :].masked_fill_(future, torch.finfo(dtype).min)
        return mask

    def expand(self, tokens: torch.Tensor, features: torch.Tensor, depth: int, visible: torch.Tensor, k: int) -> DraftLevel:
        """Feed drafted nodes of one depth through the head and draft their top-k children.

        tokens [r], features [r, H] (the parent's predicted feature); `visible` [r, fed + r] bool says
        which already-fed drafted entries (and which of these new ones) each row may attend to.
        """
        rows = tokens.shape[0]
        device, dtype = self.target.device, self.target.dtype
        fed = visible.shape[1] - rows
        mask = torch.zeros(1, 1, rows, self.context_length + fed + rows, dtype=dtype, device=device)
        mask[0, 0, :, self.context_length :].masked_fill_(~visible, torch.finfo(dtype).min)
        positions = torch.full((1, rows), self.context_length + depth - 1, device=device)
        out = self._run_head(self.target.embed_tokens(tokens)[None], features[None], positions, mask, from_target=False)[0]
        return self.draft_children(out, k)

    def _run_head(self, embeddings, features, positions, mask, *, from_target: bool) -> torch.Tensor:
        """One head forward on its cache; `from_target`: the features are the target's (catch-up),
        not the head's own outputs (drafted nodes). EAGLE-1/2 heads treat both alike."""
        return self.head(embeddings, features, positions, mask=mask, cache=self.cache)

    def warm_up(self, k: int, longest_catch_up: int) -> None:
        """Compile ahead of timing whatever catch-up shapes a generation can meet (nothing to do
        for an eager drafter); `longest_catch_up` = deepest accepted path + 1 (the bonus token)."""

    def rewind(self) -> None:
        """Drop the drafted entries from the head's cache, keeping the accepted context."""
        for layer in self.cache:
            layer.truncate(self.context_length)


class Eagle3Drafter(HeadDrafter):
    """HeadDrafter for an EAGLE-3 head: target features are three layer inputs (fc-projected by the
    head at catch-up), drafted nodes feed the head's own pre-norm output back, and draft logits come
    from the head's own norm + lm_head over its draft vocabulary, mapped to target ids via d2t."""

    def __init__(self, head: Eagle3Head, target: TargetModel, draft_vocab: torch.Tensor | None = None) -> None:
        if draft_vocab is not None:
            raise ValueError("an EAGLE-3 head has its own draft vocabulary (d2t); draft_vocab must be None")
        self.features = head.feature_spec(target.num_layers)
        width = self.features.width(target.hidden_size)
        if head.fc.in_features != width:
            raise ValueError(
                f"EAGLE-3 head fc takes {head.fc.in_features} features but this target's three layer inputs are {width} wide "
                f"(hidden {target.hidden_size}); this head was trained for another model"
            )
        if head.config.hidden_size != target.embed_tokens.weight.shape[1] or head.t2d.numel() != target.vocab_size:
            raise ValueError(
                f"EAGLE-3 head (hidden {head.config.hidden_size}, vocabulary {head.t2d.numel()}) does not fit the target's "
                f"embedding {tuple(target.embed_tokens.weight.shape)}"
            )
        self.head = head.to(device=target.device, dtype=target.dtype).eval()
        self.target = target
        self.token_ids = self.head.draft_token_ids()  # [draft_vocab_size] target id of each draft index
        self.vocab_size = head.draft_vocab_size
        self.cache: list[PositionIndexedLayer] = []
        self.context_length = 0
        self.pending_features: torch.Tensor | None = None
        self.pending_tokens: torch.Tensor | None = None
        self.root = -1

    def _run_head(self, embeddings, features, positions, mask, *, from_target: bool) -> torch.Tensor:
        return self.head(embeddings, features, positions, mask=mask, cache=self.cache, from_target=from_target)

    def draft_children(self, features: torch.Tensor, k: int) -> DraftLevel:
        log_probs = torch.log_softmax(self.head.logits(features).float(), dim=-1)
        top = torch.topk(log_probs, k, dim=-1)
        return DraftLevel(tokens=self.token_ids[top.indices], log_probs=top.values, features=features)


class StaticHeadDrafter(HeadDrafter):
    """HeadDrafter at static shapes, for a StaticTargetModel: the draft loop's counterpart of the
    static target path, so that a compiled target drafts with a compiled head.

    * The head's KV cache has a fixed capacity, is allocated once and reused by every generation
      (buffer identity keeps compiled graphs valid); a step writes its rows at slots and attends to
      a view of the first `view` slots, rounded up to VIEW_MULTIPLE. Drafted entries past the
      accepted context are simply overwritten by the next step (rewind moves nothing).
    * Context catch-up (the accepted path + bonus token, 1 to depth + 1 tokens) is padded to the
      next of CATCH_UP_ROWS; padding rows sit past the real ones, see only their own slot, and
      their slots are overwritten by the drafts that follow. A longer catch-up (the prompt) runs at
      its own length, uncompiled.
    * Expansion rows are fixed per depth by the proposer (top_k for EAGLE-2), so each depth
      reuses one graph.
    * One call does embedding, head layers, scoring over the draft vocabulary, log-softmax and
      top-k; with compile=True that call is torch.compile'd (inductor on a CPU, CUDA graphs on
      CUDA), one graph per (rows, k), the view dimension dynamic.
    """

    CATCH_UP_ROWS = (1, 2, 4, 8, 16)
    # Head entries beyond the target's context: one step's drafts (<= depth * top_k, or a static
    # tree) plus catch-up padding.
    DRAFT_SLACK = 4 * VIEW_MULTIPLE

    def __init__(self, head: DraftHead, target: StaticTargetModel, draft_vocab: torch.Tensor | None = None, *, compile: bool = False) -> None:
        if target.linear_kernel == "few_row":
            use_few_row_linears(head)  # the head's bias-free bf16 layers; a no-op once done
        super().__init__(head, target, draft_vocab)
        self.cursor = SlotCursor(target.device)
        self._allocate(target.cache_capacity + self.DRAFT_SLACK)
        self.compiled = compile
        # Static graphs per (rows, k, scored rows, draft vocabulary), the attention view dynamic:
        # several trees and vocabularies share this code, and dimensions dynamic across them gave
        # graphs that other strides or offsets of the same shapes missed (compiling in timed runs).
        self._scored_step = (
            compiled_for(
                self._head_step, target.device, automatic_dynamic=False, autotune=target.linear_kernel == "autotune", cpp_wrapper=target.cpp_wrapper
            )
            if compile
            else self._head_step
        )

    def _allocate(self, capacity: int) -> None:
        self.capacity = round_up(capacity, VIEW_MULTIPLE)
        self.slot_cache = [FixedSlotLayer(self.capacity, self.cursor) for _ in self.head.layers]

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int, capacity: int) -> None:
        # The target's cache is sized for this generation before the proposer begins.
        needed = max(capacity, self.target.cache_capacity + self.DRAFT_SLACK)
        if needed > self.capacity:
            logger.warning("static draft cache grows from %d to %d entries (a compiled head recompiles)", self.capacity, needed)
            self._allocate(needed)
        self.cache = self.slot_cache
        self.context_length = 0
        self.pending_features = prompt_features
        self.pending_tokens = torch.cat((prompt_ids[1:], torch.tensor([root], device=prompt_ids.device)))
        self.root = root

    def _head_step(self, tokens, features, positions, mask, slots, score_rows, k: int):
        """Head forward on `tokens` [q] / `features` [q, H] written at `slots`, then the top-k
        children of the rows `score_rows`: (tokens [r, k], log-probs [r, k], features [q, H])."""
        self.cursor.slots = slots
        self.cursor.view = mask.shape[-1]
        out = self.head(self.target.embed_tokens(tokens)[None], features[None], positions[None], mask=mask, cache=self.slot_cache)[0]
        logits = self.scorer(out[score_rows]).float()
        top = torch.topk(torch.log_softmax(logits, dim=-1), k, dim=-1)
        children = top.indices if self.draft_vocab is None else self.draft_vocab[top.indices]
        return children, top.values, out

    def _run_step(self, tokens, features, positions, visible, first_slot: int, score_rows, k: int, *, compiled: bool) -> DraftLevel:
        """Rows written at slots first_slot, first_slot + 1, ...; each sees the accepted context and,
        beyond it, what `visible` [q, view - context_length] (bool) allows."""
        rows = tokens.shape[0]
        device, dtype = self.target.device, self.target.dtype
        view = visible.shape[1] + self.context_length
        mask = torch.zeros(1, 1, rows, view, dtype=dtype, device=device)
        mask[0, 0, :, self.context_length :].masked_fill_(~visible, torch.finfo(dtype).min)
        slots = torch.arange(first_slot, first_slot + rows, device=device)
        if compiled:
            torch._dynamo.mark_dynamic(mask, 3)  # one graph per (rows, k), whatever the view
            step = self._scored_step
        else:
            step = self._head_step
        # Contiguous rows: the first depth's features are one row expanded (stride 0), later ones
        # gathered; one layout means one graph per shape.
        children, log_probs, out = step(tokens, features.to(dtype).contiguous(), positions, mask, slots, score_rows, k)
        if compiled and device.type == "cuda":
            # CUDA-graph outputs live in static buffers that the next replay of the same graph (the
            # next depth) overwrites; the proposer keeps every depth's drafts until the rerank.
            children, log_probs, out = children.clone(), log_probs.clone(), out.clone()
        return DraftLevel(tokens=children, log_probs=log_probs, features=out)

    def _view(self, used: int) -> int:
        if used > self.capacity:
            raise ValueError(f"the static draft cache holds {self.capacity} entries; this step needs {used}")
        return min(round_up(used, VIEW_MULTIPLE), self.capacity)

    def catch_up(self, k: int) -> DraftLevel:
        count = self.pending_tokens.shape[0]
        device = self.pending_tokens.device
        padded = next((rows for rows in self.CATCH_UP_ROWS if rows >= count), count)
        view = self._view(self.context_length + padded)
        tokens = torch.zeros(padded, dtype=torch.long, device=device)
        tokens[:count] = self.pending_tokens
        features = torch.zeros(padded, self.pending_features.shape[-1], dtype=self.target.dtype, device=device)
        features[:count] = self.pending_features
        positions = torch.full((padded,), self.context_length, dtype=torch.long, device=device)
        positions[:count] += torch.arange(count, device=device)
        # Real rows: causal among the new rows; padding rows: their own slot only.
        visible = torch.zeros(padded, view - self.context_length, dtype=torch.bool, device=device)
        visible[:, :padded] = torch.eye(padded, dtype=torch.bool, device=device)
        visible[:count, :count] = torch.ones(count, count, dtype=torch.bool, device=device).tril()
        level = self._run_step(
            tokens, features, positions, visible, self.context_length, torch.tensor([count - 1], device=device), k,
            compiled=self.compiled and padded in self.CATCH_UP_ROWS,
        )
        self.context_length += count
        return DraftLevel(tokens=level.tokens, log_probs=level.log_probs, features=level.features[count - 1 : count])

    def expand(self, tokens: torch.Tensor, features: torch.Tensor, depth: int, visible: torch.Tensor, k: int) -> DraftLevel:
        rows = tokens.shape[0]
        device = tokens.device
        fed = visible.shape[1] - rows
        view = self._view(self.context_length + fed + rows)
        padded_visible = torch.zeros(rows, view - self.context_length, dtype=torch.bool, device=device)
        padded_visible[:, : fed + rows] = visible
        positions = torch.full((rows,), self.context_length + depth - 1, device=device)
        return self._run_step(
            tokens, features, positions, padded_visible, self.context_length + fed, torch.arange(rows, device=device), k, compiled=self.compiled
        )

    @torch.inference_mode()
    def warm_up(self, k: int, longest_catch_up: int) -> None:
        # Under inference mode, as the decode loop runs: dynamo guards on the grad mode, so graphs
        # compiled with grad enabled would not serve a generation.
        # A catch-up's row count follows the accepted length, so a short warm-up generation meets
        # only the sizes its acceptances happened to produce and the rest would compile inside a
        # timed generation (seconds each). Run every padded size up to the longest possible one on
        # dummy rows; their slots lie past any accepted context and are overwritten later.
        if not self.compiled:
            return
        device, width = self.target.device, self.head.config.hidden_size
        longest = next((rows for rows in self.CATCH_UP_ROWS if rows >= longest_catch_up), self.CATCH_UP_ROWS[-1])
        saved_length = self.context_length
        self.context_length = 0
        sizes = [(rows, True) for rows in self.CATCH_UP_ROWS if rows <= longest]
        if not all(layer.is_initialized for layer in self.slot_cache):
            # A generation's first head step (the prompt, uncompiled) allocates the cache; a graph
            # compiled on an unallocated one would not serve the later steps.
            sizes.insert(0, (1, False))
        for rows, compiled in sizes:
            view = self._view(rows)
            visible = torch.zeros(rows, view, dtype=torch.bool, device=device)
            visible[:, :rows] = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
            self._run_step(
                torch.zeros(rows, dtype=torch.long, device=device),
                torch.zeros(rows, width, dtype=self.target.dtype, device=device),
                torch.arange(rows, device=device),
                visible,
                0,
                torch.tensor([rows - 1], device=device),
                k,
                compiled=compiled,
            )
        self.context_length = saved_length

    def rewind(self) -> None:
        pass  # drafted entries lie past context_length and are overwritten by the next step


def make_drafter(head: DraftHead | Eagle3Head, target: TargetModel, draft_vocab: torch.Tensor | None = None) -> HeadDrafter:
    """The drafter for a head's kind (EAGLE-1/2 DraftHead or EAGLE-3 Eagle3Head) and the target's
    path: a StaticTargetModel gets a StaticHeadDrafter for EAGLE-1/2 heads (compiled with it)."""
    if isinstance(head, Eagle3Head):
        return Eagle3Drafter(head, target, draft_vocab)
    if isinstance(head, DraftHead):
        if isinstance(target, StaticTargetModel):
            return StaticHeadDrafter(head, target, draft_vocab, compile=target.compiled)
        return HeadDrafter(head, target, draft_vocab)
    raise TypeError(f"unknown draft head type {type(head).__name__}; expected DraftHead (EAGLE-1/2) or Eagle3Head (EAGLE-3)")


def _tree_from_nodes(
    root: int, tokens: list[int] | torch.Tensor, parents: list[int], log_probs: torch.Tensor, device: torch.device
) -> DraftTree:
    token_tensor = torch.as_tensor(tokens, dtype=torch.long, device=device)
    return DraftTree.from_parents(
        torch.cat((torch.tensor([root], device=device), token_tensor)),
        torch.tensor([-1] + parents, dtype=torch.long, device=device),
        torch.cat((torch.ones(1, device=device), log_probs.float().exp().to(device))),
    )


class StaticTreeProposer:
    """EAGLE-1: the same tree of child ranks every step (default mc_sim_7b_63)."""

    def __init__(self, head: DraftHead | Eagle3Head, target: TargetModel, tree: str | list = "mc_sim_7b_63", draft_vocab: torch.Tensor | None = None) -> None:
        self.drafter = make_drafter(head, target, draft_vocab)
        self.features = self.drafter.features
        shape = load_static_tree(tree)
        if max(max(path) for path in shape.paths) >= self.drafter.vocab_size:
            # A vocabulary smaller than the tree is wide has no token of that rank.
            paths = [p for p in shape.paths if max(p) < self.drafter.vocab_size]
            shape = StaticTreeShape.from_paths(paths, name=f"{shape.name}[<{self.drafter.vocab_size}]")
        self.shape: StaticTreeShape = shape
        self.max_tree_size = shape.size
        self.children: list[list[int]] = [[] for _ in range(shape.size)]
        for node in range(1, shape.size):
            self.children[shape.parents[node]].append(node)
        # Width of top-k needed under each node: its largest child rank + 1.
        self.width = [max((shape.ranks[c] for c in kids), default=-1) + 1 for kids in self.children]
        self.by_depth = [[n for n in range(shape.size) if shape.depths[n] == d] for d in range(shape.max_depth + 1)]
        self.ancestors = self._template_ancestors()

    def _template_ancestors(self) -> torch.Tensor:
        n = self.shape.size
        mask = torch.eye(n, dtype=torch.bool)
        for node in range(1, n):
            mask[node] |= mask[self.shape.parents[node]]
        return mask

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int) -> None:
        self.drafter.begin(prompt_ids, prompt_features, root, capacity=prompt_ids.shape[0] + 4 * self.max_tree_size + 64)

    def warm_up(self) -> None:
        self.drafter.warm_up(max(self.width[0], 1), self.shape.max_depth + 1)

    def advance(self, path_features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.drafter.advance(path_features, next_tokens)

    @torch.inference_mode()
    def propose(self, max_depth: int) -> DraftTree:
        drafter, shape = self.drafter, self.shape
        device = self.drafter.target.device
        level = drafter.catch_up(max(self.width[0], 1))
        depth_limit = min(max_depth, shape.max_depth)
        tokens = [0] * shape.size
        log_probs = torch.zeros(shape.size)
        # Template nodes that were fed through the head, in feeding order, for the ancestor mask.
        fed: list[int] = []
        parent_rows = {0: 0}  # template node -> row in `level` holding its children
        for depth in range(1, depth_limit + 1):
            # One device-to-host copy per depth; indexing device tensors per node would sync per node.
            level_tokens = level.tokens.tolist()
            level_log_probs = level.log_probs.cpu()
            for node in self.by_depth[depth]:
                row = parent_rows[shape.parents[node]]
                tokens[node] = level_tokens[row][shape.ranks[node]]
                log_probs[node] = level_log_probs[row, shape.ranks[node]]
            if depth == depth_limit:
                break
            expand = [n for n in self.by_depth[depth] if self.children[n]]
            if not expand:
                depth_limit = depth
                break
            visible = self.ancestors[expand][:, fed + expand].to(device)
            features = level.features[[parent_rows[shape.parents[n]] for n in expand]]
            level = drafter.expand(torch.tensor([tokens[n] for n in expand], device=device), features, depth, visible, max(self.width[n] for n in expand))
            parent_rows = {n: i for i, n in enumerate(expand)}
            fed += expand
        drafter.rewind()
        kept = [n for n in range(1, shape.size) if shape.depths[n] <= depth_limit]
        index = {0: 0, **{n: i + 1 for i, n in enumerate(kept)}}
        return _tree_from_nodes(
            drafter.root,
            [tokens[n] for n in kept],
            [index[shape.parents[n]] for n in kept],
            log_probs[kept],
            device,
        )


class DynamicTreeProposer:
    """EAGLE-2's context-aware dynamic tree.

    depth: deepest drafted token (= head forwards per step, context catch-up included);
    top_k: nodes expanded per depth and children drafted per expanded node;
    total_tokens: tokens sent to the target per step, root included.
    The official code's (depth=D, top_k=K, total_token=T) equals (depth=D+1, top_k=K, total_tokens=T) here.
    """

    def __init__(self, head: DraftHead | Eagle3Head, target: TargetModel, depth: int = 6, top_k: int = 10, total_tokens: int = 60, draft_vocab: torch.Tensor | None = None) -> None:
        for name, value, low in (("depth", depth, 1), ("top_k", top_k, 1), ("total_tokens", total_tokens, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"eagle2 {name} must be an integer >= {low}, got {value!r}")
        self.depth, self.top_k, self.total_tokens = depth, top_k, total_tokens
        self.drafter = make_drafter(head, target, draft_vocab)
        self.features = self.drafter.features
        # A vocabulary smaller than top_k cannot offer top_k distinct children.
        self.branch = min(top_k, self.drafter.vocab_size)
        self.max_tree_size = min(total_tokens, 1 + self.branch + (depth - 1) * self.branch**2)

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int) -> None:
        self.drafter.begin(prompt_ids, prompt_features, root, capacity=prompt_ids.shape[0] + 4 * self.depth * self.top_k + 64)

    def warm_up(self) -> None:
        self.drafter.warm_up(self.branch, self.depth + 1)

    def advance(self, path_features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.drafter.advance(path_features, next_tokens)

    @torch.inference_mode()
    def propose(self, max_depth: int) -> DraftTree:
        drafter, k = self.drafter, self.branch
        device = drafter.target.device
        depth_limit = min(max_depth, self.depth)
        level = drafter.catch_up(k)
        if depth_limit == 0 or self.total_tokens == 1:
            drafter.rewind()
            return _tree_from_nodes(drafter.root, [], [], torch.zeros(0), device)
        # Every drafted node, in creation order (depth by depth); parents index this list, -1 = root.
        node_tokens = [level.tokens[0]]
        node_log_probs = [level.log_probs[0]]
        node_scores = [level.log_probs[0]]
        node_parents = [torch.full((k,), -1, dtype=torch.long, device=device)]
        frontier = torch.arange(k, device=device)  # node ids fed next
        frontier_scores = level.log_probs[0]
        frontier_features = level.features.expand(k, -1)
        created = k
        fed_ancestors = torch.zeros(0, 0, dtype=torch.bool, device=device)  # among fed entries
        fed_parent_row = torch.zeros(k, dtype=torch.long, device=device)  # row of each frontier node's parent among fed
        for depth in range(1, depth_limit):
            rows = frontier.shape[0]
            fed = fed_ancestors.shape[0]
            if fed:
                inherited = fed_ancestors[fed_parent_row]  # [rows, fed]
            else:
                inherited = torch.zeros(rows, 0, dtype=torch.bool, device=device)
            visible = torch.cat((inherited, torch.eye(rows, dtype=torch.bool, device=device)), dim=1)
            level = drafter.expand(torch.cat(node_tokens)[frontier], frontier_features, depth, visible, k)
            fed_ancestors = torch.cat((torch.cat((fed_ancestors, torch.zeros(fed, rows, dtype=torch.bool, device=device)), dim=1), visible), dim=0)
            child_scores = frontier_scores[:, None] + level.log_probs  # [rows, k]
            node_tokens.append(level.tokens.reshape(-1))
            node_log_probs.append(level.log_probs.reshape(-1))
            node_scores.append(child_scores.reshape(-1))
            node_parents.append(frontier.repeat_interleave(k))
            best = torch.topk(child_scores.reshape(-1), min(k, rows * k)).indices
            frontier = created + best
            frontier_scores = child_scores.reshape(-1)[best]
            frontier_features = level.features[best // k]
            fed_parent_row = fed + best // k
            created += rows * k
        drafter.rewind()
        return self._rerank(drafter.root, torch.cat(node_tokens), torch.cat(node_log_probs), torch.cat(node_scores), torch.cat(node_parents), device)

    def _rerank(self, root, tokens, log_probs, scores, parents, device) -> DraftTree:
        """Keep the total_tokens - 1 drafted nodes of highest path confidence, as an ancestor-closed tree."""
        keep_count = min(self.total_tokens - 1, tokens.shape[0])
        # A child's path score never exceeds its parent's (log-probabilities are <= 0); a stable sort
        # breaks ties by creation order, which puts parents first, so the selection is ancestor-closed.
        order = torch.sort(scores, descending=True, stable=True).indices[:keep_count]
        selected = torch.sort(order).values
        new_index = torch.full((tokens.shape[0] + 1,), -1, dtype=torch.long, device=device)
        new_index[selected + 1] = torch.arange(1, keep_count + 1, device=device)
        new_index[0] = 0
        tree_parents = new_index[parents[selected] + 1]
        assert bool((tree_parents >= 0).all()), "reranked draft is not ancestor-closed"
        return DraftTree.from_parents(
            torch.cat((torch.tensor([root], device=device), tokens[selected])),
            torch.cat((torch.tensor([-1], device=device), tree_parents)),
            torch.cat((torch.ones(1, device=device), log_probs[selected].exp())),
        )
