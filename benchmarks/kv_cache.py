"""KV-cache benchmark: one speculative step's cache work, our TreeKVCache vs transformers' DynamicCache.

A step appends a verified tree of n tokens to every layer, then keeps only the accepted path.
  TreeKVCache:  write the tree into a preallocated buffer; move the <= depth accepted entries.
  DynamicCache: torch.cat the tree onto every layer (copies the whole layer); then crop back to
                the prefix and append the gathered path (another cat).
Only cache work is timed (no model), for the shape of SmolLM2-135M (30 layers, 3 KV heads, head
dim 64) unless told otherwise.

Output contract: one line per (context length, tree size): microseconds per step for each cache
and their ratio (DynamicCache / TreeKVCache).

    python benchmarks/kv_cache.py [--layers 30 --kv-heads 3 --head-dim 64 --device cpu --dtype float32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eagle2.cache import TreeKVCache  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_tree_cache(cache: TreeKVCache, tree_kv: torch.Tensor, path: list[int], layers: int) -> None:
    start = cache.length
    for layer in range(layers):
        cache.update(tree_kv, tree_kv, layer)
    cache.keep(start, path)


def step_dynamic_cache(cache: DynamicCache, tree_kv: torch.Tensor, path_index: torch.Tensor, layers: int) -> None:
    start = cache.get_seq_length()
    for layer in range(layers):
        cache.update(tree_kv, tree_kv, layer)
    kept = [(cache.layers[layer].keys[:, :, start + path_index], cache.layers[layer].values[:, :, start + path_index]) for layer in range(layers)]
    cache.crop(start - cache.get_seq_length())  # negative: tokens to remove (works across transformers 5.x)
    for layer, (keys, values) in enumerate(kept):
        cache.update(keys, values, layer)


def measure(args, context: int, tree_size: int, device: torch.device, dtype: torch.dtype) -> tuple[float, float]:
    shape = (1, args.kv_heads, context, args.head_dim)
    prefix = torch.randn(shape, dtype=dtype, device=device)
    tree_kv = torch.randn(1, args.kv_heads, tree_size, args.head_dim, dtype=dtype, device=device)
    path = [0, 1, 3, min(7, tree_size - 1)][: min(4, tree_size)]
    path = sorted(set(path))
    path_index = torch.tensor(path, device=device)

    ours = TreeKVCache(args.layers, context + args.steps * (tree_size + 4) + tree_size)
    for layer in range(args.layers):
        ours.update(prefix, prefix, layer)
    theirs = DynamicCache()
    for layer in range(args.layers):
        theirs.update(prefix, prefix, layer)

    timings = []
    with torch.inference_mode():
        for name, run in (("ours", lambda: step_tree_cache(ours, tree_kv, path, args.layers)), ("dynamic", lambda: step_dynamic_cache(theirs, tree_kv, path_index, args.layers))):
            for _ in range(3):  # warm-up
                run()
            synchronize(device)
            started = time.perf_counter()
            for _ in range(args.steps):
                run()
            synchronize(device)
            timings.append((time.perf_counter() - started) / args.steps * 1e6)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--contexts", default="256,1024,4096")
    parser.add_argument("--trees", default="26,60")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    print(f"layers={args.layers} kv_heads={args.kv_heads} head_dim={args.head_dim} device={device} dtype={dtype} threads={torch.get_num_threads()}")
    print(f"{'context':>8} {'tree':>5} {'TreeKVCache us/step':>20} {'DynamicCache us/step':>21} {'ratio':>7}")
    for context in map(int, args.contexts.split(",")):
        for tree_size in map(int, args.trees.split(",")):
            ours, dynamic = measure(args, context, tree_size, device, dtype)
            print(f"{context:>8} {tree_size:>5} {ours:>20.1f} {dynamic:>21.1f} {dynamic / ours:>6.1f}x")


if __name__ == "__main__":
    main()
