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


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json")


def folder_fingerprint(folder: Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> str | None:
    """sha256 over (relative name, sha256) of the files in `folder` with one of `suffixes`.

    A Hugging Face cache snapshot links each file to `blobs/<sha256>` (large files) or `blobs/<git
    sha1>`; that name is taken as the file's digest instead of reading gigabytes again. None when
    the folder has no such file.
    """
    folder = Path(folder)
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffixes) and not p.name.startswith(".")):
        target = path.resolve()
        digest = target.name if path.is_symlink() and target.parent.name == "blobs" and len(target.name) in (40, 64) else sha256_of(path)
        lines.append(f"{path.relative_to(folder).as_posix()}\t{digest}\n")
    if not lines:
        return None
    return hashlib.sha256("".join(lines).encode()).hexdigest()
