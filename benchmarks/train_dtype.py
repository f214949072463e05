"""Head-training throughput and quality, float32 vs bfloat16 training steps (`train --compute-dtype`).

Both dtypes start from the same head and take the same batches in the same order, in interleaved
rounds (a round = --steps-per-round optimiser steps of each dtype in turn), so machine noise falls
on both alike. Afterwards each head is evaluated on the same held-out pairs in float32, as the train
stage evaluates. Learning rate: the stage's warm-up and cosine decay over the steps taken here.

Output contract: one JSON object on stdout (and in --out when given): per dtype the pairs trained,
the seconds spent in training steps, pairs/s, and the held-out losses and top-1 per unrolled step
(eagle2.train.trainer.Losses); the ratio of bfloat16 to float32 pairs/s; the CPU's bfloat16 flags,
threads and versions. Time it with the machine otherwise idle.

    python benchmarks/train_dtype.py --work WORK --init-from eagle2/heads/smollm2-135m-instruct \\
        --rounds 4 --steps-per-round 5 --ttt-steps 3 --draft-vocab-size 16384 --threads 2
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import transformers

from eagle2.head import DraftHead
from eagle2.target import cpu_bf16_flags
from eagle2.train.dataset import answer_token_counts, batches, choose_draft_vocab, iterate, load_records, split
from eagle2.train.trainer import COMPUTE_DTYPES, LossComputer, TrainConfig, evaluate, init_head, lr_at, train_step
from eagle2.file_io import write_json_atomic
from harness.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="a train work folder with distilled shards (WORK/distill)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="auto", help="target dtype, as the engine runs it (as the train stage's --dtype)")
    parser.add_argument("--init-from", default="", help="head folder to start from (default: a random head)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=5)
    parser.add_argument("--dtypes", nargs="+", choices=COMPUTE_DTYPES, default=list(COMPUTE_DTYPES))
    parser.add_argument("--ttt-steps", type=int, default=3)
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--draft-vocab-size", type=int, default=16384)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-shards", type=int, default=None)
    parser.add_argument("--max-heldout-pairs", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.rounds * args.steps_per_round
    config = TrainConfig(
        lr=args.lr, warmup_steps=max(1, steps // 10), tokens_per_batch=args.tokens_per_batch, draft_vocab_size=args.draft_vocab_size,
        ttt_steps=args.ttt_steps, max_heldout_pairs=args.max_heldout_pairs, init_from=args.init_from,
    )
    loaded = load_model(args.model, dtype=args.dtype, device="cpu")
    target = loaded.target
    records = load_records(Path(args.work) / "distill", max_shards=args.max_shards)
    train_records, heldout = split(records, config.heldout_fraction, config.seed)
    vocab_size = target.lm_head.weight.shape[0]
    draft_vocab = None
    if 0 < config.draft_vocab_size < vocab_size:
        draft_vocab = choose_draft_vocab(answer_token_counts(train_records, vocab_size), config.draft_vocab_size)
    start = init_head(target, config)
    if config.init_from:
        start.load_state_dict(DraftHead.from_pretrained(config.init_from, embedding_shape=tuple(target.embed_tokens.weight.shape)).float().state_dict())
    losses = LossComputer(target, draft_vocab, config, target.device)
    groups = batches(train_records, config.tokens_per_batch, seed=0, max_pairs=config.max_pairs)
    if len(groups) < steps:
        raise SystemExit(f"{args.work}: {len(groups)} batches of {config.tokens_per_batch} pairs; the benchmark needs {steps} (fewer --rounds or --steps-per-round)")
    plan = [batch for _, batch in iterate(train_records, groups[:steps], max_pairs=config.max_pairs)]

    runs = {}
    for name in args.dtypes:
        head = copy.deepcopy(start)
        head.train()
        runs[name] = {
            "config": replace(config, compute_dtype=name),
            "head": head,
            "optimizer": torch.optim.AdamW(head.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay),
            "generator": torch.Generator().manual_seed(config.seed),
            "seconds": 0.0,
            "pairs": 0,
        }
    for round_number in range(args.rounds):
        for name, run in runs.items():
            for step in range(round_number * args.steps_per_round, (round_number + 1) * args.steps_per_round):
                for group in run["optimizer"].param_groups:
                    group["lr"] = lr_at(step, steps, config)
                started = time.perf_counter()
                result = train_step(run["head"], run["optimizer"], losses, plan[step], run["config"], run["generator"])
                run["seconds"] += time.perf_counter() - started
                run["pairs"] += result.pairs
            print(f"round {round_number + 1}/{args.rounds} {name}: {run['pairs'] / run['seconds']:.0f} pairs/s so far", file=sys.stderr, flush=True)

    results = {}
    for name, run in runs.items():
        heldout_losses = evaluate(run["head"], heldout, losses, config)
        results[name] = {
            "steps": steps,
            "pairs": run["pairs"],
            "train_seconds": round(run["seconds"], 2),
            "pairs_per_s": round(run["pairs"] / run["seconds"], 1),
            "heldout": asdict(heldout_losses),
        }
    report = {
        "command": " ".join(sys.argv),
        "work": args.work,
        "records": {"train": len(train_records), "heldout": len(heldout)},
        "init_from": args.init_from or None,
        "ttt_steps": config.ttt_steps,
        "tokens_per_batch": config.tokens_per_batch,
        "draft_vocab_size": int(draft_vocab.shape[0]) if draft_vocab is not None else vocab_size,
        "results": results,
        "bfloat16_over_float32_pairs_per_s": (
            round(results["bfloat16"]["pairs_per_s"] / results["float32"]["pairs_per_s"], 3) if {"bfloat16", "float32"} <= results.keys() else None
        ),
        "cpu_bf16_flags": sorted(cpu_bf16_flags()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        write_json_atomic(Path(args.out), report)


if __name__ == "__main__":
    main()
