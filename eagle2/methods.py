"""The registry of decoding methods: a name, its parameters, and how to build a decoder from them.

A new speculative method is one proposer (draft.py) plus one entry here. Reference methods that
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


@dataclass(frozen=True)
class Param:
    default: Any
    kind: type | tuple[type, ...]
    help: str
    minimum: int | None = None
    check: Callable[[Any], None] | None = None  # raises ValueError on a bad value


# Head kinds a method can draft with: the class that implements each.
HEAD_KINDS: Mapping[str, type] = MappingProxyType({"eagle": DraftHead, "eagle3": Eagle3Head})


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    needs_head: bool
    params: Mapping[str, Param]
    build: Callable[[TargetModel, DraftHead | Eagle3Head | None, Mapping[str, Any]], Decoder]
    lossless_greedy: bool = True  # greedy output must equal vanilla's (checked by the harness)
    reference: bool = False  # a transformers baseline rather than our engine
    head_kind: str | None = None  # a HEAD_KINDS key when needs_head: "eagle" (EAGLE-1/2 layout) or "eagle3"

    def resolve(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in; unknown names and bad values raise with the allowed ones listed."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = ", ".join(self.params) or "none"
            raise KeyError(f"method {self.name!r} has no parameter {', '.join(map(repr, unknown))}; allowed: {allowed}")
        resolved = {}
        for name, spec in self.params.items():
            value = params.get(name, spec.default)
            if isinstance(value, bool) and spec.kind is int:
                raise ValueError(f"method {self.name!r} parameter {name!r} must be int, got {value!r}")
            if not isinstance(value, spec.kind):
                kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
                raise ValueError(
                    f"method {self.name!r} parameter {name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
                )
            if spec.minimum is not None and value < spec.minimum:
                raise ValueError(f"method {self.name!r} parameter {name!r} must be >= {spec.minimum}, got {value!r}")
            if spec.check is not None:
                spec.check(value)
            resolved[name] = value
        return resolved

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


def _engine_decoder(target: TargetModel, make_proposer: Callable[[], Proposer] | None) -> Decoder:
    def decode(prompt_ids, *, max_new_tokens, sampling, stop_token_ids, generator, profile=False):
        proposer = make_proposer() if make_proposer is not None else None
        return generate(
            target,
            prompt_ids,
            max_new_tokens=max_new_tokens,
            proposer=proposer,
            sampling=sampling,
            stop_token_ids=stop_token_ids,
            generator=generator,
            profile=profile,
        )

    return decode


def _check_tree(value: Any) -> None:
    if isinstance(value, str):
        load_static_tree(value)
    else:
        load_static_tree([list(path) for path in value])


def _build_vanilla(target, head, params) -> Decoder:
    return _engine_decoder(target, None)


def _build_eagle1(target, head, params) -> Decoder:
    tree = params["tree"] if isinstance(params["tree"], str) else [list(p) for p in params["tree"]]
    return _engine_decoder(target, lambda: StaticTreeProposer(head, target, tree=tree))


def _build_dynamic_tree(target, head, params) -> Decoder:
    """EAGLE-2's dynamic tree over the given head (an EAGLE-1/2 head: eagle2; an EAGLE-3 head: eagle3)."""
    return _engine_decoder(
        target,
        lambda: DynamicTreeProposer(head, target, depth=params["depth"], top_k=params["top_k"], total_tokens=params["total_tokens"]),
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


def _check_hf_cache(value: Any) -> None:
    if value not in ("dynamic", "static"):
        raise ValueError(f"hf_generate cache must be 'dynamic' or 'static', got {value!r}")


def _build_hf_generate(target, head, params) -> Decoder:
    return _hf_decoder(target, _hf_cache_settings(target, params))


def _build_hf_prompt_lookup(target, head, params) -> Decoder:
    return _hf_decoder(
        target,
        {"prompt_lookup_num_tokens": params["num_tokens"], "max_matching_ngram_size": params["max_ngram"]},
    )


# EAGLE-2's dynamic tree, whichever head drafts it (eagle2, eagle3).
DYNAMIC_TREE_PARAMS: Mapping[str, Param] = MappingProxyType(
    {
        "depth": Param(6, int, "deepest drafted token (official depth + 1)", minimum=1),
        "top_k": Param(10, int, "nodes expanded per depth and children per node", minimum=1),
        "total_tokens": Param(60, int, "tokens verified per step, root included (official total_token)", minimum=1),
    }
)

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        "vanilla": MethodSpec(
            name="vanilla",
            description="one target forward per token on our engine (the honest baseline)",
            needs_head=False,
            params={},
            build=_build_vanilla,
        ),
        "eagle1": MethodSpec(
            name="eagle1",
            description="EAGLE-1: a static draft tree of child ranks",
            needs_head=True,
            params={
                "tree": Param(
                    "mc_sim_7b_63",
                    (str, list),
                    f"a built-in tree ({', '.join(builtin_tree_names())}) or a list of paths of child ranks",
                    check=_check_tree,
                )
            },
            build=_build_eagle1,
            head_kind="eagle",
        ),
        "eagle2": MethodSpec(
            name="eagle2",
            description="EAGLE-2: context-aware dynamic draft tree (expand by path confidence, rerank, verify)",
            needs_head=True,
            params=DYNAMIC_TREE_PARAMS,
            build=_build_dynamic_tree,
            head_kind="eagle",
        ),
        "eagle3": MethodSpec(
            name="eagle3",
            description="EAGLE-3: EAGLE-2's dynamic draft tree over an EAGLE-3 head (low/mid/high target features)",
            needs_head=True,
            params=DYNAMIC_TREE_PARAMS,
            build=_build_dynamic_tree,
            head_kind="eagle3",
        ),
        "hf_generate": MethodSpec(
            name="hf_generate",
            description="transformers' own generate() (reference for our vanilla)",
            needs_head=False,
            params={
                "cache": Param("dynamic", str, "KV cache: 'dynamic' (DynamicCache) or 'static' (StaticCache)", check=_check_hf_cache),
                "compile": Param(False, bool, "torch.compile the decode step (needs cache='static')"),
            },
            build=_build_hf_generate,
            reference=True,
        ),
        "hf_prompt_lookup": MethodSpec(
            name="hf_prompt_lookup",
            description="transformers' prompt-lookup decoding (n-gram drafts from the prompt)",
            needs_head=False,
            params={
                "num_tokens": Param(10, int, "drafted tokens per step", minimum=1),
                "max_ngram": Param(2, int, "longest n-gram matched in the prompt", minimum=1),
            },
            build=_build_hf_prompt_lookup,
            reference=True,
        ),
    }
)


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def describe_methods() -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "needs_head": spec.needs_head,
            "head_kind": spec.head_kind,
            "params": {name: {"default": p.default, "help": p.help} for name, p in spec.params.items()},
        }
        for spec in METHODS.values()
    ]

