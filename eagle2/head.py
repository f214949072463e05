"""The EAGLE draft head, in the exact layout of the released EAGLE-1/EAGLE-2 checkpoints.

    feature_{t+1}^ = Layers( fc( [ embed(token_{t+1}) ; feature_t ] ) )      # no final norm
    draft logits  = target.lm_head( feature_{t+1}^ )

`fc` maps the concatenation (embedding first) of 2H to H; the decoder layers are Llama layers, the
first of which has no input layernorm. The embedding and the lm_head are the target's: they are not
parameters of this module, so its state dict holds exactly the checkpoint's keys (minus the optional
`embed_tokens.weight` copy that the official files carry).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb

from eagle2.cache import PositionIndexedLayer

logger = logging.getLogger(__name__)

EMBEDDING_KEY = "embed_tokens.weight"
CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
TORCH_NAME = "pytorch_model.bin"
# Optional (not in the official layout): a reduced draft vocabulary (FR-Spec style), the token ids
# whose lm_head rows the drafter scores; tensor "token_ids", int64 [N], and optionally "counts",
# int64 [N]: how often each occurred in the answers the head was trained on (or a stated corpus),
# which lets a drafter keep only the most frequent of them (`DraftHead.ranked_draft_vocab`).
DRAFT_VOCAB_NAME = "draft_vocab.safetensors"


class KeyValueStore(Protocol):
    """What a head layer's attention needs from a cache: append this call's keys and values and
    return all the keys and values to attend to (PositionIndexedLayer at draft time; the
    unrolled-steps store of eagle2.train.unroll in training)."""

    def update(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class DraftAttention(nn.Module):
    def __init__(self, config: LlamaConfig, input_size: int | None = None) -> None:
        """`input_size`: width of the q/k/v input (default hidden_size; EAGLE-3 feeds 2 * hidden_size)."""
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        width = input_size or config.hidden_size
        self.q_proj = nn.Linear(width, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(width, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [b, q, H]
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,  # [b or 1, 1, q, kv] additive, or None for plain causal
        cache: KeyValueStore | None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        query = self.q_proj(x).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(x).view(batch, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        if cache is not None:
            key, value = cache.update(key, value)
        if self.num_kv_heads != self.num_heads:
            groups = self.num_heads // self.num_kv_heads
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        out = attend(query, key, value, mask, causal=mask is None and length > 1)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, *, causal: bool) -> torch.Tensor:
    """Scaled dot-product attention ([b, heads, q, d] each; mask additive or None).

    Compiled on a CPU, as plain matmul + float32 softmax, which inductor fuses: the CPU SDPA kernel
    costs ~0.6 ms for a few bf16 query rows, several times the whole draft layer (eagle2.static)."""
    if mask is not None and query.device.type == "cpu" and torch.compiler.is_compiling():
        scores = (query @ key.transpose(-1, -2)).float() * query.shape[-1] ** -0.5 + mask.float()
        return torch.softmax(scores, dim=-1).to(value.dtype) @ value
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=causal)


class DraftDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, index: int) -> None:
        super().__init__()
        # The first layer's input is fc's output, which the official heads leave unnormalised.
        if index > 0:
            self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DraftAttention(config)
        self.mlp = LlamaMLP(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, rotary, mask, cache) -> torch.Tensor:
        normed = self.input_layernorm(x) if hasattr(self, "input_layernorm") else x
        x = x + self.self_attn(normed, rotary, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DraftHead(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=bool(getattr(config, "bias", True)))
        self.layers = nn.ModuleList(DraftDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.rotary = LlamaRotaryEmbedding(config)
        # Token ids the drafter may propose (None = the whole vocabulary); not a parameter.
        self.draft_vocab: torch.Tensor | None = None
        # How often each draft_vocab token occurred in the training answers (None = not known).
        self.draft_vocab_counts: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def new_cache(self, capacity: int) -> list[PositionIndexedLayer]:
        return [PositionIndexedLayer(capacity) for _ in self.layers]

    def ranked_draft_vocab(self, size: int) -> torch.Tensor | None:
        """The `size` most frequent tokens of the head's draft vocabulary (ties: lower id first), in
        id order; None for the whole vocabulary. On a CPU the draft lm_head's rows are most of a draft
        step's memory traffic, so fewer rows buy a faster step at the cost of rarer drafts."""
        if self.draft_vocab is None:
            raise ValueError("this head scores the whole vocabulary; a draft_vocab_size needs a head with a draft vocabulary")
        if size <= 0 or size >= self.draft_vocab.shape[0]:
            return self.draft_vocab
        if self.draft_vocab_counts is None:
            raise ValueError(
                f"this head's draft vocabulary ({self.draft_vocab.shape[0]} tokens) carries no frequency counts, so it "
                f"cannot be cut to the {size} most frequent; leave draft_vocab_size at 0"
            )
        order = sorted(range(self.draft_vocab.shape[0]), key=lambda i: (-int(self.draft_vocab_counts[i]), int(self.draft_vocab[i])))
        return torch.sort(self.draft_vocab[order[:size]]).values

    def forward(
        self,
        token_embeddings: torch.Tensor,  # [b, q, H] target embeddings of the next tokens
        features: torch.Tensor,  # [b, q, H] target (or drafted) features of the current positions
        positions: torch.Tensor,  # [b, q] long
        mask: torch.Tensor | None = None,  # [b or 1, 1, q, kv] additive; None = causal over the new rows
        cache: list[PositionIndexedLayer] | list[KeyValueStore] | None = None,
    ) -> torch.Tensor:
        """Predicted next features, [b, q, H]."""
        x = self.fc(torch.cat((token_embeddings.to(features.dtype), features), dim=-1))
        rotary = self.rotary(x, positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, rotary, mask, None if cache is None else cache[i])
        return x

    # ---- construction, loading and saving in the official layout ----

    @staticmethod
    def config_for_target(target_config, *, num_layers: int = 1, bias: bool = True) -> LlamaConfig:
        """A head config matching a target's width, heads, RoPE and vocabulary."""
        head_dim = getattr(target_config, "head_dim", None) or target_config.hidden_size // target_config.num_attention_heads
        rope = getattr(target_config, "rope_parameters", None) or {
            "rope_type": "default",
            "rope_theta": getattr(target_config, "rope_theta", 10000.0),
        }
        return LlamaConfig(
            vocab_size=target_config.vocab_size,
            hidden_size=target_config.hidden_size,
            intermediate_size=target_config.intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=target_config.num_attention_heads,
            num_key_value_heads=getattr(target_config, "num_key_value_heads", target_config.num_attention_heads),
            head_dim=head_dim,
            hidden_act=getattr(target_config, "hidden_act", "silu"),
            max_position_embeddings=getattr(target_config, "max_position_embeddings", 4096),
            rms_norm_eps=getattr(target_config, "rms_norm_eps", 1e-6),
            rope_parameters=dict(rope),
            bias=bias,
            architectures=["LlamaForCausalLM"],
        )

    @classmethod
    def random(cls, target_config, *, seed: int = 0, num_layers: int = 1, bias: bool = True) -> "DraftHead":
        """A randomly initialised head (std 0.02 like Llama's init); drafts badly but is still lossless."""
        config = cls.config_for_target(target_config, num_layers=num_layers, bias=bias)
        generator = torch.Generator().manual_seed(seed)
        head = cls(config)
        with torch.no_grad():
            for name, param in head.named_parameters():
                if name.endswith("layernorm.weight"):
                    param.fill_(1.0)
                elif name.endswith("bias"):
                    param.zero_()
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        return head

    @classmethod
    def from_pretrained(cls, path: str | Path, *, revision: str | None = None, embedding_shape: tuple[int, int] | None = None) -> "DraftHead":
        """Load an official-layout head from a local folder or a hub id (config.json + weights).

        Keys are checked strictly: every parameter must be present with its shape, and the only
        extra key allowed is `embed_tokens.weight` (ignored: the target's embedding is used; its
        shape is checked against `embedding_shape` when given).
        """
        folder = _resolve_head_folder(path, revision)
        config = _read_config(folder / CONFIG_NAME)
        state = _read_weights(folder)
        head = cls(config)
        embedding = state.pop(EMBEDDING_KEY, None)
        if embedding is not None and embedding_shape is not None and tuple(embedding.shape) != tuple(embedding_shape):
            raise ValueError(
                f"{folder}: head embedding has shape {tuple(embedding.shape)} but the target's is {tuple(embedding_shape)}; "
                "this head was trained for another model"
            )
        expected = head.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(
                f"{folder}: weights do not match the EAGLE head layout; missing: {missing or 'none'}, "
                f"unexpected: {unexpected or 'none'}; expected keys: {sorted(expected)}"
            )
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(f"{folder}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
        head.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        if (folder / DRAFT_VOCAB_NAME).is_file():
            vocab = _load_safetensors(folder / DRAFT_VOCAB_NAME)
            if "token_ids" not in vocab:
                raise KeyError(f"{folder / DRAFT_VOCAB_NAME}: no tensor 'token_ids'; found: {sorted(vocab) or 'none'}")
            head.draft_vocab = vocab["token_ids"].long()
            counts = vocab.get("counts")
            if counts is not None and tuple(counts.shape) != tuple(head.draft_vocab.shape):
                raise ValueError(f"{folder / DRAFT_VOCAB_NAME}: 'counts' has shape {tuple(counts.shape)}, 'token_ids' {tuple(head.draft_vocab.shape)}")
            head.draft_vocab_counts = None if counts is None else counts.long()
        return head

    def save_pretrained(self, folder: str | Path, *, embedding: torch.Tensor | None = None, extra_config: dict | None = None) -> Path:
        """Write config.json + model.safetensors in the official layout (embedding copy optional).

        Each file is written atomically and config.json last, so a save killed half-way never
        leaves a folder that looks like a complete head (loaders look for config.json)."""
        from eagle2.file_io import write_text_atomic
        from eagle2.train.io import atomic_save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = dict(self.state_dict())
        if embedding is not None:
            tensors[EMBEDDING_KEY] = embedding
        atomic_save_safetensors(folder / SAFETENSORS_NAME, tensors, metadata={"format": "pt"})
        if self.draft_vocab is not None:
            vocab = {"token_ids": self.draft_vocab.long()}
            if self.draft_vocab_counts is not None:
                vocab["counts"] = self.draft_vocab_counts.long()
            atomic_save_safetensors(folder / DRAFT_VOCAB_NAME, vocab)
        config = self.config.to_dict()
        config["bias"] = self.fc.bias is not None
        config.update(extra_config or {})
        write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return folder


def _resolve_head_folder(path: str | Path, revision: str | None) -> Path:
    folder = Path(path)
    if folder.is_dir():
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{folder}: no {CONFIG_NAME}; an EAGLE head folder holds config.json and model.safetensors or pytorch_model.bin")
        return folder
    if folder.exists() or str(path).startswith((".", "/")) or str(path).count("/") != 1:
        raise FileNotFoundError(f"draft head {str(path)!r} is neither a folder with config.json nor a hub id like 'yuhuili/EAGLE-Vicuna-7B-v1.3'")
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), revision=revision, allow_patterns=[CONFIG_NAME, "*.safetensors", "*.bin"]))


def _read_config(path: Path) -> LlamaConfig:
    """The head's LlamaConfig; a file that is not a JSON object of config fields is a ValueError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a valid JSON head config ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a head config is a JSON object of LlamaConfig fields, got {type(data).__name__}")
    required = ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [key for key in required if key not in data]
    bad = [f"{key}={data[key]!r}" for key in required if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 1)]
    if missing or bad:
        raise ValueError(
            f"{path}: a head config needs positive integers {', '.join(required)}; "
            f"missing: {', '.join(missing) or 'none'}; invalid: {', '.join(bad) or 'none'}"
        )
    try:
        return LlamaConfig(**data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid head config ({error})") from error


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / SAFETENSORS_NAME).is_file():
        return _load_safetensors(folder / SAFETENSORS_NAME)
    if (folder / TORCH_NAME).is_file():
        import pickle

        try:
            return torch.load(folder / TORCH_NAME, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ValueError(f"{folder / TORCH_NAME}: not a tensors-only PyTorch weights file ({error})") from error
    raise FileNotFoundError(f"{folder}: neither {SAFETENSORS_NAME} nor {TORCH_NAME} found")


def head_parameter_count(head: DraftHead) -> int:
    return sum(p.numel() for p in head.parameters())


def describe(head: DraftHead) -> str:
    return f"EAGLE head: {head.num_layers} layer(s), hidden {head.config.hidden_size}, {head_parameter_count(head) / 1e6:.1f}M parameters, fc bias={head.fc.bias is not None}"

