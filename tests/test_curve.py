"""Learning-curve plumbing on tiny heads: per-epoch heads and heads on part of the data, evaluated on
the same questions, written as JSON and a PNG figure."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DATA_DIR

from harness.__main__ import main

MODEL = ["--model", "tiny-random-llama", "--threads", "1"]


def test_a_learning_curve_over_epochs_and_data_sizes(tmp_path: Path) -> None:
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me something about the number {i}."}) + "\n" for i in range(8)))
    work = tmp_path / "work"
    assert main(["-q", "train", "prompts", "--work", str(work), "--source", f"file:{prompts}", "--data-dir", str(DATA_DIR), *MODEL]) == 0
    assert main(["-q", "train", "distill", "--work", str(work), "--max-new-tokens", "8", "--batch-size", "4", "--shard-size", "4", "--dtype", "float32", *MODEL]) == 0
    common = ["--heldout-fraction", "0.3", "--tokens-per-batch", "64", *MODEL]
    assert main(["-q", "train", "train", "--work", str(work), "--out", str(tmp_path / "full"), "--epochs", "2", "--save-epoch-heads", "--ttt-steps", "2", *common]) == 0
    assert main(["-q", "train", "train", "--work", str(work), "--out", str(tmp_path / "half"), "--epochs", "1", "--max-shards", "1",
                 "--state-dir", str(work / "train-half"), *common]) == 0
    epochs = sorted((work / "train" / "epochs").iterdir())
    assert [e.name for e in epochs] == ["epoch-001", "epoch-002"]

    report = tmp_path / "curve-epochs.json"
    evaluate = ["--questions", "2", "--max-new-tokens", "6", "--data-dir", str(DATA_DIR), *MODEL]
    assert main(["-q", "train", "curve", "--heads", *map(str, epochs), "--x", "epoch", "--out", str(report), "--run-dir", str(tmp_path / "run-epochs"), *evaluate]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [row["x"] for row in rows] == [1, 2] and all(row["tau"] >= 1.0 for row in rows)
    assert all(row["ttt_steps"] == 2 and len(row["heldout_step_top1"]) == 2 for row in rows)
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    figure = tmp_path / "figs" / "tokens.png"
    report = tmp_path / "curve-tokens.json"
    assert main(["-q", "train", "curve", "--heads", str(tmp_path / "full"), str(tmp_path / "half"), "--x", "tokens", "--out", str(report), "--figure", str(figure),
                 "--run-dir", str(tmp_path / "run-tokens"), *evaluate]) == 0
    rows = json.loads(report.read_text())["rows"]
    assert [row["head"] for row in rows] == [str(tmp_path / "half"), str(tmp_path / "full")]  # sorted by distilled tokens
    assert rows[0]["x"] < rows[1]["x"] and figure.is_file()
    # A head without training.json is named in the error.
    (tmp_path / "bare").mkdir()
    assert main(["-q", "train", "curve", "--heads", str(tmp_path / "bare"), "--out", str(tmp_path / "x.json"), "--run-dir", str(tmp_path / "run-bare"), *evaluate]) != 0
    assert not (tmp_path / "run-bare").exists()  # refused before anything ran


def test_a_fine_tuned_head_counts_the_tokens_of_the_heads_it_started_from(tmp_path: Path, caplog) -> None:
    from eagle2.train.trainer import inherited_tokens
    from harness.train import CURVE_X

    def head(name: str, data: dict) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "training.json").write_text(json.dumps({"data": data}))
        return folder

    scratch = head("v1", {"all_tokens": 500})  # written before heads recorded what they inherited
    tuned = head("v2", {"all_tokens": 300, "inherited_tokens": inherited_tokens(str(scratch))})
    assert inherited_tokens("") == 0 and inherited_tokens(str(tuned)) == 800
    assert inherited_tokens(str(tmp_path / "no-such-head")) is None
    unknown = head("v3", {"all_tokens": 100, "inherited_tokens": None})
    assert inherited_tokens(str(unknown)) is None  # unknown stays unknown down the line
    x_of = CURVE_X["tokens"][1]
    with caplog.at_level("WARNING", logger="harness.train"):
        assert [x_of(json.loads((f / "training.json").read_text())) for f in (scratch, tuned)] == [500, 800]
    assert not caplog.records
    with caplog.at_level("WARNING", logger="harness.train"):
        assert x_of(json.loads((unknown / "training.json").read_text())) == 100
        # Fine-tuned (config.init_from) before inheritance was recorded: the key is absent, not None.
        assert x_of({"data": {"all_tokens": 40}, "config": {"init_from": "v0"}}) == 40
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"] and "v0" in caplog.records[1].getMessage()
