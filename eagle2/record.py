"""Data that crosses the engine's boundary: sampling settings in, a GenerationRecord out."""

from __future__ import annotations

from dataclasses import dataclass, field

# Bins of the draft-confidence calibration histogram: [0, 0.05), [0.05, 0.1), ..., [0.95, 1.0].
CONFIDENCE_BINS = 20


@dataclass(frozen=True)
class SamplingConfig:
    """How the target's next token is chosen; the same for vanilla and every speculative method."""

    temperature: float = 0.0  # 0 = greedy (exact argmax); > 0 = sample from softmax(logits / temperature)
    top_p: float = 1.0  # nucleus filter applied after temperature; 1.0 = off
    top_k: int = 0  # keep the k most likely tokens before top_p; 0 = off

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingConfig()


@dataclass(frozen=True)
class GenerationRecord:
    """What one generation did: the tokens, how many target forwards it took, and where time went.

    τ (mean acceptance length) = new_tokens / target_forwards. Timings are wall-clock seconds; prefill
    and total are measured with a device synchronisation, the draft/verify/other split too when the
    engine is asked to profile phases (without it the split is only exact on a CPU).
    """

    output_ids: tuple[int, ...]  # the new tokens only (prompt excluded), stop token included if one was hit
    # Every target forward that emitted tokens, the prefill included (it emits the first token), so
    # vanilla has tau = 1 exactly and sum(accept_lengths) == new_tokens. The EAGLE papers count only
    # the cycles after the first token; for a 200-token answer the two differ by under 2%.
    target_forwards: int
    accept_lengths: tuple[int, ...]  # tokens emitted by each target forward: accepted drafts + 1, cut at the stop
    stop_reason: str  # "eos" | "max_new_tokens" | "context_limit"
    prefill_time_s: float
    total_time_s: float  # prefill included
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    other_time_s: float = 0.0
    # depth_reached[d]: steps in which a drafted token at depth d+1 was checked, i.e. its whole path
    # down to depth d had been accepted; depth_accepted[d]: steps that also accepted depth d+1.
    depth_reached: tuple[int, ...] = ()
    depth_accepted: tuple[int, ...] = ()
    # Calibration of the draft: every drafted token that the target actually checked (its parent was
    # accepted), binned by its own draft probability; how many were checked and how many accepted.
    confidence_checked: tuple[int, ...] = field(default_factory=lambda: (0,) * CONFIDENCE_BINS)
    confidence_accepted: tuple[int, ...] = field(default_factory=lambda: (0,) * CONFIDENCE_BINS)
    draft_tokens_per_step: float = 0.0  # mean tokens sent to the target per forward, root included

    @property
    def new_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def mean_accept_length(self) -> float:
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def decode_time_s(self) -> float:
        return self.total_time_s - self.prefill_time_s
