"""python -m harness train STAGE ...: build prompts, self-distil them with the target, train a head,
measure its acceptance length. The command-line side of `eagle2.train` (models from the harness's
registry, chat templates, progress bars); the stages themselves live in the library.

    python -m harness train prompts  --work runs/smollm2-head --source shared:gsm8k_train:400 --source magpie:300
    python -m harness train distill  --work runs/smollm2-head
    python -m harness train train    --work runs/smollm2-head --out runs/smollm2-head/head
    python -m harness train evaluate --head runs/smollm2-head/head --questions 40

Every stage resumes: run the same command again after an interruption.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    return Path(os.environ.get("EAGLE2_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def load_target_and_chat(args: argparse.Namespace):
    """The target (the harness's model registry: embedded, folder, hub id or GGUF) and its chat format."""
    from eagle2.train.prompts import TemplateChat
    from harness.models import chat_template_for, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    template = chat_template_for(loaded, args.chat_template)
    return loaded, TemplateChat(template, loaded.tokenizer)


def progress_bar(total: int | None, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=5.0)


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
    bar = progress_bar(magpie, "magpie", "prompt") if magpie else None
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
    bar = progress_bar(len(prompts), "distill", "prompt")
    started = time.perf_counter()
    index, _, count = args.worker.partition("/")
    distill(loaded.target, chat, prompts, work / "distill", config, progress=bar.update, worker=(int(index), int(count or 1)))
    bar.close()
    logger.info("distill stage took %.0f s", time.perf_counter() - started)


def cmd_train(args: argparse.Namespace) -> None:
    from eagle2.train.trainer import TrainConfig, train

    if args.head_kind == "eagle3":
        cmd_train_eagle3(args)
        return
    values = {name: getattr(args, name) for name in asdict(TrainConfig())}
    values["betas"] = tuple(values["betas"])
    values["extra_distill"] = tuple(values["extra_distill"])
    config = TrainConfig(**values)
    loaded, chat = load_target_and_chat(args)
    bar = progress_bar(None, "train", "step")

    def progress(step: int, total: int, row: dict) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{row['loss']:.3f}", ce=f"{row['ce_loss']:.3f}", pps=f"{row['pairs_per_s']:.0f}", refresh=True)

    train(
        loaded.target,
        Path(args.work),
        Path(args.out),
        config,
        stop_token_ids=tuple(sorted(chat.stop_token_ids)),
        device=args.device,
        max_shards=args.max_shards,
        progress=progress,
    )
    bar.close()


def cmd_train_eagle3(args: argparse.Namespace) -> None:
    """`train --head-kind eagle3`: an EAGLE-3 head on the same distilled records (training-time test)."""
    from eagle2.train.dataset import load_records
    from eagle2.train.eagle3 import Eagle3TrainConfig, train_eagle3
    from eagle2.target import parse_dtype
    from eagle2.train.io import atomic_write_json

    names = {f for f in asdict(Eagle3TrainConfig())}
    config = Eagle3TrainConfig(**{name: getattr(args, name) for name in names})
    loaded, chat = load_target_and_chat(args)
    records = load_records(Path(args.work) / "distill", max_shards=args.max_shards)
    bar = progress_bar(None, "train eagle3", "record")

    def progress(step: int, total: int, row: dict) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix(loss=f"{row['loss']:.3f}", step0=f"{row['step0_loss']:.3f}", refresh=True)

    head, summary = train_eagle3(loaded.target, records, config, stop_token_ids=tuple(sorted(chat.stop_token_ids)), progress=progress)
    bar.close()
    out = Path(args.out)
    head.to(device="cpu", dtype=parse_dtype(args.save_dtype)).save_pretrained(out)
    atomic_write_json(out / "training.json", {"head_kind": "eagle3", "model": args.model, **summary})
    logger.info("EAGLE-3 head written to %s (held-out accuracy by step: %s)", out, (summary["heldout"] or {}).get("accuracy_by_step"))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from eagle2.train.evaluate import MethodConfig, measure, select_questions
    from eagle2.train.io import atomic_write_json
    from harness.models import load_head

    loaded, chat = load_target_and_chat(args)
    head = load_head(args.head, loaded.target)
    if args.full_vocab:
        head.draft_vocab = None
    question_file = Path(args.question_file) if args.question_file else Path(args.data_dir or default_data_dir()) / "mt_bench" / "question.jsonl"
    questions = select_questions(question_file, args.questions)
    methods = [MethodConfig.parse(m) for m in args.methods]
    results = measure(loaded.target, head, chat, questions, methods, args.temperatures, max_new_tokens=args.max_new_tokens, seed=args.seed)
    report = {
        "head": args.head,
        "draft_vocab": None if head.draft_vocab is None else int(head.draft_vocab.shape[0]),
        "questions": [q["question_id"] for q in questions],
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "results": results,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        atomic_write_json(Path(args.out), report)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help="target: embedded (SmolLM2-135M-Instruct), a folder, a hub id or a .gguf path")
    parser.add_argument("--dtype", default="auto", help="target dtype (auto = float32 for GGUF)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where transformers puts it)")
    parser.add_argument("--chat-template", default="tokenizer", help="'tokenizer' (its own template, as the suites use) or a FastChat template name")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (on a shared CPU, 1 per process avoids OpenMP spin-waiting)")


def add_stages(stages: argparse._SubParsersAction) -> None:
    """The `train` command's stages, each with its options."""
    from eagle2.train.trainer import TrainConfig

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
    p.add_argument("--answers", choices=["generate", "reference"], default="generate",
                   help="generate: the target answers (self-distillation); reference: teacher-force the sources' own answers (~10x cheaper)")
    p.add_argument("--worker", default="0/1", help="i/n: generate only shards i, i+n, ... (run n processes to share the work)")
    add_model_arguments(p)
    p.set_defaults(func=cmd_distill)

    p = stages.add_parser("train", help="train the draft head on the distilled records")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True, help="head folder to write (official EAGLE layout)")
    for name, value in asdict(TrainConfig()).items():
        if name == "extra_distill":
            p.add_argument("--extra-distill", nargs="*", default=[], help="more distill folders, for training only")
        elif isinstance(value, tuple):
            p.add_argument(f"--{name.replace('_', '-')}", type=float, nargs=len(value), default=list(value))
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--max-shards", type=int, default=None, help="use only the first N shards")
    p.add_argument("--head-kind", choices=["eagle", "eagle3"], default="eagle",
                   help="eagle: the EAGLE-1/2 layout (default); eagle3: an EAGLE-3 head trained with the training-time test")
    p.add_argument("--ttt-steps", type=int, default=7, help="eagle3: unrolled training-time-test steps (official 7)")
    p.add_argument("--step-decay", type=float, default=0.8, help="eagle3: weight of step j is step_decay**j (official 0.8)")
    add_model_arguments(p)
    p.set_defaults(func=cmd_train)

    p = stages.add_parser("evaluate", help="acceptance length tau of a head on MT-bench first turns")
    p.add_argument("--head", required=True, help="head folder (official layout) or builtin:NAME")
    p.add_argument("--questions", type=int, default=40, help="MT-bench questions, spread over the 80 (all categories)")
    p.add_argument("--question-file", default=None, help="default: <data-dir>/mt_bench/question.jsonl")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", nargs="+", default=["vanilla", "eagle1", "eagle2"], help="vanilla | eagle1[:TREE] | eagle2[:DEPTH/TOPK/TOTAL]")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--full-vocab", action="store_true", help="draft over the whole vocabulary, ignoring the head's reduced draft vocabulary")
    add_model_arguments(p)
    p.set_defaults(func=cmd_evaluate)
