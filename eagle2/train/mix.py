"""The prompt mix: kinds of user requests, and Magpie-style self-synthesis of each kind.

Kinds cover what users ask a chat model: multi-turn chat, writing, role-play, reasoning, math word
problems, code, extraction, translation, summarisation of a given passage, question answering over
a long given context, open-domain QA (and `general`: the plain Magpie query or a mixed set).

How a kind is synthesised by the target itself (no other model, no evaluation data):
* query kinds (writing, roleplay, reasoning, math, code, translation, open_qa): Magpie with a seed.
  The target gets its chat template's pre-query prefix plus the opening words of a user turn of
  that kind (e.g. "Translate the following sentence into German:"), chosen by a seeded draw from
  the kind's openings, and writes the rest of the user turn; the prompt is opening + continuation.
* passage kinds (summarisation, long_context_qa, extraction): the target first writes a passage
  (it answers "Write a detailed, factual article about <topic>"), then the prompt is built over it:
  a templated summarisation or extraction request, or, for long_context_qa, the passage followed
  by "Based on the passage above, " and a question the target writes itself (Magpie again).
* multi-turn chat (`multiturn:N`): a plain Magpie first turn plus a templated follow-up that
  refers to the first answer ("Now make your answer shorter ..."); the distill stage has the target
  answer the first turn, then trains on its answer to the follow-up in that conversation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

QUERY_OPENINGS: dict[str, tuple[str, ...]] = {
    "writing": (
        "Write a short story about", "Write a poem about", "Compose an email to", "Write a blog post about",
        "Draft a cover letter for", "Write a product description for", "Write a speech for", "Write a haiku about",
    ),
    "roleplay": (
        "Pretend you are", "Act as", "Imagine you are a", "You are a pirate captain.", "Role-play as",
        "Stay in character as", "Let's play a game where you are",
    ),
    "reasoning": (
        "Solve this logic puzzle:", "Explain step by step why", "If all", "Which is heavier,", "Is the following argument valid?",
        "What is the next number in the sequence", "Three friends",
    ),
    "math": (
        "A store sells", "Tom has", "A train travels", "Sarah bought", "A rectangle has", "Solve for x:",
        "A recipe needs", "What is the probability that",
    ),
    "code": (
        "Write a Python function that", "How do I", "Fix the bug in this code:", "Write a SQL query that",
        "Explain what this code does:", "Write a JavaScript function to", "What is the time complexity of",
    ),
    "translation": tuple(
        f"Translate the following {what} into {language}:"
        for language in ("French", "Spanish", "German", "Italian", "Portuguese", "Chinese", "Japanese", "Russian")
        for what in ("sentence", "text")
    ),
    "open_qa": (
        "What is", "Why do", "How does", "Who was", "When did", "Where is", "What are the main differences between",
        "Can you explain",
    ),
}

PASSAGE_TOPICS: tuple[str, ...] = (
    "the history of the printing press", "how vaccines train the immune system", "the water cycle", "the economy of ancient Rome",
    "the life cycle of stars", "coral reefs and their threats", "the invention of the telephone", "how a bill becomes law",
    "the causes of the French Revolution", "how solar panels work", "the migration of monarch butterflies", "the history of chess",
    "the basics of supply and demand", "volcanoes and plate tectonics", "the Silk Road", "how the internet routes data",
    "the Apollo 11 mission", "sleep and memory", "the discovery of penicillin", "urban beekeeping", "the rise of electric cars",
    "a small town's annual harvest festival", "a company's quarterly report", "the rules of cricket", "how bread is baked",
    "the Great Barrier Reef", "the history of the bicycle", "photosynthesis", "a museum's new dinosaur exhibit",
    "remote work and productivity",
)

PASSAGE_REQUEST = "Write a detailed, factual article of several paragraphs about {topic}, with names, places, dates and numbers."

SUMMARY_TEMPLATES: tuple[str, ...] = (
    "Summarise the following passage in three sentences:\n\n{passage}",
    "{passage}\n\nWrite a one-paragraph summary of the text above.",
    "Give me the TL;DR of this article:\n\n{passage}",
    "Summarize the key points of this text as a bulleted list:\n\n{passage}",
)

EXTRACTION_TEMPLATES: tuple[str, ...] = (
    "From the passage below, list every person, place and date it mentions, as JSON.\n\n{passage}",
    "Extract the key facts of this text as a bulleted list:\n\n{passage}",
    "{passage}\n\nWhich numbers appear in the text above, and what does each refer to? Answer as a table.",
    "Read the text and extract all named organisations and what they did.\n\n{passage}",
)

# Openings end without a space: a trailing space is a token of its own that the model rarely
# continues naturally (it tends to start a new line); join_opening puts the space back.
LONG_CONTEXT_QUESTION_OPENING = "{passage}\n\nBased on the passage above,"

FOLLOW_UPS: tuple[str, ...] = (
    "Now make your answer shorter, in at most three sentences.",
    "Can you rewrite your previous answer in a more formal tone?",
    "Give me a concrete example of what you just described.",
    "Explain the second point of your answer in more detail.",
    "Translate your previous answer into French.",
    "What are the weaknesses or limitations of your answer?",
    "Rewrite your answer so that a ten-year-old could understand it.",
    "Turn your answer into a numbered list of steps.",
    "Summarise your previous response in one sentence.",
    "Could you add a title and a short conclusion to your answer?",
    "Now argue the opposite of what you said.",
    "Which part of your answer are you least sure about, and why?",
    "Please expand your answer with two more details.",
)

QUERY_KINDS = tuple(QUERY_OPENINGS)
PASSAGE_KINDS = ("summarisation", "long_context_qa", "extraction")
MAGPIE_KINDS = ("general", *QUERY_KINDS, *PASSAGE_KINDS)  # magpie:KIND:N
# Kinds of the shared training sets (self_instruct_seed mixes many task types: "general").
SHARED_KINDS = {
    "gsm8k_train": "math",
    "mbpp": "code",
    "gpteacher_codegen": "code",
    "gpteacher_roleplay": "roleplay",
    "self_instruct_seed": "general",
}
ALL_KINDS = ("multiturn", *MAGPIE_KINDS)

# A broad default mix (shares of the prompts; `default_mix_sources`): every shared set in full
# where it is small, the rest by quota, plus every synthesised kind.
DEFAULT_MIX: dict[str, float] = {
    "shared:self_instruct_seed": 0.0,  # all 175, not by share
    "shared:gpteacher_roleplay": 0.08,
    "shared:gpteacher_codegen": 0.08,
    "shared:gsm8k_train": 0.10,
    "shared:mbpp": 0.04,
    "magpie:general": 0.14,
    "multiturn": 0.12,
    "magpie:writing": 0.05,
    "magpie:roleplay": 0.03,
    "magpie:reasoning": 0.05,
    "magpie:math": 0.03,
    "magpie:code": 0.03,
    "magpie:translation": 0.05,
    "magpie:open_qa": 0.06,
    "magpie:summarisation": 0.05,
    "magpie:long_context_qa": 0.05,
    "magpie:extraction": 0.04,
}


def default_mix_sources(total: int) -> tuple[str, ...]:
    """Source specs (prompts stage) for about `total` prompts in the DEFAULT_MIX shares."""
    if total < 1:
        raise ValueError(f"mix total must be >= 1, got {total}")
    sources = []
    for source, share in DEFAULT_MIX.items():
        if share == 0.0:
            sources.append(source)
            continue
        count = max(1, round(total * share))
        sources.append(f"{source}:{count}")
    return tuple(sources)


@dataclass(frozen=True)
class Seed:
    """What one synthesised prompt starts from."""

    kind: str
    opening: str = ""  # user-turn opening the target continues ("" = plain Magpie)
    passage_topic: str = ""  # passage kinds: the topic of the passage the target writes first
    template: str = ""  # passage kinds: how the prompt is built around the passage


def draw_seeds(kind: str, count: int, rng: random.Random) -> list[Seed]:
    """`count` seeds of a kind, drawn with `rng`."""
    if kind == "general":
        return [Seed("general") for _ in range(count)]
    if kind in QUERY_OPENINGS:
        return [Seed(kind, opening=rng.choice(QUERY_OPENINGS[kind])) for _ in range(count)]
    if kind == "summarisation":
        return [Seed(kind, passage_topic=rng.choice(PASSAGE_TOPICS), template=rng.choice(SUMMARY_TEMPLATES)) for _ in range(count)]
    if kind == "extraction":
        return [Seed(kind, passage_topic=rng.choice(PASSAGE_TOPICS), template=rng.choice(EXTRACTION_TEMPLATES)) for _ in range(count)]
    if kind == "long_context_qa":
        return [Seed(kind, passage_topic=rng.choice(PASSAGE_TOPICS), template=LONG_CONTEXT_QUESTION_OPENING) for _ in range(count)]
    raise ValueError(f"unknown prompt kind {kind!r}; Magpie kinds: {', '.join(MAGPIE_KINDS)}")


def follow_up(rng: random.Random) -> str:
    return rng.choice(FOLLOW_UPS)


def join_opening(opening: str, continuation: str) -> str:
    """The user turn: the seed's opening and the target's continuation of it."""
    if not opening:
        return continuation.strip()
    if not continuation.strip():
        return ""
    glue = "" if opening.endswith(("\n", " ")) or continuation[:1].isspace() else " "
    return (opening + glue + continuation).strip()


def kind_counts(kinds: Sequence[str]) -> dict[str, int]:
    return {kind: sum(k == kind for k in kinds) for kind in sorted(set(kinds))}
