"""Acceptance length τ of a head with its draft vocabulary cut to the N most frequent tokens
(`draft_vocab_size`), on prompts the head was not trained on. τ does not depend on timing, so this
may run beside other work.

    python benchmarks/draft_vocab_tau.py --prompts 'runs/smollm2-head-v2/magpie/chunk-*.jsonl' --count 10 --every 40

The figures in results/engine-bench/README.md ("draft side") came from this loop, run over the first
Magpie chunks of the issue-10 prompts stage (prompts the shipped head never saw), every 40th, 10 of them.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2 import DynamicTreeProposer, generate  # noqa: E402
from eagle2.file_io import read_jsonl_input  # noqa: E402
from harness.chat import Message  # noqa: E402
from harness.models import chat_template_for, load_head, load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="glob of JSONL files with a `prompt` field (never evaluation sets)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--every", type=int, default=40, help="take every N-th prompt")
    parser.add_argument("--head", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16384, 8192, 4096, 2048])
    parser.add_argument("--trees", nargs="+", default=["5/4/16", "6/10/60"], help="DEPTH/TOP_K/TOTAL_TOKENS")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model("embedded", dtype=args.dtype, device="cpu")
    target = loaded.target
    head = load_head(args.head, target)
    template = chat_template_for(loaded, "tokenizer")
    rows = [row for path in sorted(glob.glob(args.prompts)) for row in read_jsonl_input(Path(path))]
    texts = [row["prompt"] for row in rows][:: args.every][: args.count]
    prompts = [template.prompt_ids([Message("user", text)]) for text in texts]
    for tree in args.trees:
        depth, top_k, total = (int(part) for part in tree.split("/"))
        for size in args.sizes:
            tokens = forwards = 0
            for prompt in prompts:
                proposer = DynamicTreeProposer(head, target, depth=depth, top_k=top_k, total_tokens=total, draft_vocab=head.ranked_draft_vocab(size))
                record = generate(target, prompt, max_new_tokens=args.max_new_tokens, proposer=proposer, stop_token_ids=template.stop_token_ids)
                tokens += record.new_tokens
                forwards += record.target_forwards
            print(f"eagle2 {tree} draft_vocab_size {size}: tau {tokens / forwards:.3f} ({tokens} tokens, {forwards} forwards, {len(prompts)} prompts)", flush=True)


if __name__ == "__main__":
    main()
