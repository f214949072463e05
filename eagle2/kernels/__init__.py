"""A bf16 linear-layer kernel for the few rows a decode step verifies, for CPUs with AVX512-BF16.

Why: a decode step multiplies 1 to ~16 rows by every weight of the model, so it is bound by how
fast the weights stream from memory. The oneDNN kernels that inductor's frozen CPU graphs use
stream them at ~11 GB/s for one row and get slower per row from 4 rows up; inductor's own C++ GEMM
template (max_autotune) is fast for one row but not for eight (results/engine-bench/). The
kernel in few_row_linear.cpp reads each weight once per call for up to 8 rows (then once per 8),
with one AVX512-BF16 dot-product instruction per row and 64 weight bytes, from a packed layout
(`python benchmarks/linear_kernels.py` times it beside the others). Inside a compiled model it is
faster than oneDNN but slower than inductor's autotuned template, which also fuses the linear
layers that share an input (results/engine-bench/cpu-smollm2-linear-kernels.txt), so the engine
uses it only when asked (linear_kernel: few_row).

It also reduces every output element over k in the same order whatever the row count, so a row
of a verification tree gets bit-identical linear outputs to the same row decoded alone.

The kernel is a PyTorch custom operator (`torch.ops.eagle2_kernels.few_row_linear`), compiled
from source on first use with torch's own extension builder (a C++ compiler is needed; the
build is cached under $TORCH_EXTENSIONS_DIR) and opaque to torch.compile, which calls it from a
compiled graph. `FewRowLinear` is an `nn.Module` holding the packed weight; `use_few_row_linears`
swaps a model's eligible `nn.Linear` layers for it, as weight-packing backends do (transformers'
quantizers, torchao): it changes the model instance it is given, not any class.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from torch import nn

from eagle2.target import cpu_bf16_flags

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("few_row_linear.cpp")
BLOCK = 16  # output columns per packed block: out_features must be a multiple


@functools.cache
def _build() -> None:
    """Builds (or loads the cached build of) the extension; raises RuntimeError if that fails."""
    from torch.utils.cpp_extension import load

    # A library of operators only (no Python module): torch loads it and registers eagle2_kernels::*.
    load(name="eagle2_few_row_linear", sources=[str(SOURCE)], extra_cflags=["-O3"], is_python_module=False, verbose=False)

    @torch.library.register_fake("eagle2_kernels::few_row_linear")
    def _(input: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
        return input.new_empty(*input.shape[:-1], out_features)

    @torch.library.register_fake("eagle2_kernels::pack")
    def _(weight: torch.Tensor) -> torch.Tensor:
        return weight.new_empty(weight.shape[0] // BLOCK, weight.shape[1] // 2, BLOCK, 2)


def unavailable_reason() -> str | None:
    """None if the kernel can run here, else why not (no AVX512-BF16, or the build failed)."""
    if "avx512_bf16" not in cpu_bf16_flags():
        return "this CPU has no AVX512-BF16"
    try:
        _build()
    except Exception as error:  # a missing compiler or headers: the caller falls back to the default kernels
        return f"the kernel did not build: {type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
    return None


def eligible(layer: nn.Module) -> bool:
    """An nn.Linear the kernel computes: bfloat16 on a CPU, no bias, out_features a multiple of 16, in_features even."""
    return (
        type(layer) is nn.Linear
        and layer.bias is None
        and layer.weight.dtype == torch.bfloat16
        and layer.weight.device.type == "cpu"
        and layer.out_features % BLOCK == 0
        and layer.in_features % 2 == 0
    )


# Up to this many rows the kernel is faster than the oneDNN one a frozen compiled graph uses; beyond
# it oneDNN is (2-core AMD VM, the linear layers of one compiled forward of the 30-layer model under
# torch.profiler, a one-off measurement: 1 row 12.6 ms against 17.3, 8 rows 22.7 against 18.9; at 8
# rows both are bound by dot-product throughput, not memory).
MAX_KERNEL_ROWS = 4


class FewRowLinear(nn.Module):
    """y = x @ W.T for bfloat16 x [..., in_features] (inference only: no gradient): calls of up to
    `max_kernel_rows` rows run the packed kernel, larger ones torch's linear on the original weight
    (which a frozen compiled graph hands to oneDNN). The row count is a static shape in a compiled
    graph, so each graph holds one of the two."""

    def __init__(self, weight: torch.Tensor, max_kernel_rows: int = MAX_KERNEL_ROWS) -> None:
        super().__init__()
        _build()
        self.in_features = weight.shape[1]
        self.out_features = weight.shape[0]
        self.max_kernel_rows = max_kernel_rows
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        with torch.no_grad():
            # [out/16, in/2, 16, 2]: see few_row_linear.cpp
            self.register_buffer("packed", torch.ops.eagle2_kernels.pack(weight.detach()), persistent=False)

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> FewRowLinear:
        if not eligible(layer):
            raise ValueError(f"FewRowLinear needs a bias-free bfloat16 CPU nn.Linear with out_features % 16 == 0, got {layer}")
        return cls(layer.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // self.in_features > self.max_kernel_rows:
            return nn.functional.linear(x, self.weight)
        return torch.ops.eagle2_kernels.few_row_linear(x, self.packed, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed bf16 up to {self.max_kernel_rows} rows"


def use_few_row_linears(model: nn.Module) -> int:
    """Swaps every eligible nn.Linear inside `model` for a FewRowLinear (idempotent); returns how many it swapped.

    The model's weights must not change afterwards: the packed copies would not follow. The packed copy
    is kept beside the original weight (larger row counts use that), so the swapped layers take twice
    their memory."""
    names = [name for name, layer in model.named_modules() if name and eligible(layer)]
    for name in names:
        model.set_submodule(name, FewRowLinear.from_linear(model.get_submodule(name)))
    return len(names)
