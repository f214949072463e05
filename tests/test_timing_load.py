"""Noisy timing is detected: a run timed while a busy loop competes for the cores is flagged in the
summary, the report (warning on top, ‡ in the tables) and the check; a quiet run is not; the rules
themselves on hand-made load records."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from conftest import DATA_DIR

from harness.aggregate import CONTENTION_CORES, _timing, load_runs, summarize, timing_warnings
from harness.config import load_suite
from harness.machine_load import measure, snapshot
from harness.runner import RunOptions, run_suite
from harness.tasks import DataSource


SUITE = """\
schema: 1
name: timing
models:
  - name: tiny
    source: tiny-random-llama
    dtype: float32
    device: cpu
    head: random
tasks:
  - name: mt_bench
    limit: 2
    max_new_tokens: 48
methods:
  - vanilla
  - name: eagle2
    params: {depth: 3, top_k: 3, total_tokens: 8}
sampling:
  temperatures: [0]
warmup: {generations: 1, max_new_tokens: 4}
"""
BUSY_LOOP = "import time\nend = time.time() + 300\nwhile time.time() < end:\n    pass\n"


def _run(tmp_path, name: str):
    path = tmp_path / "timing.yaml"
    path.write_text(textwrap.dedent(SUITE))
    out = tmp_path / name
    run_suite(load_suite(path), RunOptions(out_dir=out, data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=False))
    return out


def _others_cores(seconds: float) -> float:
    """Cores other processes use right now, measured over `seconds`."""
    before = snapshot()
    time.sleep(seconds)
    load = measure(before, snapshot(), threads=1, device="cpu")
    return max(load["others_cpu_s"], load["system_others_cpu_s"] or 0.0) / load["wall_s"]


def test_a_run_competing_with_a_busy_loop_is_flagged(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    # Two busy loops: at least half a core of competition even on a one-core machine.
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        time.sleep(0.3)
        out = _run(tmp_path, "busy")
    finally:
        for busy in loops:
            busy.kill()
            busy.wait(timeout=30)
        torch.set_num_threads(threads)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["load"]["wall_s"] > 0 and r["load"]["threads"] == 1 and r["load"]["cores"] >= 1 for r in records)
    summary = summarize(load_runs(out))
    assert (summary["others_cores"] >= CONTENTION_CORES).all()
    assert summary["timing_flag"].str.contains("timed under contention").all()
    assert "(pid " in summary["timing_flag"].iloc[0]  # the busiest other processes are named
    warnings = timing_warnings(summary)
    assert len(warnings) == 1 and "2 of 2 cells" in warnings[0]

    from harness.check import run_check, write_baseline
    from harness.report import write_report

    md = write_report([out], tmp_path / "report").read_text(encoding="utf-8")
    top = md.split("## Speedup")[0]
    assert "NOISY TIMING" in top and "timed under contention" in md
    assert "WARNING, NOISY TIMING" in (tmp_path / "report" / "report.tex").read_text(encoding="utf-8")
    assert "‡" in md.split("## Throughput")[1].split("## Lossless")[0]  # the throughput table marks the cells
    baseline = write_baseline(out, tmp_path / "baseline.json")
    _, table = run_check(out, baseline)
    assert "**Warning (timing):**" in table


def test_a_quiet_run_is_not_flagged(tmp_path):
    if (busy := _others_cores(1.0)) >= 0.25:
        pytest.skip(f"the machine is busy ({busy:.2f} cores used by other processes): a quiet run cannot be made here")
    out = _run(tmp_path, "quiet")
    summary = summarize(load_runs(out))
    if (summary["timing_flag"] != "").any() and (busy := _others_cores(1.0)) >= 0.25:
        pytest.skip(f"the machine became busy during the test ({busy:.2f} cores)")
    assert (summary["timing_flag"] == "").all(), summary[["method", "others_cores", "cpu_per_wall", "timing_flag"]].to_string()
    assert timing_warnings(summary) == []
    assert all(load["graphs_compiled"] == 0 for load in load_runs(out).records["load"])  # an eager suite compiles nothing
    from harness.report import write_report

    md = write_report([out], tmp_path / "report").read_text(encoding="utf-8")
    assert "NOISY TIMING" not in md and "No cell is flagged" in md


def _load(wall: float, own: float, others: float, system: float | None = None, steal: float = 0.0, device: str = "cpu") -> dict:
    return {"wall_s": wall, "own_cpu_s": own, "others_cpu_s": others, "system_others_cpu_s": system, "steal_s": steal,
            "busy_processes": [], "device": device}


def _group(loads: list[dict], tps: list[float] | None = None) -> pd.DataFrame:
    tps = tps or [10.0] * len(loads)
    return pd.DataFrame({"load": loads, "new_tokens": [10] * len(loads), "wall_time_s": [10 / t for t in tps],
                         "repeat": list(range(len(loads))), "seed": 0, "question_id": "q1", "turn": 1})


def test_the_rules_on_hand_made_load_records():
    quiet = _timing(_group([_load(1.0, 0.95, 0.1), _load(1.0, 1.0, 0.2, 0.3)], tps=[10, 11]))
    assert quiet["timing_flag"] == "" and quiet["others_cores"] == pytest.approx(0.2)  # max(0.2, 0.3) and 0.1 over 2 s
    assert quiet["repeat_spread"] == pytest.approx(1.1)
    busy = _timing(_group([_load(1.0, 1.0, 0.4), _load(1.0, 1.0, 0.3, 0.8)]))
    assert busy["others_cores"] == pytest.approx(0.6) and "contention" in busy["timing_flag"]
    assert "contention" in _timing(_group([_load(1.0, 1.0, 0.0, 0.0, steal=0.7)]))["timing_flag"]  # the hypervisor's
    starved = _timing(_group([_load(1.0, 0.3, 0.0)]))
    assert "only 0.30 of a core" in starved["timing_flag"]
    assert _timing(_group([_load(1.0, 0.1, 0.0, device="cuda")]))["timing_flag"] == ""  # a GPU run waits on the device
    assert "differ up to 2.00x" in _timing(_group([_load(1.0, 1.0, 0.0)] * 2, tps=[10, 20]))["timing_flag"]
    compiled = _timing(_group([_load(1.0, 1.0, 0.0), {**_load(1.0, 1.0, 0.0), "graphs_compiled": 2}]))
    assert "built 2 graph(s) inside timed generations" in compiled["timing_flag"]
    unknown = _timing(_group([None, float("nan")]))  # records from an older harness
    assert unknown["timing_flag"] == "" and math.isnan(unknown["others_cores"])


def test_measure_counts_other_processes_and_own_cpu():
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.2)
        before = snapshot()
        end = time.process_time() + 0.2
        while time.process_time() < end:  # this process: 0.2 s of CPU
            pass
        time.sleep(0.3)
        load = measure(before, snapshot(), threads=1, device="cpu", max_listed=10_000, min_cores=0.0)
    finally:
        busy.kill()
        busy.wait(timeout=30)
    assert load["own_cpu_s"] == pytest.approx(0.2, abs=0.05) and load["wall_s"] >= 0.5
    # The busy loop is seen by pid: it had the CPU whenever the scheduler gave it one (on a loaded
    # machine, a share of a core), and counts among the others' CPU time.
    (mine,) = [p for p in load["busy_processes"] if p["pid"] == busy.pid]
    assert mine["name"] == "python" or mine["name"].startswith("python")
    assert load["others_cpu_s"] >= mine["cores"] * load["wall_s"] - 0.02 and load["cores"] >= 1
