"""The registry of decoding methods: a name, its parameters, and how to build a decoder from them.

A new speculative method is one proposer (draft.py) plus one entry here (or, outside this
package, `METHODS.with_entry(spec)`: a registry of its own that suites and runs can be given). Reference methods that
call transformers' own `generate` live here too, so a benchmark can show that our vanilla decoding
is at least as fast as the library's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import CompileConfig

from eagle2.decode import generate
from eagle2.draft import DynamicTreeProposer, Proposer, StaticTreeProposer
from eagle2.eagle3_head import Eagle3Head
from eagle2.head import DraftHead
from eagle2.record import GenerationRecord, SamplingConfig
from eagle2.schema import Field, Registry, resolve_settings, suggestion
from eagle2.target import TargetModel
from eagle2.tree import builtin_tree_names, load_static_tree


class Decoder(Protocol):
    def __call__(
        self,
        prompt_ids: Sequence[int],
        *,
        max_new_tokens: int,
        sampling: SamplingConfig,
        stop_token_ids: Collection[int],
        generator: torch.Generator | None,
        profile: bool = False,
    ) -> GenerationRecord: ...


# Head kinds a method can draft with: the class that implements each.
HEAD_KINDS: Mapping[str, type] = MappingProxyType({"eagle": DraftHead, "eagle3": Eagle3Head})


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    needs_head: bool
    params: Mapping[str, Field]
    build: Callable[[TargetModel, DraftHead | Eagle3Head | None, Mapping[str, Any]], Decoder]
    lossless_greedy: bool = True  # greedy output must equal vanilla's (checked by the harness)
    reference: bool = False  # a transformers baseline rather than our engine
    head_kind: str | None = None  # a HEAD_KINDS key when needs_head: "eagle" (EAGLE-1/2 layout) or "eagle3"

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in; an unknown name (KeyError) or a bad value (ValueError) names the allowed ones."""
        return resolve_settings(self.params, params, owner=f"method {self.name!r}", noun="parameter")

    def create(self, target: TargetModel, head: DraftHead | Eagle3Head | None, params: Mapping[str, Any] | None = None) -> Decoder:
        if self.needs_head and head is None:
            raise ValueError(f"method {self.name!r} needs a draft head; the model has none configured")
        if self.needs_head and not isinstance(head, HEAD_KINDS[self.head_kind]):
            raise ValueError(
                f"method {self.name!r} drafts with a {self.head_kind!r} head ({HEAD_KINDS[self.head_kind].__name__}); "
                f"got a {type(head).__name__}; head kinds: "
                + ", ".join(f"{kind} ({cls.__name__})" for kind, cls in HEAD_KINDS.items())
            )
        return self.build(target, head, self.resolve(params))


class EngineDecoder:
    """A Decoder that runs THE decode loop (eagle2.decode.generate) with a fresh proposer per
    generation (no proposer: vanilla decoding)."""

    def __init__(self, target: TargetModel, make_proposer: Callable[[], Proposer] | None) -> None:
        self.target = target
        self.make_proposer = make_proposer

    def __call__(self, prompt_ids, *, max_new_tokens, sampling, stop_token_ids, generator, profile=False) -> GenerationRecord:
        proposer = self.make_proposer() if self.make_proposer is not None else None
        return generate(
            self.target,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            proposer=proposer,
            sampling=sampling,
            stop_token_ids=stop_token_ids,
            generator=generator,
            profile=profile,
        )

    def warm_up(self) -> None:
        """Compile what a warm-up generation may leave uncompiled (see Proposer.warm_up)."""
        proposer = self.make_proposer() if self.make_proposer is not None else None
        # warm_up is optional for a proposer defined outside this package (nothing to compile).
        if hasattr(proposer, "warm_up"):
            proposer.warm_up()


def engine_decoder(target: TargetModel, make_proposer: Callable[[], Proposer] | None) -> EngineDecoder:
    return EngineDecoder(target, make_proposer)


def _check_tree(value: Any) -> None:
    if isinstance(value, str):
        names = builtin_tree_names()
        if value not in names:
            raise KeyError(f"unknown static tree {value!r}; {suggestion(value, names, 'built-in trees')} (or give a list of paths)")
        return
    load_static_tree([list(path) for path in value])


def _build_vanilla(target, head, params) -> Decoder:
    return engine_decoder(target, None)


def _draft_vocab(head, params) -> torch.Tensor | None:
    """The head's draft vocabulary cut to its `draft_vocab_size` most frequent tokens (None: as the head has it)."""
    size = params.get("draft_vocab_size", 0)
    return head.ranked_draft_vocab(size) if size else None


def _build_eagle1(target, head, params) -> Decoder:
    tree = params["tree"] if isinstance(params["tree"], str) else [list(p) for p in params["tree"]]
    draft_vocab = _draft_vocab(head, params)
    return engine_decoder(target, lambda: StaticTreeProposer(head, target, tree=tree, draft_vocab=draft_vocab))


def _build_dynamic_tree(target, head, params) -> Decoder:
    """EAGLE-2's dynamic tree over the given head (an EAGLE-1/2 head: eagle2; an EAGLE-3 head: eagle3)."""
    draft_vocab = _draft_vocab(head, params)
    return engine_decoder(
        target,
        lambda: DynamicTreeProposer(
            head, target, depth=params["depth"], top_k=params["top_k"], total_tokens=params["total_tokens"], draft_vocab=draft_vocab
        ),
    )


class ForwardCounter:
    """Counts a module's forward calls through a public forward hook (no patching)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.count += 1

    def close(self) -> None:
        self._handle.remove()


def _hf_decoder(target: TargetModel, extra: Mapping[str, Any]) -> Decoder:
    model = target.model

    def decode(prompt_ids, *, max_new_tokens, sampling, stop_token_ids, generator, profile=False):
        if generator is not None and not sampling.greedy:
            # transformers' sampling draws from the global RNG; seed it from our generator so a
            # seed still fixes the output.
            torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else None,
            top_p=sampling.top_p if not sampling.greedy else None,
            top_k=sampling.top_k if not sampling.greedy else None,
            eos_token_id=sorted(stop_token_ids) or None,
            pad_token_id=(sorted(stop_token_ids) or [0])[0],
            **extra,
        )
        input_ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=target.device).reshape(1, -1)
        counter = ForwardCounter(model)
        try:
            if target.device.type == "cuda":
                torch.cuda.synchronize(target.device)
            started = time.perf_counter()
            with torch.inference_mode():
                output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
            if target.device.type == "cuda":
                torch.cuda.synchronize(target.device)
            elapsed = time.perf_counter() - started
        finally:
            counter.close()
        new = output[0, input_ids.shape[1] :].tolist()
        stops = set(stop_token_ids)
        reason = "eos" if new and new[-1] in stops else "max_new_tokens"
        forwards = max(counter.count, 1)
        return GenerationRecord(
            output_ids=tuple(new),
            target_forwards=forwards,
            accept_lengths=(),
            stop_reason=reason,
            prefill_time_s=0.0,
            total_time_s=elapsed,
        )

    return decode


def _hf_cache_settings(target: TargetModel, params: Mapping[str, Any]) -> dict[str, Any]:
    """GenerationConfig settings for transformers' own fastest path: a static cache, compiled.

    transformers compiles a static-cache decode step by itself only on accelerators; on a CPU its
    CompileConfig's `_compile_all_devices` flag (an attribute of our own config object) asks for it."""
    if params["cache"] == "dynamic":
        if params["compile"]:
            raise ValueError("hf_generate compile=true needs cache='static' (transformers compiles only a static cache)")
        return {}
    settings: dict[str, Any] = {"cache_implementation": "static"}
    if params["compile"]:
        compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead" if target.device.type == "cuda" else "default")
        if target.device.type not in ("cuda", "xpu"):
            compile_config._compile_all_devices = True
        settings["compile_config"] = compile_config
    else:
        settings["disable_compile"] = True
    return settings


def _build_hf_generate(target, head, params) -> Decoder:
    return _hf_decoder(target, _hf_cache_settings(target, params))


def _build_hf_prompt_lookup(target, head, params) -> Decoder:
    return _hf_decoder(
        target,
        {"prompt_lookup_num_tokens": params["num_tokens"], "max_matching_ngram_size": params["max_ngram"]},
    )


# EAGLE-2's dynamic tree, whichever head drafts it (eagle2, eagle3).
DYNAMIC_TREE_PARAMS: Mapping[str, Field] = MappingProxyType(
    {
        "depth": Field(int, 6, "deepest drafted token (the official depth + 1)", minimum=1),
        "top_k": Field(int, 10, "nodes expanded per depth, and children drafted per node", minimum=1),
        "total_tokens": Field(int, 60, "tokens verified per step, root included (the official total_token)", minimum=1),
    }
)

# EAGLE-1/2 heads with a reduced draft vocabulary (FR-Spec style) can draft from fewer of its rows.
DRAFT_VOCAB_SIZE = Field(
    int, 0,
    "draft only from the N most frequent tokens of the head's draft vocabulary (0 = all of it): fewer lm_head rows "
    "per draft step (on a CPU most of a step's memory traffic) for rarer drafts; needs a head whose vocabulary carries counts",
    minimum=0,
    identity_at_default=False,
)

METHODS: Registry[MethodSpec] = Registry(
    "method",
    [
        MethodSpec(
            name="vanilla",
            description="one target forward per token on our engine and cache: the baseline every speedup is against",
            needs_head=False,
            params={},
            build=_build_vanilla,
        ),
        MethodSpec(
            name="eagle1",
            description="EAGLE-1: a static tree of child ranks, drafted by the EAGLE head",
            needs_head=True,
            params={
                "tree": Field(
                    (str, list),
                    "mc_sim_7b_63",
                    "a built-in tree (mc_sim_7b_63: EAGLE-1's default, 25 paths, 26 tokens verified) or a list of paths of child ranks",
                    check=_check_tree,
                    what=f"{' | '.join(builtin_tree_names())} | a list of paths",
                ),
                "draft_vocab_size": DRAFT_VOCAB_SIZE,
            },
            build=_build_eagle1,
            head_kind="eagle",
        ),
        MethodSpec(
            name="eagle2",
            description="EAGLE-2: expand the top_k most confident nodes per depth, each with top_k children; "
            "rerank all drafts by path confidence; verify the best total_tokens",
            needs_head=True,
            params={**DYNAMIC_TREE_PARAMS, "draft_vocab_size": DRAFT_VOCAB_SIZE},
            build=_build_dynamic_tree,
            head_kind="eagle",
        ),
        MethodSpec(
            name="eagle3",
            description="EAGLE-3: EAGLE-2's dynamic tree over an EAGLE-3 head (the model's eagle3_head), which reads "
            "the inputs of target layers 2, N/2 and N-3 and drafts over its own draft vocabulary",
            needs_head=True,
            params=DYNAMIC_TREE_PARAMS,
            build=_build_dynamic_tree,
            head_kind="eagle3",
        ),
        MethodSpec(
            name="hf_generate",
            description="transformers' own generate(): shows our vanilla is an honest baseline",
            needs_head=False,
            params={
                "cache": Field(str, "dynamic", "KV cache: dynamic (DynamicCache) or static (StaticCache)", choices=("dynamic", "static")),
                "compile": Field(bool, False, "torch.compile the static-cache decode step, on a CPU too (needs cache: static)"),
            },
            build=_build_hf_generate,
            reference=True,
        ),
        MethodSpec(
            name="hf_prompt_lookup",
            description="transformers' prompt-lookup decoding (n-gram drafts from the prompt)",
            needs_head=False,
            params={
                "num_tokens": Field(int, 10, "drafted tokens per step", minimum=1),
                "max_ngram": Field(int, 2, "longest n-gram matched in the prompt", minimum=1),
            },
            build=_build_hf_prompt_lookup,
            reference=True,
        ),
    ],
)


def get_method(name: str) -> MethodSpec:
    return METHODS.lookup(name)
