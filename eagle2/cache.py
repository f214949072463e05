"""A preallocated, position-indexed KV cache that can append a draft tree and keep only its accepted path.

Each step, the verifier appends the whole tree (n tokens) after the accepted prefix, then keeps the
accepted root-to-leaf path. Keeping a path moves at most `depth` entries inside the buffer; the
prefix is never copied. transformers' DynamicCache, by contrast, concatenates (copies) the whole
cache on every forward and would have to rebuild it to drop rejected branches.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PositionIndexedLayer(CacheLayerMixin):
    """One attention layer's keys and values; entries [0, length) are valid."""

    is_compileable = False
    is_sliding = False

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, kv_heads, _, head_dim = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = torch.empty(batch, kv_heads, self.capacity, head_dim, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.empty(
            batch, kv_heads, self.capacity, value_states.shape[-1], dtype=value_states.dtype, device=value_states.device
        )
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        new_capacity = max(needed, 2 * self.capacity)
        keys = self.keys.new_empty(*self.keys.shape[:2], new_capacity, self.keys.shape[-1])
        values = self.values.new_empty(*self.values.shape[:2], new_capacity, self.values.shape[-1])
        keys[:, :, : self.length] = self.keys[:, :, : self.length]
        values[:, :, : self.length] = self.values[:, :, : self.length]
        self.keys, self.values, self.capacity = keys, values, new_capacity

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [batch, kv_heads, q, head_dim]
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1  # grows on demand

    def reset(self) -> None:
        self.length = 0

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)

    def keep(self, start: int, offsets: torch.Tensor) -> None:
        """Keep entries start + offsets (increasing) at start, start + 1, ...; drop everything after."""
        kept = offsets.shape[0]
        source = offsets + start
        self.keys[:, :, start : start + kept] = self.keys.index_select(2, source)
        self.values[:, :, start : start + kept] = self.values.index_select(2, source)
        self.length = start + kept


class TreeKVCache(Cache):
    """A transformers Cache made of PositionIndexedLayers, all of the same length."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        super().__init__(layers=[PositionIndexedLayer(capacity) for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.layers[0].length

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    @torch.inference_mode()
    def keep(self, start: int, offsets: list[int]) -> None:
        """After a tree was appended at `start`, keep only the tree nodes `offsets` (increasing), packed."""
        if offsets == list(range(len(offsets))):
            # The kept nodes already sit packed at the front of the tree: nothing to move.
            self.truncate(start + len(offsets))
            return
        source = torch.tensor(offsets, dtype=torch.long, device=self.layers[0].device)
        for layer in self.layers:
            layer.keep(start, source)
