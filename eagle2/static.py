"""The static-shape decode path: a fixed-capacity KV cache written at slots, padded tree forwards,
and (optionally) torch.compile of the target's forward.

It plugs into the one decode loop (decode.generate) as a TargetModel: the loop, proposers and
verification are unchanged. What differs:

* StaticTreeKVCache preallocates every layer's keys/values at a fixed capacity. A forward writes
  its q new entries at slots [length, length + q) with index_copy_ (no reallocation, no growth), and
  attention reads a view of the first `view` slots, `view` rounded up to VIEW_MULTIPLE so the
  shapes a compiled graph sees repeat. Rejected drafts are simply overwritten by the next forward;
  keeping an accepted path moves at most `depth` entries (the same compaction as TreeKVCache).
* Every tree forward is padded to the proposer's fixed tree size (decode passes `pad_to`): padding
  rows carry token 0 at the root's position, attend only to themselves and are never seen by a real
  row, so they never influence, and are never offered for, acceptance; their cache slots lie beyond
  `length` and are overwritten later. A single-token step has q = 1.
* With compile=True the forward (embedding, decoder, final norm) is torch.compile'd: inductor on a
  CPU, mode "reduce-overhead" (CUDA graphs) on CUDA. Each query length q is one graph, the view
  dynamic; the harness compiles them in its warm-up generations (and records the seconds), and
  records every graph built inside a timed generation (`load.graphs_compiled`, flagged by the
  report); `warm_up()` compiles given tree sizes directly.
* Compiled on a CPU, the weights are frozen into the graphs (inductor's `freezing`), which lets it
  repack every linear layer, the lm_head included, into oneDNN's blocked layout: a bf16 matmul of
  a few rows then streams its weight about twice as fast as aten's. The model's attention becomes
  transformers' "eager" (matmul + softmax) implementation, which inductor fuses: the CPU SDPA
  kernel costs ~0.6 ms per call for one bf16 query row, ~18 ms per token over 30 layers
  (`benchmarks/forward_step.py`). Frozen graphs keep the weights they were compiled with, so a
  compiled target's weights must not change afterwards.
* linear_kernel="autotune" (compiled only) lets inductor time, per matmul shape, its own C++ GEMM
  template against oneDNN and fuse linear layers that share an input: on the 2-core AMD VM, bf16
  vanilla 16.5 ms/token against 23.5 (few_row) and 30.0 (default: oneDNN for every shape);
  compiles take longer (results/engine-bench/cpu-smollm2-linear-kernels.txt).
* linear_kernel="few_row" (bf16 on a CPU with AVX512-BF16) swaps the decoder's and the draft
  head's bias-free linear layers, the lm_head and the draft scorer for eagle2.kernels.FewRowLinear:
  calls of up to 4 rows (a decode step, an EAGLE-2 expansion, a 4-token tree) run a packed kernel
  that streams the weights about 1.4x faster than oneDNN's for one row; more rows stay on oneDNN,
  which is faster once the dot products, not memory, bound the call.
* cpp_wrapper=True (compiled on a CPU) has inductor emit each graph's wrapper, the code that calls
  its kernels one after another, as C++ rather than Python: a 30-layer forward makes hundreds of
  kernel calls and tensor allocations, each a few microseconds in Python. Side by side with
  autotune's kernels, an 8-row tree's verification went from 34.3 to 29.5 ms and a 4-row one's
  from 28.1 to 25.9, a vanilla step stayed at ~16 ms (its graph calls few extern kernels); a
  repeat gave 39.0 -> 36.9 and 34.5 -> 30.4 (results/engine-bench/cpu-smollm2-cpp-wrapper*.txt).
  Compiles take longer (a C++ build per graph).

The masks span the view ([1, 1, q, view] additive), so attention costs grow with the view, not the
capacity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch._inductor.config as inductor_config
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from eagle2.kernels import FewRowLinear, eligible, unavailable_reason, use_few_row_linears
from eagle2.target import FINAL_NORM, FeatureSpec, TargetModel, TargetOutput
from eagle2.tree import DraftTree

logger = logging.getLogger(__name__)

LINEAR_KERNELS = ("default", "autotune", "few_row")  # how StaticTargetModel computes linear layers on a CPU
VIEW_MULTIPLE = 256  # attention views are rounded up to this many slots (fewer distinct shapes to compile)


class SlotCursor:
    """Where the forward in flight writes: shared by every layer of one StaticTreeKVCache."""

    def __init__(self, device: torch.device) -> None:
        self.slots = torch.zeros(1, dtype=torch.long, device=device)  # [q] cache slots of the new entries
        self.view = VIEW_MULTIPLE  # attention reads slots [0, view)


class FixedSlotLayer(CacheLayerMixin):
    """One attention layer's keys and values at a fixed capacity; entries [0, length) are valid."""

    is_compileable = True
    is_sliding = False

    def __init__(self, capacity: int, cursor: SlotCursor) -> None:
        super().__init__()
        self.capacity = capacity
        self.cursor = cursor

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, kv_heads, _, head_dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.zeros(batch, kv_heads, self.capacity, head_dim, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(batch, kv_heads, self.capacity, value_states.shape[-1], dtype=value_states.dtype, device=value_states.device)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [batch, kv_heads, q, head_dim] -> written at the cursor's q slots.
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys.index_copy_(2, self.cursor.slots, key_states)
        self.values.index_copy_(2, self.cursor.slots, value_states)
        view = self.cursor.view
        return self.keys[:, :, :view], self.values[:, :, :view]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.cursor.view, 0

    def get_seq_length(self) -> int:
        return 0  # positions are always passed explicitly

    def get_max_length(self) -> int:
        return self.capacity

    def reset(self) -> None:
        pass


class StaticTreeKVCache(Cache):
    """A fixed-capacity, slot-addressed KV cache with the TreeKVCache interface (length, keep, truncate)."""

    def __init__(self, num_layers: int, capacity: int, device: torch.device) -> None:
        self.cursor = SlotCursor(device)
        super().__init__(layers=[FixedSlotLayer(capacity, self.cursor) for _ in range(num_layers)])
        self.capacity = capacity
        self.length = 0

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    @torch.inference_mode()
    def keep(self, start: int, offsets: list[int]) -> None:
        """After a tree was written at `start`, keep only its nodes `offsets` (increasing), packed from `start`."""
        if offsets == list(range(len(offsets))):
            self.length = start + len(offsets)
            return
        source = torch.tensor(offsets, dtype=torch.long, device=self.cursor.slots.device) + start
        destination = torch.arange(start, start + len(offsets), device=source.device)
        for layer in self.layers:
            layer.keys.index_copy_(2, destination, layer.keys.index_select(2, source))
            layer.values.index_copy_(2, destination, layer.values.index_select(2, source))
        self.length = start + len(offsets)


# Inductor settings of linear_kernel="autotune": each matmul shape timed between inductor's own C++
# GEMM template and oneDNN (aten) when it compiles, and linear layers that share an input (q/k/v,
# gate/up) fused into one; without inductor's per-shape timing tables on stderr.
AUTOTUNE_SETTINGS = {
    "max_autotune": True,
    "max_autotune_gemm_backends": "CPP,ATEN",
    "cpp.enable_concat_linear": True,
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def compiled_for(
    function,
    device: torch.device,
    *,
    dynamic: bool | None = None,
    graphs: int = 64,
    automatic_dynamic: bool = True,
    autotune: bool = False,
    cpp_wrapper: bool = False,
):
    """`function` torch.compile'd for `device`: CUDA graphs ("reduce-overhead") on CUDA; inductor on a
    CPU with the weights of the modules it calls frozen into the graph (see the module docstring).

    Up to `graphs` shapes each get their own graph (dynamo's default stops at 8 and then runs the
    rest eagerly, silently slower: a draft head alone meets more shapes than that, one per catch-up
    length, depth width and top-k). `automatic_dynamic=False`: only dimensions marked dynamic are;
    a new size of any other gets its own static graph instead of turning the dimension dynamic
    (whose graphs then specialise on other things, e.g. storage offsets, that later calls vary).
    `autotune`: compile with AUTOTUNE_SETTINGS (longer compiles; a CPU's linear-layer kernels).
    `cpp_wrapper`: a C++ wrapper calls the graph's kernels (CPU only; see the module docstring)."""
    if cpp_wrapper and device.type != "cpu":
        raise ValueError(f"cpp_wrapper is for compiled graphs on a CPU, not {device.type} (CUDA graphs replay the kernels there)")
    compiled = torch.compile(function, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=dynamic)
    settings = {"freezing": device.type == "cpu", "cpp_wrapper": cpp_wrapper, **(AUTOTUNE_SETTINGS if autotune else {})}
    # Compilation happens inside a call (the first one, and each new shape's), so the settings are
    # scoped to every call. torch.compile(options={"freezing": True}) does not reach the pass that
    # repacks the weights (torch 2.13); inductor's own scoped config does. The patch objects are
    # built once: building them took about as long as entering them (~0.1 ms per call in all,
    # measured on the 2-core VM), and one object may be entered again, nested or not (each entry
    # keeps its own prior values).
    dynamo_settings = torch._dynamo.config.patch(recompile_limit=graphs, automatic_dynamic_shapes=automatic_dynamic)
    inductor_settings = inductor_config.patch(settings)

    def scoped(*args, **kwargs):
        with dynamo_settings, inductor_settings:
            return compiled(*args, **kwargs)

    return scoped


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class StaticTargetModel(TargetModel):
    """A TargetModel whose forwards have static shapes (padded trees, fixed-capacity cache), optionally compiled.

    One cache of `capacity` entries is allocated once and reused by every generation (its buffers keep
    their identity, so a compiled graph is never invalidated by a new cache); a generation that
    needs more grows it (and recompiles), with a warning.
    """

    def __init__(
        self, model: PreTrainedModel, *, compile: bool = False, capacity: int = 2048, linear_kernel: str = "default", cpp_wrapper: bool = False
    ) -> None:
        super().__init__(model)
        self.compiled = compile
        if cpp_wrapper and not (compile and self.device.type == "cpu"):
            raise ValueError(f"cpp_wrapper needs compile=True on a CPU (compile={compile}, device {self.device.type})")
        self.cpp_wrapper = cpp_wrapper  # the draft head's compiled step follows the target's
        if linear_kernel not in LINEAR_KERNELS:
            raise ValueError(f"linear_kernel {linear_kernel!r}: expected one of {', '.join(LINEAR_KERNELS)}")
        # "autotune": inductor picks each matmul's kernel (AUTOTUNE_SETTINGS; compiled only).
        # "few_row": eagle2.kernels' bf16 kernel for the decoder's and heads' linear layers and the
        # lm_head; this changes `model`'s modules (see use_few_row_linears).
        if linear_kernel == "autotune" and not compile:
            raise ValueError("linear_kernel autotune needs compile=True (it is how inductor compiles the matmuls)")
        self.linear_kernel = linear_kernel
        self.few_row_linears = 0
        if linear_kernel == "few_row":
            reason = unavailable_reason()
            if reason is not None:
                raise ValueError(f"linear_kernel few_row: {reason} (use linear_kernel: default)")
            self.few_row_linears = use_few_row_linears(self.decoder)
            if eligible_lm_head := eligible(self.lm_head):
                self._project = FewRowLinear.from_linear(self.lm_head)
            logger.info("few-row bf16 kernel: %d decoder linear layers%s", self.few_row_linears, ", the lm_head" if eligible_lm_head else "")
        if compile and self.device.type == "cpu" and self.config._attn_implementation != "eager":
            logger.info("compiled on a CPU: attention %s -> eager (inductor fuses it; see eagle2.static)", self.config._attn_implementation)
            model.set_attn_implementation("eager")
        self.capacity = round_up(min(capacity, self.max_context) + 64, VIEW_MULTIPLE)
        self.compile_seconds = 0.0  # spent in warm_up() (compilation and first runs)
        self._cache: StaticTreeKVCache | None = None
        autotune = linear_kernel == "autotune"
        self._step = compiled_for(self._decoder_step, self.device, autotune=autotune, cpp_wrapper=cpp_wrapper) if compile else self._decoder_step
        if compile and self.device.type == "cpu":
            # Row counts vary (1, a tree, the nodes a verifier visits): one dynamic graph (0 and 1 rows get their own).
            self._project = compiled_for(self._project, self.device, dynamic=True, autotune=autotune, cpp_wrapper=cpp_wrapper)

    def draft_scorer(self, draft_vocab: torch.Tensor | None) -> torch.nn.Module:
        scorer = super().draft_scorer(draft_vocab)
        if self.linear_kernel != "few_row" or not eligible(scorer):
            return scorer
        key = ("few_row", None if draft_vocab is None else tuple(draft_vocab.tolist()))
        if key not in self._draft_scorers:
            self._draft_scorers[key] = FewRowLinear.from_linear(scorer)
        return self._draft_scorers[key]

    def new_cache(self, capacity: int) -> StaticTreeKVCache:
        # A padded tree may write up to its full size past the accepted prefix: 64 slots of slack.
        needed = round_up(capacity + 64, VIEW_MULTIPLE)
        if self._cache is None or needed > self._cache.capacity:
            if self._cache is not None:
                logger.warning("static KV cache grows from %d to %d entries (a compiled target recompiles)", self._cache.capacity, needed)
            self._cache = StaticTreeKVCache(self.num_layers, max(needed, self.capacity), self.device)
        self._cache.length = 0
        return self._cache

    @property
    def cache_capacity(self) -> int:
        """Entries the shared cache holds now (it may have grown past `capacity` for a long generation)."""
        return self._cache.capacity if self._cache is not None else self.capacity

    def _decoder_step(self, input_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, cache: StaticTreeKVCache) -> torch.Tensor:
        cache.cursor.slots = slots
        cache.cursor.view = mask.shape[-1]
        outputs = self.decoder(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True, **{self._cache_argument: cache}
        )
        return outputs.last_hidden_state[0]

    def _mask(self, prefix: int, query_length: int, padded: int, view: int, tree: DraftTree | None) -> torch.Tensor:
        """[1, 1, padded, view] additive: the prefix for the real rows, ancestors (or causal order) within
        the new tokens; a padding row sees only its own slot."""
        device, dtype = self.device, self.dtype
        visible = torch.zeros(padded, view, dtype=torch.bool, device=device)
        visible[:query_length, :prefix] = True
        if tree is None:
            within = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()
        else:
            within = tree.ancestor_mask
        visible[:query_length, prefix : prefix + query_length] = within
        pad_rows = torch.arange(query_length, padded, device=device)
        visible[pad_rows, prefix + pad_rows] = True
        mask = torch.zeros(1, 1, padded, view, dtype=dtype, device=device)
        return mask.masked_fill_(~visible, torch.finfo(dtype).min)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,
        cache: StaticTreeKVCache,
        *,
        tree: DraftTree | None = None,
        logits_for: torch.Tensor | slice | None = None,
        pad_to: int | None = None,
        features: FeatureSpec = FINAL_NORM,
    ) -> TargetOutput:
        layers = self.check_features(features)
        prefix = cache.length
        query_length = input_ids.shape[0]
        # Single tokens and trees get fixed shapes; a prompt (prefill) runs at its own length, eagerly.
        static = query_length == 1 or (tree is not None and pad_to is not None and query_length <= pad_to)
        padded = 1 if query_length == 1 else (pad_to if static else query_length)
        if prefix + padded > cache.capacity:
            raise ValueError(f"the static KV cache holds {cache.capacity} entries; this step needs {prefix + padded}")
        view = min(round_up(prefix + padded, VIEW_MULTIPLE), cache.capacity)
        device = input_ids.device
        positions = torch.full((padded,), prefix, dtype=torch.long, device=device)
        positions[:query_length] = (tree.depths if tree is not None else torch.arange(query_length, device=device)) + prefix
        tokens = torch.zeros(padded, dtype=torch.long, device=device)
        tokens[:query_length] = input_ids
        slots = torch.arange(prefix, prefix + padded, device=device)
        mask = self._mask(prefix, query_length, padded, view, tree)
        extra = None
        if layers:
            # EAGLE-3's layer inputs come from transformers' hidden-state capture, which torch.compile
            # cannot trace (a ContextVar): such forwards run eagerly, still at static shapes.
            cache.cursor.slots = slots
            cache.cursor.view = mask.shape[-1]
            outputs = self.decoder(input_ids=tokens[None], attention_mask=mask, position_ids=positions[None], use_cache=True,
                                   output_hidden_states=list(layers), **{self._cache_argument: cache})
            hidden = outputs.last_hidden_state[0][:query_length]
            extra = torch.cat([outputs.hidden_states[i][0][:query_length] for i in layers], dim=-1)
        elif static and self.compiled:
            torch._dynamo.mark_dynamic(mask, 3)  # one graph per query length, whatever the view
            hidden = self._step(tokens[None], positions[None], mask, slots, cache)[:query_length]
        else:
            hidden = self._decoder_step(tokens[None], positions[None], mask, slots, cache)[:query_length]
        cache.length = prefix + query_length
        selected = hidden if logits_for is None else hidden[logits_for]
        return TargetOutput(logits=self.logits_of(selected), hidden=hidden, features=extra)

    def warm_up(self, tree_sizes: Sequence[int]) -> float:
        """Run (and so compile) the static shapes a generation uses: q = 1 and each padded tree size,
        at two attention views. Returns the seconds spent (also added to compile_seconds)."""
        started = time.perf_counter()
        cache = self.new_cache(2 * VIEW_MULTIPLE)
        for size in sorted({1, *tree_sizes}):
            for prefix in (8, VIEW_MULTIPLE + 8):
                cache.length = prefix
                tokens = torch.zeros(size, dtype=torch.long, device=self.device)
                tree = None if size == 1 else DraftTree.from_parents(tokens, torch.arange(-1, size - 1, device=self.device))
                self.forward(tokens, cache, tree=tree, logits_for=slice(0, 0), pad_to=size)
        cache.length = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - started
        self.compile_seconds += elapsed
        return elapsed
