"""File helpers of the training stages: atomic tensor files and stage manifests.

Every stage output is written atomically (eagle2.file_io: a staging file renamed into place), so a
stage killed half-way leaves either the old file or the new one, never a torn file; a stage that
finds its output present (with a matching manifest) skips the work.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from eagle2.file_io import replacing, write_bytes_atomic, write_json_atomic


def atomic_save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, data)


def atomic_torch_save(path: Path, value: Any) -> None:
    with replacing(path) as staging:
        torch.save(value, staging)


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
    write_json_atomic(path, config, sort_keys=True)
