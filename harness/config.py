"""Suites: a versioned YAML schema read into frozen dataclasses, validated, and expanded into cells.

A suite names models, tasks and methods (with sweep grids over method parameters), sampling
temperatures, seeds and repeats. `expand(suite)` crosses them into `Cell`s, the unit of work and
of resumption; each has a `cell_id` that is a stable function of everything that changes its
outputs (not of the question limit, repeats, device or warm-up), so re-running a suite with a
larger --limit reuses the finished work.

The schema is the dataclasses below: each YAML key is a field declared with `setting` (type,
default, allowed values or bounds, help; eagle2.schema), the same description method parameters
(eagle2.methods) and task options (harness.tasks) use. `python -m harness validate --explain`
prints all of it; a minimal suite:

    schema: 1
    name: mtbench                      # runs go to runs/<name>/
    models:
      - {name: smollm2-135m, source: embedded, head: builtin:smollm2-135m-instruct}
    tasks:
      - {name: mt_bench, limit: 8, select: spread, max_new_tokens: 128}
    methods:
      - vanilla                        # a name alone, or:
      - name: eagle2
        params: {depth: 6, top_k: 10, total_tokens: 60}
        sweep: {depth: [4, 6, 8]}      # a grid: every combination becomes its own cells
    sampling: {temperatures: [0.0, 1.0]}

Limits checked when a suite is read (`validate` and `run`): a UTF-8 file of at most 1 MiB whose
aliases expand it to at most 20,000 YAML values (a "billion laughs" file is refused before it is
expanded); finite numbers; max_new_tokens at most 131,072 and below the model's context where it is
known cheaply (built-in sources, a local folder's config.json, a hub config already in the cache);
a head given as a local path must be a folder with a valid config.json.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from eagle2.schema import Field, Registry, check_settings, fields_of, setting, suggestion

if TYPE_CHECKING:
    from eagle2.methods import MethodSpec
    from harness.tasks import TaskSpec

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
TASK_SELECT = ("first", "spread")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
MAX_SUITE_BYTES = 1 << 20  # a suite file is a few KB; 1 MiB is far beyond any real one
MAX_SUITE_NODES = 20_000  # YAML nodes after alias expansion (a "billion laughs" file has ~10^9)
# max_new_tokens when the model's context cannot be read cheaply (a hub id not in the local cache,
# a GGUF file): the longest context of the model families the engine supports.
MAX_NEW_TOKENS_BOUND = 1 << 17
# Contexts of the built-in sources (max_position_embeddings): SmolLM2-135M-Instruct and the tiny
# random Llama of harness.models (a test checks this one against the model).
BUILTIN_CONTEXTS = {"embedded": 8192, "tiny-random-llama": 4096}
_NULL = type(None)


class SuiteError(ValueError):
    """A suite file that does not validate; the message lists every problem, one per line.
    `missing_heads`: the local head folders it names that do not exist (yet); `only_missing_heads`:
    they are its only problems, i.e. a suite whose heads are still to be trained, not a broken one."""

    def __init__(self, path: str, problems: Sequence[str], missing_heads: Sequence[str] = (), *, only_missing_heads: bool = False) -> None:
        self.path = path
        self.problems = list(problems)
        self.missing_heads = tuple(missing_heads)
        self.only_missing_heads = only_missing_heads
        plural = "s" if len(self.problems) != 1 else ""
        super().__init__(f"{path}: {len(self.problems)} problem{plural}:\n" + "\n".join(f"  {p}" for p in self.problems))


# ----------------------------------------------------------------------------------------------
# Rules the types, choices and bounds of a setting cannot say (each raises naming what is allowed).


def _check_label(value: str) -> None:
    if not NAME_PATTERN.match(value):
        raise ValueError(f"{value!r}: use letters, digits and _ . + - (it becomes part of cell ids and folder names)")


def _check_schema_version(value: int) -> None:
    if value != SCHEMA_VERSION:
        raise ValueError(f"this harness reads schema {SCHEMA_VERSION}, got {value!r}")


def _check_device(value: str) -> None:
    if not DEVICE_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")


def _dtype_names() -> list[str]:
    from eagle2.target import DTYPES

    return ["auto", *DTYPES, "fp32", "fp64", "bf16", "fp16", "half"]


def _check_chat_template(value: str) -> None:
    if value == "tokenizer":
        return
    try:
        from fastchat.conversation import conv_templates
    except ImportError:
        raise ValueError(f"{value!r} is a FastChat template, which needs the fschat package: pip install fschat") from None
    names = ["tokenizer", *sorted(conv_templates)]
    if value not in names:
        raise ValueError(f"must be one of the allowed values, got {value!r}; {suggestion(value, names)}")


def _check_head(value: str | None) -> None:
    problem = None if value is None else head_problem(value)
    if problem:
        raise ValueError(problem)


# ----------------------------------------------------------------------------------------------
# The schema.


# The model key that names the head of each head kind (eagle2.methods.HEAD_KINDS).
HEAD_KEYS: Mapping[str, str] = MappingProxyType({"eagle": "head", "eagle3": "eagle3_head"})
_HEAD_SPEC = "random | builtin:NAME | a folder | a hub id"


@dataclass(frozen=True)
class ModelConfig:
    name: str = setting(str, "the `model` column of the results; unique", check=_check_label)
    source: str = setting(str, "embedded | tiny-random-llama | a local folder | a hub id | a .gguf file", "embedded")
    gguf_file: str | None = setting((str, _NULL), "a GGUF file inside `source` (a folder or hub id)", None)
    revision: str | None = setting((str, _NULL), "hub revision (branch, tag or commit)", None)
    dtype: str = setting(str, "auto: bfloat16 for the embedded model on CUDA and on CPUs with native bf16, else float32; "
                         "hub models keep their checkpoint's", "auto", choices=_dtype_names)
    device: str = setting(str, "auto: cuda if present, else cpu", "auto", check=_check_device, what="auto | cpu | cuda | cuda:N | mps")
    device_map: str | None = setting((str, _NULL), "passed to transformers (e.g. auto); then `device` is ignored", None)
    head: str | None = setting((str, _NULL), f"the EAGLE-1/2 draft head: {_HEAD_SPEC}", None, check=_check_head)
    head_fallback: str | None = setting((str, _NULL), "used, with a warning, when `head` is a built-in that is not installed", None,
                                        check=_check_head)
    eagle3_head: str | None = setting((str, _NULL), f"the EAGLE-3 head (method eagle3): {_HEAD_SPEC}", None, check=_check_head)
    chat_template: str = setting(str, "tokenizer (the tokenizer's own) or a FastChat template (vicuna_v1.1, llama-2, ...)",
                                 "tokenizer", check=_check_chat_template, what="tokenizer | a FastChat template name")
    system_message: str | None = setting((str, _NULL), "system prompt (null: the template's default)", None)
    # The engine's static-shape path (eagle2.static) with torch.compile; harness.runner.resolve_compile says what auto means.
    compile: str | bool = setting((str, bool), "the static-shape, torch.compile'd engine path; auto: true on CUDA, "
                                  "and on a CPU in bf16/fp16; static: fixed shapes without torch.compile", "auto",
                                  choices=("auto", True, False, "static"))
    # How the static/compiled engine on a CPU computes linear layers; harness.runner.resolve_linear_kernel says what auto means.
    linear_kernel: str = setting(str, "linear layers of the engine on a CPU: default (oneDNN), autotune (compiled: inductor "
                                 "picks per shape, fuses shared-input layers), few_row (bf16, eagle2.kernels, AVX512-BF16); "
                                 "auto: autotune when compiled in bf16/fp16 on a CPU, else default", "auto",
                                 choices=("auto", "default", "autotune", "few_row"))
    # Inductor's C++ wrapper for the compiled engine's graphs on a CPU; harness.runner.resolve_cpp_wrapper says what auto means.
    cpp_wrapper: str | bool = setting((str, bool), "compiled engine on a CPU: the code that calls a graph's kernels in C++ instead "
                                      "of Python (less per-step overhead, longer compiles); auto: true when compiled on a CPU",
                                      "auto", choices=("auto", True, False))
    # e.g. a float32 entry that runs only vanilla, so a report can state the fastest vanilla of the run across dtypes.
    methods: tuple[str, ...] | None = setting((list, _NULL), "the suite's methods this model runs (null: all)", None,
                                              each=Field(str), non_empty=True, what="a non-empty list of method names")
    gpus: int | None = setting((int, _NULL), "GPUs one copy of the model takes on a Ray/SLURM worker (null: 0 on cpu, else 1)",
                               None, minimum=0)

    def identity(self) -> dict[str, Any]:
        """What changes this model's outputs (device placement and compilation do not; the head is the cell's)."""
        skip = {"device", "device_map", "head", "head_fallback", "eagle3_head", "compile", "linear_kernel", "cpp_wrapper", "methods", "gpus"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class TaskConfig:
    name: str = setting(str, "the `task` column of the results; unique; also the task type unless `type` is given",
                        check=_check_label)
    type: str = setting(str, "the task type (harness.tasks.TASKS)", default_text="the name")
    limit: int | None = setting((int, _NULL), "the first N questions (null: all)", None, minimum=1)
    select: str = setting(str, "which `limit` questions: first, or spread (round-robin over categories)", "first", choices=TASK_SELECT)
    max_new_tokens: int = setting(int, "new tokens per answer (also below the model's context where known)", 256,
                                  minimum=1, maximum=MAX_NEW_TOKENS_BOUND)
    options: Mapping[str, Any] = field(default_factory=dict)  # the type's options, defaults filled in

    def identity(self) -> dict[str, Any]:
        """What changes a question's outputs (which questions run does not)."""
        return {"name": self.name, "type": self.type, "max_new_tokens": self.max_new_tokens, "options": dict(self.options)}


@dataclass(frozen=True)
class MethodConfig:
    name: str = setting(str, "the method (eagle2.methods.METHODS)")
    params: Mapping[str, Any] = setting((dict, _NULL), "the method's parameters, as written (unresolved)", {},
                                        what="a mapping of parameter: value")
    sweep: Mapping[str, tuple[Any, ...]] = setting((dict, _NULL), "a grid: every combination of the values is its own cells", {},
                                                   what="a mapping of parameter: [values]")

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter combination of the sweep, over the fixed params (sweep order as written)."""
        names = list(self.sweep)
        combos = itertools.product(*(self.sweep[n] for n in names)) if names else [()]
        return [{**dict(self.params), **dict(zip(names, values))} for values in combos]


@dataclass(frozen=True)
class SamplingSettings:
    temperatures: tuple[float, ...] = setting(list, "sampling temperatures; 0 = greedy (exact argmax)", (0.0,),
                                              each=Field(float, minimum=0.0, what="a number >= 0"), single=True, non_empty=True,
                                              what="a number or a list of numbers >= 0")
    top_p: float = setting(float, "nucleus sampling: keep the most probable tokens up to this probability mass", 1.0,
                           minimum=0, maximum=1, exclusive_minimum=True)
    top_k: int = setting(int, "keep the k most probable tokens (0: all)", 0, minimum=0)


@dataclass(frozen=True)
class WarmupConfig:
    generations: int = setting(int, "untimed generations per (model, method configuration) before its first timed one", 1, minimum=0)
    max_new_tokens: int = setting(int, "new tokens of each warm-up generation", 16, minimum=1)


@dataclass(frozen=True)
class Suite:
    schema: int = setting(int, "the schema version of the file", check=_check_schema_version, what=str(SCHEMA_VERSION))
    name: str = setting(str, "the suite's name: runs go to `runs/<name>/`", check=_check_label)
    models: tuple[ModelConfig, ...] = setting(list, "the models (models[] keys)", non_empty=True, what="a non-empty list")
    tasks: tuple[TaskConfig, ...] = setting(list, "the tasks: a task type's name, or a mapping (tasks[] keys)",
                                            non_empty=True, what="a non-empty list")
    methods: tuple[MethodConfig, ...] = setting(list, "the methods: a method's name, or a mapping (methods[] keys)",
                                                non_empty=True, what="a non-empty list")
    description: str = setting(str, "one line, shown by `harness ls`", "")
    sampling: SamplingSettings = setting(dict, "sampling settings (sampling keys)", SamplingSettings(),
                                         keys=fields_of(SamplingSettings), what="a mapping with temperatures, top_p, top_k")
    seeds: tuple[int, ...] = setting(list, "random seeds; each seed is its own cell", (0,), each=Field(int, minimum=0),
                                     single=True, non_empty=True, what="a seed or a list of seeds")
    repeats: int = setting(int, "each question is generated this many times per cell", 1, minimum=1)
    warmup: WarmupConfig = setting(dict, "untimed warm-up per model and method configuration (warmup keys), "
                                   "or just a number of generations", WarmupConfig(), keys=fields_of(WarmupConfig),
                                   what="a mapping with generations, max_new_tokens (or a number of generations)")
    profile: bool = setting(bool, "split time into draft/verify/other (a device sync at each phase boundary; free on a CPU)", True)
    schedule: str = setting(str, "by_model: one model entry at a time; interleaved: all loaded and warmed up first, then each question "
                            "on every entry and method in turn, the order rotated per question (for side-by-side timing)",
                            "by_model", choices=("by_model", "interleaved"))
    path: str | None = None  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


SUITE_FIELDS = fields_of(Suite)
MODEL_FIELDS = fields_of(ModelConfig)
TASK_FIELDS = fields_of(TaskConfig)
METHOD_FIELDS = fields_of(MethodConfig)


@dataclass(frozen=True)
class Cell:
    """One (model, task, method configuration, temperature, seed): the unit of work and of resume."""

    model: ModelConfig
    task: TaskConfig
    method: str
    method_params: Mapping[str, Any]  # resolved: every parameter, defaults filled in
    temperature: float
    top_p: float
    top_k: int
    seed: int
    repeats: int = 1
    head: str | None = None  # the head this cell uses: model.head, or head_fallback when a built-in is missing
    # method_params left out of the identity (parameters at a default that keeps older cell ids; Field.identity_at_default)
    params_outside_identity: tuple[str, ...] = ()

    def identity(self) -> dict[str, Any]:
        return _plain(
            {
                "model": self.model.identity(),
                "head": self.head,
                "task": self.task.identity(),
                "method": self.method,
                "method_params": {k: v for k, v in self.method_params.items() if k not in self.params_outside_identity},
                "temperature": float(self.temperature),
                "top_p": float(self.top_p),
                "top_k": int(self.top_k),
                "seed": int(self.seed),
            }
        )

    @property
    def cell_id(self) -> str:
        """`model.task.method.T<temp>.s<seed>.<hash>`: readable, and unique by the hash of identity()."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode()).hexdigest()[:10]
        return f"{self.model.name}.{self.task.name}.{self.method}.T{self.temperature:g}.s{self.seed}.{digest}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell_id": self.cell_id,
            "model": self.model.name,
            "model_config": _plain(dataclasses.asdict(self.model)),
            "task": self.task.name,
            "task_config": _plain(dataclasses.asdict(self.task)),
            "method": self.method,
            "method_params": _plain(dict(self.method_params)),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "repeats": self.repeats,
            "head": self.head,
        }


def _plain(value: Any) -> Any:
    """JSON-ready: mappings to dicts, tuples to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# Reading YAML with line numbers.


def _line_map(node: yaml.Node, path: tuple = (), lines: dict | None = None, duplicates: list | None = None) -> tuple[dict, list]:
    """{key path: 1-based line} for every node, and the paths of duplicated mapping keys."""
    lines = {} if lines is None else lines
    duplicates = [] if duplicates is None else duplicates
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                duplicates.append((path + (key,), key_node.start_mark.line + 1))
            seen.add(key)
            _line_map(value_node, path + (key,), lines, duplicates)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), lines, duplicates)
    return lines, duplicates


def _format_path(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"

class _Checker:
    """Collects problems as `line N: key.path: message`."""

    def __init__(self, file: str, lines: Mapping[tuple, int]) -> None:
        self.file = file
        self.lines = lines
        self._found: list[tuple[int, int, str]] = []

    def line_of(self, path: tuple) -> int | None:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def error(self, path: tuple, message: str) -> None:
        line = self.line_of(path)
        where = f"line {line}: " if line else ""
        self._found.append((line or 0, len(self._found), f"{where}{_format_path(path)}: {message}"))

    @property
    def problems(self) -> list[str]:
        """In file order."""
        return [text for _, _, text in sorted(self._found)]

    def settings(self, path: tuple, data: Mapping[str, Any], fields: Mapping[str, Field], **how: Any) -> bool:
        """Check a mapping against its fields (eagle2.schema.check_settings); True when all is well."""
        found = check_settings(fields, data, **how)
        for problem in found:
            self.error(path + problem.path, problem.message)
        return not found


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ----------------------------------------------------------------------------------------------
# Validation: YAML data -> Suite.


def _check_model(check: _Checker, path: tuple, data: Any, methods: Registry[MethodSpec]) -> ModelConfig | None:
    if not isinstance(data, Mapping):
        check.error(path, f"a model must be a mapping with at least `name`, got {data!r}")
        return None
    check.settings(path, data, MODEL_FIELDS)
    listed = data.get("methods")
    if isinstance(listed, list):
        for index, name in enumerate(listed):
            if isinstance(name, str) and name not in methods:
                check.error(path + ("methods", index), methods.unknown(name))
    if not isinstance(data.get("name"), str):
        return None
    given = {key: value for key, value in data.items() if key in MODEL_FIELDS}
    if isinstance(listed, list):
        given["methods"] = tuple(listed)
    return ModelConfig(**given)  # with a bad value too, so the checks across entries still run (the problems raise later)


def _entry(check: _Checker, path: tuple, data: Any, what: str) -> Mapping[str, Any] | None:
    """A tasks[] or methods[] entry as a mapping: a name alone stands for {name: NAME}."""
    if isinstance(data, str):
        return {"name": data}
    if not isinstance(data, Mapping):
        check.error(path, f"a {what} must be a {what} name or a mapping with `name`, got {data!r}")
        return None
    return data


def _check_task(check: _Checker, path: tuple, data: Any, tasks: Registry[TaskSpec]) -> TaskConfig | None:
    data = _entry(check, path, data, "task")
    if data is None:
        return None
    task_type = data.get("type", data.get("name"))
    if not isinstance(task_type, str) or task_type not in tasks:
        if "name" not in data:
            check.error(path, "missing required key 'name'")
        else:
            key = "type" if "type" in data else "name"
            extra = "" if key == "type" else " (or give `type` when `name` is a label)"
            check.error(path + (key,), tasks.unknown(task_type) + extra)
        return None
    spec = tasks[task_type]
    check.settings(path, {**data, "type": task_type}, {**TASK_FIELDS, **spec.options}, needed_by=f"task type {task_type!r}")
    options = {}
    for name, option in spec.options.items():
        value = data.get(name, option.default)
        options[name] = tuple(value) if isinstance(value, list) else value
    common = {key: data[key] for key in TASK_FIELDS if key in data}
    return TaskConfig(**{**common, "type": task_type, "options": options})


def _check_method(check: _Checker, path: tuple, data: Any, methods: Registry[MethodSpec]) -> MethodConfig | None:
    data = _entry(check, path, data, "method")
    if data is None or not check.settings(path, data, METHOD_FIELDS):
        return None
    name = data["name"]
    if name not in methods:
        check.error(path + ("name",), methods.unknown(name))
        return None
    spec = methods[name]
    params = data.get("params") or {}
    sweep = data.get("sweep") or {}
    owner = f"method {name!r}"
    good = check.settings(path + ("params",), params, spec.params, owner=owner, noun="parameter")
    swept = {key: Field(list, (), each=value, non_empty=True, what="a non-empty list of values to sweep") for key, value in spec.params.items()}
    good = check.settings(path + ("sweep",), sweep, swept, owner=owner, noun="parameter") and good
    for key in sweep:
        if key in params:
            check.error(path + ("sweep", key), f"{key!r} is both in params and in sweep; keep one")
            good = False
    return MethodConfig(name=name, params=dict(params), sweep={k: tuple(v) for k, v in sweep.items()}) if good else None


def suite_from_dict(data: Any, path: str = "<suite>", lines: Mapping[tuple, int] | None = None, *,
                    methods: Registry[MethodSpec] | None = None, tasks: Registry[TaskSpec] | None = None) -> Suite:
    """Validate YAML data into a Suite; raises SuiteError listing every problem found. `methods` and
    `tasks` are the registries names are looked up in (default: eagle2.methods.METHODS, harness.tasks.TASKS)."""
    if methods is None:
        from eagle2.methods import METHODS as methods
    if tasks is None:
        from harness.tasks import TASKS as tasks
    check = _Checker(path, lines or {})
    if not isinstance(data, Mapping):
        raise SuiteError(path, [f"a suite is a mapping with schema, name, models, tasks and methods; got {type(data).__name__}"])
    warmup = data.get("warmup")
    if isinstance(warmup, int) and not isinstance(warmup, bool):
        data = {**data, "warmup": {"generations": warmup}}
    check.settings((), data, SUITE_FIELDS)

    def entries(key: str, parse, registry: Registry) -> list:
        raw = data.get(key)
        return [parse(check, (key, index), item, registry) for index, item in enumerate(raw)] if isinstance(raw, list) else []

    models = entries("models", _check_model, methods)
    task_entries = entries("tasks", _check_task, tasks)
    method_entries = entries("methods", _check_method, methods)
    for key, parsed in (("models", models), ("tasks", task_entries)):
        names = [p.name for p in parsed if p is not None]
        for index, item in enumerate(parsed):
            if item is not None and names.count(item.name) > 1:
                check.error((key, index, "name"), f"{item.name!r} is used by more than one entry of {key}; names must be unique")

    for kind, key in HEAD_KEYS.items():
        needing = [(i, m.name) for i, m in enumerate(method_entries) if m is not None and methods[m.name].head_kind == kind]
        for index, model in enumerate(models):
            own = [(i, name) for i, name in needing if model is None or model.methods is None or name in model.methods]
            if model is not None and getattr(model, key) is None and own:
                method_index, method_name = own[0]
                what, layout = ("draft head", "") if kind == "eagle" else (f"EAGLE-3 head ({key})", " in the EAGLE-3 layout")
                check.error(("models", index, key),
                            f"model {model.name!r} has no {what} but methods[{method_index}] ({method_name}) needs one; "
                            f"set {key}: random, builtin:NAME, a folder or a hub id{layout}")

    for task_index, task in enumerate(task_entries):
        if task is None:
            continue
        for model in models:
            problem = None if model is None else context_problem(model, task.max_new_tokens)
            if problem:
                check.error(("tasks", task_index, "max_new_tokens"), problem)

    if check.problems:
        raw_models = data.get("models")
        missing_heads = [
            spec for model in (raw_models if isinstance(raw_models, list) else []) if isinstance(model, Mapping)
            for key in (*HEAD_KEYS.values(), "head_fallback")
            for spec in [model.get(key)] if isinstance(spec, str) and is_missing_head_folder(spec)
        ]
        # Each head field naming a missing folder makes exactly one problem.
        raise SuiteError(path, check.problems, missing_heads=list(dict.fromkeys(missing_heads)),
                         only_missing_heads=len(missing_heads) == len(check.problems))
    given = {key: data[key] for key in SUITE_FIELDS if key in data}
    sampling = SamplingSettings(**given.get("sampling", {}))
    return Suite(**{
        **given,
        "models": tuple(models),
        "tasks": tuple(task_entries),
        "methods": tuple(method_entries),
        "sampling": SamplingSettings(tuple(float(t) for t in _as_list(sampling.temperatures)), float(sampling.top_p), int(sampling.top_k)),
        "seeds": tuple(int(s) for s in _as_list(given.get("seeds", SUITE_FIELDS["seeds"].default))),
        "warmup": WarmupConfig(**given.get("warmup", {})),
        "path": path,
    })


def load_suite(path: str | Path) -> Suite:
    """Read and validate a suite file (a path, or the name of a file in the suites/ folder)."""
    file = resolve_suite_path(path)
    size = file.stat().st_size
    if size > MAX_SUITE_BYTES:
        raise SuiteError(str(file), [f"the file has {size:,} bytes; a suite may have at most {MAX_SUITE_BYTES:,}"])
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SuiteError(str(file), [f"line {line}: not UTF-8 text (byte {raw[error.start]:#04x} at offset {error.start}); save the suite as UTF-8"]) from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                _check_expanded_size(node, str(file))
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SuiteError(str(file), [f"{where}not valid YAML: {getattr(error, 'problem', None) or error}"]) from error
    except RecursionError:
        raise SuiteError(str(file), ["the YAML is nested too deeply"]) from None
    lines, duplicates = _line_map(node) if node is not None else ({}, [])
    if duplicates:
        raise SuiteError(str(file), [f"line {line}: {_format_path(p)}: key given twice" for p, line in duplicates])
    return suite_from_dict(data, str(file), lines)


def _check_expanded_size(root: yaml.Node, file: str) -> None:
    """Refuse a document whose aliases expand it beyond MAX_SUITE_NODES nodes (a "billion laughs"
    file: nine lines of anchors, each aliased ten times by the next, expand to 10^9 strings) or
    that refers to itself. Counted on the composed node graph, where an alias is the anchored node
    itself, so a bomb is measured in microseconds without being expanded."""
    sizes: dict[int, int] = {}  # id(node) -> nodes once expanded
    active: set[int] = set()  # nodes on the current path: a cycle is a recursive alias

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise SuiteError(file, [f"line {node.start_mark.line + 1}: an alias refers to the node that contains it (a recursive structure)"])
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in node.value for child in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        else:
            children = []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_SUITE_NODES:
                raise SuiteError(file, [
                    f"line {node.start_mark.line + 1}: the YAML expands to more than {MAX_SUITE_NODES:,} values through "
                    "aliases (*name); a suite needs far fewer; write the values out or use fewer aliases"
                ])
        active.discard(key)
        sizes[key] = total
        return total

    size(root)


def model_context(source: str) -> tuple[int, str] | None:
    """(max_position_embeddings, where it was read) of a model source, when it is cheap to know:
    a built-in source, a local folder's config.json, or a hub id's config.json already in the
    Hugging Face cache. None otherwise (a GGUF file, a hub id never downloaded)."""
    if source in BUILTIN_CONTEXTS:
        return BUILTIN_CONTEXTS[source], f"the {source} model"
    config_path: Path | None = None
    folder = Path(source).expanduser()
    if folder.is_dir():
        config_path = folder / "config.json"
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")) and not source.endswith(".gguf"):
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except Exception:  # noqa: BLE001 - no hub library or an odd cache: the context is simply unknown
            cached = None
        config_path = Path(cached) if isinstance(cached, str) else None
    if config_path is None or not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # the model loader reports a broken config.json, naming it
    if not isinstance(config, dict):
        return None
    text_config = config.get("text_config")
    value = config.get("max_position_embeddings", text_config.get("max_position_embeddings") if isinstance(text_config, dict) else None)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, str(config_path)
    return None


def context_problem(model: ModelConfig, max_new_tokens: Any) -> str | None:
    """Why `max_new_tokens` cannot fit in `model`'s context (None when it can or is unknown)."""
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool):
        return None
    known = model_context(model.source)
    if known is None or max_new_tokens < known[0]:
        return None
    context, where = known
    return (f"max_new_tokens {max_new_tokens} does not fit in the context of model {model.name!r}: "
            f"{context} tokens (max_position_embeddings, {where}); allowed: 1 to {context - 1} minus the prompt")


def _looks_local(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.count("/") != 1 or Path(spec).expanduser().exists()


def is_missing_head_folder(spec: str) -> bool:
    """A head given as a local folder that does not exist (random, built-ins and hub ids are not)."""
    if spec == "random" or spec.startswith("builtin:"):
        return False
    return _looks_local(spec) and not Path(spec).expanduser().is_dir()


def head_problem(spec: str) -> str | None:
    """Why a `head` value cannot be loaded, when that shows without loading it (None otherwise).
    random, builtin:NAME (reported by `validate` with its fallback) and hub ids (owner/name) pass;
    a local path must be a folder with a readable config.json."""
    if spec == "random" or spec.startswith("builtin:"):
        return None
    path = Path(spec).expanduser()
    if not _looks_local(spec):
        return None  # a hub id: checked when it is downloaded
    if not path.is_dir():
        return (f"head {spec!r}: no such folder ({path.resolve()}); allowed: random, builtin:NAME, "
                "a folder with an EAGLE head (config.json + model.safetensors) or a hub id (owner/name)")
    config = path / "config.json"
    if not config.is_file():
        return f"head {spec!r}: {config} is missing; an EAGLE head folder holds config.json and model.safetensors (or pytorch_model.bin)"
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"head {spec!r}: {config} is not valid JSON ({error})"
    if not isinstance(parsed, dict):
        return f"head {spec!r}: {config} must hold a JSON object (the head's LlamaConfig), got {type(parsed).__name__}"
    return None


def suites_dir() -> Path:
    """The suites/ folder of this checkout."""
    return Path(__file__).resolve().parents[1] / "suites"


def resolve_suite_path(path: str | Path) -> Path:
    """A file path as given, else `suites/<path>(.yaml)` of this checkout."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    for option in (suites_dir() / candidate, suites_dir() / f"{candidate}.yaml"):
        if option.is_file():
            return option
    available = ", ".join(str(p.relative_to(suites_dir())) for p in list_suite_files())
    raise FileNotFoundError(f"suite {str(path)!r} not found (neither a file nor a name in {suites_dir()}); available: {available or 'none'}")


def list_suite_files() -> list[Path]:
    root = suites_dir()
    return sorted(root.rglob("*.yaml")) if root.is_dir() else []


# ----------------------------------------------------------------------------------------------
# Overrides and expansion.


def apply_overrides(
    suite: Suite,
    *,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    temperatures: Sequence[float] | None = None,
    device: str | None = None,
) -> Suite:
    """The suite with the CLI's quick-look overrides applied (None = keep)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    if max_new_tokens is not None and not 1 <= max_new_tokens <= MAX_NEW_TOKENS_BOUND:
        raise ValueError(f"--max-new-tokens must be in 1..{MAX_NEW_TOKENS_BOUND}, got {max_new_tokens}")
    if max_new_tokens is not None:
        for model in suite.models:
            problem = context_problem(model, max_new_tokens)
            if problem:
                raise ValueError(f"--max-new-tokens: {problem}")
    if device is not None and not DEVICE_PATTERN.match(device):
        raise ValueError(f"--device {device!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
    tasks = tuple(
        dataclasses.replace(
            t,
            limit=limit if limit is not None else t.limit,
            max_new_tokens=max_new_tokens if max_new_tokens is not None else t.max_new_tokens,
        )
        for t in suite.tasks
    )
    models = suite.models if device is None else tuple(dataclasses.replace(m, device=device, device_map=None) for m in suite.models)
    sampling = suite.sampling
    if temperatures is not None:
        if not temperatures or any(not math.isfinite(t) or t < 0 for t in temperatures):
            raise ValueError(f"--temperatures needs one or more finite numbers >= 0, got {list(temperatures)}")
        sampling = dataclasses.replace(sampling, temperatures=tuple(float(t) for t in temperatures))
    return dataclasses.replace(suite, tasks=tasks, models=models, sampling=sampling)


def effective_head(model: ModelConfig, kind: str = "eagle") -> str | None:
    """The head a model's speculative cells of a head kind use: for EAGLE-1/2, `head`, or
    `head_fallback` while `head` is a built-in that is not installed; for EAGLE-3, `eagle3_head`.
    Part of the cell id, so results drafted with the fallback are never mixed with (or resumed as)
    results drafted with the real head."""
    from harness.models import builtin_head_available

    if kind not in HEAD_KEYS:
        raise KeyError(f"unknown head kind {kind!r}; head kinds: {', '.join(HEAD_KEYS)}")
    if kind != "eagle":
        return getattr(model, HEAD_KEYS[kind])
    if model.head and model.head.startswith("builtin:") and model.head_fallback and not builtin_head_available(model.head):
        return model.head_fallback
    return model.head


def expand(suite: Suite, methods: Registry[MethodSpec] | None = None) -> list[Cell]:
    """models x tasks x methods (x sweep grid) x temperatures x seeds, in that order; duplicates dropped.
    `methods`: the registry the suite was validated with (default: eagle2.methods.METHODS)."""
    if methods is None:
        from eagle2.methods import METHODS as methods

    cells: list[Cell] = []
    seen: set[str] = set()
    for model in suite.models:
        for task in suite.tasks:
            for method in suite.methods:
                if model.methods is not None and method.name not in model.methods:
                    continue
                spec = methods[method.name]
                for params in method.grid():
                    resolved = _plain(spec.resolve(params))
                    outside_identity = tuple(
                        name for name, value in resolved.items()
                        if not spec.params[name].identity_at_default and value == spec.params[name].default
                    )
                    for temperature in suite.sampling.temperatures:
                        for seed in suite.seeds:
                            cell = Cell(
                                model=model,
                                task=task,
                                method=method.name,
                                method_params=resolved,
                                params_outside_identity=outside_identity,
                                temperature=float(temperature),
                                top_p=suite.sampling.top_p,
                                top_k=suite.sampling.top_k,
                                seed=seed,
                                repeats=suite.repeats,
                                head=effective_head(model, spec.head_kind) if spec.needs_head else None,
                            )
                            if cell.cell_id in seen:
                                logger.warning("dropping a duplicate cell %s (the same method configuration is listed twice)", cell.cell_id)
                                continue
                            seen.add(cell.cell_id)
                            cells.append(cell)
    return cells


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (1-based) -> (I, N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"--shard must look like I/N (e.g. 1/4), got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: need 1 <= I <= N")
    return index, count


def shard_cells(cells: Sequence[Cell], index: int, count: int) -> list[Cell]:
    """Shard I of N (1-based): every N-th cell of the expansion order, starting at the I-th.

    Round-robin balances mixed costs (a sweep's cells next to each other land on different
    shards); each shard loads the models it needs once. The union over I = 1..N is every cell,
    each exactly once.
    """
    return [cell for position, cell in enumerate(cells) if position % count == index - 1]
