"""Engine benchmark: our vanilla vs transformers' generate, and EAGLE-1 / EAGLE-2, in one run,
over one or more engine variants (dtype x static/compiled path).

It measures through the harness runner, as every other number of the project: each variant is a
model entry of an in-memory suite (dtype, compile: false | static | true), every method a suite
method, the task MT-bench first turns (select: spread), and `schedule: interleaved` runs each
question on every (variant, method) in turn, the order rotated per question and repeat, after every
variant is loaded and warmed up (a full-length warm-up generation, which also compiles a compiled
variant's shapes). The run folder (--run-dir) is an ordinary one: `python -m harness report` reads it.

Output contract: a table on stdout with one row per (variant, method) (and a JSON file with --out):
  variant, method, params, tokens, tokens/s, speedup vs the same variant's vanilla, speedup vs the
  fastest vanilla of the run, tau (new tokens per target forward, prefill included), lossless
  (greedy outputs identical to the variant's vanilla / near-ties / unexplained, out of compared);
plus, per variant, "our vanilla / transformers generate" (must be >= 1.0: an honest baseline) and
vanilla's ms/token against the memory floor (weight bytes / measured read bandwidth). All figures
come from the run's aggregated tables (harness.aggregate.tabulate). In bfloat16/float16 every greedy
difference from vanilla is audited against the model in float32 (a float32 eager variant of the run
when there is one): near-tie or unexplained.

A variant is DTYPE:PATH[:KERNEL[:WRAPPER]], PATH one of eager (the dynamic engine), static (fixed
shapes, no compile) or compiled (fixed shapes, torch.compile); KERNEL the model entry's linear_kernel
(auto; default: oneDNN; autotune: compiled, inductor picks per shape; few_row: eagle2.kernels);
WRAPPER its cpp_wrapper (auto; cpp; python), e.g. bfloat16:compiled:autotune:python.

    python benchmarks/engine.py                        # embedded SmolLM2-135M, CPU, dtype auto, eager
    python benchmarks/engine.py --variants float32:eager,bfloat16:eager,bfloat16:compiled
    python benchmarks/engine.py --device cuda --variants bfloat16:eager,bfloat16:compiled --prompts 20 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.aggregate import load_runs, parse_params, tabulate  # noqa: E402
from harness.config import suite_from_dict  # noqa: E402
from harness.memory import memory_floor_ms  # noqa: E402
from harness.models import EMBEDDED_HEAD, builtin_head_available  # noqa: E402
from harness.runner import RunOptions, default_output_dir, method_label, run_suite  # noqa: E402
from harness.tasks import DataSource  # noqa: E402

DEFAULT_METHODS = [
    ("vanilla", {}),
    ("hf_generate", {}),
    ("eagle1", {"tree": "mc_sim_7b_63"}),
    ("eagle2", {"depth": 6, "top_k": 10, "total_tokens": 60}),
    ("eagle2", {"depth": 5, "top_k": 8, "total_tokens": 32}),
]
PATHS = {"eager": False, "static": "static", "compiled": True}  # path -> the model entry's `compile`
LINEAR_KERNELS = ("auto", "default", "autotune", "few_row")  # the model entry's `linear_kernel`
WRAPPERS = {"auto": "auto", "cpp": True, "python": False}  # variant word -> the model entry's `cpp_wrapper`


@dataclass(frozen=True)
class Variant:
    dtype: str  # as a suite's model dtype: auto | float32 | bfloat16 | ...
    path: str  # eager | static | compiled
    linear_kernel: str = "auto"  # the model entry's linear_kernel: auto | default | autotune | few_row
    wrapper: str = "auto"  # a WRAPPERS key: the model entry's cpp_wrapper

    def _parts(self) -> list[str]:
        parts = [self.dtype, self.path]
        if self.linear_kernel != "auto" or self.wrapper != "auto":
            parts.append(self.linear_kernel)
        if self.wrapper != "auto":
            parts.append(self.wrapper)
        return parts

    @property
    def label(self) -> str:
        return ":".join(self._parts())

    @property
    def entry_name(self) -> str:  # a suite model name (letters, digits, _ . + -)
        return "-".join(self._parts())


def parse_variants(text: str) -> list[Variant]:
    variants = []
    for item in text.split(","):
        dtype, _, rest = item.strip().partition(":")
        path, _, rest = rest.partition(":")
        kernel, _, wrapper = rest.partition(":")
        path, kernel, wrapper = path or "eager", kernel or "auto", wrapper or "auto"
        if path not in PATHS:
            raise ValueError(f"variant {item!r}: path {path!r} is not one of {', '.join(PATHS)}")
        if kernel not in LINEAR_KERNELS:
            raise ValueError(f"variant {item!r}: linear kernel {kernel!r} is not one of {', '.join(LINEAR_KERNELS)}")
        if wrapper not in WRAPPERS:
            raise ValueError(f"variant {item!r}: wrapper {wrapper!r} is not one of {', '.join(WRAPPERS)}")
        variants.append(Variant(dtype, path, kernel, wrapper))
    if len({v.label for v in variants}) < len(variants):
        raise ValueError(f"--variants lists a variant twice: {text}")
    return variants


def benchmark_suite(args: argparse.Namespace, variants: list[Variant], methods: list[tuple[str, dict]], head: str) -> Any:
    """The in-memory suite of one benchmark run."""
    models = [{"name": v.entry_name, "source": args.model, "dtype": v.dtype, "device": args.device or "auto", "head": head,
               "chat_template": args.chat_template, "compile": PATHS[v.path], "linear_kernel": v.linear_kernel, "cpp_wrapper": WRAPPERS[v.wrapper]}
              for v in variants]
    return suite_from_dict({
        "schema": 1,
        "name": "engine-bench",
        "description": "benchmarks/engine.py: engine variants x methods, interleaved, on MT-bench first turns",
        "models": models,
        "tasks": [{"name": "mt_bench", "type": "mt_bench", "turns": 1, "limit": args.prompts, "select": "spread",
                   "max_new_tokens": args.max_new_tokens}],
        "methods": [{"name": name, "params": params} for name, params in methods],
        "sampling": {"temperatures": [args.temperature]},
        "repeats": args.repeats,
        # One full-length generation per (variant, method) before anything is timed: it compiles a
        # compiled variant's shapes (catch-up sizes, cache capacity) as the timed ones will meet them.
        "warmup": {"generations": 1, "max_new_tokens": args.max_new_tokens},
        "profile": args.profile,
        "schedule": "interleaved",
    }, path="benchmarks/engine.py")


def result_rows(tables: Any, variants: list[Variant], methods: list[tuple[str, dict]]) -> list[dict[str, Any]]:
    """One row per (variant, method configuration), from the run's aggregated summary, in the order
    of --variants and --methods."""
    by_entry = {v.entry_name: v for v in variants}
    models = {name: info for manifest in tables.manifests for name, info in (manifest.get("models") or {}).items()}

    def order(record: dict[str, Any]) -> tuple[int, int]:
        params = parse_params(record["params"])  # resolved: the given ones plus defaults
        given = next(i for i, (name, wanted) in enumerate(methods)
                     if name == record["method"] and all(params.get(k) == v for k, v in wanted.items()))
        return variants.index(by_entry[record["model"]]), given

    rows = []
    for r in sorted(tables.summary.to_dict("records"), key=order):
        variant = by_entry[r["model"]]
        params = parse_params(r["params"])
        info = models.get(r["model"], {})
        compared = int(r["lossless_compared"] or 0) if r["method"] != "vanilla" else 0
        near, unexplained = (int(r["lossless_near_ties"] or 0), int(r["lossless_mismatches"] or 0)) if compared else (0, 0)
        rows.append({
            "variant": variant.label,
            "dtype": info.get("dtype"),
            "dtype_reason": info.get("dtype_reason"),
            "path": variant.path,
            "engine_path": info.get("engine_path"),
            "linear_kernel": info.get("linear_kernel"),
            "cpp_wrapper": info.get("cpp_wrapper"),
            "method": r["method"],
            "params": params,
            "label": method_label(r["method"], params) + (f" vocab {params['draft_vocab_size']}" if params.get("draft_vocab_size") else ""),
            "tokens": int(r["new_tokens"]),
            "seconds": round(float(r["time_s"]), 3),
            "tokens_per_s": round(float(r["tokens_per_s"]), 2),
            "speedup_vs_vanilla": None if not math.isfinite(r["speedup"]) else round(float(r["speedup"]), 3),
            "tau": round(float(r["tau"]), 3),
            "greedy_identical": compared - near - unexplained if compared else None,
            "greedy_near_ties": near if compared else None,
            "greedy_unexplained": unexplained if compared else None,
            "compared": compared,
            "weight_bytes_per_token": info.get("weight_bytes_per_token"),
        })
    fastest = max((row for row in rows if row["method"] == "vanilla"), key=lambda row: row["tokens_per_s"])
    for row in rows:
        row["speedup_vs_fastest_vanilla"] = round(row["tokens_per_s"] / fastest["tokens_per_s"], 3)
    return rows


def print_table(rows: list[dict[str, Any]], variants: list[Variant], meta: dict[str, Any]) -> None:
    bandwidth = meta["read_bandwidth_bytes_per_s"]
    print()
    print(f"model={meta['model']} head={meta['head']} device={meta['device']} threads={meta['threads']} prompts={meta['prompts']} "
          f"repeats={meta['repeats']} max_new_tokens={meta['max_new_tokens']} T={meta['temperature']} read bandwidth={bandwidth / 1e9:.1f} GB/s")
    print(f"{'variant':<20} {'method':<40} {'tokens':>7} {'tok/s':>8} {'vs own':>7} {'vs best':>8} {'tau':>6}  "
          "lossless (identical/near-tie/unexplained)")
    for r in rows:
        if r["method"] == "vanilla":
            lossless = "reference"
        elif r["compared"]:
            lossless = f"{r['greedy_identical']}/{r['greedy_near_ties']}/{r['greedy_unexplained']} of {r['compared']}"
        else:
            lossless = "n/a (sampling)"
        own = f"{r['speedup_vs_vanilla']:>6.2f}x" if r["speedup_vs_vanilla"] is not None else f"{'-':>7}"
        print(f"{r['variant']:<20} {r['label']:<40} {r['tokens']:>7} {r['tokens_per_s']:>8.2f} {own} "
              f"{r['speedup_vs_fastest_vanilla']:>7.2f}x {r['tau']:>6.2f}  {lossless}")
    fastest = max((r for r in rows if r["method"] == "vanilla"), key=lambda r: r["tokens_per_s"])
    print(f"fastest vanilla: {fastest['variant']} {fastest['tokens_per_s']:.2f} tok/s")
    for variant in variants:
        own = next(r for r in rows if r["variant"] == variant.label and r["method"] == "vanilla")
        line = f"{variant.label}: vanilla {1000 / own['tokens_per_s']:.1f} ms/token"
        if own["weight_bytes_per_token"] and bandwidth:
            floor = memory_floor_ms(own["weight_bytes_per_token"], bandwidth)
            line += (f", memory floor {floor:.1f} ms ({own['weight_bytes_per_token'] / 1e6:.0f} MB / {bandwidth / 1e9:.1f} GB/s)"
                     f" -> {1000 / own['tokens_per_s'] / floor:.2f}x floor")
        hf = [r for r in rows if r["variant"] == variant.label and r["method"] == "hf_generate"]
        if hf:
            best = max(hf, key=lambda r: r["tokens_per_s"])
            line += f"; our vanilla / transformers generate (its fastest setting here) = {own['tokens_per_s'] / best['tokens_per_s']:.3f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded | folder | hub id | file.gguf")
    parser.add_argument("--head", default=None, help="draft head: builtin:NAME | folder | hub id | random (default: the shipped head for the embedded model, else random)")
    parser.add_argument("--chat-template", default="tokenizer")
    parser.add_argument("--variants", default="auto:eager", help="comma-separated DTYPE:PATH, PATH = eager | static | compiled (default auto:eager)")
    parser.add_argument("--dtype", default=None, help="shorthand for --variants DTYPE:eager")
    parser.add_argument("--device", default=None)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("EAGLE2_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--prompts", type=int, default=5, help="MT-bench first turns (each variant and method also makes one untimed warm-up generation)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--profile", action="store_true", help="split time into draft/verify/other (a device sync at each phase boundary)")
    parser.add_argument("--methods", default=None, help='JSON list of [name, params] pairs; default: vanilla, hf_generate, eagle1, eagle2 x2')
    parser.add_argument("--run-dir", type=Path, default=None, help="the run folder (default runs/engine-bench/<UTC timestamp>)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        variants = parse_variants(f"{args.dtype}:eager" if args.dtype else args.variants)
    except ValueError as error:
        parser.error(str(error))
    methods = [(name, dict(params)) for name, params in json.loads(args.methods)] if args.methods else DEFAULT_METHODS
    if "vanilla" not in [name for name, _ in methods]:
        parser.error("--methods must include vanilla: every speedup and the lossless check are against it")

    head = args.head
    if head is None:
        shipped = f"builtin:{EMBEDDED_HEAD}"
        head = shipped if args.model == "embedded" and builtin_head_available(shipped) else "random"
    suite = benchmark_suite(args, variants, methods, head)
    run_dir = args.run_dir or default_output_dir(suite)
    summary = run_suite(suite, RunOptions(out_dir=run_dir, data=DataSource.from_env(args.data_dir), overrides={"threads": args.threads}))
    if summary.failures:
        print(f"{summary.failures} generation(s) failed; see {run_dir / 'failures.jsonl'}", file=sys.stderr)
    tables = tabulate(load_runs(run_dir))
    rows = result_rows(tables, variants, methods)
    manifest = tables.manifests[0]
    models = manifest.get("models") or {}
    device = next(iter(models.values()), {}).get("device", "cpu")
    meta = {
        "model": next(iter(models.values()), {}).get("source", args.model),
        "head": head,
        "device": device,
        "variants": [v.label for v in variants],
        "threads": torch.get_num_threads(),
        "read_bandwidth_bytes_per_s": (manifest["hardware"].get("read_bandwidth_bytes_per_s") or {}).get(device),
        "versions": manifest.get("versions"),
        "git_sha": manifest.get("git_sha"),
        "git_dirty": manifest.get("git_dirty"),
        "hardware": {k: v for k, v in manifest["hardware"].items() if k != "read_bandwidth_bytes_per_s"},
        "prompts": len(tables.question_ids),
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "warmup_seconds": manifest.get("warmup_seconds"),
        "run_dir": str(run_dir),
        "command": " ".join(sys.argv),
    }
    print_table(rows, variants, meta)
    print(f"run folder: {run_dir} (python -m harness report {run_dir})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
