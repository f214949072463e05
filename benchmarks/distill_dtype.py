"""Distillation throughput, float32 vs bfloat16 generation, on the embedded model (or --model).

Output contract: one JSON object on stdout (and in --out when given) with, per dtype, the new
tokens generated, the seconds and new tokens/s of batched generation as the distill stage runs it
(same batch size, greedy, features captured in float32 or, for bfloat16, recomputed by the float32
target in one teacher-forced pass, timed separately), plus the CPU's bfloat16 flags, threads and
versions. Short by design (one batch per dtype): on a shared CPU the numbers are indicative only.

    python benchmarks/distill_dtype.py --batch-size 64 --max-new-tokens 48 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

from eagle2.train.distill import cpu_bf16_flags, generation_copy, teacher_forced_features
from eagle2.train.generation import batched_generate
from eagle2.file_io import read_jsonl_input, write_json_atomic
from eagle2.train.prompts import TemplateChat, Turn
from harness.models import chat_template_for, load_model
from harness.train import default_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--prompt-tokens", type=int, default=0, help="keep only the last N tokens of each prompt (0 = whole prompts); a short prefill keeps a short run dominated by decoding")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--data-dir", default=str(default_data_dir()))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    loaded = load_model(args.model, dtype="float32", device=args.device)
    print(f"model loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    chat = TemplateChat(chat_template_for(loaded, "tokenizer"), loaded.tokenizer)
    # Short prompts (self-instruct seed tasks), so that the measurement is dominated by decoding as
    # a distillation with 256-token answers is.
    rows = read_jsonl_input(Path(args.data_dir) / "train" / "self_instruct_seed" / "seed_tasks.jsonl")[: args.batch_size]
    prompts = [chat.prompt_ids([Turn("user", row["instruction"])]) for row in rows]
    if args.prompt_tokens:
        prompts = [ids[-args.prompt_tokens :] for ids in prompts]
    results = {}
    for name in args.dtypes:
        model = generation_copy(loaded.target, name)
        batched_generate(model, prompts[:2], max_new_tokens=2, temperature=0.0, stop_token_ids=chat.stop_token_ids, capture_features=False)  # warm-up
        sync(args.device)
        started = time.perf_counter()
        out = batched_generate(model, prompts, max_new_tokens=args.max_new_tokens, temperature=0.0, stop_token_ids=chat.stop_token_ids, capture_features=model is loaded.target)
        sync(args.device)
        seconds = time.perf_counter() - started
        new_tokens = sum(len(r.output_ids) for r in out)
        row = {"new_tokens": new_tokens, "seconds": round(seconds, 2), "new_tokens_per_s": round(new_tokens / seconds, 1)}
        if model is not loaded.target:
            started = time.perf_counter()
            teacher_forced_features(loaded.target, [list(r.prompt_ids) + list(r.output_ids) for r in out], 8192, torch.float16)
            sync(args.device)
            feature_seconds = time.perf_counter() - started
            row["float32_feature_pass_seconds"] = round(feature_seconds, 2)
            row["new_tokens_per_s_with_feature_pass"] = round(new_tokens / (seconds + feature_seconds), 1)
        results[name] = row
        print(name, row, file=sys.stderr, flush=True)
        del model
    report = {
        "model": args.model,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": sum(map(len, prompts)),
        "results": results,
        "cpu_bf16_flags": list(cpu_bf16_flags()),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": args.device if args.device != "cuda" else torch.cuda.get_device_name(),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        write_json_atomic(Path(args.out), report)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
