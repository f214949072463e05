"""python -m eagle2.train STAGE ...: build prompts, self-distil them with the target, train a head.

    python -m eagle2.train prompts  --work scratch/smollm2 --source shared:gsm8k_train:400 --source magpie:300
    python -m eagle2.train distill  --work scratch/smollm2
    python -m eagle2.train train    --work scratch/smollm2 --out eagle2/heads/smollm2-135m-instruct
    python -m eagle2.train evaluate --head eagle2/heads/smollm2-135m-instruct --questions 40

Every stage resumes: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger("eagle2.train")

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_data_dir() -> Path:
    return Path(os.environ.get("EAGLE2_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def load_target_and_chat(args: argparse.Namespace):
    """The target (harness model registry: embedded, folder, hub id or GGUF) and its chat format."""
    from harness.chat import ChatTemplate
    from harness.models import load_model

    from eagle2.train.prompts import TemplateChat

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    template = ChatTemplate(loaded.tokenizer, args.chat_template)
    return loaded, TemplateChat(template, loaded.tokenizer)


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", dynamic_ncols=True, mininterval=5.0)


def cmd_prompts(args: argparse.Namespace) -> None:
    from eagle2.train.prompts import MagpieConfig, PromptsConfig, SourceSpec, build_prompts

    config = PromptsConfig(
        sources=tuple(args.source),
        seed=args.seed,
        eval_sets=tuple(args.eval_sets),
        drop_overlapping=args.drop_overlapping,
        magpie=MagpieConfig(batch_size=args.magpie_batch_size),
    )
    target = chat = None
    magpie = sum(s.count or 0 for s in map(SourceSpec.parse, config.sources) if s.kind == "magpie")
    if magpie:
        loaded, chat = load_target_and_chat(args)
        target = loaded.target
    bar = progress_bar(magpie, "magpie") if magpie else None
    started = time.perf_counter()
    build_prompts(config, Path(args.work), Path(args.data_dir), target=target, chat=chat, progress=bar.update if bar else None)
    if bar:
        bar.close()
    logger.info("prompts stage took %.0f s", time.perf_counter() - started)


def cmd_distill(args: argparse.Namespace) -> None:
    from eagle2.train.distill import DistillConfig, distill
    from eagle2.train.prompts import read_prompts

    work = Path(args.work)
    prompts = read_prompts(work / "prompts.jsonl")
    config = DistillConfig(
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        sampled_fraction=args.sampled_fraction,
        temperature=args.temperature,
        seed=args.seed,
        answers=args.answers,
    )
    loaded, chat = load_target_and_chat(args)
    bar = progress_bar(len(prompts), "distill")
    started = time.perf_counter()
    index, _, count = args.worker.partition("/")
    distill(loaded.target, chat, prompts, work / "distill", config, progress=bar.update, worker=(int(index), int(count or 1)))
    bar.close()
    logger.info("distill stage took %.0f s", time.perf_counter() - started)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="target: embedded (SmolLM2-135M-Instruct), a folder, a hub id or a .gguf path")
    parser.add_argument("--dtype", default="auto", help="target dtype (auto = float32 for GGUF)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where transformers puts it)")
    parser.add_argument("--chat-template", default="tokenizer", help="'tokenizer' (its own template, as the suites use) or a FastChat template name")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (on a shared CPU, 1 per process avoids OpenMP spin-waiting)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eagle2.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    stages = parser.add_subparsers(dest="stage", required=True)

    p = stages.add_parser("prompts", help="collect and overlap-check training prompts")
    p.add_argument("--work", required=True, help="work folder (all stages' outputs)")
    p.add_argument("--source", action="append", default=[], help="shared:NAME[:N], file:PATH[:N] or magpie:N (repeatable)")
    p.add_argument("--data-dir", default=str(default_data_dir()), help="shared data folder (default $EAGLE2_DATA_DIR or ../shared/data)")
    p.add_argument("--eval-sets", nargs="+", default=["mt_bench", "gsm8k_test", "humaneval"], help="evaluation sets to check for overlap")
    p.add_argument("--drop-overlapping", action="store_true", help="drop overlapping prompts (listed in the summary) instead of refusing")
    p.add_argument("--magpie-batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    add_model_arguments(p)
    p.set_defaults(func=cmd_prompts)

    p = stages.add_parser("distill", help="the target answers the prompts; store ids, loss mask and features in shards")
    p.add_argument("--work", required=True)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-tokens", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--shard-size", type=int, default=128)
    p.add_argument("--sampled-fraction", type=float, default=0.5, help="share of prompts answered by sampling (rest greedy)")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature of the sampled share")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--answers", choices=["generate", "reference"], default="generate", help="generate: the target answers (self-distillation); reference: teacher-force the sources' own answers (~10x cheaper)")
    p.add_argument("--worker", default="0/1", help="i/n: generate only shards i, i+n, ... (run n processes to share the work)")
    add_model_arguments(p)
    p.set_defaults(func=cmd_distill)

    from eagle2.train import evaluate, trainer

    trainer.add_cli(stages)
    evaluate.add_cli(stages)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    args.func(args)


if __name__ == "__main__":
    main()
