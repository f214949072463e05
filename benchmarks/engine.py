"""Engine benchmark: our vanilla vs transformers' generate, and EAGLE-1 / EAGLE-2, in one run,
over one or more engine variants (dtype x static/compiled path).

Output contract: a table on stdout with one row per (variant, method) (and a JSON file with --out):
  variant, method, params, tokens, tokens/s, speedup vs the same variant's vanilla, speedup vs the
  fastest vanilla of the run, tau (new tokens per target forward, prefill included), lossless
  (greedy outputs identical to the variant's vanilla / near-ties / unexplained, out of prompts);
plus, per variant, "our vanilla / transformers generate" (must be >= 1.0: an honest baseline) and
vanilla's ms/token against the memory floor (weight bytes / measured read bandwidth).

A variant is DTYPE:PATH, PATH one of eager (the dynamic engine), static (fixed shapes, no
compile) or compiled (fixed shapes, torch.compile; compiled before timing). In bfloat16/float16
every greedy difference from vanilla is audited against the model in float32 (eagle2.audit):
near-tie or unexplained.

Methods run interleaved (prompt by prompt, rotating the order each repeat) so that slow drifts of a
shared machine hit all of them alike; each region is timed with device synchronisation inside the
engine; the first prompt of every method is a warm-up and is not counted.

    python benchmarks/engine.py                        # embedded SmolLM2-135M, CPU, dtype auto, eager
    python benchmarks/engine.py --variants float32:eager,bfloat16:eager,bfloat16:compiled
    python benchmarks/engine.py --device cuda --variants bfloat16:eager,bfloat16:compiled --prompts 20 --max-new-tokens 256

Not yet on the harness runner (issue 11: one measurement path; `train evaluate` and `train curve`
already are). This script still times, tallies τ and checks losslessness in its own loop. Moving it
needs, in harness.runner and the suite schema: a `static` setting of a model's `compile` (fixed
shapes without torch.compile; today compile is auto | true | false), a cell order that interleaves
model entries (variants) question by question with a rotating start, all of them loaded at once
(today a model's cells finish before the next model loads), and an audit that takes its float32
reference from a float32 model entry of the run when there is one. Then each variant becomes a
model entry (dtype, compile), the run folder is read by `harness report` (fastest vanilla, memory
floor, lossless counts) and this table is printed from aggregate.tabulate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2 import METHODS, SamplingConfig  # noqa: E402
from eagle2.audit import HALF_PRECISION, IDENTICAL, NEAR_TIE, classify  # noqa: E402
from eagle2.static import StaticTargetModel  # noqa: E402
from harness.chat import Message  # noqa: E402
from harness.memory import measure_read_bandwidth, memory_floor_ms, weight_bytes_per_token  # noqa: E402
from harness.models import EMBEDDED_HEAD, builtin_head_available, chat_template_for, load_head, load_model  # noqa: E402
from harness.environment import git_state, hardware_info, package_versions  # noqa: E402
from harness.tasks import DataSource, get_task, select_questions  # noqa: E402

DEFAULT_METHODS = [
    ("vanilla", {}),
    ("hf_generate", {}),
    ("eagle1", {"tree": "mc_sim_7b_63"}),
    ("eagle2", {"depth": 6, "top_k": 10, "total_tokens": 60}),
    ("eagle2", {"depth": 5, "top_k": 8, "total_tokens": 32}),
]
PATHS = ("eager", "static", "compiled")


@dataclass(frozen=True)
class Variant:
    dtype: str  # as given to load_model: auto | float32 | bfloat16 | ...
    path: str  # eager | static | compiled

    @property
    def label(self) -> str:
        return f"{self.dtype}:{self.path}"


def parse_variants(text: str) -> list[Variant]:
    variants = []
    for item in text.split(","):
        dtype, _, path = item.strip().partition(":")
        path = path or "eager"
        if path not in PATHS:
            raise ValueError(f"variant {item!r}: path {path!r} is not one of {', '.join(PATHS)}")
        variants.append(Variant(dtype, path))
    if len({v.label for v in variants}) < len(variants):
        raise ValueError(f"--variants lists a variant twice: {text}")
    return variants


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
    parser.add_argument("--variants", default="auto:eager", help="comma-separated DTYPE:PATH, PATH = eager | static | compiled (default auto:eager)")
    parser.add_argument("--dtype", default=None, help="shorthand for --variants DTYPE:eager")
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
    try:
        variants = parse_variants(f"{args.dtype}:eager" if args.dtype else args.variants)
    except ValueError as error:
        parser.error(str(error))
    methods = [tuple(m) for m in json.loads(args.methods)] if args.methods else DEFAULT_METHODS
    names = [name for name, _ in methods]
    if "vanilla" not in names:
        parser.error("--methods must include vanilla: every speedup and the lossless check are against it")

    head_spec = args.head
    if head_spec is None:
        shipped = f"builtin:{EMBEDDED_HEAD}"
        head_spec = shipped if args.model == "embedded" and builtin_head_available(shipped) else "random"
    # Every variant is loaded before anything is timed; the runs then interleave over all of them.
    decoders = []  # (variant, method name, params, decoder)
    loaded_by_variant = {}
    for variant in variants:
        loaded = load_model(args.model, dtype=variant.dtype, device=args.device)
        target = loaded.target
        if variant.path != "eager":
            target = StaticTargetModel(target.model, compile=variant.path == "compiled")
        loaded_by_variant[variant] = (loaded, target)
        head = load_head(head_spec, target)
        for name, params in methods:
            decoders.append((variant, name, params, METHODS[name].create(target, head, params)))
    first_loaded = loaded_by_variant[variants[0]][0]
    template = chat_template_for(first_loaded, args.chat_template)
    prompts = [template.prompt_ids([Message("user", text)]) for text in mt_bench_first_turns(args.data_dir, args.prompts + 1)]
    sampling = SamplingConfig(temperature=args.temperature)
    device = first_loaded.target.device
    bandwidth = measure_read_bandwidth(device)

    totals = {i: {"tokens": 0, "seconds": 0.0, "forwards": 0, "outputs": [], "per_prompt": [], "warmup_s": 0.0} for i in range(len(decoders))}
    started = time.time()
    for repeat in range(args.repeats):
        for p_index, prompt in enumerate(prompts):
            order = list(range(len(decoders)))
            rotation = (p_index + repeat) % len(order)
            order = order[rotation:] + order[:rotation]
            for i in order:
                _, name, params, decode = decoders[i]
                generator = torch.Generator().manual_seed(1000 * repeat + p_index)
                record = decode(prompt, max_new_tokens=args.max_new_tokens, sampling=sampling, stop_token_ids=template.stop_token_ids, generator=generator)
                entry = totals[i]
                if p_index == 0:
                    entry["warmup_s"] += record.total_time_s  # compiles a compiled variant's shapes
                    continue
                entry["tokens"] += record.new_tokens
                entry["seconds"] += record.total_time_s
                entry["forwards"] += record.target_forwards
                entry["per_prompt"].append(record.new_tokens / record.total_time_s)
                entry["outputs"].append((p_index, record.output_ids))
            print(f"  prompt {p_index}/{len(prompts) - 1} repeat {repeat + 1}/{args.repeats} done ({time.time() - started:.0f} s)", file=sys.stderr)

    # Lossless check against each variant's own vanilla; half precision is audited in float32.
    # The audit's float32 reference: a float32 eager variant of this run if there is one, else loaded on demand.
    reference_model = next((t for v, (_, t) in loaded_by_variant.items() if v.path == "eager" and t.dtype == torch.float32), None)
    vanilla_index = {v: next(i for i, d in enumerate(decoders) if d[0] == v and d[1] == "vanilla") for v in variants}
    counted = (len(prompts) - 1) * args.repeats
    rows = []
    for i, (variant, name, params, _) in enumerate(decoders):
        entry = totals[i]
        loaded, target = loaded_by_variant[variant]
        identical = near_ties = unexplained = 0
        if sampling.greedy:
            base = dict(((p, r), ids) for r, (p, ids) in enumerate(totals[vanilla_index[variant]]["outputs"]))
            for r, (p_index, ids) in enumerate(entry["outputs"]):
                theirs = base[(p_index, r)]
                if ids == theirs:
                    identical += 1
                    continue
                if target.dtype not in HALF_PRECISION:
                    unexplained += 1
                    continue
                if reference_model is None:
                    reference_model = load_model(args.model, dtype="float32", device=args.device).target
                verdict = classify(reference_model, prompts[p_index], theirs, ids, target.dtype)
                near_ties += verdict.kind == NEAR_TIE
                unexplained += verdict.kind not in (NEAR_TIE, IDENTICAL)
        rate = entry["tokens"] / entry["seconds"]
        rows.append({
            "variant": variant.label,
            "dtype": str(target.dtype).removeprefix("torch."),
            "dtype_reason": loaded.dtype_reason,
            "path": variant.path,
            "method": name,
            "params": params,
            "tokens": entry["tokens"],
            "seconds": round(entry["seconds"], 3),
            "warmup_seconds": round(entry["warmup_s"], 3),
            "tokens_per_s": round(rate, 2),
            "median_prompt_tokens_per_s": round(statistics.median(entry["per_prompt"]), 2),
            "tau": round(entry["tokens"] / entry["forwards"], 3),
            "greedy_identical": identical if sampling.greedy else None,
            "greedy_near_ties": near_ties if sampling.greedy else None,
            "greedy_unexplained": unexplained if sampling.greedy else None,
            "compared": counted if sampling.greedy else 0,
            "weight_bytes_per_token": weight_bytes_per_token(target.model),
        })
    fastest = max((r for r in rows if r["method"] == "vanilla"), key=lambda r: r["tokens_per_s"])
    for row in rows:
        own = next(r for r in rows if r["variant"] == row["variant"] and r["method"] == "vanilla")
        row["speedup_vs_vanilla"] = round(row["tokens_per_s"] / own["tokens_per_s"], 3)
        row["speedup_vs_fastest_vanilla"] = round(row["tokens_per_s"] / fastest["tokens_per_s"], 3)

    print()
    print(f"model={first_loaded.source} head={head_spec} device={device} threads={torch.get_num_threads()} "
          f"prompts={len(prompts) - 1} repeats={args.repeats} max_new_tokens={args.max_new_tokens} T={args.temperature} "
          f"read bandwidth={bandwidth / 1e9:.1f} GB/s")
    print(f"{'variant':<20} {'method':<12} {'params':<40} {'tokens':>7} {'tok/s':>8} {'vs own':>7} {'vs best':>8} {'tau':>6}  lossless (identical/near-tie/unexplained)")
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lossless = f"{r['greedy_identical']}/{r['greedy_near_ties']}/{r['greedy_unexplained']} of {r['compared']}" if sampling.greedy else "n/a (sampling)"
        print(f"{r['variant']:<20} {r['method']:<12} {params:<40} {r['tokens']:>7} {r['tokens_per_s']:>8.2f} {r['speedup_vs_vanilla']:>6.2f}x "
              f"{r['speedup_vs_fastest_vanilla']:>7.2f}x {r['tau']:>6.2f}  {lossless}")
    print(f"fastest vanilla: {fastest['variant']} {fastest['tokens_per_s']:.2f} tok/s")
    for variant in variants:
        own = next(r for r in rows if r["variant"] == variant.label and r["method"] == "vanilla")
        floor = memory_floor_ms(own["weight_bytes_per_token"], bandwidth)
        line = (f"{variant.label}: vanilla {1000 / own['tokens_per_s']:.1f} ms/token, memory floor {floor:.1f} ms "
                f"({own['weight_bytes_per_token'] / 1e6:.0f} MB / {bandwidth / 1e9:.1f} GB/s) -> {1000 / own['tokens_per_s'] / floor:.2f}x floor")
        hf = next((r for r in rows if r["variant"] == variant.label and r["method"] == "hf_generate"), None)
        if hf:
            line += f"; our vanilla / transformers generate = {own['tokens_per_s'] / hf['tokens_per_s']:.3f}x"
        print(line)
    if args.out:
        sha, dirty = git_state()
        meta = {
            "model": first_loaded.source,
            "head": head_spec,
            "device": str(device),
            "variants": [v.label for v in variants],
            "threads": torch.get_num_threads(),
            "read_bandwidth_bytes_per_s": bandwidth,
            "versions": package_versions(),
            "git_sha": sha,
            "git_dirty": dirty,
            "hardware": hardware_info(),
            "prompts": len(prompts) - 1,
            "repeats": args.repeats,
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "command": " ".join(sys.argv),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
