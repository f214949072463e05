"""Backend benchmark: one small sweep run in-process (`--backend local`) and on Ray, same results?

Output contract: a table on stdout with one row per backend (and a JSON file with --out):
  backend, workers, records, wall seconds (the whole `run`: start-up, model loads, generation,
  shut-down), engine seconds (sum of the records' wall_time_s: the timed generations), tokens/s
  over the wall time, identical (records with the same (cell, question, turn) keys and the same
  output_ids as the in-process run, out of its records);
plus the versions, hardware and git sha of the machine. Each backend writes a full run folder
under --work (default: a temporary folder).

On a machine with few cores the Ray row measures Ray's overhead (starting a local instance, one
actor process per worker importing torch and loading the model, shipping records back), not a
speed-up: workers share the same cores as the in-process run. Run it alone on an idle machine.

    python benchmarks/backends.py                                   # embedded SmolLM2-135M, 8 questions, CPU
    python benchmarks/backends.py --model tiny-random-llama --limit 2 --max-new-tokens 8   # a functional check
    python benchmarks/backends.py --device cuda --ray-workers 4 --limit 40 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.backends import BackendOptions, make_backend, validate  # noqa: E402
from harness.config import suite_from_dict  # noqa: E402
from harness.environment import git_state, hardware_info, package_versions  # noqa: E402
from harness.results import MANIFEST_FILE, RESULTS_FILE, read_jsonl, write_json_atomic  # noqa: E402
from harness.runner import RunOptions, run_suite  # noqa: E402
from harness.tasks import DataSource  # noqa: E402


def sweep(model: str, device: str, limit: int, max_new_tokens: int) -> dict:
    """vanilla and EAGLE-2 (16 tokens) at T = 0 on MT-bench first and second turns."""
    head = "random" if model == "tiny-random-llama" else "builtin:smollm2-135m-instruct"
    return {
        "schema": 1,
        "name": "backend-bench",
        "description": "benchmarks/backends.py: the same sweep in-process and on Ray",
        "models": [{"name": "bench-model", "source": model, "dtype": "float32", "device": device, "head": head}],
        "tasks": [{"name": "mt_bench", "limit": limit, "select": "spread", "max_new_tokens": max_new_tokens}],
        "methods": ["vanilla", {"name": "eagle2", "params": {"depth": 5, "top_k": 4, "total_tokens": 16}}],
        "sampling": {"temperatures": [0.0]},
        "warmup": {"generations": 1, "max_new_tokens": 8},
    }


def records(folder: Path) -> dict[tuple, list[int]]:
    rows = read_jsonl(folder / RESULTS_FILE)
    keyed = {(r["cell_id"], r["question_id"], r["repeat"], r["turn"]): r for r in rows}
    assert len(keyed) == len(rows), f"{folder}: duplicate records"
    return keyed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M) or tiny-random-llama (seconds; a functional check)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, default=8, help="MT-bench questions (both turns each)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker and in-process")
    parser.add_argument("--ray-workers", type=int, default=2, help="Ray actors")
    parser.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: Ray's choice)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--work", default=None, help="folder for the two run folders (default: a temporary one)")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    suite = suite_from_dict(sweep(args.model, args.device, args.limit, args.max_new_tokens), path="benchmarks/backends.py")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="backend-bench-"))
    ray_options = BackendOptions(backend="ray", workers=args.ray_workers, ray_num_cpus=args.ray_num_cpus)
    validate(ray_options, suite)
    rows = []
    reference = None
    for name, backend in (("local", None), ("ray", ray_options)):
        out = work / name
        start = time.perf_counter()
        summary = run_suite(suite, RunOptions(
            out_dir=out, data=DataSource.from_env(args.data_dir), progress=False, overrides={"threads": args.threads},
            backend=make_backend(backend) if backend else None,
        ))
        wall = time.perf_counter() - start
        got = records(out)
        reference = reference if reference is not None else got
        same = sum(1 for key, row in reference.items() if key in got and got[key]["output_ids"] == row["output_ids"])
        manifest = json.loads((out / MANIFEST_FILE).read_text())
        tokens = sum(r["new_tokens"] for r in got.values())
        rows.append({
            "backend": name, "workers": len(manifest.get("workers", {})) or 1, "records": len(got), "status": summary.status,
            "failures": summary.failures, "wall_s": round(wall, 2), "engine_s": round(sum(r["wall_time_s"] for r in got.values()), 2),
            "tokens_per_s": round(tokens / wall, 2), "identical": f"{same}/{len(reference)}",
        })
    print(f"{'backend':<8} {'workers':>7} {'records':>7} {'wall s':>8} {'engine s':>8} {'tok/s':>7} identical")
    for row in rows:
        print(f"{row['backend']:<8} {row['workers']:>7} {row['records']:>7} {row['wall_s']:>8} {row['engine_s']:>8} {row['tokens_per_s']:>7} {row['identical']}")
    print(f"run folders: {work}")
    if args.out:
        sha, dirty = git_state(REPO)
        result = {"rows": rows, "args": vars(args), "versions": package_versions(), "hardware": hardware_info(), "git_sha": sha, "git_dirty": dirty}
        write_json_atomic(Path(args.out), result)
    ok = all(row["identical"] == f"{len(reference)}/{len(reference)}" and row["failures"] == 0 for row in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
