"""Small file helpers shared by the data and model loaders."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CONFIG_NAMES = ("config.json",)


def folder_fingerprint(folder: Path) -> str | None:
    """sha256 over (relative name, sha256) of a model or head folder's weight files and config.json.

    Hidden files and folders (e.g. `.cache/`) and other files (READMEs, evaluation reports) do not
    count. A Hugging Face cache snapshot links each file to `blobs/<sha256>` (large files) or
    `blobs/<git sha1>`; that name is taken as the file's digest instead of reading gigabytes again.
    None when the folder has no such file.
    """
    folder = Path(folder)
    lines = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if not (path.name.endswith(WEIGHT_SUFFIXES) or path.name in CONFIG_NAMES):
            continue
        target = path.resolve()
        digest = target.name if path.is_symlink() and target.parent.name == "blobs" and len(target.name) in (40, 64) else sha256_of(path)
        lines.append(f"{relative.as_posix()}\t{digest}\n")
    if not lines:
        return None
    return hashlib.sha256("".join(lines).encode()).hexdigest()
