"""The one JSON-lines reader/appender and the one atomic writer, for the engine's training stages and the harness.

The damaged-line rule (every reader and writer here agrees on it):

- A line that is not a JSON object, anywhere in the file, is skipped with a warning that names the
  file and the line number; everything else is still read. A crash can tear only the last line
  (no newline at the end), but a disk or an editor can damage any line.
- A writer that resumes a file first *repairs* it: the damaged lines are moved, verbatim, to
  ``<name>.damaged`` beside it (nothing is thrown away) and the file is rewritten atomically
  without them, so the records they held count as missing and are generated again, once.

Files that are inputs rather than outputs (a question file someone gave us) are parsed the same way
but a damaged line is refused, named by file and line (`read_jsonl_input`): skipping it would
silently change what is measured.

Atomic writes go to a staging file beside the target, are fsync'ed and renamed over it, so a writer
killed half-way leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class OutputFolderError(OSError):
    """A file or folder cannot be written (read-only, full disk, not a folder): bad input, not a bug."""


@dataclass(frozen=True)
class DamagedLine:
    number: int  # 1-based line number in the file as it was read
    text: bytes  # the line as found, without its newline
    reason: str


@dataclass(frozen=True)
class JsonlContents:
    rows: list[dict[str, Any]]
    damaged: list[DamagedLine]
    torn_tail: bool = False  # the file does not end with a newline


def parse_jsonl(path: Path, *, warn: bool = True) -> JsonlContents:
    """Every JSON object of a JSONL file, and the damaged lines (each logged as a warning when `warn`).

    A missing file is a FileNotFoundError (an append-only log that may not exist yet: `JsonlLog.read`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file")
    rows: list[dict[str, Any]] = []
    damaged: list[DamagedLine] = []
    lines = path.read_bytes().split(b"\n")
    torn_tail = lines[-1] != b""  # the last line has no newline: a write was cut short
    if not torn_tail:
        lines = lines[:-1]
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        reason = ""
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            reason = f"not UTF-8 text (byte {raw[error.start]:#04x} at column {error.start + 1})"
        except json.JSONDecodeError as error:
            reason = f"not valid JSON ({error.msg} at column {error.colno})"
        else:
            if isinstance(row, dict):
                rows.append(row)
                continue
            reason = f"each line must be a JSON object, got {type(row).__name__}"
        if torn_tail and number == len(lines):
            reason += "; the last line, without a newline: a write cut short"
        if warn:
            logger.warning("%s:%d: skipping a damaged line (%s)", path, number, reason)
        damaged.append(DamagedLine(number, raw, reason))
    return JsonlContents(rows, damaged, torn_tail)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file; damaged lines are skipped with a warning naming file and line."""
    return parse_jsonl(path).rows


def read_jsonl_input(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file someone gave us (a question file): a damaged line is a
    ValueError naming the file and line, since skipping it would silently change the input."""
    contents = parse_jsonl(path, warn=False)
    if contents.damaged:
        first = contents.damaged[0]
        raise ValueError(f"{path}:{first.number}: {first.reason}; every line must be one JSON object, in UTF-8")
    return contents.rows


class JsonlLog:
    """An append-only JSON-lines file: every line is flushed and fsync'ed when written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def damaged_path(self) -> Path:
        return self.path.with_name(self.path.name + ".damaged")

    def read(self, *, repair: bool = True) -> list[dict[str, Any]]:
        """The file's objects; with ``repair``, damaged lines move to ``<name>.damaged`` (see the module doc)."""
        if not self.path.is_file():  # not written yet (or a device: nothing to read back)
            return []
        contents = parse_jsonl(self.path)
        if repair and (contents.damaged or contents.torn_tail):
            if contents.damaged:
                with _writing(self.damaged_path):
                    with open(self.damaged_path, "ab") as handle:
                        for line in contents.damaged:
                            handle.write(line.text + b"\n")
                        handle.flush()
                        os.fsync(handle.fileno())
            bad = {line.number for line in contents.damaged}
            kept = [raw for number, raw in enumerate(self.path.read_bytes().split(b"\n"), start=1) if raw.strip() and number not in bad]
            write_bytes_atomic(self.path, b"".join(raw + b"\n" for raw in kept))
            if contents.damaged:
                logger.warning(
                    "%s: moved %d damaged line(s) (line %s) to %s; their records count as missing and are generated again",
                    self.path, len(contents.damaged), ", ".join(str(d.number) for d in contents.damaged), self.damaged_path,
                )
        return contents.rows

    def append(self, row: Mapping[str, Any]) -> None:
        with _writing(self.path):
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(jsonl_line(row))
                handle.flush()
                os.fsync(handle.fileno())


def read_json_rows(path: Path) -> list[Any]:
    """The items of a JSON array file, or the rows of a JSONL input file (a damaged line is an error naming it)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not a valid JSON array ({error})") from None
    return read_jsonl_input(path)


def jsonl_line(row: Mapping[str, Any]) -> str:
    """One compact JSON line (with its newline); text stays readable UTF-8 unless it cannot be encoded."""
    line = json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in decoded text: escape everything instead
        line = json.dumps(row, ensure_ascii=True, separators=(",", ":")) + "\n"
    return line


class _writing:
    """Turns an OSError while writing `path` into an OutputFolderError that names the path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> bool:
        if isinstance(error, OSError) and not isinstance(error, OutputFolderError):
            raise OutputFolderError(
                error.errno, f"cannot write {self.path}: {error.strerror or error} (is the folder read-only, its disk full, or a file in the way?)"
            ) from error
        return False


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A staging path beside `path` for the block to write; renamed over `path` when the block ends
    without an error, removed when it raises.

    The block must flush and fsync what it writes (or the library it calls must); errors it raises
    pass through as they are, only this function's own file operations name `path` when they fail."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(handle)
    try:
        yield Path(staging)
        with _writing(path):
            os.chmod(staging, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
            os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with replacing(path) as staging, _writing(Path(path)):
        with open(staging, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: Any, *, sort_keys: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(jsonl_line(row) for row in rows))


def make_folder(path: Path) -> None:
    """`mkdir -p` that names the folder when it cannot be made."""
    with _writing(Path(path)):
        Path(path).mkdir(parents=True, exist_ok=True)
