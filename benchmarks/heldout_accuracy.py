"""Held-out top-1 accuracy of draft heads, step by step of the training-time test, on one distilled
work folder's held-out split: the trainer's own evaluation (eagle2.train.trainer.evaluate), so a
head trained elsewhere (the shipped one, say) is measured on the same pairs as the heads trained
on this folder. Step j predicts the token j + 1 ahead from the head's own step-(j-1) feature.

    python benchmarks/heldout_accuracy.py --work runs/smollm2-head-v3ref --max-shards 30 --steps 3 \
        --heads builtin:smollm2-135m-instruct runs/smollm2-head-v3ref/head-ttt1 runs/smollm2-head-v3ref/head-ttt3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2.train.dataset import load_records, split  # noqa: E402
from eagle2.train.trainer import LossComputer, TrainConfig, evaluate  # noqa: E402
from harness.models import load_head, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a distilled work folder (its distill/ shards)")
    parser.add_argument("--heads", nargs="+", required=True, help="head folders or builtin:NAME")
    parser.add_argument("--max-shards", type=int, default=None, help="as the heads' training used it (the split depends on the records)")
    parser.add_argument("--steps", type=int, default=3, help="unrolled draft steps measured")
    parser.add_argument("--max-heldout-pairs", type=int, default=6000)
    parser.add_argument("--heldout-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", help="target dtype (the features' dtype is the distillation's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model("embedded", dtype=args.dtype, device="cpu").target
    _, heldout = split(load_records(args.work / "distill", max_shards=args.max_shards), args.heldout_fraction, args.seed)
    config = TrainConfig(ttt_steps=args.steps, max_heldout_pairs=args.max_heldout_pairs, heldout_fraction=args.heldout_fraction, seed=args.seed)
    results = {}
    for spec in args.heads:
        head = load_head(spec, target).float()
        losses = LossComputer(target, head.draft_vocab, config, torch.device("cpu"))
        measured = evaluate(head, heldout, losses, config)
        results[spec] = {"step_top1": [round(x, 4) for x in measured.step_top1], "step_pairs": list(measured.step_pairs),
                         "draft_vocab_size": None if head.draft_vocab is None else int(head.draft_vocab.shape[0])}
        print(f"{spec}: held-out top-1 by step {results[spec]['step_top1']} ({measured.pairs} pairs)", flush=True)
    print(json.dumps({"work": str(args.work), "max_shards": args.max_shards, "heldout_records": len(heldout), "heads": results}, indent=2))


if __name__ == "__main__":
    main()
