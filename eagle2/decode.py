"""THE decode loop: vanilla decoding and every speculative method, on one target adapter and cache.

    prefill the prompt -> root token
    repeat:  draft a tree rooted at the root        (proposer; vanilla: the root alone)
             verify it in one target forward         (tree mask, depth positions)
             accept a path + one bonus token         (verify.py; lossless)
             keep the path in the KV cache, hand its features to the proposer; bonus = new root
    until a stop token, max_new_tokens or the context limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence

import torch

from eagle2.draft import Proposer
from eagle2.record import CONFIDENCE_BINS, GREEDY, GenerationRecord, SamplingConfig
from eagle2.target import FINAL_NORM, TargetModel
from eagle2.tree import DraftTree
from eagle2.verify import LazyLogits, Verdict, choose_token, verify

logger = logging.getLogger(__name__)


class Stopwatch:
    """Wall-clock regions, with a device synchronisation at each boundary when asked (GPU timing)."""

    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.synchronize = synchronize and device.type == "cuda"
        self.device = device
        self.totals: dict[str, float] = {}
        self._region: str | None = None
        self._start = 0.0

    def now(self) -> float:
        if self.synchronize:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def switch(self, region: str | None) -> None:
        """End the current region (if any) and start `region` (None = stop)."""
        now = self.now()
        if self._region is not None:
            self.totals[self._region] = self.totals.get(self._region, 0.0) + now - self._start
        self._region, self._start = region, now


class StepStats:
    """Per-step acceptance statistics accumulated into a GenerationRecord."""

    def __init__(self) -> None:
        self.accept_lengths: list[int] = []
        self.depth_reached: list[int] = []
        self.depth_accepted: list[int] = []
        self.confidence_checked = [0] * CONFIDENCE_BINS
        self.confidence_accepted = [0] * CONFIDENCE_BINS
        self.tree_tokens = 0

    def add_tree(self, tree: DraftTree, verdict: Verdict) -> None:
        self.tree_tokens += tree.size
        children = tree.children
        on_path = set(verdict.path)
        probs = tree.draft_probs.tolist()
        for node in verdict.path:
            for child in children[node]:
                bin_index = min(int(probs[child] * CONFIDENCE_BINS), CONFIDENCE_BINS - 1)
                self.confidence_checked[bin_index] += 1
                self.confidence_accepted[bin_index] += child in on_path
        accepted_depth = len(verdict.path) - 1
        checked_depth = accepted_depth + (1 if children[verdict.path[-1]] else 0)
        while len(self.depth_reached) < checked_depth:
            self.depth_reached.append(0)
            self.depth_accepted.append(0)
        for depth in range(checked_depth):
            self.depth_reached[depth] += 1
            self.depth_accepted[depth] += depth < accepted_depth


# On a CPU the lm_head streams its whole weight for any few rows: SmolLM2's packed bf16 lm_head took
# 3.4 / 3.4 / 3.9 / 4.6 / 10.6 ms for 1 / 8 / 12 / 16 / 60 rows (2 threads), while lazy verification
# of 8- and 12-node EAGLE-2 trees needed 1.4 passes per step on MT-bench (the likely chain, then a
# row whenever a sibling is accepted). Up to this many nodes, one pass over all of them is cheaper.
BATCHED_LOGITS_MAX_NODES = 12


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    target: TargetModel,
    prompt_ids: Sequence[int] | torch.Tensor,
    *,
    max_new_tokens: int,
    proposer: Proposer | None = None,
    sampling: SamplingConfig = GREEDY,
    stop_token_ids: Collection[int] = (),
    generator: torch.Generator | None = None,
    profile: bool = False,
    lazy_logits: bool | None = None,
) -> GenerationRecord:
    """Generate up to `max_new_tokens` after `prompt_ids` with vanilla decoding (proposer=None)
    or a speculative proposer. `profile` synchronises the device around each phase to split the
    time into draft / verify / other; without it only prefill and total time are measured."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = target.device
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).to(device).reshape(-1)
    if prompt.numel() == 0:
        raise ValueError("the prompt is empty")
    if prompt.numel() >= target.max_context:
        raise ValueError(f"the prompt has {prompt.numel()} tokens; the model's context is {target.max_context}")
    stops = set(int(t) for t in stop_token_ids)
    tree_room = proposer.max_tree_size if proposer is not None else 1
    # The target features the proposer's head reads (Proposer.features; EAGLE-1/2's final-norm
    # output for a proposer that does not say), taken from the prefill and verification forwards.
    features = FINAL_NORM if proposer is None else getattr(proposer, "features", FINAL_NORM)
    # Generation stops at the context limit, so a huge max_new_tokens never needs more than the context.
    cache = target.new_cache(min(prompt.numel() + max_new_tokens, target.max_context) + tree_room + 1)
    watch = Stopwatch(device, synchronize=profile)
    stats = StepStats()
    if lazy_logits is None:
        # On a CPU, logits only for the nodes the verifier visits (see LazyLogits) when the tree is
        # large; on a GPU, and for small trees, all at once.
        lazy_logits = device.type == "cpu" and tree_room > BATCHED_LOGITS_MAX_NODES

    _synchronize(device)
    started = time.perf_counter()
    out = target.forward(prompt, cache, logits_for=slice(-1, None), features=features)
    root = choose_token(out.logits[-1], sampling, generator)
    _synchronize(device)
    prefill_time = time.perf_counter() - started

    emitted = [root]
    stats.accept_lengths.append(1)
    stop_reason = "eos" if root in stops else ("max_new_tokens" if max_new_tokens == 1 else "")
    if not stop_reason and proposer is not None:
        watch.switch("draft")
        proposer.begin(prompt, out.head_features, root)

    while not stop_reason:
        remaining = max_new_tokens - len(emitted)
        # The root takes position cache.length; a node of depth d takes cache.length + d.
        room = target.max_context - 1 - cache.length
        if room < 0:
            stop_reason = "context_limit"
            break
        if proposer is None:
            out = target.forward(torch.tensor([root], device=device), cache)
            new_tokens = [choose_token(out.logits[0], sampling, generator)]
        else:
            watch.switch("draft")
            # Drafts beyond the remaining budget could never be emitted.
            tree = proposer.propose(max_depth=min(remaining - 1, room))
            watch.switch("verify")
            start = cache.length
            if lazy_logits:
                out = target.forward(tree.tokens, cache, tree=tree, logits_for=slice(0, 0), features=features, pad_to=tree_room)
                verdict = verify(tree, LazyLogits(out.hidden, target.logits_of, likely=tree.likely_chain), sampling, generator)
            else:
                out = target.forward(tree.tokens, cache, tree=tree, features=features, pad_to=tree_room)
                verdict = verify(tree, out.logits, sampling, generator)
            watch.switch("other")
            cache.keep(start, verdict.path)
            new_tokens = tree.tokens[verdict.path[1:]].tolist() + [verdict.bonus]
            stats.add_tree(tree, verdict)
        for index, token in enumerate(new_tokens):
            if token in stops:
                new_tokens = new_tokens[: index + 1]
                stop_reason = "eos"
                break
        if len(new_tokens) >= remaining:
            new_tokens = new_tokens[:remaining]
            stop_reason = stop_reason or "max_new_tokens"
        emitted.extend(new_tokens)
        stats.accept_lengths.append(len(new_tokens))
        root = new_tokens[-1]
        if proposer is not None and not stop_reason:
            path_tensor = torch.tensor(verdict.path, device=device)
            proposer.advance(out.head_features[path_tensor], torch.tensor(new_tokens, device=device))
    watch.switch(None)
    _synchronize(device)
    total_time = time.perf_counter() - started

    forwards = len(stats.accept_lengths)
    # Unsynchronised GPU phase times measure kernel launches, not work: report none rather than those.
    phases = watch.totals if profile or device.type == "cpu" else {}
    return GenerationRecord(
        output_ids=tuple(emitted),
        target_forwards=forwards,
        accept_lengths=tuple(stats.accept_lengths),
        stop_reason=stop_reason,
        prefill_time_s=prefill_time,
        total_time_s=total_time,
        draft_time_s=phases.get("draft", 0.0),
        verify_time_s=phases.get("verify", 0.0),
        other_time_s=phases.get("other", 0.0),
        depth_reached=tuple(stats.depth_reached),
        depth_accepted=tuple(stats.depth_accepted),
        confidence_checked=tuple(stats.confidence_checked),
        confidence_accepted=tuple(stats.confidence_accepted),
        draft_tokens_per_step=(stats.tree_tokens / (forwards - 1)) if forwards > 1 and proposer is not None else 1.0,
    )
