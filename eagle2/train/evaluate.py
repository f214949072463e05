"""Acceptance length of a trained head, measured with the engine on MT-bench first turns.

τ = new tokens / target forwards (bonus token and prefill included, as in GenerationRecord), summed
over the questions (the per-question mean is reported too). At temperature 0 every speculative
output is also compared with vanilla greedy decoding (must be identical).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import eagle2
from eagle2.methods import get_method
from eagle2.file_io import read_jsonl_input

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MethodConfig:
    name: str  # "eagle1" | "eagle2" | "vanilla"
    tree: str = "mc_sim_7b_63"  # EAGLE-1 static tree
    depth: int = 6  # EAGLE-2 (our depth = official depth + 1)
    top_k: int = 10
    total_tokens: int = 60

    @staticmethod
    def parse(text: str) -> "MethodConfig":
        """vanilla | eagle1[:TREE] | eagle2[:DEPTH/TOPK/TOTAL]"""
        name, _, rest = text.partition(":")
        if name == "vanilla":
            return MethodConfig("vanilla")
        if name == "eagle1":
            return MethodConfig("eagle1", tree=rest or "mc_sim_7b_63")
        if name == "eagle2":
            if not rest:
                return MethodConfig("eagle2")
            parts = rest.split("/")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise ValueError(f"method {text!r}: write eagle2:DEPTH/TOPK/TOTAL, e.g. eagle2:6/10/60")
            return MethodConfig("eagle2", depth=int(parts[0]), top_k=int(parts[1]), total_tokens=int(parts[2]))
        raise ValueError(f"unknown method {text!r}; use vanilla, eagle1[:TREE] or eagle2[:DEPTH/TOPK/TOTAL]")

    def label(self) -> str:
        if self.name == "eagle1":
            return f"eagle1:{self.tree}"
        if self.name == "eagle2":
            return f"eagle2:{self.depth}/{self.top_k}/{self.total_tokens}"
        return "vanilla"

    def params(self) -> dict:
        """The method's parameters in the engine's method registry (eagle2.methods)."""
        if self.name == "eagle1":
            return {"tree": self.tree}
        if self.name == "eagle2":
            return {"depth": self.depth, "top_k": self.top_k, "total_tokens": self.total_tokens}
        return {}


def select_questions(path: Path, count: int) -> list[dict]:
    """`count` questions spread evenly over the file (so every MT-bench category is represented)."""
    rows = read_jsonl_input(path)
    if count >= len(rows):
        return rows
    return [rows[(i * len(rows)) // count] for i in range(count)]


def measure(target, head, chat, questions: list[dict], methods: list[MethodConfig], temperatures: list[float], *, max_new_tokens: int, seed: int) -> dict:
    from eagle2.train.prompts import Turn

    prompts = [chat.prompt_ids([Turn("user", q["turns"][0])]) for q in questions]
    results: dict = {}
    reference: dict[int, tuple[int, ...]] = {}
    # Vanilla first, so that every speculative greedy output can be checked against it.
    methods = sorted(methods, key=lambda method: method.name != "vanilla")
    for temperature in temperatures:
        sampling = eagle2.SamplingConfig(temperature=temperature)
        for method in methods:
            if method.name == "vanilla" and temperature > 0:
                continue
            decode = get_method(method.name).create(target, head, method.params())
            new_tokens = forwards = 0
            per_question = []
            reached: list[int] = []
            accepted: list[int] = []
            mismatches = 0
            started = time.perf_counter()
            for number, (question, ids) in enumerate(zip(questions, prompts)):
                record = decode(
                    ids,
                    max_new_tokens=max_new_tokens,
                    sampling=sampling,
                    stop_token_ids=chat.stop_token_ids,
                    generator=torch.Generator().manual_seed(seed + number),
                )
                new_tokens += record.new_tokens
                forwards += record.target_forwards
                per_question.append(record.mean_accept_length)
                for depth, (r, a) in enumerate(zip(record.depth_reached, record.depth_accepted)):
                    if depth >= len(reached):
                        reached.append(0)
                        accepted.append(0)
                    reached[depth] += r
                    accepted[depth] += a
                if temperature == 0:
                    if method.name == "vanilla":
                        reference[number] = record.output_ids
                    elif number in reference and reference[number] != record.output_ids:
                        mismatches += 1
            seconds = time.perf_counter() - started
            row = {
                "tau": new_tokens / forwards,
                "tau_mean_per_question": sum(per_question) / len(per_question),
                "new_tokens": new_tokens,
                "target_forwards": forwards,
                "seconds": round(seconds, 1),
                "tokens_per_s": new_tokens / seconds,
                # P(depth d+1 accepted | its parent path was accepted), d = 0, 1, ...
                "acceptance_by_depth": [round(a / r, 3) if r else None for r, a in zip(reached, accepted)],
            }
            if temperature == 0 and method.name != "vanilla" and reference:
                row["greedy_mismatches_vs_vanilla"] = mismatches
            results[f"T={temperature:g} {method.label()}"] = row
            logger.info("T=%g %s: %s", temperature, method.label(), row)
    return results
