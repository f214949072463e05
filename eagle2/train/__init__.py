"""Draft-head training: prompts -> self-distillation by the target -> training of an EAGLE head.

Each stage writes its outputs atomically into a work folder and skips work already done, so a
killed run resumes where it stopped. `python -m harness train --help` lists the stages.
"""

from eagle2.train.distill import DistillConfig, distill
from eagle2.train.generation import GeneratedSequence, batched_generate
from eagle2.train.prompts import ContaminationError, EvalText, Prompt, PromptsConfig, TemplateChat, Turn, build_prompts, read_prompts

__all__ = [
    "ContaminationError",
    "DistillConfig",
    "EvalText",
    "GeneratedSequence",
    "Prompt",
    "PromptsConfig",
    "TemplateChat",
    "Turn",
    "batched_generate",
    "build_prompts",
    "distill",
    "read_prompts",
]
