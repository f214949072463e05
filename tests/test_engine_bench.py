"""benchmarks/engine.py measures through the harness runner: its figures are the run folder's
aggregated tables, its variants are model entries run interleaved, and the folder is an ordinary run."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import DATA_DIR, REPO_ROOT

from harness.aggregate import load_runs, tabulate


def test_the_engine_benchmark_is_a_runner_run_on_a_tiny_model(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "bench.json"
    methods = json.dumps([["vanilla", {}], ["eagle2", {"depth": 3, "top_k": 3, "total_tokens": 8}], ["eagle1", {"tree": "small_12"}]])
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "engine.py"), "--model", "tiny-random-llama", "--head", "random",
         "--variants", "float32:eager,float32:static", "--prompts", "2", "--max-new-tokens", "6", "--threads", "1",
         "--data-dir", str(DATA_DIR), "--methods", methods, "--run-dir", str(run_dir), "--out", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["variant"], r["method"]) for r in rows] == [
        (v, m) for v in ("float32:eager", "float32:static") for m in ("vanilla", "eagle2", "eagle1")]
    for r in rows:
        if r["method"] == "vanilla":
            assert r["speedup_vs_vanilla"] == 1.0 and r["compared"] == 0
        else:  # float32: every greedy output equals its variant's vanilla
            assert (r["greedy_identical"], r["greedy_near_ties"], r["greedy_unexplained"], r["compared"]) == (2, 0, 0, 2)
    assert {r["engine_path"] for r in rows} == {"eager", "static"}
    assert max(r["speedup_vs_fastest_vanilla"] for r in rows if r["method"] == "vanilla") == 1.0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["suite"]["schedule"] == "interleaved" and manifest["status"] == "complete"
    summary = tabulate(load_runs(run_dir)).summary
    assert sorted(round(float(x), 2) for x in summary["tokens_per_s"]) == sorted(r["tokens_per_s"] for r in rows)
    assert "fastest vanilla: " in done.stdout and "our vanilla" not in done.stdout  # no hf_generate in this run


def test_variants_name_their_kernel_and_wrapper_or_say_what_is_allowed(monkeypatch):
    """A variant is DTYPE:PATH[:KERNEL[:WRAPPER]]; auto parts stay out of its label and entry name."""
    spec = importlib.util.spec_from_file_location("engine_bench", REPO_ROOT / "benchmarks" / "engine.py")
    engine = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, engine)  # its dataclasses look their module up
    spec.loader.exec_module(engine)
    variants = engine.parse_variants("bfloat16:compiled,bfloat16:compiled:autotune:python,bfloat16:compiled:auto:cpp,float32")
    assert [v.label for v in variants] == ["bfloat16:compiled", "bfloat16:compiled:autotune:python", "bfloat16:compiled:auto:cpp", "float32:eager"]
    assert [v.entry_name for v in variants][1] == "bfloat16-compiled-autotune-python"
    suite = engine.benchmark_suite(
        argparse.Namespace(model="tiny", device=None, chat_template="tokenizer", prompts=1, max_new_tokens=4, temperature=0.0, repeats=1, profile=False),
        variants[1:3], [("vanilla", {})], "random",
    )
    assert [m.cpp_wrapper for m in suite.models] == [False, True]
    with pytest.raises(ValueError, match="wrapper 'c' is not one of auto, cpp, python"):
        engine.parse_variants("bfloat16:compiled:autotune:c")
