"""One schema source: Fields validate suite keys, method parameters and task options alike, with
"did you mean"; `validate --explain` and the README's tables come from them; a new method is one
proposer plus one registry entry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from conftest import DATA_DIR, REPO_ROOT, random_prompt
from eagle2 import METHODS, MethodSpec, SamplingConfig
from eagle2.draft import FINAL_NORM
from eagle2.methods import engine_decoder
from eagle2.schema import Field, Registry, check_settings, resolve_settings
from eagle2.tree import DraftTree
from harness.__main__ import EXIT_OK, EXIT_USAGE, main
from harness.config import SuiteError, expand, suite_from_dict
from harness.explain import README_BEGIN, README_END, as_markdown, readme_block, schema_tables
from harness.tasks import TASKS


def test_a_field_names_the_value_and_what_is_allowed():
    depth = Field(int, 6, "deepest drafted token", minimum=1)
    assert depth.problems(3) == []
    assert depth.problems(0) == [((), "must be >= 1, got 0")]
    assert depth.problems(True) == [((), "must be int, got True")]
    mode = Field(str, "chat", "prompt format", choices=("chat", "completion"))
    assert mode.problems("chta") == [((), "must be one of the allowed values, got 'chta'; did you mean 'chat'? allowed: chat, completion")]
    seeds = Field(list, (0,), "seeds", each=Field(int, minimum=0), single=True, non_empty=True)
    assert seeds.problems(3) == [] and seeds.problems([1, 2]) == []
    assert seeds.problems([1, -2]) == [((1,), "must be >= 0, got -2")]
    assert seeds.problems([]) == [((), "must be a non-empty list, got []")]
    assert Field(float, 1.0, "p", minimum=0, maximum=1, exclusive_minimum=True).problems(float("nan")) == [((), "must be a finite number, got nan")]


def test_unknown_names_get_did_you_mean_in_settings_and_registries():
    fields = {"depth": Field(int, 6, "d", minimum=1), "top_k": Field(int, 10, "k", minimum=1)}
    (problem,) = check_settings(fields, {"topk": 2})
    assert problem.path == ("topk",)
    assert problem.message == "unknown key 'topk'; did you mean 'top_k'? allowed: depth, top_k"
    (problem,) = check_settings(fields, {"depth": 0}, owner="method 'x'", noun="parameter")
    assert problem.message == "method 'x' parameter 'depth' must be >= 1, got 0"
    with pytest.raises(KeyError, match="method 'x' has no parameter 'dpth'; did you mean 'depth'\\? allowed: depth, top_k"):
        resolve_settings(fields, {"dpth": 1}, owner="method 'x'", noun="parameter")
    assert resolve_settings(fields, {"top_k": 4}, owner="method 'x'", noun="parameter") == {"depth": 6, "top_k": 4}
    with pytest.raises(KeyError, match="unknown task type 'gsm9k'; did you mean 'gsm8k'\\? available: mt_bench, questions, humaneval, gsm8k"):
        TASKS.lookup("gsm9k")


def test_model_and_task_options_get_did_you_mean(tmp_path: Path):
    suite = {
        "schema": 1, "name": "s",
        "models": [{"name": "m", "source": "tiny-random-llama", "compile": "ato", "methods": ["vanila"]}],
        "tasks": [{"name": "h", "type": "humaneval", "format": "complete"}, {"name": "gsm8k", "scor": False}],
        "methods": ["vanilla"],
    }
    with pytest.raises(SuiteError) as caught:
        suite_from_dict(suite, "s.yaml")
    message = str(caught.value)
    assert message.startswith("s.yaml: 4 problems")
    assert "models[0].compile: must be one of the allowed values, got 'ato'; did you mean 'auto'? allowed: auto, true, false" in message
    assert "models[0].methods[0]: unknown method 'vanila'; did you mean 'vanilla'? available: vanilla, eagle1" in message
    assert "tasks[0].format: must be one of the allowed values, got 'complete'; did you mean 'completion'? allowed: chat, completion" in message
    assert "tasks[1].scor: unknown key 'scor'; did you mean 'score'? allowed: name, type, limit, select, max_new_tokens, path, score" in message


def test_explain_prints_every_key_parameter_and_option(capsys):
    assert main(["validate", "--explain"]) == EXIT_OK
    out = capsys.readouterr().out
    for table in schema_tables():
        assert table.title.replace("`", "") in out
        for row in table.rows:
            assert row[0] in out
    assert re.search(r"\n  eagle2 +total_tokens +int >= 1 +60 +tokens verified per step", out)
    assert re.search(r"\n  humaneval +format +chat \| completion +chat +chat: the problem", out)
    assert re.search(r"\n  dtype +auto \| float32 .* +auto +auto: bfloat16", out)
    assert re.search(r"\n  sampling.top_p +float in \(0, 1\] +1.0 +nucleus", out)
    assert main(["validate"]) == EXIT_USAGE
    assert "give one or more suite files" in capsys.readouterr().err


def test_the_readme_tables_are_the_generated_ones(capsys):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(README_BEGIN) == 1 and readme.count(README_END) == 1
    start = readme.index(README_BEGIN)
    written = readme[start : readme.index(README_END) + len(README_END)]
    assert main(["validate", "--explain", "--markdown"]) == EXIT_OK
    generated = capsys.readouterr().out
    assert generated == as_markdown(schema_tables())
    assert written == readme_block(generated), "README.md's schema tables are stale: paste `python -m harness validate --explain --markdown`"


# ----------------------------------------------------------------------------------------------
# A new method through the registry only: its proposer (here, in this file) and one entry.


class RepeatRootProposer:
    """Drafts a chain that repeats the root token `length` times: useless, but any chain is a tree."""

    features = FINAL_NORM

    def __init__(self, length: int) -> None:
        self.length = length
        self.max_tree_size = length + 1
        self.root = -1

    def begin(self, prompt_ids: torch.Tensor, prompt_features: torch.Tensor, root: int) -> None:
        self.root = root

    def propose(self, max_depth: int) -> DraftTree:
        size = min(self.length, max_depth) + 1
        return DraftTree.from_parents(torch.full((size,), self.root, dtype=torch.long), torch.arange(-1, size - 1))

    def advance(self, path_features: torch.Tensor, next_tokens: torch.Tensor) -> None:
        self.root = int(next_tokens[-1])


REPEAT_ROOT = MethodSpec(
    name="repeat_root",
    description="drafts the root token again, `length` times",
    needs_head=False,
    params={"length": Field(int, 3, "drafted tokens per step", minimum=1)},
    build=lambda target, head, params: engine_decoder(target, lambda: RepeatRootProposer(params["length"])),
)

TOY_SUITE = """\
schema: 1
name: toy
models: [{name: m, source: tiny-random-llama}]
tasks: [{name: mt_bench, limit: 1}]
methods:
  - vanilla
  - name: repeat_root
    sweep: {length: [1, 4]}
"""


def test_a_new_method_is_one_registry_entry(target):
    methods = METHODS.with_entry(REPEAT_ROOT)
    assert "repeat_root" not in METHODS  # the shipped registry is left alone
    suite = suite_from_dict(yaml.safe_load(TOY_SUITE), "toy.yaml", methods=methods)
    cells = expand(suite, methods)
    assert [(c.method, dict(c.method_params)) for c in cells] == [("vanilla", {}), ("repeat_root", {"length": 1}), ("repeat_root", {"length": 4})]
    with pytest.raises(SuiteError, match=r"methods\[1\]\.name: unknown method 'repeat_root'"):
        suite_from_dict(yaml.safe_load(TOY_SUITE), "toy.yaml")  # not in the shipped registry
    bad = TOY_SUITE.replace("length: [1, 4]", "lenght: [1, 4]")
    with pytest.raises(SuiteError, match="method 'repeat_root' has no parameter 'lenght'; did you mean 'length'\\? allowed: length"):
        suite_from_dict(yaml.safe_load(bad), "toy.yaml", methods=methods)

    prompt = random_prompt(target.vocab_size, 8, 7)
    vanilla = methods["vanilla"].create(target, None)(prompt, max_new_tokens=20, sampling=SamplingConfig(), stop_token_ids=(), generator=None)
    for cell in cells[1:]:
        decoder = methods.lookup(cell.method).create(target, None, cell.method_params)
        record = decoder(prompt, max_new_tokens=20, sampling=SamplingConfig(), stop_token_ids=(), generator=None)
        assert record.output_ids == vanilla.output_ids  # lossless, like every method on the one decode loop
        assert record.target_forwards <= vanilla.target_forwards


def test_a_new_method_runs_through_the_runner_from_its_registry_entry(tmp_path):
    from harness.runner import RunOptions, run_suite
    from harness.tasks import DataSource

    methods = METHODS.with_entry(REPEAT_ROOT)
    suite = suite_from_dict(yaml.safe_load(TOY_SUITE), "toy.yaml", methods=methods)
    out = tmp_path / "out"
    summary = run_suite(suite, RunOptions(out_dir=out, data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=False, methods=methods))
    assert summary.status == "complete" and summary.failures == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    outputs = {(r["method"], json.dumps(r["method_params"], sort_keys=True), r["turn"]): r["output_ids"] for r in records}
    assert {(m, p) for m, p, _ in outputs} == {("vanilla", "{}"), ("repeat_root", '{"length": 1}'), ("repeat_root", '{"length": 4}')}
    for (method, params, turn), ids in outputs.items():
        assert ids == outputs[("vanilla", "{}", turn)]  # greedy: the toy method is lossless through the runner too


def test_a_registry_refuses_a_name_twice():
    with pytest.raises(ValueError, match="method 'vanilla' is registered twice"):
        METHODS.with_entry(METHODS["vanilla"])
    assert isinstance(METHODS, Registry) and isinstance(TASKS, Registry)
