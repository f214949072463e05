"""Small file helpers shared by the training stages: atomic writes and stage manifests.

Every stage output is written to a temporary name in the same folder and renamed into place, so a
stage killed half-way leaves either the old file or the new one, never a torn file; a stage that
finds its output present (with a matching manifest) skips the work.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)


def atomic_torch_save(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(value, temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_manifest(path: Path, config: dict, stage: str, *, outputs: Iterable[Path]) -> None:
    """Record the stage's resolved config; once the stage has any of `outputs`, refuse a different
    one on resume (names the keys). Before that a new config replaces the old, so a run that stopped
    at an input error (an overlapping prompt, a missing file, out of memory before the first shard)
    can be rerun with the flags the error suggested."""
    if path.is_file() and any(output.exists() for output in outputs):
        previous = json.loads(path.read_text())
        current = json.loads(json.dumps(config, sort_keys=True))  # as stored: tuples become lists
        if previous != current:
            changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
            raise ValueError(
                f"{path}: the {stage} stage was started with a different configuration (changed: {', '.join(changed)}); "
                f"resume with the same settings or use a new output folder"
            )
        return
    atomic_write_json(path, config)
