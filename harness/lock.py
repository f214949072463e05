"""An exclusive lock on a run folder, held for a whole `run` (or `--resume`).

The lock is an ``flock`` on ``<folder>/.lock``; the file also holds who took it (pid, host, start
time, command) so that a refused run can name the holder. The kernel drops an ``flock`` when its
process dies, so a lock file left by a killed run is *stale*: the next run finds it unlocked, says
whose it was, and takes it over. A lock file whose lock is held names a live holder: refused.

Not for network file systems whose ``flock`` is local to one client (some NFS set-ups): there two
machines could both take the lock; give each machine its own ``--out`` (``--shard`` does that).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

from harness.results import LOCK_FILE, OutputFolderError

logger = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started_at', '?')}, "
        f"command: {holder.get('command', '?')}"
    )


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(folder): ...`` holds the folder's lock, or raises RunLockedError naming the holder."""

    def __init__(self, folder: Path, command: str | None = None) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the stale holder this lock replaced, if any

    def acquire(self) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputFolderError(error.errno, f"cannot create the lock file {self.path}: {error.strerror}") from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunLockedError(
                    f"{self.folder} is in use by another run ({_describe(holder)}); wait for it to finish, stop it, "
                    "or use another --out"
                ) from None
            # The previous holder may have removed the file between our open and our lock: retry on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            self.took_over = previous
            alive = previous.get("host") == platform.node() and _pid_alive(previous.get("pid"))
            logger.warning(
                "%s: taking over a stale lock (%s; %s)", self.path, _describe(previous),
                "that process no longer holds it" if alive else "that process is gone",
            )
        holder = {
            "pid": os.getpid(),
            "host": platform.node(),
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
        }
        data = (json.dumps(holder) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as error:
            os.close(fd)
            raise OutputFolderError(error.errno, f"cannot write the lock file {self.path}: {error.strerror}") from error
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiting opener re-checks the inode
        except OSError:
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        holder = json.loads(text) if text else {}
    except (OSError, json.JSONDecodeError):
        return {"pid": "?", "command": "(unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}
