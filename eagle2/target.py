"""The target model: a transformers causal LM driven through its public forward.

Every call passes an explicit 4-D additive attention mask, explicit position ids and our own
TreeKVCache, so the same forward serves the prefill, vanilla decoding and tree verification.
It returns the logits, the last hidden state after the final norm (the EAGLE-1/2 head's feature)
and, when a FeatureSpec asks for them, other hidden states of the same forward (EAGLE-3 reads the
inputs of three decoder layers). Batch size is 1 throughout, as in the EAGLE papers.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from eagle2.cache import TreeKVCache
from eagle2.tree import DraftTree

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 matmuls


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The native-bfloat16 flags (AMX-BF16, AVX512-BF16) the CPU reports in /proc/cpuinfo (or in
    the `cpuinfo` text given); () where there is none or no /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
                cpuinfo = handle.read()
        except OSError:
            return ()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def auto_dtype(device: str | torch.device, cpuinfo: str | None = None) -> tuple[torch.dtype, str]:
    """The dtype `auto` means for a model stored in float32 (or dequantised), and why.

    bfloat16 on CUDA and on CPUs with AMX-BF16 / AVX512-BF16 (where its matmuls run natively and
    read half the bytes); float32 on other CPUs, where bfloat16 is emulated and slower."""
    device_type = torch.device(device).type if not isinstance(device, torch.device) else device.type
    if device_type == "cuda":
        return torch.bfloat16, "CUDA device"
    if device_type == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return torch.bfloat16, "CPU has " + ", ".join(flags)
        return torch.float32, "CPU without AMX-BF16 / AVX512-BF16"
    return torch.float32, f"device type {device_type}"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    """'auto' is passed through to transformers; names map to torch dtypes."""
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    aliases = {"fp32": "float32", "fp64": "float64", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(dtype, dtype)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(DTYPES)}, {', '.join(aliases)}")
    return DTYPES[name]


@dataclass(frozen=True)
class FeatureSpec:
    """Which of the target's hidden states a draft head reads at every token (a head kind declares it).

    `layer_inputs` empty: the last hidden state after the final norm (EAGLE-1/2). Otherwise the
    inputs of those decoder layers (0-based), concatenated in this order along the feature axis
    (EAGLE-3: layers 2, N // 2 and N - 3 of N), so the feature is len(layer_inputs) * H wide."""

    layer_inputs: tuple[int, ...] = ()

    def width(self, hidden_size: int) -> int:
        return hidden_size * max(len(self.layer_inputs), 1)


FINAL_NORM = FeatureSpec()


@dataclass(frozen=True)
class TargetOutput:
    logits: torch.Tensor  # [q_logits, vocab], float32 (float64 when the model is float64)
    hidden: torch.Tensor  # [q, hidden], model dtype: last hidden state after the final norm
    features: torch.Tensor | None = None  # [q, F] the FeatureSpec's features; None: they are `hidden`

    @property
    def head_features(self) -> torch.Tensor:
        """What the draft head reads: the requested features, or the final-norm output."""
        return self.hidden if self.features is None else self.features


class TargetModel:
    """Adapter over a transformers decoder-only LM (Llama, Mistral, Qwen2/3 and the like)."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.decoder: nn.Module = model.get_decoder()
        self.lm_head: nn.Module = model.get_output_embeddings()
        self.embed_tokens: nn.Module = model.get_input_embeddings()
        self._project = self.lm_head  # hidden states -> logits (eagle2.static swaps in a compiled one)
        self._draft_scorers: dict[object, nn.Module] = {}
        self.config = model.config.get_text_config()
        self.num_layers: int = self.config.num_hidden_layers
        self.hidden_size: int = self.config.hidden_size
        self.vocab_size: int = self.lm_head.weight.shape[0]
        self.max_context: int = int(getattr(self.config, "max_position_embeddings", 1 << 30))
        parameters = inspect.signature(self.decoder.forward).parameters
        # transformers renamed `past_key_values` to `cache` in 5.2x; accept either.
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        if getattr(self.config, "sliding_window", None) and getattr(self.config, "use_sliding_window", True):
            if self.config.sliding_window < self.max_context:
                logger.warning(
                    "%s uses sliding-window attention (window %d); this engine attends to the full context, "
                    "which equals the model only while the context is shorter than the window",
                    type(model).__name__,
                    self.config.sliding_window,
                )

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        gguf_file: str | None = None,
        dtype: str | torch.dtype = "auto",
        device: str | None = None,
        device_map: str | dict | None = None,
        attn_implementation: str = "sdpa",
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> "TargetModel":
        """Load a local path, hub id or GGUF file (name_or_path = its folder, gguf_file = its name)."""
        kwargs: dict = {"dtype": parse_dtype(dtype), "attn_implementation": attn_implementation}
        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        if device_map is not None:
            kwargs["device_map"] = device_map
        if revision is not None:
            kwargs["revision"] = revision
        if trust_remote_code:
            kwargs["trust_remote_code"] = True
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        if device_map is None and device is not None:
            model = model.to(device)
        return cls(model)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, capacity: int) -> TreeKVCache:
        return TreeKVCache(self.num_layers, capacity)

    def attention_mask(self, prefix_length: int, query_length: int, tree: DraftTree | None) -> torch.Tensor | None:
        """[1, 1, q, prefix + q] additive mask: the prefix is visible to all; within the new tokens,
        causal order, or for a tree each node sees its ancestors and itself.

        A single query token sees every entry, so it gets None: an all-zero mask would force SDPA off
        its unmasked kernel and cost vanilla decoding ~10% per token on a CPU (benchmarks/engine.py)."""
        if query_length == 1:
            return None
        device, dtype = self.device, self.dtype
        mask = torch.zeros(1, 1, query_length, prefix_length + query_length, dtype=dtype, device=device)
        if tree is None:
            visible = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()
        else:
            visible = tree.ancestor_mask
        mask[0, 0, :, prefix_length:].masked_fill_(~visible, torch.finfo(dtype).min)
        return mask

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: TreeKVCache,
        *,
        tree: DraftTree | None = None,
        logits_for: torch.Tensor | slice | None = None,
        features: FeatureSpec = FINAL_NORM,
        pad_to: int | None = None,
    ) -> TargetOutput:
        """Append `input_ids` ([q] long) after the cache's entries and run the model on them.

        Without a tree the tokens are a causal sequence; with one they are its nodes (input_ids =
        tree.tokens), placed at prefix + depth. `logits_for` selects the rows that get logits
        (default: all); the hidden state is returned for every row, and so are the features that
        `features` asks for (captured from this same forward through transformers'
        `output_hidden_states` selection, whose entry i is the input of decoder layer i). `pad_to`
        (the proposer's largest tree) matters only to the static path (eagle2.static), which pads trees to it.
        """
        layers = self.check_features(features)
        prefix = cache.length
        query_length = input_ids.shape[0]
        if tree is None:
            positions = torch.arange(prefix, prefix + query_length, device=input_ids.device)
        else:
            positions = tree.depths + prefix
        outputs = self.decoder(
            input_ids=input_ids.unsqueeze(0),
            attention_mask=self.attention_mask(prefix, query_length, tree),
            position_ids=positions.unsqueeze(0),
            use_cache=True,
            **({"output_hidden_states": list(layers)} if layers else {}),
            **{self._cache_argument: cache},
        )
        hidden = outputs.last_hidden_state[0]
        extra = torch.cat([outputs.hidden_states[i][0] for i in layers], dim=-1) if layers else None
        selected = hidden if logits_for is None else hidden[logits_for]
        return TargetOutput(logits=self.logits_of(selected), hidden=hidden, features=extra)

    @torch.inference_mode()
    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The target's logits ([n, V], float32, or float64 for a float64 model) for last hidden states [n, H]."""
        logits = self._project(hidden)
        return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()

    def draft_scorer(self, draft_vocab: torch.Tensor | None) -> nn.Linear:
        """The lm_head restricted to the rows `draft_vocab` (None: all), as one module per vocabulary
        for the life of this target. A drafter is made per generation: with one module the rows are
        gathered once, and a compiled drafter's graphs stay valid (dynamo guards on the module) with
        the weight frozen once (eagle2.static)."""
        key = None if draft_vocab is None else tuple(draft_vocab.tolist())
        if key not in self._draft_scorers:
            weight = self.lm_head.weight if draft_vocab is None else self.lm_head.weight[draft_vocab.to(self.device)]
            bias = getattr(self.lm_head, "bias", None)
            scorer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            scorer.weight = nn.Parameter(weight.detach(), requires_grad=False)
            if bias is not None:
                scorer.bias = nn.Parameter((bias if draft_vocab is None else bias[draft_vocab.to(self.device)]).detach(), requires_grad=False)
            self._draft_scorers[key] = scorer
        return self._draft_scorers[key]

    def check_features(self, features: FeatureSpec) -> tuple[int, ...]:
        """The decoder-layer indices a FeatureSpec reads, checked against this model's depth."""
        bad = [i for i in features.layer_inputs if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(f"feature layers {bad} do not exist: the target has decoder layers 0..{self.num_layers - 1}")
        return features.layer_inputs
