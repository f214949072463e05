"""benchmarks/gpu/train_head.sh, the one-call GPU pipeline, rehearsed on the CPU at tiny scale: every
stage runs under the budget and the head, its evaluation and the pipeline record land in OUT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, SHARED_DATA_DIR


@pytest.mark.slow
@pytest.mark.shared_data  # the real self-instruct seeds: the 10 it draws put a record in the 5% held-out split, which training needs
def test_the_gpu_pipeline_script_runs_end_to_end_on_a_tiny_model_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "MODEL": "tiny-random-llama",
        "DEVICE": "cpu",
        "THREADS": "1",
        "DATA_DIR": str(SHARED_DATA_DIR),
        "OUT": str(out),
        "WORK": str(tmp_path / "work"),
        "BUDGET_S": "400",
        "SOURCES": "--source shared:self_instruct_seed:10 --source magpie:writing:3 --source multiturn:2",
        "BATCH": "4",
        "MAX_NEW_TOKENS": "8",
        "EPOCHS": "1",
        "TTT_STEPS": "2",
        "TOKENS_PER_BATCH": "64",
        "DRAFT_VOCAB": "0",
        "QUESTIONS": "2",
        "GEN_DTYPE": "bfloat16",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu" / "train_head.sh")], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert pipeline["stages"] == {"prompts": "ok", "distill": "ok", "train": "ok", "evaluate": "ok"}
    assert sum(pipeline["seconds"].values()) <= 400 and pipeline["ttt_steps"] == 2 and pipeline["compute_dtype"] == "bfloat16"
    assert json.loads((out / "head" / "training.json").read_text())["config"]["compute_dtype"] == "bfloat16"
    assert (out / "head" / "config.json").is_file() and (out / "head" / "model.safetensors").is_file()
    assert json.loads((out / "head" / "config.json").read_text())["eagle2_training"]["ttt_steps"] == 2
    results = json.loads((out / "eval.json").read_text())["results"]
    assert results["T=0 eagle2:6/10/60"]["greedy_mismatches_vs_vanilla"] == 0
    assert json.loads((out / "distill.summary.json").read_text())["dtypes"]["generation"] == "bfloat16"
    assert json.loads((out / "prompts.summary.json").read_text())["by_kind"] == {"general": 10, "multiturn": 2, "writing": 3}
    # Nothing but the head and small summaries comes back: no shards or checkpoints under OUT.
    assert not list(out.rglob("*.pt")) and not list(out.rglob("shard-*"))
