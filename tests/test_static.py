"""The static-shape path: fixed-capacity slot cache, padded tree forwards, compiled = eager."""

from __future__ import annotations

import pytest
import torch

from eagle2 import DynamicTreeProposer, StaticTreeProposer, generate
from eagle2.draft import HeadDrafter, StaticHeadDrafter
from eagle2.record import SamplingConfig
from eagle2.static import StaticTargetModel, StaticTreeKVCache
from eagle2.tree import DraftTree
from conftest import random_prompt, tiny_head, tiny_llama


@pytest.fixture(scope="module")
def eager_target():
    return tiny_llama(vocab_size=97, seed=0)


@pytest.fixture(scope="module")
def static_target(eager_target):
    return StaticTargetModel(eager_target.model, compile=False, capacity=256)


def test_padded_tree_forward_equals_unpadded(eager_target, static_target):
    prompt = torch.tensor(random_prompt(97, 12, 1))
    tree = DraftTree.from_parents(torch.tensor([5, 6, 7, 8, 9]), torch.tensor([-1, 0, 0, 1, 1]))
    eager_cache = eager_target.new_cache(64)
    eager_target.forward(prompt, eager_cache)
    expected = eager_target.forward(tree.tokens, eager_cache, tree=tree)
    for pad_to in (5, 8, 16):
        cache = static_target.new_cache(64)
        static_target.forward(prompt, cache)
        got = static_target.forward(tree.tokens, cache, tree=tree, pad_to=pad_to)
        assert got.hidden.shape[0] == tree.size and got.logits.shape[0] == tree.size
        torch.testing.assert_close(got.logits, expected.logits, rtol=1e-10, atol=1e-10)
        assert cache.length == prompt.numel() + tree.size


def test_padding_never_leaks_into_later_steps(eager_target, static_target):
    """Padding rows write garbage beyond the valid length; the next step must not see it."""
    prompt = torch.tensor(random_prompt(97, 9, 2))
    tree = DraftTree.from_parents(torch.tensor([3, 4, 5]), torch.tensor([-1, 0, 1]))
    reference_cache = eager_target.new_cache(64)
    eager_target.forward(prompt, reference_cache)
    eager_target.forward(tree.tokens, reference_cache, tree=tree)
    reference_cache.keep(prompt.numel(), [0, 2])
    expected = eager_target.forward(torch.tensor([11]), reference_cache)
    cache = static_target.new_cache(64)
    static_target.forward(prompt, cache)
    static_target.forward(tree.tokens, cache, tree=tree, pad_to=32)
    cache.keep(prompt.numel(), [0, 2])
    assert cache.length == prompt.numel() + 2
    got = static_target.forward(torch.tensor([11]), cache)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-10, atol=1e-10)


def test_cache_keep_moves_only_the_path():
    cache = StaticTreeKVCache(num_layers=1, capacity=16, device=torch.device("cpu"))
    layer = cache.layers[0]
    layer.lazy_initialization(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    layer.keys[0, 0, :, 0] = torch.arange(16, dtype=layer.keys.dtype)
    cache.length = 10
    cache.keep(4, [0, 3, 5])
    assert cache.length == 7
    assert layer.keys[0, 0, :7, 0].tolist() == [0, 1, 2, 3, 4, 7, 9]
    cache.keep(7, [0, 1])  # already packed: nothing moves
    assert cache.length == 9


def test_cache_is_reused_and_grows_when_needed(static_target):
    first = static_target.new_cache(32)
    assert static_target.new_cache(100) is first and first.length == 0
    bigger = static_target.new_cache(first.capacity + 10)
    assert bigger.capacity >= first.capacity + 10


@pytest.mark.parametrize("make", [
    lambda head, t: DynamicTreeProposer(head, t, depth=5, top_k=4, total_tokens=16),
    lambda head, t: DynamicTreeProposer(head, t, depth=6, top_k=10, total_tokens=60),
    lambda head, t: StaticTreeProposer(head, t),
], ids=["eagle2-16", "eagle2-60", "eagle1"])
@pytest.mark.parametrize("fixture", ["eager", "small_vocab"])
def test_static_path_greedy_equals_eager_vanilla(request, fixture, make):
    eager = request.getfixturevalue("eager_target") if fixture == "eager" else request.getfixturevalue("small_vocab_target")
    static = StaticTargetModel(eager.model, compile=False, capacity=256)
    head = tiny_head(eager)
    for seed in range(4):
        prompt = random_prompt(eager.vocab_size, 5 + 2 * seed, 40 + seed)
        expected = generate(eager, prompt, max_new_tokens=40).output_ids
        assert generate(static, prompt, max_new_tokens=40).output_ids == expected
        record = generate(static, prompt, max_new_tokens=40, proposer=make(head, static))
        assert record.output_ids == expected, f"seed {seed}"
        assert sum(record.accept_lengths) == record.new_tokens


@pytest.mark.parametrize("make", [
    lambda head, t: DynamicTreeProposer(head, t, depth=5, top_k=4, total_tokens=16),
    lambda head, t: DynamicTreeProposer(head, t, depth=6, top_k=10, total_tokens=60),
    lambda head, t: StaticTreeProposer(head, t),
], ids=["eagle2-16", "eagle2-60", "eagle1"])
def test_static_drafter_proposes_the_eager_trees(eager_target, make):
    """Slot cache, padded catch-up and views give the eager drafter's trees, step after step, for
    catch-ups of every padded size and one longer than the largest (run at its own length)."""
    static = StaticTargetModel(eager_target.model, compile=False, capacity=256)
    head = tiny_head(eager_target)
    eager_proposer, static_proposer = make(head, eager_target), make(head, static)
    assert type(eager_proposer.drafter) is HeadDrafter and isinstance(static_proposer.drafter, StaticHeadDrafter)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.tensor(random_prompt(97, 11, 5))
    prompt_features = torch.randn(11, 32, dtype=torch.float64, generator=generator)
    for proposer in (eager_proposer, static_proposer):
        proposer.begin(prompt, prompt_features, 3)
    for accepted in (1, 3, 2, 6, 1, 20, 4):
        expected, got = eager_proposer.propose(max_depth=10), static_proposer.propose(max_depth=10)
        assert got.tokens.tolist() == expected.tokens.tolist() and got.parents.tolist() == expected.parents.tolist()
        torch.testing.assert_close(got.draft_probs, expected.draft_probs, rtol=1e-9, atol=1e-12)
        path_features = torch.randn(accepted, 32, dtype=torch.float64, generator=generator)
        next_tokens = torch.randint(0, 97, (accepted,), generator=generator)
        for proposer in (eager_proposer, static_proposer):
            proposer.advance(path_features, next_tokens)


def test_static_drafter_grows_with_the_target_cache(eager_target):
    static = StaticTargetModel(eager_target.model, compile=False, capacity=256)
    proposer = DynamicTreeProposer(tiny_head(eager_target), static, depth=3, top_k=2, total_tokens=6)
    before = proposer.drafter.capacity
    static.new_cache(before + 500)  # a generation longer than the drafter was sized for
    prompt = torch.tensor(random_prompt(97, 7, 1))
    proposer.begin(prompt, torch.zeros(7, 32, dtype=torch.float64), 4)
    assert proposer.drafter.capacity >= static.cache_capacity + StaticHeadDrafter.DRAFT_SLACK > before


def test_static_path_sampling_matches_eager_draws(eager_target, static_target):
    """Same seed, same draws: the static path changes shapes, not the distribution or the random stream."""
    head = tiny_head(eager_target)
    sampling = SamplingConfig(temperature=1.0)
    prompt = random_prompt(97, 8, 9)
    outputs = [
        generate(t, prompt, max_new_tokens=30, proposer=DynamicTreeProposer(head, t, depth=4, top_k=3, total_tokens=12),
                 sampling=sampling, generator=torch.Generator().manual_seed(3)).output_ids
        for t in (eager_target, static_target)
    ]
    assert outputs[0] == outputs[1]


@pytest.mark.slow
def test_compiled_static_path_equals_eager():
    """torch.compile (inductor) of the fixed-shape forwards gives the eager outputs (float32, tiny model)."""
    eager = tiny_llama(vocab_size=97, seed=4, dtype=torch.float32)
    compiled = StaticTargetModel(eager.model, compile=True, capacity=512)
    head = tiny_head(eager)
    assert compiled.warm_up([16]) > 0
    for seed in range(3):
        prompt = random_prompt(97, 6 + seed, 60 + seed)
        expected = generate(eager, prompt, max_new_tokens=32).output_ids
        assert generate(compiled, prompt, max_new_tokens=32).output_ids == expected
        proposer = DynamicTreeProposer(head, compiled, depth=5, top_k=4, total_tokens=16)
        assert generate(compiled, prompt, max_new_tokens=32, proposer=proposer).output_ids == expected
    # A generation makes a new drafter: the same shapes again must reuse every graph (a drafter-owned
    # module in a compiled call once made each generation recompile the head's graphs).
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    proposer = DynamicTreeProposer(head, compiled, depth=5, top_k=4, total_tokens=16)
    assert generate(compiled, prompt, max_new_tokens=32, proposer=proposer).output_ids == expected
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_cpp_wrapper_needs_the_compiled_path_on_a_cpu():
    with pytest.raises(ValueError, match="cpp_wrapper needs compile=True on a CPU"):
        StaticTargetModel(tiny_llama(vocab_size=97, seed=8, dtype=torch.float32).model, capacity=256, cpp_wrapper=True)


@pytest.mark.slow
def test_warm_up_compiles_every_catch_up_size_a_generation_can_meet():
    """The head's catch-up row count follows the accepted length (1 to depth + 1, padded): a warm-up
    generation meets only some, and the rest once compiled inside a timed generation (~6 s on
    one HumanEval answer). The proposer's warm_up compiles them all; catch-ups of every possible
    length afterwards compile nothing."""
    eager = tiny_llama(vocab_size=97, seed=5, dtype=torch.float32)
    compiled = StaticTargetModel(eager.model, compile=True, capacity=256)
    proposer = DynamicTreeProposer(tiny_head(eager), compiled, depth=3, top_k=5, total_tokens=8)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    proposer.warm_up()
    warmed = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert warmed > graphs  # top_k = 5 is used by no other compiled test: these graphs are new
    drafter = proposer.drafter
    width = eager.config.hidden_size
    prompt = torch.tensor(random_prompt(97, 40, 7))
    proposer.begin(prompt, torch.zeros(40, width), root=3)
    with torch.inference_mode():  # as the decode loop runs (dynamo guards on the grad mode)
        drafter.catch_up(5)  # the prompt: its own length, uncompiled
        for accepted in range(1, proposer.depth + 2):
            proposer.advance(torch.randn(accepted, width), torch.arange(accepted) + 1)
            level = drafter.catch_up(5)
            assert level.tokens.shape == (1, 5)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == warmed


@pytest.mark.slow
def test_after_warm_up_several_methods_generate_without_compiling():
    """As a suite warms up several cells on one target (trees of other widths and draft
    vocabularies share the head step's code, so dynamo once turned shapes dynamic across them and
    later met variants no warm-up had built: 5 s of one HumanEval answer), then times each: after
    every cell's warm-up generation and warm_up(), no timed generation compiles anything."""
    eager = tiny_llama(vocab_size=97, seed=5, dtype=torch.float32)
    compiled = StaticTargetModel(eager.model, compile=True, capacity=256)
    head = tiny_head(eager)
    draft_vocab = torch.arange(60)
    makers = [
        lambda: DynamicTreeProposer(head, compiled, depth=3, top_k=6, total_tokens=10),
        lambda: DynamicTreeProposer(head, compiled, depth=3, top_k=3, total_tokens=6, draft_vocab=draft_vocab),
        lambda: StaticTreeProposer(head, compiled, tree=[[0], [1], [0, 0], [0, 1], [0, 0, 0]]),
    ]
    warm_prompt, timed_prompt = torch.tensor(random_prompt(97, 12, 1)), torch.tensor(random_prompt(97, 30, 2))
    for make in makers:  # the harness's order: every cell warmed up before any is timed
        generate(compiled, warm_prompt, max_new_tokens=6, proposer=make())
        make().warm_up()  # as EngineDecoder.warm_up calls it: no inference mode of its own
    width = eager.config.hidden_size
    with torch.compiler.set_stance("fail_on_recompile"), torch.inference_mode():
        for make in makers:
            generate(compiled, timed_prompt, max_new_tokens=12, proposer=make())
            # A random head's drafts are rarely accepted: walk every accepted length (1 to depth + 1,
            # the catch-up sizes) with a full draft after each, as a good head's generation does.
            proposer = make()
            proposer.begin(timed_prompt, torch.zeros(timed_prompt.numel(), width), root=3)
            proposer.propose(max_depth=3)
            for accepted in (1, 2, 3, 4, 1, 3, 2, 1):
                proposer.advance(torch.randn(accepted, width), torch.arange(accepted) + 1)
                proposer.propose(max_depth=3)


@pytest.mark.slow
@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="no oneDNN bfloat16 on this CPU")
def test_compiled_cpu_path_repacks_the_weights_and_keeps_the_outputs():
    """On a CPU the compiled path freezes the weights, so inductor runs bf16 linear layers (the lm_head
    included) as oneDNN packed matmuls, and its attention is the fused matmul + softmax, not SDPA."""
    eager = tiny_llama(vocab_size=97, seed=5, dtype=torch.bfloat16)
    prompt = torch.tensor(random_prompt(97, 10, 7))
    reference_cache = eager.new_cache(64)
    eager.forward(prompt, reference_cache)
    expected = eager.forward(torch.tensor([3]), reference_cache).logits
    compiled = StaticTargetModel(eager.model, compile=True, capacity=256)
    assert compiled.config._attn_implementation == "eager"
    cache = compiled.new_cache(64)
    compiled.forward(prompt, cache)
    compiled.forward(torch.tensor([3]), cache)  # compiles q = 1
    cache.truncate(prompt.numel())
    with torch.profiler.profile() as profile:
        got = compiled.forward(torch.tensor([3]), cache).logits
    ops = {event.key for event in profile.key_averages()}
    assert "mkldnn::_linear_pointwise" in ops and "aten::mm" not in ops, sorted(ops)
    assert not any("scaled_dot_product" in op for op in ops)
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)  # bf16: another summation order


def test_compiled_draft_attention_equals_sdpa():
    """The draft head's attention as compiled on a CPU (matmul + float32 softmax) equals SDPA."""
    from eagle2.head import attend

    generator = torch.Generator().manual_seed(0)
    query, key, value = (torch.randn(1, 4, 3, 8, generator=generator) for _ in range(3))
    key, value = torch.randn(1, 4, 20, 8, generator=generator), torch.randn(1, 4, 20, 8, generator=generator)
    mask = torch.zeros(1, 1, 3, 20).masked_fill_(torch.rand(1, 1, 3, 20, generator=generator) < 0.3, torch.finfo(torch.float32).min)
    mask[..., 0] = 0  # every row sees something
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    compiled = torch.compile(lambda q, k, v, m: attend(q, k, v, m, causal=False), backend="eager")
    torch.testing.assert_close(compiled(query, key, value, mask), expected)


def test_compiled_functions_scope_their_settings_to_each_call_nested_ones_included() -> None:
    import torch._inductor.config as inductor_config

    from eagle2.static import compiled_for

    seen = []

    @torch._dynamo.disable
    def record(name: str) -> None:
        seen.append((name, inductor_config.freezing, torch._dynamo.config.recompile_limit))

    def inner(x):
        record("inner")
        return x * 2

    compiled_inner = compiled_for(inner, torch.device("cpu"), graphs=7)

    def outer(x):
        record("outer")
        return compiled_inner(x + 1)

    compiled_outer = compiled_for(outer, torch.device("cpu"), graphs=5)
    before = (inductor_config.freezing, torch._dynamo.config.recompile_limit)
    for _ in range(2):  # the same patch objects entered again, and inside one another
        assert torch.equal(compiled_outer(torch.ones(3)), torch.full((3,), 4.0))
        assert (inductor_config.freezing, torch._dynamo.config.recompile_limit) == before
    assert ("outer", True, 5) in seen and ("inner", True, 7) in seen
    assert before != (True, 5) and before != (True, 7)
