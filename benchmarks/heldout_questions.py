"""Write an MT-bench-format question file of held-out prompts by task kind, for measuring a head's τ
on task types it was not trained on (`python -m harness train evaluate --question-file FILE`, whose
`select: spread` takes the questions round-robin over the kinds; `harness report` gives τ per kind).

The prompts come from a prompts-stage work folder's per-kind chunk files (`<work>/magpie-KIND/`,
`<work>/magpie/` for general chat, `<work>/multiturn/` first turns): prompts the target wrote itself
and that no head trained from another work folder has seen. Prompts overlapping an evaluation set
(MT-bench, GSM8K test, HumanEval: the prompts stage's check) are left out, so the kinds stay apart
from the benchmark's own questions.

    python benchmarks/heldout_questions.py --work /path/to/prompts-work --per-kind 4 --out runs/heldout/question.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eagle2.file_io import read_jsonl_input, write_text_atomic  # noqa: E402
from eagle2.train.prompts import EvalIndex  # noqa: E402
from harness.train import EVAL_SETS, default_data_dir, eval_texts  # noqa: E402


def kind_of(folder: Path) -> str:
    name = folder.name
    return "general" if name == "magpie" else name.removeprefix("magpie-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a prompts-stage work folder with per-kind chunk-*.jsonl files")
    parser.add_argument("--per-kind", type=int, default=4)
    parser.add_argument("--every", type=int, default=37, help="take every N-th prompt of a kind (spread over its chunks)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(), help="shared data folder (the evaluation sets)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    index = EvalIndex.of(eval_texts(args.data_dir, EVAL_SETS))
    rows = []
    for folder in sorted(p for p in args.work.iterdir() if p.is_dir() and any(p.glob("chunk-*.jsonl"))):
        written = [row["prompt"] for path in sorted(folder.glob("chunk-*.jsonl")) for row in read_jsonl_input(path)]
        prompts = [text for text in written if index.find(text) is None]
        if len(prompts) < len(written):
            print(f"{folder}: {len(written) - len(prompts)} prompt(s) overlap an evaluation set; left out", file=sys.stderr)
        picked = prompts[:: args.every][: args.per_kind]
        if len(picked) < args.per_kind:
            print(f"{folder}: only {len(picked)} of {args.per_kind} prompts", file=sys.stderr)
        for number, prompt in enumerate(picked, 1):
            rows.append({"question_id": f"{kind_of(folder)}-{number}", "category": kind_of(folder), "turns": [prompt]})
    if not rows:
        parser.error(f"{args.work}: no */chunk-*.jsonl prompt files")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    kinds = sorted({row["category"] for row in rows})
    print(f"{args.out}: {len(rows)} questions, kinds: {', '.join(kinds)}")


if __name__ == "__main__":
    main()
