"""Backends of `harness run` on a tiny random Llama: the in-process runner, worker processes, Ray
(a local instance with 2 CPUs) and SLURM through submitit's local executor give the same records and
outputs with no duplicates; a killed worker is replaced and its unit retried; a killed driver is
resumed without loss or duplicates; a unit that always fails lands in failures.jsonl after its
retries while the rest finish; bad backend options are rejected with a clear error."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO_ROOT, tiny_suite_text

from harness import backends
from harness.__main__ import main
from harness.backends import BackendError, BackendOptions, UnitQueue, make_backend, plan_units, validate
from harness.config import apply_overrides, expand, load_suite
from harness.runner import RunOptions, run_suite
from harness.tasks import DataSource


SUITE = tiny_suite_text("tiny-backends")
RECORDS = 6 * 2 * 2  # cells x questions x turns
# Longer runs for the kill tests, so that a kill lands while units are in flight.
LONG = SUITE.replace("limit: 2", "limit: 4").replace("max_new_tokens: 4", "max_new_tokens: 24").replace("[0, 1]", "[0]")


def make_suite(folder: Path, text: str = SUITE):
    path = folder / "suite.yaml"
    path.write_text(textwrap.dedent(text))
    return load_suite(path)


def options(out: Path, backend: BackendOptions | None = None, **kw) -> RunOptions:
    made = make_backend(backend) if backend is not None else None
    return RunOptions(out_dir=out, data=DataSource(data_dir=DATA_DIR, allow_download=False), progress=False,
                      overrides={"threads": 1}, backend=made, **kw)


def rows(folder: Path, name: str = "results.jsonl") -> list[dict]:
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def outputs(folder: Path) -> dict[tuple, list[int]]:
    records = rows(folder)
    keyed = {(r["cell_id"], r["question_id"], r["repeat"], r["turn"]): r["output_ids"] for r in records}
    assert len(keyed) == len(records), "duplicate records"
    return keyed


def assert_greedy_lossless(folder: Path) -> None:
    by: dict[tuple, dict[str, list[int]]] = {}
    for r in rows(folder):
        if r["temperature"] == 0 and r["turn"] == 1:
            by.setdefault(r["question_id"], {})[r["method"]] = r["output_ids"]
    assert by and all(len({tuple(v) for v in methods.values()}) == 1 for methods in by.values())


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return make_suite(tmp_path_factory.mktemp("suite"))


@pytest.fixture(scope="module")
def reference(suite, tmp_path_factory):
    """The in-process run (the default backend) every other backend must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "out"
    summary = run_suite(suite, options(out))
    assert summary.status == "complete" and summary.written == RECORDS
    return outputs(out)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------------
# Option checks (nothing starts).


@pytest.mark.parametrize(
    "backend_options, message",
    [
        (BackendOptions(backend="spark"), r"unknown backend 'spark'; valid: local, ray, slurm"),
        (BackendOptions(gpus=(0, 1)), r"--gpus 0,1: no CUDA GPU is visible"),
        (BackendOptions(backend="ray", gpus=(0,)), r"--gpus do\(es\) not apply to --backend ray"),
        (BackendOptions(backend="ray", ray_address="not an address"), r"bad --ray-address 'not an address': expected auto, HOST:PORT"),
        (BackendOptions(backend="ray", ray_address="auto", ray_num_cpus=2), r"--ray-num-cpus sizes a local Ray instance"),
        (BackendOptions(ray_address="auto"), r"--ray-address do\(es\) not apply to --backend local"),
        (BackendOptions(slurm_partition="gpu"), r"--slurm-partition do\(es\) not apply to --backend local"),
        (BackendOptions(backend="slurm", slurm_cluster="local", slurm_time="ten"), r"--slurm-time 'ten': expected minutes"),
        (BackendOptions(backend="slurm", slurm_cluster="pbs"), r"--slurm-cluster 'pbs'; valid: slurm, local, debug"),
        (BackendOptions(backend="slurm", slurm_cluster="local", workers=2), r"--workers do\(es\) not apply to --backend slurm"),
        (BackendOptions(retries=-1), r"--retries -1: must be >= 0"),
        (BackendOptions(workers=0), r"--workers 0: must be >= 1"),
    ],
)
def test_bad_backend_options_are_rejected(backend_options, message):
    with pytest.raises(BackendError, match=message):
        validate(backend_options, gpu_count=0)


def test_gpu_indices_are_checked_against_the_machine(suite):
    with pytest.raises(BackendError, match=r"--gpus 0,2: this machine has 2 GPU\(s\): valid indices 0..1"):
        validate(BackendOptions(gpus=(0, 2)), gpu_count=2)
    with pytest.raises(BackendError, match=r"model\(s\) tiny have device: cpu; use --workers N"):
        validate(BackendOptions(gpus=(0, 1)), suite, gpu_count=2)
    validate(BackendOptions(gpus=(0, 1)), gpu_count=2)  # fine on a 2-GPU machine
    pinned = load_suite_text(Path(suite.path).parent, SUITE.replace("device: cpu", "device: cuda:1"))
    with pytest.raises(BackendError, match=r"tiny \(cuda:1\) name a GPU, but each worker sees only its own"):
        validate(BackendOptions(gpus=(0, 1)), pinned, gpu_count=2)
    validate(BackendOptions(gpus=(0, 1)), load_suite_text(Path(suite.path).parent, SUITE.replace("device: cpu", "device: cuda")), gpu_count=2)


def load_suite_text(folder: Path, text: str):
    path = folder / "other.yaml"
    path.write_text(text)
    return load_suite(path)


def test_a_missing_backend_package_names_the_extra():
    with pytest.raises(BackendError, match=r"pip install 'eagle2-bench\[ray\]'"):
        backends.require("ray", {"ray": ("no_such_module_eagle2", "ray")})
    backends.require("ray")  # installed here (the CI installs the extra)


def test_slurm_time_formats():
    assert [backends.slurm_minutes(t) for t in ("90", "1:30", "01:30:00", "01:30:01", "2-00:00")] == [90, 90, 90, 91, 2880]


def test_an_interleaved_suite_runs_in_process_but_not_on_workers(suite, capsys):
    """schedule: interleaved times every entry in one process: the in-process default takes it,
    any worker backend refuses it before anything starts."""
    interleaved = load_suite_text(Path(suite.path).parent, SUITE + "schedule: interleaved\n")
    validate(BackendOptions(), interleaved)
    assert main(["validate", interleaved.path]) == 0
    for flags in (["--workers", "2"], ["--backend", "ray"]):
        assert main(["validate", interleaved.path, *flags]) == 2
        assert "schedule: interleaved times every model entry side by side in one process" in capsys.readouterr().err


def test_the_cli_rejects_bad_backend_options(suite, capsys):
    assert main(["validate", suite.path, "--backend", "spark"]) == 2
    assert "unknown backend 'spark'; valid: local, ray, slurm" in capsys.readouterr().err
    assert main(["validate", suite.path, "--backend", "ray", "--ray-address", "nowhere"]) == 2
    assert "bad --ray-address 'nowhere'" in capsys.readouterr().err
    if backends.visible_gpu_count() == 0:
        assert main(["run", suite.path, "--gpus", "0", "--out", str(Path(suite.path).parent / "never")]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err
        assert not (Path(suite.path).parent / "never").exists()
    assert main(["validate", suite.path, "--backend", "ray", "--ray-address", "auto"]) == 0
    if importlib.util.find_spec("ray") is not None:  # well formed, but no Ray there: a clear error in seconds
        out = Path(suite.path).parent / "unreachable"
        assert main(["run", suite.path, "--backend", "ray", "--ray-address", "127.0.0.1:1", "--out", str(out), "--data-dir", str(DATA_DIR)]) == 2
        assert "--ray-address 127.0.0.1:1: nothing answers there" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Units.


def test_units_cover_the_work_once_and_carry_finished_turns(suite, reference):
    cells = expand(suite)
    questions = {"mt_bench": load_questions(suite)}
    units = plan_units(cells, questions, {}, chunk=1)
    assert len(units) == len(cells) * 2 and len({u.unit_id for u in units}) == len(units)
    assert [u.cell.cell_id for u in units[: len(cells)]] == [c.cell_id for c in cells]  # methods interleaved per question
    whole = plan_units(cells, questions, {}, chunk=0)
    assert len(whole) == len(cells) and all(len(u.questions) == 2 for u in whole)
    cell, question = cells[0], questions["mt_bench"][0]
    done = {(cell.cell_id, question.question_id, 0, 1): {"output_text": "first answer"}}
    resumed = plan_units(cells, questions, done, chunk=1)
    assert len(resumed) == len(units)  # turn 2 is still to do
    assert resumed[0].done == {(question.question_id, 0, 1): "first answer"}
    done[(cell.cell_id, question.question_id, 0, 2)] = {"output_text": "second"}
    assert len(plan_units(cells, questions, done, chunk=1)) == len(units) - 1


def test_unit_queue_retries_then_gives_up(suite):
    units = plan_units(expand(suite)[:1], {"mt_bench": load_questions(suite)}, {}, chunk=0)
    queue = UnitQueue(units, retries=2)
    first = queue.take()
    queue.delivered_row(first, {"question_id": "81", "repeat": 0, "turn": 1, "output_text": "kept"})
    assert queue.failed(first) is False
    second = queue.take()
    assert second.done == {("81", 0, 1): "kept"}  # the retry skips what was delivered
    assert queue.failed(second) is False
    third = queue.take()
    assert queue.failed(third) is True and not queue


def load_questions(suite):
    from harness.tasks import get_task, select_questions

    task = suite.tasks[0]
    questions, _ = get_task(task.type).load(task.options, DataSource(data_dir=DATA_DIR, allow_download=False))
    return select_questions(questions, task.limit, task.select)


# ----------------------------------------------------------------------------------------------
# Same records on every backend.


def check_run(out: Path, reference: dict, cells_subset: bool = False) -> None:
    got = outputs(out)
    expected = {k: v for k, v in reference.items() if k in got} if cells_subset else reference
    assert got == expected  # the same (cell, question, turn) records with identical outputs (sampled ones too)
    assert_greedy_lossless(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["hardware"]["devices"] == {"tiny": "cpu"}
    assert manifest["hardware"]["read_bandwidth_bytes_per_s"]["cpu"] > 0  # measured by a worker, as in-process
    for record in rows(out):  # workers stamp what the driver bound the run to, as the in-process runner does
        assert record["data_sha256"] == manifest["data"]["mt_bench"]["sha256"]
        assert record["weights_sha256"] == manifest["bindings"]["tiny"]["weights_sha256"]
    assert manifest["workers"] and all(w["harness_code"] == str(REPO_ROOT) for w in manifest["workers"].values())
    assert not rows(out, "failures.jsonl")


def test_worker_processes_match_the_in_process_run(suite, reference, tmp_path):
    out = tmp_path / "out"
    summary = run_suite(suite, options(out, BackendOptions(workers=2)))
    assert summary.status == "complete" and summary.written == RECORDS and summary.failures == 0
    check_run(out, reference)
    manifest = json.loads((out / "manifest.json").read_text())
    # Both processes are launched, but on a loaded machine the first can finish every unit before the
    # second reports in; the manifest lists the workers that did report, never others.
    assert manifest["backend"]["workers"] == 2 and set(manifest["workers"]) <= {"cpu0", "cpu1"}
    started = time.monotonic()
    again = run_suite(suite, options(out, BackendOptions(workers=2), resume=True))  # nothing left: no worker starts
    assert again.status == "complete" and again.written == 0 and again.skipped == RECORDS and time.monotonic() - started < 30
    assert outputs(out) == reference


def test_ray_matches_the_in_process_run(suite, reference, tmp_path, ray_cluster):
    out = tmp_path / "out"
    summary = run_suite(suite, options(out, BackendOptions(backend="ray")))
    assert summary.status == "complete" and summary.written == RECORDS
    check_run(out, reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["backend"] == "ray" and set(manifest["workers"]) == {"tiny/0", "tiny/1"}


def test_slurm_local_executor_matches_the_in_process_run(suite, reference, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "out"
    greedy = apply_overrides(suite, temperatures=[0])  # 3 cells: one array task each, 2 at a time
    summary = run_suite(greedy, options(out, BackendOptions(backend="slurm", slurm_cluster="local", slurm_parallelism=2)))
    assert summary.status == "complete" and summary.written == RECORDS // 2
    check_run(out, reference, cells_subset=True)
    assert len(outputs(out)) == RECORDS // 2 and (out / "slurm").is_dir()


# ----------------------------------------------------------------------------------------------
# Faults.


def run_in_thread(suite, run_options):
    result: dict = {}

    def target():
        try:
            result["summary"] = run_suite(suite, run_options)
        except BaseException as error:  # surfaced by the test below
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_a_killed_worker_is_replaced_and_its_unit_retried(backend, tmp_path, request):
    long_suite = make_suite(tmp_path, LONG)
    expected = outputs_of_in_process(long_suite, tmp_path / "reference")
    if backend == "ray":
        request.getfixturevalue("ray_cluster")
        chosen = BackendOptions(backend="ray", retries=2)
    else:
        chosen = BackendOptions(workers=2, retries=2)
    out = tmp_path / "out"
    thread, result = run_in_thread(long_suite, options(out, chosen))
    manifest_path = out / "manifest.json"

    def started() -> bool:
        return (out / "results.jsonl").is_file() and len(rows(out)) >= 2 and bool(json.loads(manifest_path.read_text()).get("workers"))

    wait_for(started, 240, "the first records")
    victim = sorted(json.loads(manifest_path.read_text())["workers"].items())[0][1]["pid"]
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    summary = result["summary"]
    manifest = json.loads(manifest_path.read_text())
    assert summary.status == "complete" and summary.failures == 0 and not rows(out, "failures.jsonl")
    assert outputs(out) == expected  # nothing lost, nothing twice
    assert manifest["sessions"][-1]["unit_retries"] >= 1  # the killed worker's unit ran again


def outputs_of_in_process(suite, out: Path) -> dict:
    assert run_suite(suite, options(out)).status == "complete"
    return outputs(out)


def test_a_unit_that_always_fails_ends_in_failures_after_its_retries(tmp_path, ray_cluster):
    text = SUITE.replace("models:\n", "models:\n  - name: broken\n    source: /nonexistent/model-folder\n    device: cpu\n    head: random\n")
    text = text.replace("[0, 1]", "[0]").replace("  - name: eagle1\n    params: {tree: small_12}\n", "")
    suite = make_suite(tmp_path, text)
    out = tmp_path / "out"
    summary = run_suite(suite, options(out, BackendOptions(backend="ray", retries=1, chunk=0)))
    failures = rows(out, "failures.jsonl")
    assert summary.status == "complete" and summary.failures == len(failures) == 2  # broken x (vanilla, eagle2)
    assert {f["model"] for f in failures} == {"broken"} and all(f["error_type"] != "RemoteError" for f in failures)
    assert "nonexistent" in failures[0]["error"]
    assert json.loads((out / "manifest.json").read_text())["sessions"][-1]["unit_retries"] == 2  # one retry each
    records = rows(out)
    assert len(records) == 2 * 2 * 2 and {r["model"] for r in records} == {"tiny"}  # the rest finished


def test_a_killed_driver_resumes_without_loss_or_duplicates(tmp_path):
    pytest.importorskip("ray")
    long_suite = make_suite(tmp_path, LONG)
    expected = outputs_of_in_process(long_suite, tmp_path / "reference")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "EAGLE2_DATA_DIR": str(DATA_DIR)}
    command = [sys.executable, "-m", "harness", "-q", "run", long_suite.path, "--out", str(out), "--threads", "1", "--no-progress"]
    driver = subprocess.Popen(command + ["--backend", "ray", "--ray-num-cpus", "2"], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (out / "results.jsonl").is_file() and len(rows(out)) >= 4, 240, "the first records")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started (its local Ray instance)
        driver.wait(timeout=60)
    before = outputs(out)
    assert 4 <= len(before) < len(expected)
    assert json.loads((out / "manifest.json").read_text())["status"] == "running"  # killed: never finalised
    resumed = subprocess.run(command + ["--resume", "--workers", "2"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert outputs(out) == expected  # every record once, the ones from before the kill included
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and [s["backend"]["backend"] for s in manifest["sessions"]] == ["ray", "local"]
