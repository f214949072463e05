"""Cost of one target forward by query length: eager engine vs static-shape path vs compiled, per dtype.

Output contract: one line per (dtype, path, q) with the median and minimum milliseconds of a forward
of q new tokens (q = 1: a vanilla step; q > 1: a verification tree, a chain here) after a context of
--context tokens, and the ratio q-forward / 1-forward (what verifying a tree costs in decoding steps),
plus the memory floor of a single-token step (weight bytes / measured read bandwidth). Compilation
happens before timing and its seconds are printed.

    python benchmarks/forward_step.py --threads 2 --dtypes float32,bfloat16 --paths eager,compiled --queries 1,16,32,64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2.static import StaticTargetModel  # noqa: E402
from eagle2.tree import DraftTree  # noqa: E402
from harness.memory import measure_read_bandwidth, memory_floor_ms, weight_bytes_per_token  # noqa: E402
from harness.models import load_model  # noqa: E402


def time_forward(target, context: int, query: int, repeats: int) -> list[float]:
    cache = target.new_cache(context + 2 * query + 8)
    prompt = torch.arange(context, device=target.device) % 1000 + 100
    target.forward(prompt, cache, logits_for=slice(-1, None))
    tokens = torch.arange(query, device=target.device) + 200
    tree = None if query == 1 else DraftTree.from_parents(tokens, torch.arange(-1, query - 1, device=target.device))
    times = []
    for _ in range(repeats + 1):
        cache.truncate(context)  # drop the previous repeat's query tokens
        started = time.perf_counter()
        out = target.forward(tokens, cache, tree=tree, logits_for=slice(0, 1), pad_to=query)
        out.logits.sum().item()
        times.append(time.perf_counter() - started)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--paths", default="eager,compiled", help="eager | static | compiled, comma-separated")
    parser.add_argument("--queries", default="1,16,32,64")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    queries = [int(q) for q in args.queries.split(",")]
    bandwidth = measure_read_bandwidth("cpu")
    print(f"threads={torch.get_num_threads()} context={args.context} repeats={args.repeats} read bandwidth={bandwidth / 1e9:.1f} GB/s")
    for dtype in args.dtypes.split(","):
        base = load_model(args.model, dtype=dtype).target
        floor = memory_floor_ms(weight_bytes_per_token(base.model), bandwidth)
        for path in args.paths.split(","):
            target = base if path == "eager" else StaticTargetModel(base.model, compile=path == "compiled", capacity=args.context + 256)
            compile_s = target.warm_up([q for q in queries if q > 1]) if path != "eager" else 0.0
            single = None
            for query in queries:
                times = time_forward(target, args.context, query, args.repeats)
                median = statistics.median(times) * 1000
                single = median if query == 1 else single
                ratio = f"{median / single:5.2f}x a 1-token step" if single else ""
                print(f"{dtype:<9} {path:<9} q={query:<3} median {median:7.1f} ms  min {min(times) * 1000:7.1f} ms  {ratio}"
                      + (f"  (memory floor {floor:.1f} ms)" if query == 1 else ""))
            if compile_s:
                print(f"{dtype:<9} {path:<9} warm-up (compile) {compile_s:.1f} s")


if __name__ == "__main__":
    main()
