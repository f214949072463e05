"""eagle2.kernels: the few-row bf16 linear kernel, its module swap and the engine/harness setting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eagle2 import DynamicTreeProposer, StaticTreeProposer, generate
from eagle2.static import StaticTargetModel
from harness.runner import resolve_cpp_wrapper, resolve_linear_kernel
from conftest import random_prompt, tiny_head, tiny_llama

kernels = pytest.importorskip("eagle2.kernels")
needs_kernel = pytest.mark.skipif(kernels.unavailable_reason() is not None, reason=str(kernels.unavailable_reason()))


@needs_kernel
@pytest.mark.parametrize("out_features,in_features", [(48, 32), (64, 96), (576, 576), (192, 1536)])
def test_few_row_linear_matches_a_float64_reference_for_any_row_count(out_features, in_features):
    generator = torch.Generator().manual_seed(out_features + in_features)
    weight = (torch.randn(out_features, in_features, generator=generator) / in_features**0.5).to(torch.bfloat16)
    layer = kernels.FewRowLinear(weight, max_kernel_rows=32)  # the kernel for every row count here
    for rows in (0, 1, 3, 8, 9, 17):
        x = torch.randn(rows, in_features, generator=generator).to(torch.bfloat16)
        expected = x.double() @ weight.double().T
        got = layer(x)
        assert got.dtype == torch.bfloat16 and got.shape == (rows, out_features)
        # fp32 accumulation then one bf16 rounding: within one bf16 step of the exact value
        torch.testing.assert_close(got.double(), expected, rtol=2**-7, atol=1e-3)


@needs_kernel
def test_a_row_gets_the_same_bits_alone_and_among_others():
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(576, 1536, generator=generator).to(torch.bfloat16)
    layer = kernels.FewRowLinear(weight, max_kernel_rows=32)
    x = torch.randn(2, 11, 1536, generator=generator).to(torch.bfloat16)
    together = layer(x)  # [2, 11, 576]: leading dimensions kept
    assert together.shape == (2, 11, 576)
    for b in range(2):
        for row in range(11):
            assert torch.equal(layer(x[b, row : row + 1])[0], together[b, row])


@needs_kernel
def test_more_rows_than_the_kernel_takes_go_to_torchs_linear():
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(64, 96, generator=generator).to(torch.bfloat16)
    layer = kernels.FewRowLinear(weight, max_kernel_rows=4)
    many = torch.randn(5, 96, generator=generator).to(torch.bfloat16)
    assert torch.equal(layer(many), nn.functional.linear(many, weight))
    few = many[:4]
    assert torch.equal(layer(few), torch.ops.eagle2_kernels.few_row_linear(few, layer.packed, 64))


@needs_kernel
def test_only_eligible_layers_are_swapped_and_swapping_twice_changes_nothing():
    model = nn.Sequential(
        nn.Linear(32, 64, bias=False),  # swapped
        nn.Linear(64, 64, bias=True),  # a bias: kept
        nn.Linear(64, 40, bias=False),  # 40 outputs, not a multiple of 16: kept
        nn.Sequential(nn.Linear(40, 16, bias=False)),  # nested: swapped
    ).to(torch.bfloat16)
    assert kernels.use_few_row_linears(model) == 2
    assert [type(m).__name__ for m in (model[0], model[1], model[2], model[3][0])] == ["FewRowLinear", "Linear", "Linear", "FewRowLinear"]
    assert kernels.use_few_row_linears(model) == 0
    assert kernels.use_few_row_linears(nn.Linear(32, 64, bias=False)) == 0  # the root itself is not a submodule to swap
    float32 = nn.Sequential(nn.Linear(32, 64, bias=False))
    assert kernels.use_few_row_linears(float32) == 0
    with pytest.raises(ValueError, match="bias-free bfloat16"):
        kernels.FewRowLinear.from_linear(float32[0])


@needs_kernel
@pytest.mark.parametrize("make", [
    lambda head, t: DynamicTreeProposer(head, t, depth=4, top_k=4, total_tokens=12),
    lambda head, t: StaticTreeProposer(head, t),
], ids=["eagle2", "eagle1"])
def test_static_engine_with_the_kernel_drafts_and_decodes_like_its_vanilla(make):
    """bf16 tiny model: the kernel replaces the decoder's, head's and lm_head's linear layers; its logits
    stay within bf16 noise of torch's, and speculative greedy output equals vanilla's on the same kernel."""
    eager = tiny_llama(vocab_size=112, seed=6, dtype=torch.bfloat16)  # 112 = 7 x 16: the lm_head is eligible too
    reference = StaticTargetModel(tiny_llama(vocab_size=112, seed=6, dtype=torch.bfloat16).model, capacity=256)
    target = StaticTargetModel(eager.model, capacity=256, linear_kernel="few_row")
    assert target.few_row_linears == 2 * 7
    assert type(target._project).__name__ == "FewRowLinear"
    prompt = random_prompt(112, 12, 5)
    cache, reference_cache = target.new_cache(64), reference.new_cache(64)
    torch.testing.assert_close(
        target.forward(torch.tensor(prompt), cache).logits, reference.forward(torch.tensor(prompt), reference_cache).logits, rtol=0.05, atol=0.05
    )
    head = tiny_head(eager)
    for seed in range(3):
        prompt = random_prompt(112, 6 + seed, 70 + seed)
        expected = generate(target, prompt, max_new_tokens=32).output_ids
        record = generate(target, prompt, max_new_tokens=32, proposer=make(head, target))
        assert record.output_ids == expected, f"seed {seed}"
    assert type(head.layers[0].mlp.gate_proj).__name__ == "FewRowLinear"


def test_linear_kernel_setting_resolves_or_says_why_not(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_linear_kernel("auto", "compiled", cpu, torch.bfloat16) == "autotune"
    assert resolve_linear_kernel("auto", "compiled", cpu, torch.float32) == "default"
    assert resolve_linear_kernel("auto", "static", cpu, torch.bfloat16) == "default"
    assert resolve_linear_kernel("auto", "eager", cpu, torch.bfloat16) == "default"
    assert resolve_linear_kernel("auto", "compiled", cuda, torch.bfloat16) == "default"
    assert resolve_linear_kernel("default", "compiled", cpu, torch.bfloat16) == "default"
    assert resolve_linear_kernel("autotune", "compiled", cpu, torch.float32) == "autotune"
    with pytest.raises(ValueError, match="needs the compiled engine"):
        resolve_linear_kernel("autotune", "static", cpu, torch.bfloat16)
    with pytest.raises(ValueError, match="float32 on cpu"):
        resolve_linear_kernel("few_row", "compiled", cpu, torch.float32)
    monkeypatch.setattr(kernels, "unavailable_reason", lambda: "this CPU has no AVX512-BF16")
    with pytest.raises(ValueError, match="no AVX512-BF16"):
        resolve_linear_kernel("few_row", "static", cpu, torch.bfloat16)
    monkeypatch.setattr(kernels, "unavailable_reason", lambda: None)
    assert resolve_linear_kernel("few_row", "static", cpu, torch.bfloat16) == "few_row"


def test_cpp_wrapper_setting_resolves_or_says_why_not():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_cpp_wrapper("auto", "compiled", cpu) is True
    assert resolve_cpp_wrapper("auto", "static", cpu) is False
    assert resolve_cpp_wrapper("auto", "eager", cpu) is False
    assert resolve_cpp_wrapper("auto", "compiled", cuda) is False
    assert resolve_cpp_wrapper(False, "compiled", cpu) is False
    assert resolve_cpp_wrapper(True, "compiled", cpu) is True
    with pytest.raises(ValueError, match="needs the compiled engine .* this model runs static on cpu"):
        resolve_cpp_wrapper(True, "static", cpu)
    with pytest.raises(ValueError, match="this model runs compiled on cuda"):
        resolve_cpp_wrapper(True, "compiled", cuda)


def test_autotune_needs_the_compiled_path():
    with pytest.raises(ValueError, match="needs compile=True"):
        StaticTargetModel(tiny_llama(vocab_size=112, seed=6, dtype=torch.bfloat16).model, capacity=256, linear_kernel="autotune")
    with pytest.raises(ValueError, match="expected one of default, autotune, few_row"):
        StaticTargetModel(tiny_llama(vocab_size=112, seed=6, dtype=torch.bfloat16).model, capacity=256, linear_kernel="onednn")


@pytest.mark.slow
def test_autotuned_compiled_target_keeps_the_outputs():
    """linear_kernel="autotune": inductor's per-shape kernel choice compiles the tiny bf16 model and
    its logits stay within bf16 noise of the eager model's (one graph: autotuning compiles slowly)."""
    eager = tiny_llama(vocab_size=112, seed=7, dtype=torch.bfloat16)
    prompt = torch.tensor(random_prompt(112, 10, 8))
    reference_cache = eager.new_cache(64)
    expected = eager.forward(prompt, reference_cache).logits
    target = StaticTargetModel(tiny_llama(vocab_size=112, seed=7, dtype=torch.bfloat16).model, compile=True, capacity=256, linear_kernel="autotune")
    got = target.forward(prompt, target.new_cache(64)).logits
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05)
