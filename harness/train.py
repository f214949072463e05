"""python -m harness train STAGE ...: build prompts, self-distil them with the target, train a head,
measure its acceptance length. The command-line side of `eagle2.train` (models from the harness's
registry, chat templates, progress bars); the stages themselves live in the library.

    python -m harness train prompts  --work runs/smollm2-head --source shared:gsm8k_train:400 --source magpie:300
    python -m harness train distill  --work runs/smollm2-head
    python -m harness train train    --work runs/smollm2-head --out runs/smollm2-head/head
    python -m harness train evaluate --head runs/smollm2-head/head --questions 40
    python -m harness train curve    --heads runs/smollm2-head/train/epochs/epoch-* --x epoch --out curve.json

Every stage resumes: run the same command again after an interruption. `evaluate` and `curve`
measure with the benchmark's runner (a run folder that `python -m harness report` reads) and print
numbers from its aggregated tables (harness.aggregate).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from eagle2.train.prompts import EvalText

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]

EVAL_SETS = ("mt_bench", "gsm8k_test", "humaneval")  # checked for overlap by default
# Evaluation set -> (task type, its options): the texts come from harness.tasks' loaders, so the
# files are the ones a benchmark run reads (sha256-checked against their pinned source).
EVAL_SET_TASKS = {
    "mt_bench": ("mt_bench", {}),
    "gsm8k_test": ("gsm8k", {}),
    "humaneval": ("humaneval", {"format": "completion"}),  # the bare prompt, not the chat instruction around it
    "spec_bench": ("questions", {"path": "spec_bench/question.jsonl"}),
}
QUESTION_FIELDS = ("turns", "question", "prompt", "text", "instruction")  # read from --eval-questions files


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


def eval_set_texts(name: str, data_dir: Path | None) -> list[EvalText]:
    """Every user turn of a named evaluation set, labelled `<set>/<question id>[.<turn>]`."""
    from eagle2.train.prompts import EvalText
    from harness.tasks import DataSource, get_task

    if name not in EVAL_SET_TASKS:
        raise ValueError(f"unknown evaluation set {name!r}; available: {', '.join(EVAL_SET_TASKS)} (or give a question file with --eval-questions)")
    task_type, options = EVAL_SET_TASKS[name]
    spec = get_task(task_type)
    try:
        questions, _ = spec.load({**{key: option.default for key, option in spec.options.items()}, **options}, DataSource.from_env(data_dir))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"evaluation set {name}: {error}; the overlap check needs it (or leave it out with --eval-sets)") from None
    numbered = name == "mt_bench"  # MT-bench labels always carry the turn (mt_bench/81.1), other sets only when a question has several
    return [
        EvalText(f"{name}/{question.question_id}" + (f".{turn}" if numbered or len(question.turns) > 1 else ""), text)
        for question in questions
        for turn, text in enumerate(question.turns, 1)
    ]


def question_file_texts(path: Path) -> list[EvalText]:
    """Every question of an evaluation file given with --eval-questions (JSONL, or one JSON array):
    each text in `turns` (Spec-Bench / MT-bench format) or the row's `question` / `prompt` / `text` /
    `instruction` (+ `input`), labelled by the file (its folder's name for `question.jsonl`, e.g.
    spec_bench, else its stem). A row with none of these fields is an error."""
    from eagle2.file_io import read_json_rows
    from eagle2.train.prompts import EvalText, join_instruction

    if not path.is_file():
        raise FileNotFoundError(f"evaluation question file {path} does not exist")
    label = path.parent.name if path.stem == "question" and path.parent.name else path.stem
    rows = read_json_rows(path)
    found = []
    for number, row in enumerate(rows):
        item = row.get("question_id", row.get("task_id", row.get("id", number))) if isinstance(row, dict) else number
        if isinstance(row, str):
            texts = [row]
        elif isinstance(row.get("turns"), list):
            texts = [str(t) for t in row["turns"]]
        else:
            key = next((k for k in QUESTION_FIELDS[1:] if row.get(k)), None)
            if key is None:
                raise ValueError(f"{path}: row {number} has none of the question fields {', '.join(QUESTION_FIELDS)}; keys: {sorted(row)}")
            texts = [join_instruction(str(row[key]), row.get("input") if key == "instruction" else None)]
        found += [EvalText(f"{label}/{item}" + (f".{turn}" if len(texts) > 1 else ""), turn_text) for turn, turn_text in enumerate(texts, 1)]
    if not found:
        raise ValueError(f"evaluation question file {path} holds no questions")
    return found


def eval_texts(data_dir: Path | None, eval_sets: Sequence[str], eval_questions: Sequence[str] = ()) -> list[EvalText]:
    """The texts training prompts must not overlap: the named evaluation sets, then the question files."""
    texts = [item for name in eval_sets for item in eval_set_texts(name, data_dir)]
    return texts + [item for path in eval_questions for item in question_file_texts(Path(path))]


def progress_bar(total: int | None, desc: str, unit: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, mininterval=5.0)


def cmd_prompts(args: argparse.Namespace) -> None:
    from eagle2.train.prompts import MagpieConfig, PromptsConfig, SourceSpec, build_prompts

    from eagle2.train.mix import default_mix_sources

    sources = tuple(args.source) + (default_mix_sources(args.mix) if args.mix else ())
    config = PromptsConfig(
        sources=sources,
        seed=args.seed,
        eval_sets=tuple(args.eval_sets),
        eval_questions=tuple(args.eval_questions),
        drop_overlapping=args.drop_overlapping,
        magpie=MagpieConfig(batch_size=args.magpie_batch_size, max_passage_tokens=args.max_passage_tokens),
    )
    texts = eval_texts(Path(args.data_dir), config.eval_sets, config.eval_questions)  # before a model loads: a missing set fails at once
    target = chat = None
    magpie = sum(s.count or 0 for s in map(SourceSpec.parse, config.sources) if s.synthesised)
    if magpie:
        loaded, chat = load_target_and_chat(args)
        target = loaded.target
    bar = progress_bar(magpie, "magpie", "prompt") if magpie else None
    started = time.perf_counter()
    build_prompts(config, Path(args.work), Path(args.data_dir), eval_texts=texts, target=target, chat=chat, progress=bar.update if bar else None)
    if bar:
        bar.close()
    logger.info("prompts stage took %.0f s", time.perf_counter() - started)


def cmd_distill(args: argparse.Namespace) -> None:
    from eagle2.train.distill import DistillConfig, cpu_bf16_flags, distill, resolve_generation_dtype
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
        generation_dtype=resolve_generation_dtype(args.generation_dtype, args.device or ("cuda" if torch.cuda.is_available() else "cpu")),
    )
    logger.info("distill: answers generated in %s (requested %s; CPU bfloat16 flags: %s)", config.generation_dtype, args.generation_dtype, ", ".join(cpu_bf16_flags()) or "none")
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
    if args.ttt_steps is None:
        args.ttt_steps = TrainConfig().ttt_steps
    values = {name: getattr(args, name) for name in asdict(TrainConfig())}
    values["betas"] = tuple(values["betas"])
    values["extra_distill"] = tuple(values["extra_distill"])
    values["ttt_weights"] = tuple(values["ttt_weights"])
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
        state_dir=Path(args.state_dir) if args.state_dir else None,
    )
    bar.close()


def cmd_train_eagle3(args: argparse.Namespace) -> None:
    """`train --head-kind eagle3`: an EAGLE-3 head on the same distilled records (training-time test)."""
    from eagle2.train.dataset import load_records
    from eagle2.train.eagle3 import Eagle3TrainConfig, train_eagle3
    from eagle2.target import parse_dtype
    from eagle2.file_io import write_json_atomic

    defaults = Eagle3TrainConfig()
    if args.compute_dtype != "float32":
        raise ValueError(f"--compute-dtype {args.compute_dtype} is for --head-kind eagle; the EAGLE-3 trainer computes in float32")
    # The stage's shared flags: --ttt-steps (None = the official 7) and --ttt-decay (the step weights' decay).
    values = {name: getattr(args, name) for name in asdict(defaults) if name not in ("ttt_steps", "step_decay") and hasattr(args, name)}
    config = Eagle3TrainConfig(**values, ttt_steps=args.ttt_steps or defaults.ttt_steps, step_decay=args.ttt_decay)
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
    write_json_atomic(out / "training.json", {"head_kind": "eagle3", "model": args.model, **summary}, sort_keys=True)
    logger.info("EAGLE-3 head written to %s (held-out accuracy by step: %s)", out, (summary["heldout"] or {}).get("accuracy_by_step"))


EVALUATE_METHODS = "vanilla | eagle1[:TREE] | eagle2[:DEPTH/TOPK/TOTAL]"


def suite_method(text: str) -> dict[str, Any]:
    """A method as `train evaluate` and `train curve` write it (EVALUATE_METHODS), as a suite entry."""
    name, _, rest = text.partition(":")
    if name == "vanilla":
        return {"name": "vanilla"}
    if name == "eagle1":
        return {"name": "eagle1", "params": {"tree": rest}} if rest else {"name": "eagle1"}
    if name == "eagle2":
        if not rest:
            return {"name": "eagle2"}
        parts = rest.split("/")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise ValueError(f"method {text!r}: write eagle2:DEPTH/TOPK/TOTAL, e.g. eagle2:6/10/60")
        return {"name": "eagle2", "params": dict(zip(("depth", "top_k", "total_tokens"), map(int, parts)))}
    raise ValueError(f"unknown method {text!r}; use {' or '.join(EVALUATE_METHODS.split(' | '))}")


def method_text(method: str, params: str) -> str:
    """A summary row's method in the EVALUATE_METHODS notation, e.g. eagle2:6/10/60."""
    from harness.aggregate import parse_params

    values = parse_params(params)
    if method == "eagle1":
        return f"eagle1:{values['tree']}"
    if method == "eagle2":
        return f"eagle2:{values['depth']}/{values['top_k']}/{values['total_tokens']}"
    return method


def head_without_draft_vocab(spec: str, folder: Path) -> str:
    """`--full-vocab`: a view of head `spec` (a folder or builtin:NAME) without its reduced draft
    vocabulary, as a folder of links to every other file of the head."""
    from eagle2.head import DRAFT_VOCAB_NAME
    from harness.models import builtin_head_path

    source = builtin_head_path(spec.removeprefix("builtin:")) if spec.startswith("builtin:") else Path(spec)
    if not source.is_dir():
        raise ValueError(f"--full-vocab needs a head folder or builtin:NAME, got {spec!r}")
    folder.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.name != DRAFT_VOCAB_NAME:
            (folder / file.name).symlink_to(file.resolve())
    return str(folder)


def measure_heads(args: argparse.Namespace, name: str, heads: Sequence[str], methods: Sequence[str], temperatures: Sequence[float]):
    """Run `methods` with each head on MT-bench first turns (the harness runner: one model entry per
    head, one run folder) and return the run's aggregated tables (harness.aggregate.RunTables).

    The run folder is --run-dir, or runs/<name>/<UTC timestamp>; `python -m harness report` reads it.
    """
    from harness.aggregate import load_runs, tabulate
    from harness.config import suite_from_dict
    from harness.runner import RunOptions, default_output_dir, run_suite
    from harness.tasks import DataSource

    if args.threads:
        torch.set_num_threads(args.threads)
    question_file = str(Path(args.question_file).resolve()) if args.question_file else "mt_bench/question.jsonl"
    model = {"source": args.model, "dtype": args.dtype, "device": args.device or "auto", "chat_template": args.chat_template,
             "compile": False}  # the engine's eager path, as a trained head is compared across runs
    suite = suite_from_dict({
        "schema": 1,
        "name": name,
        "description": f"python -m harness train {name.removeprefix('train-')}: heads on MT-bench first turns",
        "models": [{**model, "name": f"head{number}" if len(heads) > 1 else "target", "head": head} for number, head in enumerate(heads, 1)],
        "tasks": [{"name": "mt_bench", "type": "mt_bench", "path": question_file, "turns": 1, "limit": args.questions, "select": "spread",
                   "max_new_tokens": args.max_new_tokens}],
        "methods": [suite_method(text) for text in methods],
        "sampling": {"temperatures": list(temperatures)},
        "seeds": [args.seed],
    }, path=f"harness train {name.removeprefix('train-')}")
    run_dir = Path(args.run_dir) if args.run_dir else default_output_dir(suite)
    summary = run_suite(suite, RunOptions(out_dir=run_dir, data=DataSource.from_env(args.data_dir), progress=False,
                                          overrides={"threads": args.threads}))
    if summary.failures:
        raise RuntimeError(f"{summary.failures} generation(s) failed; see {run_dir / 'failures.jsonl'}")
    logger.info("run folder: %s (python -m harness report %s)", run_dir, run_dir)
    return tabulate(load_runs(run_dir))


def method_results(tables, model: str) -> dict[str, dict[str, Any]]:
    """`T=<t> <method>` -> τ, tokens, time, speed, acceptance by depth and the greedy lossless check
    of one model entry, from the aggregated tables."""
    summary, depth = tables.summary, tables.depth
    results = {}
    for row in summary[summary["model"] == model].sort_values("temperature", kind="stable").itertuples():
        mine = depth[(depth["model"] == model) & (depth["method"] == row.method) & (depth["params"] == row.params)
                     & (depth["temperature"] == row.temperature)].sort_values("depth")
        result = {
            "tau": row.tau,
            "new_tokens": row.new_tokens,
            "target_forwards": row.target_forwards,
            "seconds": round(row.time_s, 1),
            "tokens_per_s": row.tokens_per_s,
            "speedup": None if not math.isfinite(row.speedup) else row.speedup,
            # P(depth d accepted | its parent path was accepted), d = 1, 2, ...
            "acceptance_by_depth": [round(alpha, 3) if reached else None for alpha, reached in zip(mine["alpha"], mine["reached"])],
        }
        if row.temperature == 0 and row.method != "vanilla" and row.lossless_compared:
            result["greedy_mismatches_vs_vanilla"] = row.lossless_mismatches
            result["greedy_near_ties"] = row.lossless_near_ties
        results[f"T={row.temperature:g} {method_text(row.method, row.params)}"] = result
    return results


def cmd_evaluate(args: argparse.Namespace) -> None:
    import tempfile

    from eagle2.file_io import write_json_atomic

    with tempfile.TemporaryDirectory(prefix="head-full-vocab-") as view:
        head = head_without_draft_vocab(args.head, Path(view) / "head") if args.full_vocab else args.head
        tables = measure_heads(args, "train-evaluate", [head], args.methods, args.temperatures)
    results = method_results(tables, "target")
    report = {
        "head": args.head,
        "full_vocab": args.full_vocab,
        "run_dir": str(tables.run_dirs[0]),
        "questions": list(tables.question_ids),
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "results": results,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(results, indent=2))
    if args.out:
        write_json_atomic(Path(args.out), report, sort_keys=True)


def distilled_tokens_behind(summary: dict) -> int:
    """A head's own distilled tokens plus those of the heads it was fine-tuned from. Where that line is
    not recorded (data.inherited_tokens None, or absent with a config.init_from), only its own count,
    with a warning: the curve would otherwise place the head too far left without saying so."""
    data, init_from = summary["data"], (summary.get("config") or {}).get("init_from")
    inherited = data.get("inherited_tokens", None if init_from else 0)
    if inherited is None:
        logger.warning("a head fine-tuned from %s does not record that head's distilled tokens (training.json "
                       "data.inherited_tokens): its x counts only its own %d", init_from or "another head", data["all_tokens"])
        return data["all_tokens"]
    return data["all_tokens"] + inherited


CURVE_X = {
    # x of a head in a learning curve, read from its training.json
    "tokens": ("distilled tokens", distilled_tokens_behind),
    "epoch": ("epochs", lambda summary: summary.get("epochs_done", summary["config"]["epochs"])),
    "pairs": ("training pairs", lambda summary: summary["data"]["train_pairs"]),
}


def head_training_summary(spec: str) -> dict:
    """A trained head's training.json (folder or builtin:NAME); a missing one is an error naming it."""
    from harness.models import builtin_head_path

    folder = builtin_head_path(spec.removeprefix("builtin:")) if spec.startswith("builtin:") else Path(spec)
    path = folder / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"head {spec!r} has no training.json ({path}); a learning curve needs heads trained by `python -m harness train train`")
    return json.loads(path.read_text())


def cmd_curve(args: argparse.Namespace) -> None:
    """tau of each head on the same questions, against distilled tokens / epochs, as JSON and a PNG."""
    from eagle2.file_io import write_json_atomic

    x_label, x_of = CURVE_X[args.x]
    summaries = [head_training_summary(spec) for spec in args.heads]
    tables = measure_heads(args, "train-curve", args.heads, [args.method], [args.temperature])
    rows = []
    for number, (spec, summary) in enumerate(zip(args.heads, summaries), 1):
        # One method at one temperature: one result per head, keyed `T=<t> <method>`.
        ((key, result),) = method_results(tables, f"head{number}" if len(args.heads) > 1 else "target").items()
        method = key.split(" ", 1)[1]
        rows.append({
            "head": spec,
            "x": x_of(summary),
            "tau": result["tau"],
            "acceptance_by_depth": result["acceptance_by_depth"],
            "heldout_top1": summary["heldout"]["top1"],
            "heldout_step_top1": summary["heldout"].get("step_top1", []),
            "distilled_tokens": summary["data"]["all_tokens"],
            "epochs_done": summary.get("epochs_done"),
            "ttt_steps": summary["config"].get("ttt_steps", 1),
        })
        logger.info("%s: x=%s tau=%.3f", spec, rows[-1]["x"], rows[-1]["tau"])
    rows.sort(key=lambda row: row["x"])
    report = {
        "x": args.x,
        "x_label": x_label,
        "method": method,
        "temperature": args.temperature,
        "question_file": args.question_file or "mt_bench/question.jsonl",
        "run_dir": str(tables.run_dirs[0]),
        "questions": list(tables.question_ids),
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "rows": rows,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    write_json_atomic(out, report, sort_keys=True)
    figure = Path(args.figure) if args.figure else out.with_suffix(".png")
    plot_learning_curve(report, figure)
    print(json.dumps([{k: row[k] for k in ("head", "x", "tau", "heldout_top1")} for row in rows], indent=2))


def plot_learning_curve(report: dict, path: Path) -> None:
    """tau (left) and held-out top-1 draft accuracy (right) against the report's x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    xs = [row["x"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(xs, [row["tau"] for row in rows], marker="o")
    left.set_ylabel(f"τ ({report['method']}, T = {report['temperature']:g})")
    right.plot(xs, [row["heldout_top1"] for row in rows], marker="o", color="tab:orange")
    # Each head's figure comes from its own training run: fine-tunes on new data hold out other records.
    right.set_ylabel("held-out top-1 draft accuracy\n(each head's own held-out records)")
    for axis in (left, right):
        axis.set_xlabel(report["x_label"])
        axis.grid(alpha=0.3)
        if report["x"] in ("tokens", "pairs") and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 4:
            axis.set_xscale("log")
    fig.suptitle(f"{len(report['questions'])} questions, {report['max_new_tokens']} new tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_rank_vocab(args: argparse.Namespace) -> None:
    """Count how often each of a head's draft-vocabulary tokens occurs in the reference answers of
    the shared training sets, and store the counts beside the vocabulary (draft_vocab.safetensors),
    for a head trained before counts were saved with it."""
    from safetensors.torch import load_file

    from eagle2.head import DRAFT_VOCAB_NAME, DraftHead
    from eagle2.train.io import atomic_save_safetensors
    from eagle2.train.prompts import SHARED_SETS, read_shared_set
    from harness.models import load_model

    head_folder = Path(args.head)
    vocab_file = head_folder / DRAFT_VOCAB_NAME
    if not vocab_file.is_file():
        raise SystemExit(f"{head_folder}: no {DRAFT_VOCAB_NAME}; only a head with a reduced draft vocabulary can be ranked")
    token_ids = load_file(str(vocab_file))["token_ids"].long()
    tokenizer = load_model(args.model, dtype="float32", device="cpu").tokenizer
    totals = torch.zeros(max(len(tokenizer), int(token_ids.max()) + 1), dtype=torch.long)
    answers = 0
    for name in args.sets:
        if name not in SHARED_SETS:
            raise SystemExit(f"unknown shared training set {name!r}; available: {', '.join(SHARED_SETS)}")
        for _, response in read_shared_set(Path(args.data_dir), name):
            if response:
                totals += torch.bincount(torch.tensor(tokenizer.encode(response, add_special_tokens=False), dtype=torch.long), minlength=totals.shape[0])
                answers += 1
    counts = totals[token_ids]
    atomic_save_safetensors(vocab_file, {"token_ids": token_ids, "counts": counts})
    covered = float(counts.sum()) / max(int(totals.sum()), 1)
    print(f"{vocab_file}: counts of {token_ids.shape[0]} tokens over {answers} answers of {', '.join(args.sets)} "
          f"({int(totals.sum())} tokens, {covered:.1%} inside the draft vocabulary; {int((counts == 0).sum())} draft tokens never seen)")
    ranked = DraftHead.from_pretrained(head_folder)
    for size in (2048, 4096, 8192):
        if size < token_ids.shape[0]:
            kept = ranked.ranked_draft_vocab(size)
            print(f"  the {size} most frequent cover {float(totals[kept].sum()) / max(int(totals.sum()), 1):.1%} of those answer tokens")


def add_model_arguments(parser: argparse.ArgumentParser, *, dtype_flag: str = "--dtype") -> None:
    parser.add_argument("--model", default="embedded", help="target: embedded (SmolLM2-135M-Instruct), a folder, a hub id or a .gguf path")
    parser.add_argument(dtype_flag, dest="dtype", default="auto", help="target dtype, as the engine runs it (auto, as in a suite: bfloat16 for a GGUF on CUDA or a CPU with AMX/AVX512-BF16, else float32)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: where transformers puts it)")
    parser.add_argument("--chat-template", default="tokenizer", help="'tokenizer' (its own template, as the suites use) or a FastChat template name")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (on a shared CPU, 1 per process avoids OpenMP spin-waiting)")


def add_stages(stages: argparse._SubParsersAction) -> None:
    """The `train` command's stages, each with its options."""
    from eagle2.train.eagle3 import LM_HEAD_INITS, Eagle3TrainConfig
    from eagle2.train.trainer import COMPUTE_DTYPES, TrainConfig

    p = stages.add_parser("prompts", help="collect and overlap-check training prompts")
    p.add_argument("--work", required=True, help="work folder (all stages' outputs)")
    p.add_argument("--source", action="append", default=[],
                   help="shared:NAME[:N], file:PATH[:N], magpie:N, magpie:KIND:N (writing, roleplay, reasoning, math, code, translation, "
                   "open_qa, summarisation, long_context_qa, extraction) or multiturn:N (repeatable)")
    p.add_argument("--mix", type=int, default=0, metavar="TOTAL",
                   help="add the default mix of every shared set and every synthesised kind for about TOTAL prompts (eagle2.train.mix.DEFAULT_MIX)")
    p.add_argument("--max-passage-tokens", type=int, default=384, help="passage kinds: length cap of the passage the target writes")
    p.add_argument("--data-dir", default=str(default_data_dir()), help="shared data folder (default $EAGLE2_DATA_DIR or ../shared/data)")
    p.add_argument("--eval-sets", nargs="+", default=list(EVAL_SETS), help="named evaluation sets to check for overlap, read by the benchmark's task loaders: mt_bench, gsm8k_test, humaneval, spec_bench (<data-dir>/spec_bench/question.jsonl)")
    p.add_argument("--eval-questions", action="append", default=[], metavar="FILE",
                   help="a further evaluation question file to keep out of training (repeatable): Spec-Bench/MT-bench question.jsonl "
                   "(turns), GSM8K (question), HumanEval (prompt) or rows with text/instruction")
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
    p.add_argument("--dtype", dest="generation_dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype the answers are generated in (auto: bfloat16 on CUDA or a CPU with AMX/AVX512-BF16, else float32); "
                   "the features are always the target's in --engine-dtype")
    add_model_arguments(p, dtype_flag="--engine-dtype")
    p.set_defaults(func=cmd_distill)

    p = stages.add_parser("train", help="train the draft head on the distilled records")
    p.add_argument("--work", required=True)
    p.add_argument("--out", required=True, help="head folder to write (official EAGLE layout)")
    for name, value in asdict(TrainConfig()).items():
        if name == "extra_distill":
            p.add_argument("--extra-distill", nargs="*", default=[], help="more distill folders, for training only")
        elif name == "ttt_weights":
            p.add_argument("--ttt-weights", type=float, nargs="*", default=[], help="loss weight of each unrolled step (default ttt_decay**j)")
        elif name == "ttt_steps":
            p.add_argument("--ttt-steps", type=int, default=None,
                           help="training-time test: draft steps unrolled per position (default: 1 = plain EAGLE for --head-kind eagle, "
                           "the official 7 for eagle3); --ttt-decay weighs step j by ttt_decay**j for both kinds")
        elif name == "compute_dtype":
            p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=value,
                           help="dtype of the training steps' matmuls (bfloat16: torch.autocast; weights and losses stay float32, held-out evaluation runs in float32)")
        elif isinstance(value, bool):
            p.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=value)
        elif isinstance(value, tuple):
            p.add_argument(f"--{name.replace('_', '-')}", type=float, nargs=len(value), default=list(value))
        else:
            p.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    p.add_argument("--max-shards", type=int, default=None, help="use only the first N shards")
    p.add_argument("--state-dir", default=None, help="checkpoint/log folder (default WORK/train); give each run over the same WORK its own")
    p.add_argument("--head-kind", choices=["eagle", "eagle3"], default="eagle",
                   help="eagle: the EAGLE-1/2 layout (default); eagle3: an EAGLE-3 head trained with the training-time test")
    p.add_argument("--lm-head-init", choices=LM_HEAD_INITS, default=Eagle3TrainConfig().lm_head_init,
                   help="eagle3: start the head's lm_head (draft-vocabulary rows) and final norm from the target's, or at random")
    add_model_arguments(p)
    p.set_defaults(func=cmd_train)

    p = stages.add_parser("evaluate", help="acceptance length tau of a head on MT-bench first turns")
    p.add_argument("--head", required=True, help="head folder (official layout) or builtin:NAME")
    p.add_argument("--questions", type=int, default=40, help="MT-bench questions, spread over the categories (the suites' `select: spread`)")
    p.add_argument("--question-file", default=None, help="default: <data-dir>/mt_bench/question.jsonl")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--methods", nargs="+", default=["vanilla", "eagle1", "eagle2"], help=EVALUATE_METHODS)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--run-dir", default=None, help="run folder of the measurement (default: runs/train-evaluate/<UTC timestamp>); `python -m harness report` reads it")
    p.add_argument("--full-vocab", action="store_true", help="draft over the whole vocabulary, ignoring the head's reduced draft vocabulary")
    add_model_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = stages.add_parser("rank-vocab", help="store frequency counts with a head's draft vocabulary (from the shared training sets' answers)")
    p.add_argument("--head", required=True, help="head folder with draft_vocab.safetensors (rewritten in place)")
    p.add_argument("--sets", nargs="+", default=["gsm8k_train", "mbpp", "self_instruct_seed", "gpteacher_roleplay", "gpteacher_codegen"],
                   help="shared training sets whose reference answers are counted (never evaluation sets)")
    p.add_argument("--data-dir", default=str(default_data_dir()))
    p.add_argument("--model", default="embedded", help="the target whose tokenizer counts")
    p.set_defaults(func=cmd_rank_vocab)

    p = stages.add_parser("curve", help="learning curve: tau of a series of heads (per epoch, per data size) on the same questions, JSON + PNG")
    p.add_argument("--heads", nargs="+", required=True, help="head folders with training.json (e.g. WORK/train/epochs/epoch-*, or heads trained with --max-shards N)")
    p.add_argument("--x", choices=sorted(CURVE_X), default="tokens", help="the x axis, from each head's training.json")
    p.add_argument("--questions", type=int, default=32)
    p.add_argument("--question-file", default=None, help="default: <data-dir>/mt_bench/question.jsonl (first turns)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--method", default="eagle2", help="eagle2[:DEPTH/TOPK/TOTAL] (default: the official tree 6/10/60) or eagle1[:TREE]")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON report")
    p.add_argument("--run-dir", default=None, help="run folder of the measurement (default: runs/train-curve/<UTC timestamp>); `python -m harness report` reads it")
    p.add_argument("--figure", default=None, help="PNG (default: the report's path with .png)")
    add_model_arguments(p)
    p.set_defaults(func=cmd_curve)
