"""Shared fixtures: tiny random Llama targets (float64 for exact comparisons) and their heads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from eagle2 import DraftHead, TargetModel

# Tiny models are dominated by per-op overhead, which extra threads only add to (and CI has 2 cores).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The committed stand-in data folder (tests/data/README.md): what the tests run on.
DATA_DIR = REPO_ROOT / "tests" / "data"
# The real data sets, for the few tests marked `shared_data` (they check the real files' counts or sha256).
SHARED_DATA_DIR = Path(os.environ.get("EAGLE2_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [name for name in ("mt_bench/question.jsonl", "gsm8k/test.jsonl") if not (SHARED_DATA_DIR / name).is_file()]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs the real data sets: {', '.join(missing)} not in {SHARED_DATA_DIR} (set EAGLE2_DATA_DIR)")
    for item in items:
        if item.get_closest_marker("shared_data"):
            item.add_marker(skip)


def tiny_llama(vocab_size: int = 97, *, seed: int = 0, layers: int = 2, dtype=torch.float64, max_positions: int = 512) -> TargetModel:
    """A random Llama small enough to run hundreds of generations in seconds."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(dtype)
    return TargetModel(model)


def write_checkpoint(folder: Path, state: dict, config: dict, fmt: str) -> Path:
    """A head checkpoint folder as the official code writes it: config.json and pytorch_model.bin
    (fmt "bin") or model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if fmt == "bin":
        torch.save(state, folder / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"))
    return folder


def tiny_suite_text(name: str) -> str:
    """A suite over the tiny random Llama: vanilla, EAGLE-1 and EAGLE-2, 2 MT-bench questions, T = 0 and 1."""
    return TINY_SUITE.replace("SUITE_NAME", name)


TINY_SUITE = """\
schema: 1
name: SUITE_NAME
models:
  - name: tiny
    source: tiny-random-llama
    dtype: float64
    device: cpu
    head: random
tasks:
  - name: mt_bench
    limit: 2
    select: spread
    max_new_tokens: 4
methods:
  - vanilla
  - name: eagle1
    params: {tree: small_12}
  - name: eagle2
    params: {depth: 3, top_k: 3, total_tokens: 8}
sampling:
  temperatures: [0, 1]
warmup: {generations: 1, max_new_tokens: 2}
"""


def save_tiny_llama_folder(folder: Path, *, layers: int = 8, max_positions: int = 512, seed: int = 0) -> LlamaConfig:
    """A random 32-wide Llama over harness.models.tiny_tokenizer(), saved with its tokenizer as a
    local model folder (what a suite's `source` or `--model` can name); returns its config."""
    from harness.models import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return config


def tiny_model(architecture: str, vocab_size: int = 61, seed: int = 0) -> TargetModel:
    """A tiny random model of another supported family (float64)."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
    )
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[architecture]
    extra = {"head_dim": 8} if architecture == "qwen3" else {}
    return TargetModel(model_class(config_class(**common, **extra)).to(torch.float64))


def tiny_head(target: TargetModel, seed: int = 1) -> DraftHead:
    return DraftHead.random(target.config, seed=seed).to(target.dtype)


@pytest.fixture(scope="session")
def target() -> TargetModel:
    return tiny_llama()


@pytest.fixture(scope="session")
def small_vocab_target() -> TargetModel:
    # With 5 tokens a random head's top-k often contains the target's choice, so long paths get
    # accepted and the accept/compaction code is exercised, not only the reject path.
    return tiny_llama(vocab_size=5, seed=3)


@pytest.fixture(scope="session")
def head(target) -> DraftHead:
    return tiny_head(target)


@pytest.fixture(scope="session")
def small_vocab_head(small_vocab_target) -> DraftHead:
    return tiny_head(small_vocab_target)


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()
