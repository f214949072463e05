import pytest
import torch

from eagle2 import METHODS, SamplingConfig, get_method
from conftest import random_prompt


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(KeyError, match="unknown method 'eagle4'; did you mean 'eagle\\d'\\? available: vanilla, eagle1, eagle2, eagle3"):
        get_method("eagle4")


def test_parameters_are_validated_with_allowed_values():
    with pytest.raises(KeyError, match="method 'eagle2' has no parameter 'topk'; did you mean 'top_k'\\? allowed: depth, top_k, total_tokens"):
        METHODS["eagle2"].resolve({"topk": 3})
    with pytest.raises(ValueError, match="'depth' must be >= 1"):
        METHODS["eagle2"].resolve({"depth": 0})
    with pytest.raises(ValueError, match="must be int"):
        METHODS["eagle2"].resolve({"top_k": "8"})
    with pytest.raises(ValueError, match="must be int"):
        METHODS["eagle2"].resolve({"top_k": True})
    with pytest.raises(KeyError, match="built-in trees"):
        METHODS["eagle1"].resolve({"tree": "mc_sim_7b_64"})
    assert METHODS["eagle2"].resolve({"top_k": 4}) == {"depth": 6, "top_k": 4, "total_tokens": 60, "draft_vocab_size": 0}
    assert METHODS["eagle1"].resolve({"tree": [[0], [0, 0]]})["tree"] == [[0], [0, 0]]


def test_speculative_methods_need_a_head(target):
    with pytest.raises(ValueError, match="needs a draft head"):
        METHODS["eagle2"].create(target, None)


@pytest.mark.parametrize("name", ["vanilla", "eagle1", "eagle2", "hf_generate", "hf_prompt_lookup"])
def test_every_method_decodes_greedy_like_vanilla(target, head, name):
    prompt = random_prompt(target.vocab_size, 10, 3)
    stops = {5, 17}
    reference = METHODS["vanilla"].create(target, None)(
        prompt, max_new_tokens=24, sampling=SamplingConfig(), stop_token_ids=stops, generator=None
    )
    decoder = get_method(name).create(target, head, {})
    record = decoder(prompt, max_new_tokens=24, sampling=SamplingConfig(), stop_token_ids=stops, generator=None)
    assert record.output_ids == reference.output_ids
    assert record.target_forwards >= 1
    assert record.total_time_s > 0


def test_hf_generate_sampling_is_seeded_by_our_generator(target):
    decoder = METHODS["hf_generate"].create(target, None)
    prompt = random_prompt(target.vocab_size, 6, 2)
    runs = [
        decoder(prompt, max_new_tokens=10, sampling=SamplingConfig(temperature=1.0), stop_token_ids=(), generator=torch.Generator().manual_seed(s)).output_ids
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1] != runs[2]


def test_hf_generate_static_cache_decodes_like_vanilla(target):
    prompt = random_prompt(target.vocab_size, 9, 4)
    reference = METHODS["vanilla"].create(target, None)(prompt, max_new_tokens=16, sampling=SamplingConfig(), stop_token_ids=(), generator=None)
    decoder = METHODS["hf_generate"].create(target, None, {"cache": "static"})
    assert decoder(prompt, max_new_tokens=16, sampling=SamplingConfig(), stop_token_ids=(), generator=None).output_ids == reference.output_ids


def test_hf_generate_compile_needs_a_static_cache(target):
    with pytest.raises(ValueError, match="needs cache='static'"):
        METHODS["hf_generate"].create(target, None, {"compile": True})
    with pytest.raises(ValueError, match="method 'hf_generate' parameter 'cache' must be one of the allowed values, got 'paged'; allowed: dynamic, static"):
        METHODS["hf_generate"].resolve({"cache": "paged"})


@pytest.mark.slow
def test_hf_generate_compiled_static_cache_decodes_like_vanilla():
    from conftest import tiny_llama

    target = tiny_llama(dtype=torch.float32)
    prompt = random_prompt(target.vocab_size, 9, 5)
    reference = METHODS["vanilla"].create(target, None)(prompt, max_new_tokens=12, sampling=SamplingConfig(), stop_token_ids=(), generator=None)
    decoder = METHODS["hf_generate"].create(target, None, {"cache": "static", "compile": True})
    for _ in range(2):  # the second call runs the compiled step
        assert decoder(prompt, max_new_tokens=12, sampling=SamplingConfig(), stop_token_ids=(), generator=None).output_ids == reference.output_ids


def test_draft_vocab_size_drafts_from_the_most_frequent_tokens_and_stays_lossless(target):
    from eagle2 import DynamicTreeProposer, generate
    from eagle2.record import GREEDY
    from conftest import random_prompt, tiny_head

    head = tiny_head(target)
    head.draft_vocab = torch.arange(0, target.vocab_size, 2)
    head.draft_vocab_counts = torch.arange(head.draft_vocab.shape[0], 0, -1)  # the lowest ids are the most frequent
    kept = set(head.ranked_draft_vocab(8).tolist())
    assert kept == set(range(0, 16, 2))
    prompt = random_prompt(target.vocab_size, 9, 3)
    expected = generate(target, prompt, max_new_tokens=24).output_ids
    for name, params in (("eagle2", {"depth": 4, "top_k": 3, "total_tokens": 10, "draft_vocab_size": 8}), ("eagle1", {"draft_vocab_size": 8})):
        decode = METHODS[name].create(target, head, params)
        record = decode(prompt, max_new_tokens=24, sampling=GREEDY, stop_token_ids=(), generator=None)
        assert record.output_ids == expected
    proposer = DynamicTreeProposer(head, target, depth=3, top_k=3, total_tokens=8, draft_vocab=head.ranked_draft_vocab(8))
    proposer.begin(torch.tensor(prompt), torch.randn(len(prompt), target.hidden_size, dtype=target.dtype), 1)
    assert set(proposer.propose(max_depth=3).tokens[1:].tolist()) <= kept


def test_draft_vocab_size_keeps_older_cell_ids_at_its_default(tmp_path):
    from harness.config import expand, suite_from_dict

    def eagle2_cell(params):
        suite = {"schema": 1, "name": "s", "models": [{"name": "m", "source": "x", "head": "random"}], "tasks": [{"name": "mt_bench"}], "methods": [{"name": "eagle2", "params": params}]}
        return expand(suite_from_dict(suite))[0]

    plain, explicit, cut = eagle2_cell({}), eagle2_cell({"draft_vocab_size": 0}), eagle2_cell({"draft_vocab_size": 4096})
    assert plain.cell_id == explicit.cell_id and "draft_vocab_size" not in plain.identity()["method_params"]
    assert cut.cell_id != plain.cell_id and cut.identity()["method_params"]["draft_vocab_size"] == 4096
