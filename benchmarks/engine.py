"""Engine benchmark: our vanilla vs transformers' generate, and EAGLE-1 / EAGLE-2, in one run.

Output contract: a table on stdout with one row per method (and a JSON file with --out):
  method, params, tokens, seconds, tokens/s, speedup vs our vanilla, tau (new tokens per target
  forward, prefill included), lossless (greedy outputs equal to our vanilla's, out of prompts);
plus the ratio "our vanilla / transformers generate" (must be >= 1.0: an honest baseline).

Methods run interleaved (prompt by prompt, rotating the order each repeat) so that slow drifts of a
shared machine hit all of them alike; each region is timed with device synchronisation inside the
engine; the first prompt of every method is a warm-up and is not counted.

    python benchmarks/engine.py                        # embedded SmolLM2-135M, CPU, float32
    python benchmarks/engine.py --device cuda --dtype bfloat16 --prompts 20 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2 import METHODS, SamplingConfig  # noqa: E402
from harness.chat import Message  # noqa: E402
from harness.models import EMBEDDED_HEAD, builtin_head_available, chat_template_for, load_head, load_model  # noqa: E402
from harness.runner import git_state, hardware_info, package_versions  # noqa: E402
from harness.tasks import DataSource, get_task, select_questions  # noqa: E402

DEFAULT_METHODS = [
    ("vanilla", {}),
    ("hf_generate", {}),
    ("eagle1", {"tree": "mc_sim_7b_63"}),
    ("eagle2", {"depth": 6, "top_k": 10, "total_tokens": 60}),
    ("eagle2", {"depth": 5, "top_k": 8, "total_tokens": 32}),
]


def mt_bench_first_turns(data_dir: Path, count: int) -> list[str]:
    """The first turns of `count` MT-bench questions spread over the categories (the harness's loader)."""
    spec = get_task("mt_bench")
    options = {name: option.default for name, option in spec.options.items()}
    questions, _ = spec.load(options, DataSource.from_env(data_dir))
    return [question.turns[0] for question in select_questions(questions, count, "spread")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded | folder | hub id | file.gguf")
    parser.add_argument("--head", default=None, help="draft head: builtin:NAME | folder | hub id | random (default: the shipped head for the embedded model, else random)")
    parser.add_argument("--chat-template", default="tokenizer")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("EAGLE2_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--prompts", type=int, default=5, help="MT-bench first turns (plus one warm-up)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--methods", default=None, help='JSON list of [name, params] pairs; default: vanilla, hf_generate, eagle1, eagle2 x2')
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    target = loaded.target
    head_spec = args.head
    if head_spec is None:
        shipped = f"builtin:{EMBEDDED_HEAD}"
        head_spec = shipped if args.model == "embedded" and builtin_head_available(shipped) else "random"
    head = load_head(head_spec, target)
    template = chat_template_for(loaded, args.chat_template)
    prompts = [template.prompt_ids([Message("user", text)]) for text in mt_bench_first_turns(args.data_dir, args.prompts + 1)]
    methods = [tuple(m) for m in json.loads(args.methods)] if args.methods else DEFAULT_METHODS
    names = [name for name, _ in methods]
    if "vanilla" not in names:
        parser.error("--methods must include vanilla: every speedup and the lossless check are against it")
    baseline = names.index("vanilla")
    decoders = [(name, params, METHODS[name].create(target, head, params)) for name, params in methods]
    sampling = SamplingConfig(temperature=args.temperature)

    totals = {i: {"tokens": 0, "seconds": 0.0, "forwards": 0, "same": 0, "per_prompt": []} for i in range(len(decoders))}
    started = time.time()
    for repeat in range(args.repeats):
        for p_index, prompt in enumerate(prompts):
            order = list(range(len(decoders)))
            rotation = (p_index + repeat) % len(order)
            order = order[rotation:] + order[:rotation]
            outputs = {}
            for i in order:
                name, params, decode = decoders[i]
                generator = torch.Generator().manual_seed(1000 * repeat + p_index)
                record = decode(prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_token_ids=template.stop_token_ids, generator=generator)
                outputs[i] = record.output_ids
                if p_index == 0:
                    continue  # warm-up
                entry = totals[i]
                entry["tokens"] += record.new_tokens
                entry["seconds"] += record.total_time_s
                entry["forwards"] += record.target_forwards
                entry["per_prompt"].append(record.new_tokens / record.total_time_s)
            if p_index > 0:
                for i in outputs:
                    totals[i]["same"] += outputs[i] == outputs[baseline]
            print(f"  prompt {p_index}/{len(prompts) - 1} repeat {repeat + 1}/{args.repeats} done ({time.time() - started:.0f} s)", file=sys.stderr)

    counted = (len(prompts) - 1) * args.repeats
    vanilla_rate = totals[baseline]["tokens"] / totals[baseline]["seconds"]
    rows = []
    for i, (name, params, _) in enumerate(decoders):
        entry = totals[i]
        rate = entry["tokens"] / entry["seconds"]
        rows.append(
            {
                "method": name,
                "params": params,
                "tokens": entry["tokens"],
                "seconds": round(entry["seconds"], 3),
                "tokens_per_s": round(rate, 2),
                "median_prompt_tokens_per_s": round(statistics.median(entry["per_prompt"]), 2),
                "speedup_vs_vanilla": round(rate / vanilla_rate, 3),
                "tau": round(entry["tokens"] / entry["forwards"], 3),
                "greedy_equal_to_vanilla": f"{entry['same']}/{counted}" if sampling.greedy else "n/a (sampling)",
            }
        )
    hf = next((r for r in rows if r["method"] == "hf_generate"), None)
    print()
    print(f"model={loaded.source} head={head_spec} device={target.device} dtype={target.dtype} threads={torch.get_num_threads()} "
          f"prompts={len(prompts) - 1} max_new_tokens={args.max_new_tokens} T={args.temperature}")
    print(f"{'method':<12} {'params':<42} {'tokens':>7} {'tok/s':>8} {'speedup':>8} {'tau':>6}  lossless")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        print(f"{r['method']:<12} {params:<42} {r['tokens']:>7} {r['tokens_per_s']:>8.2f} {r['speedup_vs_vanilla']:>7.2f}x {r['tau']:>6.2f}  {r['greedy_equal_to_vanilla']}")
    if hf:
        print(f"our vanilla / transformers generate = {vanilla_rate / hf['tokens_per_s']:.3f}x")
    if args.out:
        sha, dirty = git_state()
        meta = {
            "model": loaded.source,
            "head": head_spec,
            "device": str(target.device),
            "dtype": str(target.dtype),
            "threads": torch.get_num_threads(),
            "versions": package_versions(),
            "git_sha": sha,
            "git_dirty": dirty,
            "hardware": hardware_info(),
            "prompts": len(prompts) - 1,
            "repeats": args.repeats,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
