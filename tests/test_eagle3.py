"""EAGLE-3: target feature capture, the head in the official layout (strict loading, round trip,
the official computation), and lossless greedy decoding with it (float64 tiny models)."""

import json

import pytest
import torch
import torch.nn.functional as F

from eagle2 import METHODS, DynamicTreeProposer, Eagle3Head, FeatureSpec, SamplingConfig, StaticTreeProposer, generate
from eagle2.eagle3_head import eagle3_feature_layers
from eagle2.tree import DraftTree
from conftest import random_prompt, tiny_head, tiny_llama, write_checkpoint

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB, DRAFT_VOCAB = 32, 64, 4, 2, 97, 40


@pytest.fixture(scope="module")
def deep_target():
    """8 layers: EAGLE-3 reads the inputs of layers 2, 4 and 5."""
    return tiny_llama(vocab_size=VOCAB, layers=8, seed=5)


@pytest.fixture(scope="module")
def deep_small_vocab_target():
    """7 layers (the fewest EAGLE-3 allows) and 5 tokens, so random drafts are often accepted."""
    return tiny_llama(vocab_size=5, layers=7, seed=3)


def eagle3_head(target, seed=1, draft_vocab=None):
    return Eagle3Head.random(target.config, seed=seed, draft_vocab=draft_vocab).to(target.dtype)


# ---------------------------------------------------------------- target features


def test_feature_layers_are_2_half_and_n_minus_3():
    assert eagle3_feature_layers(32) == (2, 16, 29)  # Llama-3.1-8B
    assert eagle3_feature_layers(40) == (2, 20, 37)  # Vicuna-13B
    assert eagle3_feature_layers(30) == (2, 15, 27)  # SmolLM2-135M
    assert eagle3_feature_layers(7) == (2, 3, 4)
    with pytest.raises(ValueError, match=r"N >= 7; this target has N = 6"):
        eagle3_feature_layers(6)


def layer_inputs_by_hooks(target, ids):
    """The inputs of every decoder layer, captured independently by forward pre-hooks."""
    seen = {}
    handles = [
        layer.register_forward_pre_hook(lambda module, args, index=index: seen.__setitem__(index, args[0][0].clone()))
        for index, layer in enumerate(target.decoder.layers)
    ]
    try:
        target.forward(ids, target.new_cache(4))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_target_returns_the_requested_layer_inputs_from_the_same_forward(deep_target):
    ids = torch.tensor(random_prompt(VOCAB, 9, 0))
    spec = FeatureSpec(layer_inputs=eagle3_feature_layers(deep_target.num_layers))
    out = deep_target.forward(ids, deep_target.new_cache(4), features=spec)
    inputs = layer_inputs_by_hooks(deep_target, ids)
    expected = torch.cat([inputs[2], inputs[4], inputs[5]], dim=-1)
    assert out.features.shape == (9, 3 * HIDDEN)
    assert torch.equal(out.features, expected)
    assert torch.equal(out.head_features, expected)
    plain = deep_target.forward(ids, deep_target.new_cache(4))
    assert plain.features is None and torch.equal(plain.head_features, plain.hidden)
    assert torch.equal(plain.hidden, out.hidden)
    with pytest.raises(ValueError, match=r"feature layers \[8\] do not exist: the target has decoder layers 0..7"):
        deep_target.forward(ids, deep_target.new_cache(4), features=FeatureSpec((2, 8)))


def test_tree_features_equal_sequential_branch_features(deep_target):
    spec = FeatureSpec(layer_inputs=eagle3_feature_layers(deep_target.num_layers))
    prompt = torch.tensor(random_prompt(VOCAB, 7, 1))
    tree = DraftTree.from_parents(torch.tensor([3, 5, 8, 13, 21, 34]), torch.tensor([-1, 0, 0, 1, 1, 3]))
    cache = deep_target.new_cache(8)
    deep_target.forward(prompt, cache, features=spec)
    tree_out = deep_target.forward(tree.tokens, cache, tree=tree, features=spec)
    for path in tree.leaf_paths():
        sequential = deep_target.forward(torch.cat((prompt, tree.tokens[path])), deep_target.new_cache(8), features=spec)
        for offset, node in enumerate(path):
            torch.testing.assert_close(tree_out.features[node], sequential.features[prompt.numel() + offset], rtol=0, atol=1e-10)


# ---------------------------------------------------------------- the official layout


def official_config(draft_vocab_size=DRAFT_VOCAB, **extra) -> dict:
    """What a released EAGLE-3 head's config.json looks like (a Llama config plus draft_vocab_size)."""
    return {
        "architectures": ["LlamaForCausalLMEagle3"],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": 2048,
        "model_type": "llama",
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "num_hidden_layers": 1,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
        "use_cache": True,
        "vocab_size": VOCAB,
        "draft_vocab_size": draft_vocab_size,
        **extra,
    }


def official_state_dict(draft_vocab_size=DRAFT_VOCAB, seed=0, vocab_maps=True) -> dict[str, torch.Tensor]:
    """Exactly the names and shapes of a released EAGLE-3 checkpoint."""
    g = torch.Generator().manual_seed(seed)
    head_dim = HIDDEN // HEADS

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.05).half()

    def norm():
        return (1 + torch.randn(HIDDEN, generator=g) * 0.1).half()

    state = {
        "fc.weight": rand(HIDDEN, 3 * HIDDEN),
        "midlayer.self_attn.q_proj.weight": rand(HEADS * head_dim, 2 * HIDDEN),
        "midlayer.self_attn.k_proj.weight": rand(KV_HEADS * head_dim, 2 * HIDDEN),
        "midlayer.self_attn.v_proj.weight": rand(KV_HEADS * head_dim, 2 * HIDDEN),
        "midlayer.self_attn.o_proj.weight": rand(HIDDEN, HEADS * head_dim),
        "midlayer.mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
        "midlayer.mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
        "midlayer.mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
        "midlayer.input_layernorm.weight": norm(),
        "midlayer.hidden_norm.weight": norm(),
        "midlayer.post_attention_layernorm.weight": norm(),
        "norm.weight": norm(),
        "lm_head.weight": rand(draft_vocab_size, HIDDEN),
    }
    if vocab_maps:
        ids = torch.sort(torch.randperm(VOCAB, generator=g)[:draft_vocab_size]).values
        state["d2t"] = ids - torch.arange(draft_vocab_size)
        t2d = torch.zeros(VOCAB, dtype=torch.bool)
        t2d[ids] = True
        state["t2d"] = t2d
    return state


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_loads_official_checkpoints_strictly(tmp_path, fmt):
    state = official_state_dict()
    head = Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "h", state, official_config(), fmt), embedding_shape=(VOCAB, HIDDEN))
    loaded = head.state_dict()
    assert set(loaded) == set(state)
    for key, tensor in loaded.items():
        assert torch.equal(tensor, state[key].to(tensor.dtype)), key
    assert head.fc.bias is None and head.lm_head.bias is None
    assert head.draft_token_ids().tolist() == torch.nonzero(state["t2d"]).flatten().tolist()


def test_full_vocabulary_heads_may_omit_d2t_and_t2d(tmp_path):
    """The official loader deletes d2t/t2d when draft_vocab_size == vocab_size."""
    state = official_state_dict(draft_vocab_size=VOCAB, vocab_maps=False)
    head = Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "h", state, official_config(draft_vocab_size=VOCAB), "bin"))
    assert head.draft_token_ids().tolist() == list(range(VOCAB))
    reduced = official_state_dict(vocab_maps=False)
    with pytest.raises(KeyError, match=r"missing: \['d2t', 't2d'\]"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "r", reduced, official_config(), "bin"))


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    state = official_state_dict()
    del state["midlayer.hidden_norm.weight"]
    state["layers.0.mlp.up_proj.weight"] = torch.zeros(INTERMEDIATE, HIDDEN)
    with pytest.raises(KeyError, match=r"missing: \['midlayer.hidden_norm.weight'\].*unexpected: \['layers.0.mlp.up_proj.weight'\].*expected keys"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "a", state, official_config(), "safetensors"))
    state = official_state_dict()
    state["midlayer.self_attn.q_proj.weight"] = torch.zeros(HIDDEN, HIDDEN)  # an EAGLE-1/2 width
    with pytest.raises(ValueError, match=r"midlayer.self_attn.q_proj.weight has shape \(32, 32\), expected \(32, 64\)"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "b", state, official_config(), "bin"))
    state = official_state_dict()
    state["d2t"] = state["d2t"] + 1000
    with pytest.raises(ValueError, match="d2t maps draft ids outside the vocabulary"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "c", state, official_config(), "bin"))
    config = official_config()
    del config["draft_vocab_size"]
    with pytest.raises(KeyError, match="no 'draft_vocab_size'"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "d", official_state_dict(), config, "bin"))
    state = official_state_dict()
    state["embed_tokens.weight"] = torch.zeros(VOCAB + 1, HIDDEN)
    with pytest.raises(ValueError, match="trained for another model"):
        Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "e", state, official_config(), "bin"), embedding_shape=(VOCAB, HIDDEN))


def test_target_hidden_size_sets_the_fc_width(tmp_path):
    state = official_state_dict()
    state["fc.weight"] = torch.zeros(HIDDEN, 3 * 48).half()
    head = Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "h", state, official_config(target_hidden_size=48), "bin"))
    assert head.fc.in_features == 144
    saved = json.loads((head.save_pretrained(tmp_path / "again") / "config.json").read_text())
    assert saved["target_hidden_size"] == 48


def test_a_head_for_another_target_is_refused(deep_target):
    other = tiny_llama(vocab_size=VOCAB, layers=8, seed=1)
    head = Eagle3Head.random(other.config)
    with pytest.raises(ValueError, match="EAGLE-3 reads the inputs of decoder layers"):
        DynamicTreeProposer(head, tiny_llama(vocab_size=VOCAB, layers=2))
    wide = Eagle3Head(Eagle3Head.config_for_target(deep_target.config))
    wide.fc = torch.nn.Linear(3 * 48, HIDDEN, bias=False)
    with pytest.raises(ValueError, match="fc takes 144 features but this target's three layer inputs are 96 wide"):
        DynamicTreeProposer(wide, deep_target)


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def official_step(state, embeddings, hidden, positions, theta=10000.0, eps=1e-5):
    """The official EAGLE-3 midlayer on a causal sequence, spelled out with plain tensor ops."""
    q_len = hidden.shape[0]
    residual = hidden
    x = torch.cat((rms_norm(embeddings, state["midlayer.input_layernorm.weight"], eps), rms_norm(hidden, state["midlayer.hidden_norm.weight"], eps)), -1)
    head_dim = HIDDEN // HEADS
    q = (x @ state["midlayer.self_attn.q_proj.weight"].T).view(q_len, HEADS, head_dim).transpose(0, 1)
    k = (x @ state["midlayer.self_attn.k_proj.weight"].T).view(q_len, KV_HEADS, head_dim).transpose(0, 1)
    v = (x @ state["midlayer.self_attn.v_proj.weight"].T).view(q_len, KV_HEADS, head_dim).transpose(0, 1)
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions[:, None].double() * inv[None]
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()

    def rotate(t):
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), -1) * sin

    q, k = rotate(q), rotate(k)
    k, v = k.repeat_interleave(HEADS // KV_HEADS, 0), v.repeat_interleave(HEADS // KV_HEADS, 0)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5
    scores = scores + torch.full((q_len, q_len), float("-inf"), dtype=scores.dtype).triu(1)
    attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(q_len, -1)
    h = residual + attended @ state["midlayer.self_attn.o_proj.weight"].T
    mlp_in = rms_norm(h, state["midlayer.post_attention_layernorm.weight"], eps)
    mlp = (F.silu(mlp_in @ state["midlayer.mlp.gate_proj.weight"].T) * (mlp_in @ state["midlayer.mlp.up_proj.weight"].T)) @ state["midlayer.mlp.down_proj.weight"].T
    return h + mlp


def test_head_computes_what_the_official_code_computes(tmp_path):
    state = official_state_dict()
    head = Eagle3Head.from_pretrained(write_checkpoint(tmp_path / "h", state, official_config(), "bin")).double()
    ref = {k: v.double() for k, v in state.items() if v.is_floating_point()}
    g = torch.Generator().manual_seed(9)
    embeddings = torch.randn(6, HIDDEN, generator=g, dtype=torch.float64)
    features = torch.randn(6, 3 * HIDDEN, generator=g, dtype=torch.float64)
    positions = torch.arange(6)
    # Target features go through fc first; the head's own hidden states do not.
    with torch.no_grad():
        ours = head(embeddings[None], features[None], positions[None])[0]
        again = head(embeddings[None], ours[None], positions[None], from_target=False)[0]
        logits = head.logits(ours)
    expected = official_step(ref, embeddings, features @ ref["fc.weight"].T, positions)
    # transformers' rotary tables are float32 (as the official ones are): ~1e-8 off float64.
    close = dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours, expected, **close)
    torch.testing.assert_close(again, official_step(ref, embeddings, expected, positions), **close)
    torch.testing.assert_close(logits, rms_norm(expected, ref["norm.weight"], 1e-5) @ ref["lm_head.weight"].T, **close)
    assert not torch.allclose(ours, official_step(ref, embeddings, features @ ref["fc.weight"].T, 2 * positions), **close)


def test_save_load_round_trip_gives_identical_outputs(tmp_path, deep_target):
    head = eagle3_head(deep_target, seed=4, draft_vocab=torch.arange(1, VOCAB, 2))
    folder = head.save_pretrained(tmp_path / "saved")
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    assert set(saved) == set(official_state_dict())  # exactly the official key set
    config = json.loads((folder / "config.json").read_text())
    assert config["draft_vocab_size"] == (VOCAB - 1) // 2 and "target_hidden_size" not in config
    again = Eagle3Head.from_pretrained(folder, embedding_shape=(VOCAB, HIDDEN)).to(deep_target.dtype)
    for key, tensor in head.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key
    prompt = random_prompt(VOCAB, 8, 2)
    settings = dict(depth=4, top_k=3, total_tokens=12)
    first = generate(deep_target, prompt, max_new_tokens=20, proposer=DynamicTreeProposer(head, deep_target, **settings))
    second = generate(deep_target, prompt, max_new_tokens=20, proposer=DynamicTreeProposer(again, deep_target, **settings))
    assert first.output_ids == second.output_ids and first.accept_lengths == second.accept_lengths
    trees = []
    for h in (head, again):
        proposer = DynamicTreeProposer(h, deep_target, **settings)
        out = deep_target.forward(torch.tensor(prompt), deep_target.new_cache(4), features=proposer.features)
        proposer.begin(torch.tensor(prompt), out.head_features, 7)
        trees.append(proposer.propose(4))
    assert torch.equal(trees[0].tokens, trees[1].tokens) and torch.equal(trees[0].draft_probs, trees[1].draft_probs)


# ---------------------------------------------------------------- lossless decoding

SETTINGS = [
    dict(depth=6, top_k=10, total_tokens=60),
    dict(depth=4, top_k=3, total_tokens=10),
    dict(depth=1, top_k=4, total_tokens=5),
    dict(depth=5, top_k=1, total_tokens=6),
]


@pytest.mark.parametrize("fixture", ["deep_target", "deep_small_vocab_target"])
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_eagle3_greedy_equals_vanilla(request, fixture, settings):
    target = request.getfixturevalue(fixture)
    head = eagle3_head(target)
    for seed in range(4):
        prompt = random_prompt(target.vocab_size, 5 + 3 * seed, seed)
        expected = generate(target, prompt, max_new_tokens=40)
        record = generate(target, prompt, max_new_tokens=40, proposer=DynamicTreeProposer(head, target, **settings))
        assert record.output_ids == expected.output_ids, f"seed {seed}"
        assert sum(record.accept_lengths) == record.new_tokens == 40


def test_eagle3_head_drives_the_static_tree_too_and_lazy_or_batched_logits(deep_small_vocab_target):
    target = deep_small_vocab_target
    head = eagle3_head(target, seed=2)
    for seed in range(3):
        prompt = random_prompt(5, 6 + seed, 40 + seed)
        expected = generate(target, prompt, max_new_tokens=30)
        for lazy in (True, False):
            for proposer in (StaticTreeProposer(head, target, tree="chain5"), DynamicTreeProposer(head, target, depth=5, top_k=3, total_tokens=16)):
                assert generate(target, prompt, max_new_tokens=30, proposer=proposer, lazy_logits=lazy).output_ids == expected.output_ids


def test_small_vocabulary_eagle3_really_accepts_long_paths(deep_small_vocab_target):
    """Guard: the tests above must exercise accepted paths, not only rejections."""
    target = deep_small_vocab_target
    record = generate(target, random_prompt(5, 10, 1), max_new_tokens=60, proposer=DynamicTreeProposer(eagle3_head(target), target, depth=5, top_k=4, total_tokens=30))
    assert record.mean_accept_length > 1.5
    assert max(record.accept_lengths) >= 3


def test_reduced_draft_vocabulary_drafts_only_from_it_and_stays_lossless(deep_target):
    head = eagle3_head(deep_target, seed=3, draft_vocab=torch.arange(0, VOCAB, 3))
    prompt = random_prompt(VOCAB, 9, 1)
    expected = generate(deep_target, prompt, max_new_tokens=30)
    seen = []

    class Spy(DynamicTreeProposer):
        def propose(self, max_depth):
            tree = super().propose(max_depth)
            seen.extend(tree.tokens[1:].tolist())
            return tree

    record = generate(deep_target, prompt, max_new_tokens=30, proposer=Spy(head, deep_target, depth=3, top_k=4, total_tokens=12))
    assert record.output_ids == expected.output_ids
    assert seen and all(token % 3 == 0 for token in seen)


def test_eagle3_method_in_the_registry(deep_target):
    spec = METHODS["eagle3"]
    assert spec.needs_head and spec.head_kind == "eagle3"
    assert spec.resolve({"top_k": 4}) == {"depth": 6, "top_k": 4, "total_tokens": 60}
    prompt = random_prompt(VOCAB, 10, 3)
    greedy = SamplingConfig()
    reference = METHODS["vanilla"].create(deep_target, None)(prompt, max_new_tokens=24, sampling=greedy, stop_token_ids={5}, generator=None)
    record = spec.create(deep_target, eagle3_head(deep_target), {"depth": 4, "top_k": 4, "total_tokens": 16})(
        prompt, max_new_tokens=24, sampling=greedy, stop_token_ids={5}, generator=None
    )
    assert record.output_ids == reference.output_ids
    with pytest.raises(ValueError, match=r"method 'eagle3' drafts with a 'eagle3' head \(Eagle3Head\); got a DraftHead"):
        spec.create(deep_target, tiny_head(deep_target))
    with pytest.raises(ValueError, match=r"method 'eagle2' drafts with a 'eagle' head \(DraftHead\); got a Eagle3Head"):
        METHODS["eagle2"].create(deep_target, eagle3_head(deep_target))


@pytest.mark.parametrize(
    "name,hidden,heads,kv_heads,intermediate,vocab,draft_vocab,layers",
    [
        ("yuhuili/EAGLE3-LLaMA3.1-Instruct-8B", 4096, 32, 8, 14336, 128256, 32000, 32),
        ("yuhuili/EAGLE3-Vicuna1.3-13B", 5120, 40, 40, 13824, 32000, 32000, 40),
    ],
)
def test_released_head_shapes(name, hidden, heads, kv_heads, intermediate, vocab, draft_vocab, layers):
    """The shapes our module expects for the released heads (built on the meta device: no memory)."""
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
                         vocab_size=vocab, num_hidden_layers=1, rms_norm_eps=1e-5)
    config.draft_vocab_size = draft_vocab
    with torch.device("meta"):
        head = Eagle3Head(config)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes["fc.weight"] == (hidden, 3 * hidden)
    assert shapes["midlayer.self_attn.q_proj.weight"] == (hidden, 2 * hidden)
    assert shapes["midlayer.self_attn.k_proj.weight"] == (kv_heads * hidden // heads, 2 * hidden)
    assert shapes["lm_head.weight"] == (draft_vocab, hidden)
    assert shapes["d2t"] == (draft_vocab,) and shapes["t2d"] == (vocab,)
    assert len(shapes) == 15
    assert head.feature_spec(layers).width(hidden) == 3 * hidden


@pytest.mark.parametrize("architecture", ["mistral", "qwen2", "qwen3"])
def test_other_families_return_the_layer_inputs_and_decode_losslessly(architecture):
    import transformers

    classes = {
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[architecture]
    torch.manual_seed(0)
    from eagle2 import TargetModel

    config = classes[0](vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=8, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False)
    target = TargetModel(classes[1](config).to(torch.float64))
    ids = torch.tensor(random_prompt(61, 9, 4))
    inputs = layer_inputs_by_hooks(target, ids)
    out = target.forward(ids, target.new_cache(4), features=FeatureSpec((2, 4, 5)))
    assert torch.equal(out.features, torch.cat([inputs[2], inputs[4], inputs[5]], dim=-1))
    head = eagle3_head(target)
    expected = generate(target, ids.tolist(), max_new_tokens=20)
    record = generate(target, ids.tolist(), max_new_tokens=20, proposer=DynamicTreeProposer(head, target, depth=4, top_k=3, total_tokens=10))
    assert record.output_ids == expected.output_ids


def test_static_path_returns_the_same_features_and_decodes_losslessly(deep_target):
    """The static-shape target (padded trees, slot cache) gives EAGLE-3 the eager path's features."""
    from eagle2.static import StaticTargetModel

    static = StaticTargetModel(deep_target.model, compile=False, capacity=256)
    spec = FeatureSpec(layer_inputs=eagle3_feature_layers(deep_target.num_layers))
    prompt = torch.tensor(random_prompt(VOCAB, 9, 3))
    tree = DraftTree.from_parents(torch.tensor([5, 6, 7, 8, 9]), torch.tensor([-1, 0, 0, 1, 1]))
    eager_cache = deep_target.new_cache(64)
    deep_target.forward(prompt, eager_cache, features=spec)
    expected = deep_target.forward(tree.tokens, eager_cache, tree=tree, features=spec)
    cache = static.new_cache(64)
    static.forward(prompt, cache, features=spec)
    got = static.forward(tree.tokens, cache, tree=tree, pad_to=16, features=spec)
    torch.testing.assert_close(got.features, expected.features, rtol=1e-10, atol=1e-10)
    head = eagle3_head(deep_target)
    reference = generate(deep_target, prompt.tolist(), max_new_tokens=24)
    record = generate(static, prompt.tolist(), max_new_tokens=24, proposer=DynamicTreeProposer(head, static, depth=4, top_k=3, total_tokens=10))
    assert record.output_ids == reference.output_ids
