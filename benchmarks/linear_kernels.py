"""The bf16 matmul kernels a compiled CPU forward can use, on the linear layers alone.

A stack of `--layers` decoder-shaped blocks of linear layers (q, k, v, o, gate, up, down; the
attention itself left out, SiLU kept) with random weights of SmolLM2-135M's shapes by default, run
for 1, 4 and 8 rows (a vanilla step, an EAGLE-2 expansion, a CPU verification tree). Three ways of
compiling it, each with the weights frozen into the graph as the engine does on a CPU:

  onednn    the engine's default: inductor's frozen linear layers (oneDNN, packed weights)
  autotune  inductor's own C++ GEMM template timed against oneDNN per shape (max_autotune,
            backends CPP,ATEN), and linear layers that share an input fused (concat_linear)
  few_row   eagle2.kernels' packed AVX512-BF16 kernel (the engine's linear_kernel: few_row),
            called from the compiled graph (only on a CPU with AVX512-BF16)

Prints ms per stack forward and the weight bytes streamed per second. Each shape is its own static
graph (dynamic=False), as in the engine.

    python benchmarks/linear_kernels.py --threads 2
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eagle2.kernels import unavailable_reason, use_few_row_linears  # noqa: E402
from eagle2.static import AUTOTUNE_SETTINGS  # noqa: E402

SETTINGS = {
    "onednn": {"freezing": True},
    "few_row": {"freezing": True},  # on a copy of the blocks whose linear layers are FewRowLinear
    "autotune": {"freezing": True, **AUTOTUNE_SETTINGS},  # the engine's linear_kernel: autotune
}


class LinearBlocks(nn.Module):
    def __init__(self, layers: int, hidden: int, kv: int, intermediate: int) -> None:
        super().__init__()

        def linear(inputs: int, outputs: int) -> nn.Linear:
            return nn.Linear(inputs, outputs, bias=False)

        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {"q": linear(hidden, hidden), "k": linear(hidden, kv), "v": linear(hidden, kv), "o": linear(hidden, hidden),
                 "gate": linear(hidden, intermediate), "up": linear(hidden, intermediate), "down": linear(intermediate, hidden)}
            )
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            # k and v only need to be computed (and read) like the model's; their sum keeps them live.
            attended = block["o"](block["q"](x)) + (block["k"](x).sum(-1, keepdim=True) + block["v"](x).sum(-1, keepdim=True))
            h = x + attended
            x = h + block["down"](nn.functional.silu(block["gate"](h)) * block["up"](h))
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--kv", type=int, default=192, help="key/value projection width (kv heads x head dim)")
    parser.add_argument("--intermediate", type=int, default=1536)
    parser.add_argument("--rows", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LinearBlocks(args.layers, args.hidden, args.kv, args.intermediate).to(torch.bfloat16).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"{args.layers} blocks, {weight_bytes / 1e6:.0f} MB of bf16 weights, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'kernels':10} {'rows':>4} {'ms':>8} {'GB/s':>6}")
    models = {"onednn": model, "autotune": model}
    if (reason := unavailable_reason()) is None:
        models["few_row"] = copy.deepcopy(model)
        use_few_row_linears(models["few_row"])
    else:
        print(f"few_row skipped: {reason}")
    with torch.inference_mode():
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, args.hidden, dtype=torch.bfloat16)
            for name, model in models.items():
                torch._dynamo.reset()
                with inductor_config.patch(SETTINGS[name]):
                    compiled = torch.compile(model, dynamic=False)
                    for _ in range(3):  # compile, then settle
                        compiled(x)
                    started = time.perf_counter()
                    for _ in range(args.repeats):
                        compiled(x)
                    ms = (time.perf_counter() - started) / args.repeats * 1000
                print(f"{name:10} {rows:>4} {ms:8.2f} {weight_bytes / ms / 1e6:6.1f}", flush=True)


if __name__ == "__main__":
    main()
