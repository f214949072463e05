"""The EAGLE-3 draft head, in the exact layout of the released EAGLE-3 checkpoints.

EAGLE-3 drafts from three target features instead of one: the inputs of decoder layers 2, N // 2
and N - 3 (N = the target's number of layers; low, middle and high level), concatenated in that
order. One step of the head:

    h      = fc( [f_2 ; f_{N//2} ; f_{N-3}] )      for target features (3 * H_target -> H, no bias)
           = the head's own previous output          for drafted steps (already H wide)
    x      = [ input_layernorm(embed(token_{t+1})) ; hidden_norm(h) ]          # 2H wide
    h'     = h + o_proj(attention(q/k/v_proj(x)))                              # q/k/v: 2H -> heads
    h'     = h' + mlp(post_attention_layernorm(h'))                            # next hidden
    logits = lm_head(norm(h'))                      over the draft vocabulary (draft_vocab_size)
    target token id of draft index i = i + d2t[i]

The checkpoint keys are exactly `fc.weight`, `midlayer.self_attn.{q,k,v,o}_proj.weight`,
`midlayer.mlp.{gate,up,down}_proj.weight`, `midlayer.{input_layernorm,hidden_norm,
post_attention_layernorm}.weight`, `norm.weight`, `lm_head.weight`, and the buffers `d2t` (int64
[draft_vocab_size], offsets) and `t2d` (bool [vocab_size], which target ids are in the draft
vocabulary). The official loader drops `d2t`/`t2d` when the draft vocabulary is the whole
vocabulary, so they are optional then. The token embedding is the target's (an optional
`embed_tokens.weight` copy in the file is checked for shape and otherwise ignored).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from eagle2.cache import PositionIndexedLayer
from eagle2.head import CONFIG_NAME, EMBEDDING_KEY, SAFETENSORS_NAME, DraftAttention, _read_weights, _resolve_head_folder
from eagle2.target import FeatureSpec

logger = logging.getLogger(__name__)

# Buffers the official loader deletes when draft_vocab_size == vocab_size.
VOCAB_MAP_KEYS = ("d2t", "t2d")
# The fewest target layers for which 2, N // 2 and N - 3 are three distinct, increasing layers
# (the official code collects them in one pass over the layers, so fewer would give fewer features).
MIN_TARGET_LAYERS = 7


def eagle3_feature_layers(num_layers: int) -> tuple[int, int, int]:
    """The decoder layers whose inputs EAGLE-3 reads, in concatenation order: 2, N // 2, N - 3."""
    if num_layers < MIN_TARGET_LAYERS:
        raise ValueError(
            f"EAGLE-3 reads the inputs of decoder layers 2, N // 2 and N - 3, which are distinct only for "
            f"N >= {MIN_TARGET_LAYERS}; this target has N = {num_layers}"
        )
    return (2, num_layers // 2, num_layers - 3)


class Eagle3DecoderLayer(nn.Module):
    """`midlayer`: attention over [normed embedding ; normed hidden] (2H), residual on the hidden."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.self_attn = DraftAttention(config, input_size=2 * hidden)
        self.mlp = LlamaMLP(config)
        self.hidden_norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.input_layernorm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)

    def forward(
        self,
        embeddings: torch.Tensor,  # [b, q, H]
        hidden: torch.Tensor,  # [b, q, H]
        rotary: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: PositionIndexedLayer | None,
    ) -> torch.Tensor:
        x = torch.cat((self.input_layernorm(embeddings), self.hidden_norm(hidden)), dim=-1)
        hidden = hidden + self.self_attn(x, rotary, mask, cache)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class Eagle3Head(nn.Module):
    """EAGLE-3 head: fc over three target features, one `midlayer`, `norm`, its own `lm_head`."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        for key in ("draft_vocab_size",):
            if getattr(config, key, None) is None:
                raise KeyError(f"EAGLE-3 head config has no {key!r}; it needs draft_vocab_size (and optionally target_hidden_size)")
        self.config = config
        hidden = config.hidden_size
        self.draft_vocab_size: int = int(config.draft_vocab_size)
        self.target_hidden_size: int = int(getattr(config, "target_hidden_size", None) or hidden)
        self.fc = nn.Linear(3 * self.target_hidden_size, hidden, bias=False)
        self.midlayer = Eagle3DecoderLayer(config)
        self.norm = LlamaRMSNorm(hidden, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(hidden, self.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.rotary = LlamaRotaryEmbedding(config)

    # ---- what the drafter needs ----

    def feature_spec(self, num_target_layers: int) -> FeatureSpec:
        return FeatureSpec(layer_inputs=eagle3_feature_layers(num_target_layers))

    def new_cache(self, capacity: int) -> list[PositionIndexedLayer]:
        return [PositionIndexedLayer(capacity)]

    def draft_token_ids(self) -> torch.Tensor:
        """[draft_vocab_size] long: the target token id of each draft index (i + d2t[i])."""
        return torch.arange(self.draft_vocab_size, device=self.d2t.device) + self.d2t

    def forward(
        self,
        token_embeddings: torch.Tensor,  # [b, q, H] target embeddings of the next tokens
        features: torch.Tensor,  # [b, q, 3 * H_target] target features, or [b, q, H] the head's own
        positions: torch.Tensor,  # [b, q] long
        mask: torch.Tensor | None = None,  # [b or 1, 1, q, kv] additive; None = causal over the new rows
        cache: list[PositionIndexedLayer] | None = None,
        *,
        from_target: bool = True,
    ) -> torch.Tensor:
        """The head's next hidden states [b, q, H] (pre-norm: drafted steps feed them back)."""
        hidden = self.fc(features) if from_target else features
        rotary = self.rotary(hidden, positions)
        return self.midlayer(token_embeddings.to(hidden.dtype), hidden, rotary, mask, None if cache is None else cache[0])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Draft logits [.., draft_vocab_size] from the head's hidden states."""
        return self.lm_head(self.norm(hidden))

    # ---- construction, loading and saving in the official layout ----

    @staticmethod
    def config_for_target(target_config, *, draft_vocab_size: int | None = None) -> LlamaConfig:
        """A one-layer EAGLE-3 head config matching a target's width, heads, RoPE and vocabulary."""
        from eagle2.head import DraftHead

        config = DraftHead.config_for_target(target_config, num_layers=1)
        config.draft_vocab_size = int(draft_vocab_size or target_config.vocab_size)
        return config

    @classmethod
    def random(cls, target_config, *, seed: int = 0, draft_vocab: torch.Tensor | None = None) -> "Eagle3Head":
        """A randomly initialised head (std 0.02, norms 1); `draft_vocab` = the target ids it may draft
        (sorted, distinct; default the whole vocabulary). Drafts badly but decoding stays lossless."""
        vocab = target_config.vocab_size
        ids = torch.arange(vocab) if draft_vocab is None else torch.as_tensor(draft_vocab, dtype=torch.long)
        head = cls(cls.config_for_target(target_config, draft_vocab_size=ids.numel()))
        head.set_draft_vocab(ids)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in head.named_parameters():
                if name.endswith("norm.weight"):
                    param.fill_(1.0)
                else:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
        return head

    def set_draft_vocab(self, token_ids: torch.Tensor) -> None:
        """Fill d2t / t2d from the draft vocabulary's target ids (increasing, distinct, in range)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).cpu()
        vocab = self.t2d.numel()
        if ids.numel() != self.draft_vocab_size:
            raise ValueError(f"draft vocabulary has {ids.numel()} ids but draft_vocab_size is {self.draft_vocab_size}")
        if ids.numel() and (bool((ids[1:] <= ids[:-1]).any()) or int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"draft vocabulary ids must be increasing, distinct and in [0, {vocab})")
        with torch.no_grad():
            self.d2t.copy_(ids - torch.arange(ids.numel()))
            self.t2d.zero_()
            self.t2d[ids] = True

    @classmethod
    def from_pretrained(cls, path: str | Path, *, revision: str | None = None, embedding_shape: tuple[int, int] | None = None) -> "Eagle3Head":
        """Load a released EAGLE-3 head (config.json + pytorch_model.bin or model.safetensors) strictly.

        Every key must be present with its shape (`d2t`/`t2d` may be absent only when the draft
        vocabulary is the whole vocabulary); the only extra key allowed is `embed_tokens.weight`,
        whose shape is checked against `embedding_shape` when given."""
        folder = _resolve_head_folder(path, revision)
        raw = json.loads((folder / CONFIG_NAME).read_text())
        if "draft_vocab_size" not in raw:
            raise KeyError(
                f"{folder / CONFIG_NAME}: no 'draft_vocab_size'; an EAGLE-3 head config has draft_vocab_size "
                "(and optionally target_hidden_size); is this an EAGLE-1/2 head? (methods eagle1/eagle2 take those)"
            )
        head = cls(LlamaConfig(**raw))
        state = _read_weights(folder)
        embedding = state.pop(EMBEDDING_KEY, None)
        if embedding is not None and embedding_shape is not None and tuple(embedding.shape) != tuple(embedding_shape):
            raise ValueError(
                f"{folder}: {EMBEDDING_KEY} has shape {tuple(embedding.shape)} but the target's embedding is "
                f"{tuple(embedding_shape)}; this head was trained for another model"
            )
        expected = head.state_dict()
        optional = set(VOCAB_MAP_KEYS) if head.draft_vocab_size == head.t2d.numel() else set()
        missing = sorted(set(expected) - set(state) - optional)
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(
                f"{folder}: weights do not match the EAGLE-3 head layout; missing: {missing or 'none'}, "
                f"unexpected: {unexpected or 'none'}; expected keys: {sorted(expected)}"
            )
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise ValueError(f"{folder}: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
        if not all(key in state for key in VOCAB_MAP_KEYS):
            state["d2t"] = torch.zeros(head.draft_vocab_size, dtype=torch.long)
            state["t2d"] = torch.ones(head.t2d.numel(), dtype=torch.bool)
        head.load_state_dict(
            {k: (v.long() if k == "d2t" else v.bool() if k == "t2d" else v.float()) for k, v in state.items()}, strict=True
        )
        ids = head.draft_token_ids()
        if head.draft_vocab_size and (int(ids.min()) < 0 or int(ids.max()) >= head.t2d.numel()):
            raise ValueError(f"{folder}: d2t maps draft ids outside the vocabulary [0, {head.t2d.numel()})")
        return head

    def save_pretrained(self, folder: str | Path, *, extra_config: dict | None = None) -> Path:
        """Write config.json + model.safetensors in the official EAGLE-3 layout (config.json last)."""
        from eagle2.file_io import write_text_atomic
        from eagle2.train.io import atomic_save_safetensors

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.state_dict().items()}
        atomic_save_safetensors(folder / SAFETENSORS_NAME, tensors, metadata={"format": "pt"})
        config = self.config.to_dict()
        config["draft_vocab_size"] = self.draft_vocab_size
        if self.target_hidden_size != self.config.hidden_size:
            config["target_hidden_size"] = self.target_hidden_size
        config.update(extra_config or {})
        write_text_atomic(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        return folder


def describe(head: Eagle3Head) -> str:
    params = sum(p.numel() for p in head.parameters())
    return (
        f"EAGLE-3 head: hidden {head.config.hidden_size}, target hidden {head.target_hidden_size}, "
        f"draft vocabulary {head.draft_vocab_size}, {params / 1e6:.1f}M parameters"
    )
