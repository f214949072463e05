"""A small hand-made run (two shards) with numbers chosen so the expected aggregates are easy to
compute by hand. Shared by test_aggregate, test_report and test_check.

Model ``tiny``, seed 0. Times in seconds.

mtbench, T = 0
  vanilla                q1/t1 10 tok 1.0 s 10 fwd | q1/t2 10 tok 1.0 s 10 fwd | q2/t1 20 tok 2.0 s 20 fwd | q3/t1 20 tok 4.0 s 20 fwd
                         -> 60 tok / 8.0 s = 7.5 tok/s, tau 1
  eagle2 d=3 k=2 n=8     q1/t1 10 tok 0.5 s 4 fwd  | q1/t2 10 tok 0.5 s 5 fwd  | q2/t1 20 tok 1.0 s 8 fwd  | q3/t1 20 tok 1.0 s 7 fwd
                         -> 60 tok / 3.0 s = 20 tok/s, speedup 20 / 7.5 = 8/3, tau 60/24 = 2.5
                         depth reached [20,16,10], accepted [16,10,4] -> alpha 0.8, 0.625, 0.4
                         phases (prefill, draft, verify, other) total (0.4, 0.8, 1.5, 0.3) of 3.0 s
                         draft tokens/step 6,6,7,7 over 4,5,8,7 fwd -> 159/24 = 6.625
                         q3's output differs from vanilla's at position 19 -> 1 lossless mismatch of 4
                         per question speedup: q1 2, q2 2, q3 4 -> bootstrap interval inside [2, 4]
  eagle1 tree=mc_sim_7b_63  q1/t1 10 tok 0.8 s 5 fwd | q2/t1 20 tok 1.2 s 10 fwd
                         -> 15 tok/s; vanilla on the same two samples 30 / 3.0 = 10 tok/s -> speedup 1.5, tau 2
mtbench, T = 1
  vanilla                q1/t1 10 tok 1.0 s 10 fwd
  eagle2 d=3 k=2 n=8     q1/t1 12 tok 0.5 s 5 fwd -> speedup 24 / 10 = 2.4, tau 2.4; 1 failure (q2, OOM)
gsm8k, T = 0 (no vanilla)
  eagle2 d=3 k=2 n=8     q1 10 tok 1 s 5 fwd correct | q2 10 tok 1 s 5 fwd wrong | q3 10 tok 1 s 5 fwd unscored
                         -> speedup NaN with a note, accuracy 1/2, no lossless comparison
  eagle1                 only failures (2)

Shard 1 also holds a stale copy of vanilla mtbench T=0 q1/t1 (100 s) and a failure of eagle2 mtbench
T=0 q1/t1; shard 2 holds the real record, so the merge must keep the latter and drop the failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.aggregate import canonical_params
from harness.results import FAILURES_FILE, MANIFEST_FILE, RESULTS_FILE, ResultRow, write_json_atomic, write_jsonl_atomic

MODEL = "tiny"
EAGLE2_PARAMS = {"depth": 3, "top_k": 2, "total_tokens": 8}
EAGLE1_PARAMS = {"tree": "mc_sim_7b_63"}
EAGLE2 = canonical_params(EAGLE2_PARAMS)  # "depth=3, top_k=2, total_tokens=8"
EAGLE1 = canonical_params(EAGLE1_PARAMS)


def _ids(question: str, turn: int, n: int) -> list[int]:
    base = 1000 * int(question[1:]) + 100 * turn
    return list(range(base, base + n))


def record(
    method: str,
    question: str,
    turn: int,
    new_tokens: int,
    wall: float,
    forwards: int,
    *,
    task: str = "mtbench",
    temperature: float = 0.0,
    params: dict[str, Any] | None = None,
    phases: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
    reached: list[int] | None = None,
    accepted: list[int] | None = None,
    dtps: float = 1.0,
    output_ids: list[int] | None = None,
    correct: bool | None = None,
    category: str | None = None,
    checked: list[int] | None = None,
    conf_accepted: list[int] | None = None,
) -> dict[str, Any]:
    params = dict(params or {})
    cell_id = f"{MODEL}/{task}/{method}/{canonical_params(params)}/T{temperature:g}/s0"
    prefill, draft, verify, other = phases
    return ResultRow(
        run_id="fixture", cell_id=cell_id, model=MODEL, model_source="embedded", task=task, method=method,
        method_params=params, temperature=temperature, question_id=question,
        category=category or ("writing" if question == "q1" else "math"), turn=turn,
        prompt_tokens=20, new_tokens=new_tokens, wall_time_s=wall, prefill_time_s=prefill, draft_time_s=draft,
        verify_time_s=verify, other_time_s=other, target_forwards=forwards, accept_lengths=(1,) * forwards,
        depth_reached=tuple(reached or ()), depth_accepted=tuple(accepted or ()),
        confidence_checked=tuple(checked or [0] * 20), confidence_accepted=tuple(conf_accepted or [0] * 20),
        draft_tokens_per_step=dtps, stop_reason="max_new_tokens",
        output_ids=tuple(output_ids if output_ids is not None else _ids(question, turn, new_tokens)),
        output_text="...", correct=correct, finished_at="2025-01-01T00:00:00Z",
    ).as_dict()


def failure(method: str, question: str | None, *, task: str = "mtbench", temperature: float = 0.0, params: dict | None = None) -> dict[str, Any]:
    params = dict(params or {})
    return {
        "cell_id": f"{MODEL}/{task}/{method}/{canonical_params(params)}/T{temperature:g}/s0", "model": MODEL,
        "task": task, "method": method, "method_params": params, "temperature": temperature,
        "question_id": question, "turn": 1, "error_type": "OutOfMemoryError", "error": "CUDA out of memory",
        "finished_at": "2025-01-01T00:00:00Z",
    }


def _conf(pairs: dict[int, int]) -> list[int]:
    out = [0] * 20
    for i, n in pairs.items():
        out[i] = n
    return out


def records() -> tuple[list[dict], list[dict]]:
    """(shard 1 records, shard 2 records)."""
    e2 = dict(params=EAGLE2_PARAMS)
    q3_wrong = _ids("q3", 1, 20)
    q3_wrong[19] = 7
    shard1 = [
        record("vanilla", "q1", 1, 10, 100.0, 10),  # stale, replaced by shard 2
        record("vanilla", "q1", 2, 10, 1.0, 10),
        record("vanilla", "q2", 1, 20, 2.0, 20),
        record("vanilla", "q3", 1, 20, 4.0, 20),
        record("eagle2", "q1", 1, 10, 0.5, 4, phases=(0.1, 0.1, 0.25, 0.05), reached=[3, 3, 2], accepted=[3, 2, 1], dtps=6.0,
               checked=_conf({19: 6, 10: 4}), conf_accepted=_conf({19: 5, 10: 2}), **e2),
        record("eagle2", "q1", 2, 10, 0.5, 5, phases=(0.1, 0.1, 0.25, 0.05), reached=[4, 3, 1], accepted=[3, 1, 0], dtps=6.0,
               checked=_conf({19: 4, 2: 10}), conf_accepted=_conf({19: 4, 2: 1}), **e2),
    ]
    shard2 = [
        record("vanilla", "q1", 1, 10, 1.0, 10),
        record("eagle2", "q2", 1, 20, 1.0, 8, phases=(0.1, 0.3, 0.5, 0.1), reached=[7, 5, 3], accepted=[5, 3, 1], dtps=7.0, **e2),
        record("eagle2", "q3", 1, 20, 1.0, 7, phases=(0.1, 0.3, 0.5, 0.1), reached=[6, 5, 4], accepted=[5, 4, 2], dtps=7.0,
               output_ids=q3_wrong, **e2),
        record("eagle1", "q1", 1, 10, 0.8, 5, params=EAGLE1_PARAMS, reached=[4], accepted=[3]),
        record("eagle1", "q2", 1, 20, 1.2, 10, params=EAGLE1_PARAMS, reached=[9], accepted=[6]),
        record("vanilla", "q1", 1, 10, 1.0, 10, temperature=1.0, output_ids=[1] * 10),
        record("eagle2", "q1", 1, 12, 0.5, 5, temperature=1.0, output_ids=[2] * 12, **e2),
        record("eagle2", "q1", 1, 10, 1.0, 5, task="gsm8k", correct=True, **e2),
        record("eagle2", "q2", 1, 10, 1.0, 5, task="gsm8k", correct=False, **e2),
        record("eagle2", "q3", 1, 10, 1.0, 5, task="gsm8k", correct=None, **e2),
    ]
    return shard1, shard2


def failures() -> tuple[list[dict], list[dict]]:
    shard1 = [failure("eagle2", "q1", params=EAGLE2_PARAMS)]  # superseded by a record
    shard2 = [
        failure("eagle2", "q2", temperature=1.0, params=EAGLE2_PARAMS),
        failure("eagle1", "q1", task="gsm8k"),
        failure("eagle1", "q2", task="gsm8k"),
    ]
    return shard1, shard2


def manifest(shard: int) -> dict[str, Any]:
    return {
        "run_id": "fixture", "suite": {"name": "fixture-suite"}, "cells": [], "shard": f"{shard}/2",
        "versions": {"python": "3.12.0", "torch": "2.5.0", "transformers": "5.17.0", "eagle2-bench": "0.1.0"},
        "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "hardware": {"device": "cpu", "cpu": "Fixture CPU", "cores": 2},
        "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T01:00:00Z",
    }


def write_run(root: Path, name: str = "run") -> list[Path]:
    """Write the two shards under ``root``; return their directories."""
    (r1, r2), (f1, f2) = records(), failures()
    dirs = []
    for i, (recs, fails) in enumerate(((r1, f1), (r2, f2)), start=1):
        d = root / f"{name}-shard{i}"
        d.mkdir(parents=True)
        write_jsonl_atomic(d / RESULTS_FILE, recs)
        write_jsonl_atomic(d / FAILURES_FILE, fails)
        write_json_atomic(d / MANIFEST_FILE, manifest(i))
        dirs.append(d)
    return dirs


def write_sweep_run(root: Path, *, questions: int = 4, temperatures: tuple[float, ...] = (0.0, 1.0), seed: int = 0) -> Path:
    """A synthetic but plausible run with everything the figures need: three tasks (MT-bench with
    categories and two turns), T = 0 and 1, vanilla, a transformers reference, EAGLE-1 and an
    EAGLE-2 sweep over depth × top_k × total_tokens. Numbers are random (seeded), not hand-computed;
    used to check that every figure and table is produced."""
    import numpy as np

    rng = np.random.default_rng(seed)
    run_dir = root / "sweep"
    run_dir.mkdir(parents=True)
    rows: list[dict] = []
    tasks = {"mtbench": (2, ["writing", "reasoning"]), "humaneval": (1, ["code"]), "gsm8k": (1, ["math"])}
    common: list[tuple[str, dict]] = [("vanilla", {}), ("hf_generate", {}), ("eagle1", {"tree": "mc_sim_7b_63"})]
    sweep = [("eagle2", {"depth": d, "top_k": k, "total_tokens": n}) for d in (3, 5, 7) for k in (4, 8) for n in (30, 60)]
    base = {"mtbench": 0.72, "humaneval": 0.8, "gsm8k": 0.76}
    for task, (turns, cats) in tasks.items():
        for temperature in temperatures:
            # EAGLE-2 is swept on MT-bench only (two heat-maps), elsewhere it runs one configuration.
            for method, params in common + (sweep if task == "mtbench" else sweep[-1:]):
                for q in range(1, questions + 1):
                    for turn in range(1, turns + 1):
                        # The same length for every method at T = 0, so outputs equal vanilla's.
                        new = 40 + (7 * q + 13 * turn + len(task)) % 80 if temperature == 0 else int(rng.integers(40, 120))
                        vanilla_time = new * 0.02 * (1 + 0.1 * rng.standard_normal() ** 2)
                        if method in ("vanilla", "hf_generate"):
                            fwd, reached, acc = new, [], []
                            wall = vanilla_time * (1.15 if method == "hf_generate" else 1.0)
                            checked = conf_acc = None
                            dtps = 1.0
                        else:
                            depth = params.get("depth", 5)
                            p = base[task] - (0.08 if temperature else 0) + 0.01 * params.get("top_k", 6) + 0.0005 * params.get("total_tokens", 60)
                            reached, acc, steps, emitted = [0] * depth, [0] * depth, 0, 1
                            while emitted < new:
                                steps += 1
                                k = 0
                                while k < depth:
                                    reached[k] += 1
                                    if rng.random() > p * (0.97 ** k):
                                        break
                                    acc[k] += 1
                                    k += 1
                                emitted += k + 1
                            fwd = steps + 1
                            cost = 1 + 0.004 * params.get("total_tokens", 60) + 0.03 * depth
                            wall = vanilla_time * fwd / new * cost
                            checked = [int(x) for x in rng.integers(5, 60, 20)]
                            conf_acc = [int(round(c * min(1.0, max(0.0, (i + 0.5) / 20 * 0.9 + 0.03)))) for i, c in enumerate(checked)]
                            dtps = float(params.get("total_tokens", 40)) + 1
                        ids = list(rng.integers(0, 1000, new)) if temperature else _ids(f"q{q}", turn, new)
                        rows.append(
                            {
                                **record(method, f"q{q}", turn, new, float(wall), int(fwd), task=task, temperature=temperature, params=params,
                                         phases=(0.05 * wall, 0.2 * wall, 0.6 * wall, 0.15 * wall) if method.startswith("eagle") else (0.0,) * 4,
                                         reached=reached, accepted=acc, dtps=dtps, output_ids=[int(i) for i in ids],
                                         category=cats[(q - 1) % len(cats)], checked=checked, conf_accepted=conf_acc,
                                         correct=bool(rng.random() < 0.4) if task == "gsm8k" else None),
                                "run_id": "sweep",
                            }
                        )
    write_jsonl_atomic(run_dir / RESULTS_FILE, rows)
    write_jsonl_atomic(run_dir / FAILURES_FILE, [])
    write_json_atomic(run_dir / MANIFEST_FILE, {**manifest(1), "run_id": "sweep", "shard": None})
    return run_dir
