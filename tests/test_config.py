"""Suite schema: the shipped suites validate; bad files give errors naming file, line, key and allowed values;
sweep expansion; stable cell ids; CLI overrides; sharding."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from harness.config import (
    SuiteError,
    apply_overrides,
    expand,
    list_suite_files,
    load_suite,
    parse_shard,
    shard_cells,
)

MINIMAL = """\
schema: 1
name: tiny
models:
  - name: m
    source: tiny-random-llama
    head: random
tasks:
  - mt_bench
methods:
  - vanilla
  - eagle2
"""


def write(tmp_path: Path, text: str, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SuiteError) as caught:
        load_suite(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message  # every error names the file
    return message


@pytest.mark.parametrize("path", list_suite_files(), ids=lambda p: p.name)
def test_shipped_suites_validate_and_expand(path, tmp_path):
    try:
        suite = load_suite(path)
    except SuiteError as error:
        # A suite that compares heads trained by the commands in its header names folders under runs/
        # (ignored by git), which a clean checkout lacks: that may be its only problem.
        assert error.only_missing_heads, error
        assert all(Path(head).parts[0] == "runs" for head in error.missing_heads), error.missing_heads
        text = path.read_text()
        for head in error.missing_heads:
            text = text.replace(head, "random")
        suite = load_suite(write(tmp_path, text, path.name))
    cells = expand(suite)
    assert cells
    assert len({c.cell_id for c in cells}) == len(cells)


def test_shipped_suites_exist():
    names = {p.relative_to(p.parents[1] if p.parent.name == "paper" else p.parent).as_posix() for p in list_suite_files()}
    for expected in ("mtbench.yaml", "humaneval.yaml", "gsm8k.yaml", "tree-sweep.yaml", "smoke.yaml"):
        assert expected in names
    assert any(p.parent.name == "paper" for p in list_suite_files())


def test_minimal_suite_defaults(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL))
    assert suite.schema == 1 and suite.name == "tiny"
    assert suite.models[0].dtype == "auto" and suite.models[0].chat_template == "tokenizer"
    assert suite.tasks[0].type == "mt_bench" and suite.tasks[0].options["path"] == "mt_bench/question.jsonl"
    assert suite.sampling.temperatures == (0.0,) and suite.seeds == (0,) and suite.repeats == 1
    cells = expand(suite)
    assert [c.method for c in cells] == ["vanilla", "eagle2"]
    # Resolved params: every default filled in.
    assert set(cells[1].method_params) == {"depth", "top_k", "total_tokens", "draft_vocab_size"}


def test_sweep_expansion_order_and_count(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace("  - eagle2\n", """\
  - name: eagle2
    params: {total_tokens: 20}
    sweep: {depth: [2, 3], top_k: [2, 4, 8]}
""") + """\
sampling: {temperatures: [0, 1]}
seeds: [1, 2]
"""))
    cells = expand(suite)
    assert len(cells) == (1 + 2 * 3) * 2 * 2
    eagle = [c for c in cells if c.method == "eagle2"]
    grid = [(c.method_params["depth"], c.method_params["top_k"]) for c in eagle[::4]]
    assert grid == [(2, 2), (2, 4), (2, 8), (3, 2), (3, 4), (3, 8)]  # the sweep order as written
    assert all(c.method_params["total_tokens"] == 20 for c in eagle)
    assert [(c.temperature, c.seed) for c in eagle[:4]] == [(0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)]
    assert len({c.cell_id for c in cells}) == len(cells)


def test_duplicate_method_configurations_are_dropped(tmp_path):
    suite = load_suite(write(tmp_path, MINIMAL.replace("  - eagle2\n", "  - vanilla\n")))
    assert len(expand(suite)) == 1


def test_cell_id_is_stable_and_depends_on_what_changes_outputs(tmp_path):
    text = MINIMAL.replace("  - eagle2\n", "  - name: eagle2\n    params: {depth: 4, top_k: 5, total_tokens: 16}\n")
    a = expand(load_suite(write(tmp_path, text, "a.yaml")))
    b = expand(load_suite(write(tmp_path, text, "b.yaml")))
    assert [c.cell_id for c in a] == [c.cell_id for c in b]
    # A golden id: the hash must not drift between versions, or --resume would redo finished work.
    assert a[0].cell_id == "m.mt_bench.vanilla.T0.s0.ce63d8ea6d"
    assert a[1].cell_id == "m.mt_bench.eagle2.T0.s0.eb13236e2a"
    suite = load_suite(write(tmp_path, text, "c.yaml"))
    same = expand(apply_overrides(suite, limit=3, device="cpu"))  # which questions / where: same cells
    assert [c.cell_id for c in same] == [c.cell_id for c in a]
    longer = expand(apply_overrides(suite, max_new_tokens=7))  # different outputs: different cells
    assert not {c.cell_id for c in longer} & {c.cell_id for c in a}
    hotter = expand(apply_overrides(suite, temperatures=[1.0]))
    assert hotter[0].cell_id.startswith("m.mt_bench.vanilla.T1.s0.")


def test_overrides(tmp_path):
    suite = apply_overrides(load_suite(write(tmp_path, MINIMAL)), limit=2, max_new_tokens=9, temperatures=[0, 0.7], device="cuda:1")
    assert suite.tasks[0].limit == 2 and suite.tasks[0].max_new_tokens == 9
    assert suite.sampling.temperatures == (0.0, 0.7)
    assert suite.models[0].device == "cuda:1"
    with pytest.raises(ValueError, match="--device"):
        apply_overrides(suite, device="gpu")
    with pytest.raises(ValueError, match="--limit"):
        apply_overrides(suite, limit=0)


def test_unknown_keys_suggest_and_list_allowed(tmp_path):
    message = problems(tmp_path, MINIMAL + "modles: []\n")
    assert "line 12: modles: unknown key 'modles'; did you mean 'models'?" in message
    assert "allowed: schema, name" in message


def test_bad_values_name_key_path_and_allowed_values(tmp_path):
    text = MINIMAL.replace("    head: random\n", "    head: random\n    dtype: fp17\n    device: gpu\n    chat_template: vicuna\n")
    message = problems(tmp_path, text)
    assert "line 7: models[0].dtype: must be one of the allowed values, got 'fp17'; did you mean 'fp16'? allowed: auto, float32," in message
    assert "models[0].device: 'gpu' is not a device; allowed: auto, cpu, cuda, cuda:N, mps" in message
    assert "models[0].chat_template: must be one of the allowed values, got 'vicuna'; did you mean 'vicuna_v1.1'? allowed: tokenizer," in message


def test_bad_tasks(tmp_path):
    text = MINIMAL.replace("  - mt_bench\n", "  - mtbench\n  - name: gsm8k\n    limt: 3\n    score: maybe\n  - name: spec\n    type: questions\n")
    message = problems(tmp_path, text)
    assert "tasks[0].name: unknown task type 'mtbench'; did you mean 'mt_bench'?" in message
    assert "tasks[1].limt: unknown key 'limt'; did you mean 'limit'?" in message
    assert "tasks[1].score: must be bool, got 'maybe'" in message
    assert "tasks[2]: task type 'questions' needs key 'path': a question file (question_id, category, turns)" in message


def test_bad_methods(tmp_path):
    text = MINIMAL.replace("  - vanilla\n  - eagle2\n", """\
  - vanila
  - name: eagle2
    params: {depht: 3}
  - name: eagle2
    sweep: {top_k: [0, 2]}
  - name: eagle1
    params: {tree: no_such_tree}
  - name: eagle2
    params: {depth: 2}
    sweep: {depth: [3]}
""")
    message = problems(tmp_path, text)
    assert "methods[0].name: unknown method 'vanila'; did you mean 'vanilla'? available: vanilla, eagle1, eagle2" in message
    assert "methods[1].params.depht: method 'eagle2' has no parameter 'depht'; did you mean 'depth'? allowed: depth, top_k, total_tokens" in message
    assert "methods[2].sweep.top_k[0]: method 'eagle2' parameter 'top_k' must be >= 1, got 0" in message
    assert "methods[3].params.tree" in message and "no_such_tree" in message
    assert "methods[4].sweep.depth: 'depth' is both in params and in sweep" in message


def test_bad_sampling_seeds_and_schema(tmp_path):
    text = MINIMAL.replace("schema: 1", "schema: 2") + "sampling: {temperatures: [-1, 0.5], top_p: 0}\nseeds: 1.5\nrepeats: 0\n"
    message = problems(tmp_path, text)
    assert "schema: this harness reads schema 1, got 2" in message
    assert "sampling.temperatures[0]: must be >= 0.0, got -1" in message
    assert "sampling.top_p: must be in (0, 1], got 0" in message
    assert "seeds: must be int, got 1.5" in message
    assert "repeats: must be >= 1, got 0" in message


def test_speculative_method_needs_a_head(tmp_path):
    message = problems(tmp_path, MINIMAL.replace("    head: random\n", ""))
    assert "models[0].head: model 'm' has no draft head but methods[1] (eagle2) needs one" in message
    message = problems(tmp_path, MINIMAL.replace("  - eagle2\n", "  - eagle3\n"))
    assert "models[0].eagle3_head: model 'm' has no EAGLE-3 head (eagle3_head) but methods[1] (eagle3) needs one" in message
    assert "models[0].head:" not in message  # eagle3 does not need the EAGLE-1/2 head


def test_eagle3_cells_use_the_eagle3_head_and_leave_other_cell_ids_alone(tmp_path):
    from harness.config import expand

    base = load_suite(write(tmp_path, MINIMAL, "a.yaml"))
    with_eagle3 = load_suite(write(tmp_path, MINIMAL.replace("    head: random\n", "    head: random\n    eagle3_head: some/eagle3-head\n").replace(
        "  - eagle2\n", "  - eagle2\n  - name: eagle3\n    params: {depth: 3}\n"), "b.yaml"))
    before = {c.cell_id for c in expand(base)}
    after = expand(with_eagle3)
    assert before <= {c.cell_id for c in after}  # adding an EAGLE-3 head changes no existing cell
    eagle3 = [c for c in after if c.method == "eagle3"]
    assert eagle3 and all(c.head == "some/eagle3-head" for c in eagle3)
    assert all(c.head == "random" for c in after if c.method == "eagle2")


def test_missing_required_duplicates_and_yaml_errors(tmp_path):
    assert "missing required key 'models'" in problems(tmp_path, "schema: 1\nname: x\ntasks: [mt_bench]\nmethods: [vanilla]\n")
    assert "line 3: name: key given twice" in problems(tmp_path, MINIMAL.replace("name: tiny\n", "name: tiny\nname: again\n"))
    assert "not valid YAML" in problems(tmp_path, "schema: 1\nname: [unclosed\n")
    assert "a suite is a mapping" in problems(tmp_path, "- just a list\n")
    twice = MINIMAL.replace("models:\n", "models:\n  - name: m\n    head: random\n")
    assert "models[1].name: 'm' is used by more than one entry of models" in problems(tmp_path, twice)


def test_suite_by_name_and_missing_suite():
    assert load_suite("smoke").name == "smoke"
    with pytest.raises(FileNotFoundError, match="available: .*smoke.yaml"):
        load_suite("no-such-suite")


def test_parse_shard():
    assert parse_shard("2/5") == (2, 5)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_shards_partition_the_cells(tmp_path):
    text = MINIMAL.replace("  - eagle2\n", "  - name: eagle2\n    sweep: {depth: [2, 3, 4], top_k: [2, 3]}\n") + "sampling: {temperatures: [0, 1]}\n"
    cells = expand(load_suite(write(tmp_path, text)))
    for count in (1, 2, 3, 5):
        shards = [shard_cells(cells, index, count) for index in range(1, count + 1)]
        ids = [c.cell_id for shard in shards for c in shard]
        assert sorted(ids) == sorted(c.cell_id for c in cells)  # all, each once
        assert max(map(len, shards)) - min(map(len, shards)) <= 1  # balanced
        assert [c.cell_id for c in shard_cells(cells, 1, count)] == [c.cell_id for c in shards[0]]  # deterministic


def test_to_dict_is_json_ready(tmp_path):
    import json

    suite = load_suite(write(tmp_path, MINIMAL))
    json.dumps(suite.to_dict())
    cell = expand(suite)[1]
    data = cell.to_dict()
    assert data["cell_id"] == cell.cell_id and data["model"] == "m" and data["method"] == "eagle2"
    json.dumps(data)
    assert dataclasses.is_dataclass(cell)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.seed = 3


def test_fallback_head_is_part_of_the_cell(tmp_path, monkeypatch):
    import harness.models

    text = MINIMAL.replace("    head: random\n", "    head: builtin:not-installed-head\n    head_fallback: random\n")
    suite = load_suite(write(tmp_path, text))
    monkeypatch.setattr(harness.models, "builtin_head_available", lambda spec: False)
    vanilla, eagle = expand(suite)
    assert vanilla.head is None and eagle.head == "random"
    monkeypatch.setattr(harness.models, "builtin_head_available", lambda spec: True)
    vanilla_later, eagle_later = expand(suite)  # once the head is installed: new cells, vanilla's unchanged
    assert eagle_later.head == "builtin:not-installed-head" and eagle_later.cell_id != eagle.cell_id
    assert vanilla_later.cell_id == vanilla.cell_id
    other = load_suite(write(tmp_path, MINIMAL.replace("    head: random\n", "    head: some/other-head\n"), "other.yaml"))
    assert expand(other)[0].cell_id == vanilla.cell_id  # vanilla does not depend on the head


# ---------------------------------------------------------------- hostile and out-of-range inputs

ALIAS_BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_refused_quickly_under_a_memory_limit(tmp_path: Path) -> None:
    import subprocess
    import sys

    bomb = write(tmp_path, ALIAS_BOMB, "bomb.yaml")
    # In a child capped at 1 GiB of address space for the YAML work (set after the imports):
    # expanding the bomb would need tens of GB, so only a refusal before expansion finishes in time.
    script = textwrap.dedent(
        f"""
        import resource, sys
        import harness.config as config
        import yaml, eagle2.methods, harness.tasks
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30 if hard == resource.RLIM_INFINITY else min(hard, 1 << 30), hard))
        try:
            config.load_suite({str(bomb)!r})
        except config.SuiteError as error:
            print("REFUSED", error)
            sys.exit(0)
        sys.exit(3)
        """
    )
    import time

    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and str(bomb) in done.stdout and "aliases" in done.stdout
    assert time.perf_counter() - started < 60


def test_a_few_aliases_are_still_fine(tmp_path: Path) -> None:
    text = MINIMAL.replace("    head: random\n", "    head: &h random\n") + "x-unused: null\n"
    text = text.replace("x-unused: null\n", "")
    suite = load_suite(write(tmp_path, text.replace("  - vanilla\n", "  - vanilla\n  - {name: eagle2, params: &p {depth: 2}}\n  - {name: eagle1}\n")))
    assert suite.models[0].head == "random"


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="recursive"):
        load_suite(write(tmp_path, "a: &a [1, *a]\n"))


def test_suite_files_over_the_size_limit_are_refused_naming_the_file(tmp_path: Path) -> None:
    from harness.config import MAX_SUITE_BYTES

    path = write(tmp_path, MINIMAL + "description: " + "x" * MAX_SUITE_BYTES + "\n", "big.yaml")
    with pytest.raises(SuiteError, match=r"(?s)big\.yaml.*at most 1,048,576"):
        load_suite(path)


def test_a_non_utf8_suite_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.replace("name: tiny", "name: tiny\ndescription: caf\xe9").encode("latin-1"))
    with pytest.raises(SuiteError, match=r"(?s)latin1\.yaml.*line 3: not UTF-8"):
        load_suite(path)


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "-0.5"])
def test_temperatures_must_be_finite_and_not_negative(tmp_path: Path, value: str) -> None:
    with pytest.raises(SuiteError, match=r"sampling\.temperatures\[1\]: must be"):
        load_suite(write(tmp_path, MINIMAL + f"sampling: {{temperatures: [0, {value}]}}\n"))


def test_top_p_nan_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match=r"sampling\.top_p: must be a finite number"):
        load_suite(write(tmp_path, MINIMAL + "sampling: {top_p: .nan}\n"))


def test_cli_overrides_refuse_infinite_temperatures_and_oversized_max_new_tokens(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, MINIMAL))
    with pytest.raises(ValueError, match="finite"):
        apply_overrides(suite, temperatures=[float("inf")])
    with pytest.raises(ValueError, match=r"--max-new-tokens: max_new_tokens 4096 does not fit in the context of model 'm': 4096"):
        apply_overrides(suite, max_new_tokens=4096)
    assert apply_overrides(suite, max_new_tokens=4095).tasks[0].max_new_tokens == 4095


def test_max_new_tokens_must_fit_the_model_context(tmp_path: Path) -> None:
    text = MINIMAL.replace("  - mt_bench\n", "  - {name: mt_bench, max_new_tokens: 100000}\n")
    with pytest.raises(SuiteError, match=r"tasks\[0\]\.max_new_tokens: max_new_tokens 100000 does not fit in the context of model 'm': 4096 tokens"):
        load_suite(write(tmp_path, text))
    huge = MINIMAL.replace("  - mt_bench\n", "  - {name: mt_bench, max_new_tokens: 100000000}\n")
    with pytest.raises(SuiteError, match=r"max_new_tokens: must be in \[1, 131072\], got 100000000"):
        load_suite(write(tmp_path, huge))


def test_a_local_model_folder_gives_its_context_from_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"max_position_embeddings": 64}')
    text = MINIMAL.replace("source: tiny-random-llama", f"source: {folder}").replace("  - mt_bench\n", "  - {name: mt_bench, max_new_tokens: 64}\n")
    with pytest.raises(SuiteError, match=r"64 tokens \(max_position_embeddings, .*config\.json\)"):
        load_suite(write(tmp_path, text))


def test_the_tiny_models_context_constant_matches_the_model() -> None:
    from harness.config import BUILTIN_CONTEXTS
    from harness.models import tiny_random_model

    assert tiny_random_model().target.max_context == BUILTIN_CONTEXTS["tiny-random-llama"]


def test_head_paths_must_exist_and_hold_a_valid_config(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-head"
    with pytest.raises(SuiteError, match=r"models\[0\]\.head: head '.*no-such-head': no such folder.*allowed: random, builtin:NAME") as raised:
        load_suite(write(tmp_path, MINIMAL.replace("head: random", f"head: {missing}")))
    assert raised.value.missing_heads == (str(missing),) and raised.value.only_missing_heads
    # The same missing folder for two models: two problems, one folder, still only that.
    two = MINIMAL.replace("head: random", f"head: {missing}")
    two = two.replace("models:\n", f"models:\n  - {{name: other, head: {missing}}}\n", 1)
    with pytest.raises(SuiteError) as raised:
        load_suite(write(tmp_path, two))
    assert len(raised.value.problems) == 2 and raised.value.missing_heads == (str(missing),) and raised.value.only_missing_heads
    broken = tmp_path / "broken-head"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SuiteError, match=r"config\.json is not valid JSON") as raised:
        load_suite(write(tmp_path, MINIMAL.replace("head: random", f"head: {broken}")))
    assert raised.value.missing_heads == () and not raised.value.only_missing_heads  # there, but broken: not "to be trained"
    # A hub id is not checked offline; it is downloaded (and checked) at run time.
    assert load_suite(write(tmp_path, MINIMAL.replace("head: random", "head: yuhuili/EAGLE-LLaMA3-Instruct-8B"))).models[0].head


@pytest.mark.slow
def test_the_embedded_models_context_constant_matches_its_config() -> None:
    import json

    from harness.config import BUILTIN_CONTEXTS
    from harness.models import dequantized_gguf_folder, embedded_gguf_path

    folder, _ = dequantized_gguf_folder(embedded_gguf_path())
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == BUILTIN_CONTEXTS["embedded"]


def test_compile_setting_is_validated(tmp_path):
    from harness.config import load_suite

    text = """
schema: 1
name: s
models:
  - {name: m, source: tiny-random-llama, compile: sometimes}
tasks: [{name: mt_bench, limit: 1}]
methods: [vanilla]
"""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(Exception, match="compile.*allowed: auto, true, false"):
        load_suite(path)
    path.write_text(text.replace("sometimes", "true"))
    assert load_suite(path).models[0].compile is True


def test_model_methods_restrict_its_cells(tmp_path):
    from harness.config import expand, load_suite

    text = """
schema: 1
name: s
models:
  - {name: fast, source: tiny-random-llama, dtype: bfloat16, head: random}
  - {name: exact, source: tiny-random-llama, dtype: float32, methods: [vanilla]}
tasks: [{name: mt_bench, limit: 1}]
methods: [vanilla, {name: eagle2, params: {depth: 2, top_k: 2, total_tokens: 4}}]
"""
    path = tmp_path / "s.yaml"
    path.write_text(text)
    cells = expand(load_suite(path))
    assert sorted((c.model.name, c.method) for c in cells) == [("exact", "vanilla"), ("fast", "eagle2"), ("fast", "vanilla")]
    path.write_text(text.replace("methods: [vanilla]}", "methods: [vanila]}"))
    with pytest.raises(Exception, match="unknown method 'vanila'; did you mean 'vanilla'"):
        load_suite(path)
