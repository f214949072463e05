"""The memory floor of a decoding step: weight bytes read per token ÷ the machine's measured read bandwidth.

At batch size 1 a single-token forward must read every weight once (the input embedding only one row
of it, unless it is tied to the output projection, which reads all of it), so no engine decodes a
token faster than weight_bytes / bandwidth. A report states vanilla's ms/token against that floor to
show how close to the hardware the baseline is.
"""

from __future__ import annotations

import time

import torch
from torch import nn

PROBE_BYTES = 512 * 1024 * 1024  # larger than any last-level cache, small enough for every CI machine
PROBE_REPEATS = 5


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights a single-token forward reads: every distinct parameter and buffer-free weight,
    minus the input embedding table when it is not also the output projection (only one row is read)."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    outputs = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding_weight = getattr(embeddings, "weight", None)
    tied = outputs is not None and embedding_weight is not None and outputs.weight.data_ptr() == embedding_weight.data_ptr()
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if parameter.data_ptr() in seen:
            continue
        seen.add(parameter.data_ptr())
        if embedding_weight is not None and parameter.data_ptr() == embedding_weight.data_ptr() and not tied:
            total += parameter.shape[-1] * parameter.element_size()
            continue
        total += parameter.numel() * parameter.element_size()
    return total


def measure_read_bandwidth(device: str | torch.device = "cpu", size_bytes: int = PROBE_BYTES, repeats: int = PROBE_REPEATS) -> float:
    """Bytes per second of a streaming read (a sum over a buffer much larger than the caches): the best of
    `repeats`, with the torch threads the process uses. On a GPU the timing is synchronised."""
    device = torch.device(device)
    data = torch.ones(size_bytes // 4, dtype=torch.float32, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass faults the pages in
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        data.sum()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    del data
    return size_bytes / best


def memory_floor_ms(weight_bytes: int, bandwidth_bytes_per_s: float) -> float:
    """The least time, in ms, a single-token step can take when it must read `weight_bytes`."""
    return 1000.0 * weight_bytes / bandwidth_bytes_per_s
