"""Loading and saving heads in the official EAGLE layout, strictly."""


import pytest
import torch

from eagle2 import DraftHead, DynamicTreeProposer, generate
from conftest import random_prompt, write_checkpoint

HIDDEN, INTERMEDIATE, HEADS, KV_HEADS, VOCAB = 32, 64, 4, 2, 97


def official_config(bias: bool | None = True) -> dict:
    """What the released EAGLE heads' config.json looks like (a Llama config, 1 layer)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
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
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
        "use_cache": True,
        "vocab_size": VOCAB,
    }
    if bias is not None:
        config["bias"] = bias
    return config


def official_state_dict(bias: bool = True, embedding: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Exactly the names and shapes of a released EAGLE head checkpoint."""
    g = torch.Generator().manual_seed(seed)
    head_dim = HIDDEN // HEADS

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    state = {
        "fc.weight": rand(HIDDEN, 2 * HIDDEN),
        "layers.0.self_attn.q_proj.weight": rand(HEADS * head_dim, HIDDEN),
        "layers.0.self_attn.k_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
        "layers.0.self_attn.v_proj.weight": rand(KV_HEADS * head_dim, HIDDEN),
        "layers.0.self_attn.o_proj.weight": rand(HIDDEN, HEADS * head_dim),
        "layers.0.mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
        "layers.0.mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
        "layers.0.mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
        "layers.0.post_attention_layernorm.weight": torch.ones(HIDDEN).half(),
    }
    if bias:
        state["fc.bias"] = rand(HIDDEN)
    if embedding:
        state["embed_tokens.weight"] = rand(VOCAB, HIDDEN)
    return state


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("bias", [True, False])
def test_loads_official_checkpoints_strictly(tmp_path, fmt, bias):
    state = official_state_dict(bias=bias)
    folder = write_checkpoint(tmp_path / "head", state, official_config(bias=bias), fmt)
    head = DraftHead.from_pretrained(folder, embedding_shape=(VOCAB, HIDDEN))
    loaded = head.state_dict()
    assert set(loaded) == set(state) - {"embed_tokens.weight"}
    for key, tensor in loaded.items():
        assert torch.equal(tensor, state[key].float()), key
    # the first (only) layer has no input layernorm, and nothing but these weights is a parameter
    assert not hasattr(head.layers[0], "input_layernorm")
    assert (head.fc.bias is not None) == bias


def test_bias_defaults_to_true_when_the_config_omits_it(tmp_path):
    folder = write_checkpoint(tmp_path / "h", official_state_dict(bias=True), official_config(bias=None), "bin")
    assert DraftHead.from_pretrained(folder).fc.bias is not None


def test_missing_or_unexpected_keys_are_refused(tmp_path):
    state = official_state_dict()
    del state["layers.0.mlp.up_proj.weight"]
    state["lm_head.weight"] = torch.zeros(VOCAB, HIDDEN)
    folder = write_checkpoint(tmp_path / "bad", state, official_config(), "safetensors")
    with pytest.raises(KeyError, match=r"missing: \['layers.0.mlp.up_proj.weight'\].*unexpected: \['lm_head.weight'\]"):
        DraftHead.from_pretrained(folder)


def test_wrong_shapes_and_wrong_target_are_refused(tmp_path):
    state = official_state_dict()
    state["fc.weight"] = torch.zeros(HIDDEN, HIDDEN)
    with pytest.raises(ValueError, match="fc.weight has shape"):
        DraftHead.from_pretrained(write_checkpoint(tmp_path / "a", state, official_config(), "bin"))
    folder = write_checkpoint(tmp_path / "b", official_state_dict(), official_config(), "bin")
    with pytest.raises(ValueError, match="trained for another model"):
        DraftHead.from_pretrained(folder, embedding_shape=(VOCAB + 1, HIDDEN))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        DraftHead.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        DraftHead.from_pretrained(tmp_path / "nope")


def test_save_round_trip_in_the_official_layout(tmp_path, target):
    head = DraftHead.random(target.config, seed=3)
    head.draft_vocab = torch.tensor([5, 1, 9, 40])
    folder = head.save_pretrained(tmp_path / "saved")
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    assert "embed_tokens.weight" not in saved
    assert set(saved) == {
        "fc.weight", "fc.bias",
        "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
        "layers.0.self_attn.v_proj.weight", "layers.0.self_attn.o_proj.weight",
        "layers.0.mlp.gate_proj.weight", "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight",
        "layers.0.post_attention_layernorm.weight",
    }
    again = DraftHead.from_pretrained(folder)
    for key, tensor in head.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key])
    assert again.draft_vocab.tolist() == [5, 1, 9, 40]
    with_embedding = head.save_pretrained(tmp_path / "emb", embedding=target.embed_tokens.weight)
    assert "embed_tokens.weight" in load_file(str(with_embedding / "model.safetensors"))
    assert DraftHead.from_pretrained(with_embedding, embedding_shape=tuple(target.embed_tokens.weight.shape))


def test_draft_vocabulary_counts_round_trip_and_rank_the_most_frequent(tmp_path, target):
    head = DraftHead.random(target.config, seed=3)
    head.draft_vocab = torch.tensor([1, 5, 9, 40, 41])
    head.draft_vocab_counts = torch.tensor([7, 30, 7, 2, 100])
    again = DraftHead.from_pretrained(head.save_pretrained(tmp_path / "saved"))
    assert again.draft_vocab_counts.tolist() == [7, 30, 7, 2, 100]
    assert again.ranked_draft_vocab(1).tolist() == [41]
    assert again.ranked_draft_vocab(3).tolist() == [1, 5, 41]  # tie 7/7: the lower id
    assert again.ranked_draft_vocab(0).tolist() == again.ranked_draft_vocab(5).tolist() == [1, 5, 9, 40, 41]
    again.draft_vocab_counts = None
    with pytest.raises(ValueError, match="no frequency counts"):
        again.ranked_draft_vocab(2)
    assert again.ranked_draft_vocab(0).tolist() == [1, 5, 9, 40, 41]
    with pytest.raises(ValueError, match="whole vocabulary"):
        DraftHead.random(target.config).ranked_draft_vocab(2)


def test_draft_vocabulary_counts_of_another_length_are_refused(tmp_path, target):
    from safetensors.torch import save_file

    head = DraftHead.random(target.config, seed=3)
    head.draft_vocab = torch.tensor([1, 5, 9])
    folder = head.save_pretrained(tmp_path / "saved")
    save_file({"token_ids": torch.tensor([1, 5, 9]), "counts": torch.tensor([1, 2])}, str(folder / "draft_vocab.safetensors"))
    with pytest.raises(ValueError, match="'counts' has shape"):
        DraftHead.from_pretrained(folder)


def test_two_layer_heads_have_an_input_layernorm_from_the_second_layer(target):
    head = DraftHead.random(target.config, num_layers=2)
    assert not hasattr(head.layers[0], "input_layernorm")
    assert hasattr(head.layers[1], "input_layernorm")


def test_reduced_draft_vocabulary_drafts_only_from_it_and_stays_lossless(target):
    head = DraftHead.random(target.config, seed=2).to(target.dtype)
    head.draft_vocab = torch.arange(0, target.vocab_size, 3)
    prompt = random_prompt(target.vocab_size, 9, 1)
    expected = generate(target, prompt, max_new_tokens=30)
    seen = []

    class Spy(DynamicTreeProposer):
        def propose(self, max_depth):
            tree = super().propose(max_depth)
            seen.extend(tree.tokens[1:].tolist())
            return tree

    record = generate(target, prompt, max_new_tokens=30, proposer=Spy(head, target, depth=3, top_k=4, total_tokens=12))
    assert record.output_ids == expected.output_ids
    assert seen and all(token % 3 == 0 for token in seen)


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not a valid JSON head config"),
        ("[1, 2]", "a head config is a JSON object"),
        ('{"hidden_size": "big"}', r"missing: num_attention_heads, intermediate_size, vocab_size; invalid: hidden_size='big'"),
    ],
)
def test_an_invalid_config_json_is_a_value_error_naming_the_file(tmp_path, text, message):
    folder = write_checkpoint(tmp_path / "head", official_state_dict(), official_config(), "safetensors")
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'}: .*{message}"):
        DraftHead.from_pretrained(folder)


@pytest.mark.parametrize("name", ["model.safetensors", "draft_vocab.safetensors"])
def test_a_corrupt_safetensors_file_is_a_value_error_naming_the_file(tmp_path, name):
    folder = write_checkpoint(tmp_path / "head", official_state_dict(), official_config(), "safetensors")
    data = (folder / "model.safetensors").read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2])  # truncated, as by a failed download
    with pytest.raises(ValueError, match=rf"{folder / name}: not a readable safetensors file"):
        DraftHead.from_pretrained(folder)
