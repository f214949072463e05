"""Suites: a versioned YAML schema read into frozen dataclasses, validated, and expanded into cells.

A suite names models, tasks and methods (with sweep grids over method parameters), sampling
temperatures, seeds and repeats. `expand(suite)` crosses them into `Cell`s, the unit of work and
of resumption; each has a `cell_id` that is a stable function of everything that changes its
outputs (not of the question limit, repeats, device or warm-up), so re-running a suite with a
larger --limit reuses the finished work.

Schema 1 (every key but `schema`, `name`, `models`, `tasks`, `methods` is optional):

    schema: 1
    name: mtbench                      # results go to results/<name>/ by default
    description: ...
    models:
      - name: smollm2-135m             # the `model` column of the results; unique
        source: embedded               # embedded | tiny-random-llama | folder | hub id | file.gguf
        gguf_file: null                # a GGUF inside `source` (a folder or hub id)
        revision: null                 # hub revision
        dtype: auto                    # auto | float32 | float16 | bfloat16 | float64 (fp16, bf16, ...)
        device: auto                   # auto (cuda if present, else cpu) | cpu | cuda | cuda:N | mps
        device_map: null               # passed to transformers (e.g. auto); then `device` is ignored
        compile: auto                  # auto | true | false: the static-shape, torch.compile'd engine path
                                       # (auto: true on CUDA, and on a CPU in bf16/fp16, where it measured faster)
        methods: null                  # the suite's methods this model runs (null = all), e.g. [vanilla]
        head: random                   # null | random | builtin:NAME | folder | hub id (EAGLE-1/2 layout)
        head_fallback: null            # used, with a warning, when `head` is a built-in not installed
        eagle3_head: null              # the EAGLE-3 head (method eagle3): null | random | builtin:NAME | folder | hub id
        chat_template: tokenizer       # tokenizer | a FastChat template (vicuna_v1.1, llama-2, ...)
        system_message: null
    tasks:
      - name: mt_bench                 # the `task` column; unique; also the task type by default
        type: mt_bench                 # mt_bench | questions | humaneval | gsm8k (harness ls)
        limit: 8                       # first N questions (null = all)
        select: spread                 # first | spread (round-robin over categories)
        max_new_tokens: 128
        ...                            # the task type's options (harness ls)
    methods:
      - vanilla                        # a name alone, or:
      - name: eagle2
        params: {depth: 6, top_k: 10, total_tokens: 60}
        sweep: {depth: [4, 6, 8]}      # a grid: every combination becomes its own cells
    sampling:
      temperatures: [0.0, 1.0]         # a number or a list; 0 = greedy (exact argmax)
      top_p: 1.0
      top_k: 0
    seeds: [0]                         # a number or a list; each seed is its own cell
    repeats: 1                         # each question is generated this many times per cell
    warmup: {generations: 1, max_new_tokens: 16}   # per model and method configuration
    profile: true                      # split time into draft/verify/other (device sync per phase)

Limits checked when a suite is read (`validate` and `run`): a UTF-8 file of at most 1 MiB whose
aliases expand it to at most 20,000 YAML values (a "billion laughs" file is refused before it is
expanded); finite numbers; max_new_tokens at most 131,072 and below the model's context where it is
known cheaply (built-in sources, a local folder's config.json, a hub config already in the cache);
a head given as a local path must be a folder with a valid config.json.
"""

from __future__ import annotations

import dataclasses
import difflib
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
from typing import Any

import yaml

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


class SuiteError(ValueError):
    """A suite file that does not validate; the message lists every problem, one per line."""

    def __init__(self, path: str, problems: Sequence[str]) -> None:
        self.path = path
        self.problems = list(problems)
        plural = "s" if len(self.problems) != 1 else ""
        super().__init__(f"{path}: {len(self.problems)} problem{plural}:\n" + "\n".join(f"  {p}" for p in self.problems))


# ----------------------------------------------------------------------------------------------
# The schema.


# The model key that names the head of each head kind (eagle2.methods.HEAD_KINDS).
HEAD_KEYS: Mapping[str, str] = MappingProxyType({"eagle": "head", "eagle3": "eagle3_head"})


@dataclass(frozen=True)
class ModelConfig:
    name: str  # label in results (`model`)
    source: str = "embedded"  # embedded | tiny-random-llama | local folder | hub id | x.gguf
    gguf_file: str | None = None  # a GGUF file inside `source`
    revision: str | None = None  # hub revision (branch, tag or commit)
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16 | float64 (and fp16/bf16/... aliases)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    device_map: str | None = None  # transformers device_map (e.g. "auto"); overrides `device`
    head: str | None = None  # None | random | builtin:NAME | folder | hub id
    head_fallback: str | None = None  # head used (with a warning) when a builtin `head` is not installed
    eagle3_head: str | None = None  # EAGLE-3 head for method eagle3: None | random | builtin:NAME | folder | hub id
    chat_template: str = "tokenizer"  # tokenizer | FastChat template name
    system_message: str | None = None  # None = the template's default
    # auto | true | false: run the engine's static-shape path (eagle2.static) with torch.compile;
    # auto = true on CUDA (CUDA graphs) and for bf16/fp16 on a CPU; false for float32 on a CPU (see README).
    compile: str | bool = "auto"
    # Names of the suite's methods this model runs (None = all): e.g. a float32 model entry that runs
    # only vanilla, so a report can state the fastest vanilla of the run across dtypes.
    methods: tuple[str, ...] | None = None
    gpus: int | None = None  # GPUs one copy of the model takes on a Ray/SLURM worker (None: 0 on cpu, else 1)

    def identity(self) -> dict[str, Any]:
        """What changes this model's outputs (device placement and compilation do not; the head is the cell's)."""
        skip = {"device", "device_map", "head", "head_fallback", "eagle3_head", "compile", "methods", "gpus"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass(frozen=True)
class TaskConfig:
    name: str  # label in results (`task`)
    type: str  # key of harness.tasks.TASKS
    limit: int | None = None  # questions to run (None = all)
    select: str = "first"  # first | spread: which `limit` questions
    max_new_tokens: int = 256
    options: Mapping[str, Any] = field(default_factory=dict)  # the type's options, defaults filled in

    def identity(self) -> dict[str, Any]:
        """What changes a question's outputs (which questions run does not)."""
        return {"name": self.name, "type": self.type, "max_new_tokens": self.max_new_tokens, "options": dict(self.options)}


@dataclass(frozen=True)
class MethodConfig:
    name: str  # key of eagle2.METHODS
    params: Mapping[str, Any] = field(default_factory=dict)  # as written (unresolved)
    sweep: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # parameter -> values

    def grid(self) -> list[dict[str, Any]]:
        """Every parameter combination of the sweep, over the fixed params (sweep order as written)."""
        names = list(self.sweep)
        combos = itertools.product(*(self.sweep[n] for n in names)) if names else [()]
        return [{**dict(self.params), **dict(zip(names, values))} for values in combos]


@dataclass(frozen=True)
class SamplingSettings:
    temperatures: tuple[float, ...] = (0.0,)  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0


@dataclass(frozen=True)
class WarmupConfig:
    generations: int = 1  # untimed generations per (model, method configuration) before its first timed one
    max_new_tokens: int = 16


@dataclass(frozen=True)
class Suite:
    schema: int
    name: str
    models: tuple[ModelConfig, ...]
    tasks: tuple[TaskConfig, ...]
    methods: tuple[MethodConfig, ...]
    description: str = ""
    sampling: SamplingSettings = SamplingSettings()
    seeds: tuple[int, ...] = (0,)
    repeats: int = 1
    warmup: WarmupConfig = WarmupConfig()
    profile: bool = True  # per-phase timing (a device sync at each phase boundary; free on CPU)
    path: str | None = None  # the file it was read from

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


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

    def identity(self) -> dict[str, Any]:
        return _plain(
            {
                "model": self.model.identity(),
                "head": self.head,
                "task": self.task.identity(),
                "method": self.method,
                "method_params": dict(self.method_params),
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
    """Collects problems as `file:line: key.path: message`."""

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

    def keys(self, path: tuple, data: Mapping[str, Any], allowed: Sequence[str], required: Sequence[str] = ()) -> None:
        for key in data:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.error(path + (key,), f"unknown key {key!r}; {hint}allowed: {', '.join(allowed)}")
        for key in required:
            if key not in data:
                self.error(path, f"missing required key {key!r}")

    def value(self, path: tuple, value: Any, kinds: type | tuple[type, ...], *, choices: Sequence[Any] | None = None,
              minimum: float | None = None, maximum: float | None = None, what: str | None = None) -> bool:
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif isinstance(value, int) and float in kinds and int not in kinds:
            ok = True  # 1 is a fine temperature
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            self.error(path, f"must be {what or names}, got {value!r}")
            return False
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"must be a finite number, got {value!r}")
            return False
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.error(path, f"{value!r} is not allowed; {hint}allowed: {', '.join(map(str, choices))}")
            return False
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            self.error(path, f"must be >= {minimum}, got {value!r}")
            return False
        if maximum is not None and isinstance(value, (int, float)) and value > maximum:
            self.error(path, f"must be <= {maximum}, got {value!r}")
            return False
        return True


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


# ----------------------------------------------------------------------------------------------
# Validation: YAML data -> Suite.

_TOP_KEYS = ("schema", "name", "description", "models", "tasks", "methods", "sampling", "seeds", "repeats", "warmup", "profile")
_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
_TASK_COMMON = ("name", "type", "limit", "select", "max_new_tokens")
_METHOD_KEYS = ("name", "params", "sweep")
_SAMPLING_KEYS = ("temperatures", "top_p", "top_k")
_WARMUP_KEYS = ("generations", "max_new_tokens")


def _dtype_names() -> list[str]:
    from eagle2.target import DTYPES

    return ["auto", *DTYPES, "fp32", "fp64", "bf16", "fp16", "half"]


def _chat_templates() -> list[str]:
    from fastchat.conversation import conv_templates

    return ["tokenizer", *sorted(conv_templates)]


def _check_model(check: _Checker, path: tuple, data: Any) -> ModelConfig | None:
    if not isinstance(data, Mapping):
        check.error(path, f"a model must be a mapping with at least `name`, got {data!r}")
        return None
    check.keys(path, data, _MODEL_KEYS, required=("name",))
    fields = {}
    for key in _MODEL_KEYS:
        if key not in data:
            continue
        value = data[key]
        if key == "name":
            if check.value(path + (key,), value, str) and not NAME_PATTERN.match(value):
                check.error(path + (key,), f"{value!r}: use letters, digits and _ . + - (it becomes part of cell ids)")
        elif key == "dtype":
            check.value(path + (key,), value, str, choices=_dtype_names())
        elif key == "device":
            if check.value(path + (key,), value, str) and not DEVICE_PATTERN.match(value):
                check.error(path + (key,), f"{value!r} is not a device; allowed: auto, cpu, cuda, cuda:N, mps")
        elif key == "chat_template":
            if check.value(path + (key,), value, str) and value != "tokenizer":
                try:
                    names = _chat_templates()
                except ImportError:
                    check.error(path + (key,), f"{value!r} is a FastChat template, which needs the fschat package: pip install fschat")
                else:
                    check.value(path + (key,), value, str, choices=names)
        elif key == "source":
            check.value(path + (key,), value, str)
        elif key in ("head", "head_fallback", "eagle3_head"):
            if check.value(path + (key,), value, (str, type(None))) and value is not None:
                problem = head_problem(value)
                if problem:
                    check.error(path + (key,), problem)
        elif key == "compile":
            if value not in ("auto", True, False):
                check.error(path + (key,), f"{value!r} is not a compile setting; allowed: auto, true, false")
        elif key == "methods":
            from eagle2.methods import METHODS

            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                check.error(path + (key,), f"a non-empty list of method names, got {value!r}")
            else:
                for index, name in enumerate(value):
                    if name not in METHODS:
                        close = difflib.get_close_matches(name, list(METHODS), n=1)
                        hint = f"; did you mean {close[0]!r}?" if close else ""
                        check.error(path + (key, index), f"unknown method {name!r}{hint} available: {', '.join(METHODS)}")
                value = tuple(value)
        elif key == "gpus":
            check.value(path + (key,), value, (int, type(None)), minimum=0)
        else:
            check.value(path + (key,), value, (str, type(None)))
        fields[key] = value
    if "name" not in fields or not isinstance(fields.get("name"), str):
        return None
    try:
        return ModelConfig(**fields)
    except TypeError:  # a wrong type already reported
        return None


def _check_task(check: _Checker, path: tuple, data: Any) -> TaskConfig | None:
    from harness.tasks import TASKS

    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        check.error(path, f"a task must be a task name or a mapping with `name`, got {data!r}")
        return None
    task_type = data.get("type", data.get("name"))
    if not isinstance(task_type, str) or task_type not in TASKS:
        key = "type" if "type" in data else "name"
        if "name" not in data:
            check.error(path, "missing required key 'name'")
        else:
            close = difflib.get_close_matches(str(task_type), list(TASKS), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            extra = "" if key == "type" else " (or give `type` when `name` is a label)"
            check.error(path + (key,), f"unknown task type {task_type!r}; {hint}available: {', '.join(TASKS)}{extra}")
        return None
    spec = TASKS[task_type]
    check.keys(path, data, [*_TASK_COMMON, *spec.options], required=("name",))
    ok = check.value(path + ("name",), data["name"], str)
    if ok and not NAME_PATTERN.match(data["name"]):
        check.error(path + ("name",), f"{data['name']!r}: use letters, digits and _ . + -")
    limit = data.get("limit")
    check.value(path + ("limit",), limit, (int, type(None)), minimum=1)
    select = data.get("select", "first")
    check.value(path + ("select",), select, str, choices=TASK_SELECT)
    max_new = data.get("max_new_tokens", TaskConfig.max_new_tokens)
    check.value(path + ("max_new_tokens",), max_new, int, minimum=1, maximum=MAX_NEW_TOKENS_BOUND)
    options = {}
    for name, option in spec.options.items():
        value = data.get(name, option.default)
        if name in data:
            check.value(path + (name,), value, option.kind, choices=option.choices, minimum=option.minimum)
            if name == "categories" and isinstance(value, list) and not all(isinstance(v, str) for v in value):
                check.error(path + (name,), f"must be a list of category names, got {value!r}")
        options[name] = tuple(value) if isinstance(value, list) else value
    if task_type == "questions" and not options.get("path"):
        check.error(path, "task type 'questions' needs `path`: a question file (question_id, category, turns)")
    return TaskConfig(name=data["name"], type=task_type, limit=limit, select=select, max_new_tokens=max_new, options=options)


def _check_method(check: _Checker, path: tuple, data: Any) -> MethodConfig | None:
    from eagle2.methods import METHODS

    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, Mapping):
        check.error(path, f"a method must be a method name or a mapping with `name`, got {data!r}")
        return None
    check.keys(path, data, _METHOD_KEYS, required=("name",))
    name = data.get("name")
    if name is None:
        return None
    if not check.value(path + ("name",), name, str, choices=list(METHODS)):
        return None
    spec = METHODS[name]
    params = data.get("params") or {}
    sweep = data.get("sweep") or {}
    if not check.value(path + ("params",), params, dict, what="a mapping of parameter: value"):
        return None
    if not check.value(path + ("sweep",), sweep, dict, what="a mapping of parameter: [values]"):
        return None
    allowed = list(spec.params)
    good = True
    for section, values in (("params", params), ("sweep", sweep)):
        for key in values:
            if key not in spec.params:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                check.error(path + (section, key), f"method {name!r} has no parameter {key!r}; {hint}allowed: {', '.join(allowed) or 'none'}")
                good = False
    for key, values in sweep.items():
        if not isinstance(values, list) or not values:
            check.error(path + ("sweep", key), f"a sweep needs a non-empty list of values, got {values!r}")
            good = False
        elif key in params:
            check.error(path + ("sweep", key), f"{key!r} is both in params and in sweep; keep one")
            good = False
    if not good:
        return None
    method = MethodConfig(name=name, params=dict(params), sweep={k: tuple(v) for k, v in sweep.items()})
    for combo in method.grid():
        try:
            spec.resolve(combo)
        except (KeyError, ValueError) as error:
            key = next((k for k in combo if _fails_alone(spec, k, combo[k])), None)
            section = "sweep" if key in sweep else "params"
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            if key is not None and repr(key) not in message:
                message = f"method {name!r} parameter {key!r}: {message}"
            check.error(path + ((section, key) if key else ()), message)
            return None
    return method


def _fails_alone(spec: Any, key: str, value: Any) -> bool:
    try:
        spec.resolve({key: value})
    except (KeyError, ValueError):
        return True
    return False


def suite_from_dict(data: Any, path: str = "<suite>", lines: Mapping[tuple, int] | None = None) -> Suite:
    """Validate YAML data into a Suite; raises SuiteError listing every problem found."""
    check = _Checker(path, lines or {})
    if not isinstance(data, Mapping):
        raise SuiteError(path, [f"a suite is a mapping with schema, name, models, tasks and methods; got {type(data).__name__}"])
    check.keys((), data, _TOP_KEYS, required=("schema", "name", "models", "tasks", "methods"))
    schema = data.get("schema")
    if "schema" in data and schema != SCHEMA_VERSION:
        check.error(("schema",), f"this harness reads schema {SCHEMA_VERSION}, got {schema!r}")
    name = data.get("name", "")
    if "name" in data and check.value(("name",), name, str) and not NAME_PATTERN.match(name):
        check.error(("name",), f"{name!r}: use letters, digits and _ . + - (it names the output folder)")
    description = data.get("description", "")
    check.value(("description",), description, str)

    def items(key: str, parse) -> list:
        raw = data.get(key)
        if key not in data:
            return []
        if not isinstance(raw, list) or not raw:
            check.error((key,), f"must be a non-empty list, got {raw!r}")
            return []
        return [parse(check, (key, index), item) for index, item in enumerate(raw)]

    models = items("models", _check_model)
    tasks = items("tasks", _check_task)
    methods = items("methods", _check_method)
    for key, parsed in (("models", models), ("tasks", tasks)):
        names = [p.name for p in parsed if p is not None]
        for index, item in enumerate(parsed):
            if item is not None and names.count(item.name) > 1:
                check.error((key, index, "name"), f"{item.name!r} is used by more than one entry of {key}; names must be unique")
    from eagle2.methods import METHODS

    for kind, key in HEAD_KEYS.items():
        needing = [(i, m.name) for i, m in enumerate(methods) if m is not None and METHODS[m.name].head_kind == kind]
        for index, model in enumerate(models):
            own = [(i, name) for i, name in needing if model is None or model.methods is None or name in model.methods]
            if model is not None and getattr(model, key) is None and own:
                method_index, method_name = own[0]
                what, layout = ("draft head", "") if kind == "eagle" else (f"EAGLE-3 head ({key})", " in the EAGLE-3 layout")
                check.error(("models", index, key),
                            f"model {model.name!r} has no {what} but methods[{method_index}] ({method_name}) needs one; "
                            f"set {key}: random, builtin:NAME, a folder or a hub id{layout}")

    for task_index, task in enumerate(tasks):
        if task is None:
            continue
        for model in models:
            problem = None if model is None else context_problem(model, task.max_new_tokens)
            if problem:
                check.error(("tasks", task_index, "max_new_tokens"), problem)

    sampling = SamplingSettings()
    raw_sampling = data.get("sampling", {})
    if check.value(("sampling",), raw_sampling, dict, what="a mapping with temperatures, top_p, top_k"):
        check.keys(("sampling",), raw_sampling, _SAMPLING_KEYS)
        temps = _as_list(raw_sampling.get("temperatures", [0.0]))
        good = bool(temps)
        if not temps:
            check.error(("sampling", "temperatures"), "needs at least one temperature")
        for index, temp in enumerate(temps):
            good = check.value(("sampling", "temperatures", index), temp, float, minimum=0.0, what="a number >= 0") and good
        top_p = raw_sampling.get("top_p", 1.0)
        top_k = raw_sampling.get("top_k", 0)
        good = check.value(("sampling", "top_p"), top_p, float, minimum=0.0, maximum=1.0) and good
        if isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and top_p <= 0:
            check.error(("sampling", "top_p"), f"must be in (0, 1], got {top_p!r}")
            good = False
        good = check.value(("sampling", "top_k"), top_k, int, minimum=0) and good
        if good:
            sampling = SamplingSettings(tuple(float(t) for t in temps), float(top_p), int(top_k))
    seeds = _as_list(data.get("seeds", [0]))
    if not seeds:
        check.error(("seeds",), "needs at least one seed")
    for index, seed in enumerate(seeds):
        check.value(("seeds", index) if isinstance(data.get("seeds"), list) else ("seeds",), seed, int, minimum=0)
    repeats = data.get("repeats", 1)
    check.value(("repeats",), repeats, int, minimum=1)
    warmup = WarmupConfig()
    raw_warmup = data.get("warmup", {})
    if isinstance(raw_warmup, int) and not isinstance(raw_warmup, bool):
        raw_warmup = {"generations": raw_warmup}
    if check.value(("warmup",), raw_warmup, dict, what="a mapping with generations, max_new_tokens (or a number of generations)"):
        check.keys(("warmup",), raw_warmup, _WARMUP_KEYS)
        gens = raw_warmup.get("generations", 1)
        tokens = raw_warmup.get("max_new_tokens", 16)
        if check.value(("warmup", "generations"), gens, int, minimum=0) & check.value(("warmup", "max_new_tokens"), tokens, int, minimum=1):
            warmup = WarmupConfig(gens, tokens)
    profile = data.get("profile", True)
    check.value(("profile",), profile, bool)

    if check.problems:
        raise SuiteError(path, check.problems)
    return Suite(
        schema=schema,
        name=name,
        description=description,
        models=tuple(models),
        tasks=tuple(tasks),
        methods=tuple(methods),
        sampling=sampling,
        seeds=tuple(int(s) for s in seeds),
        repeats=repeats,
        warmup=warmup,
        profile=profile,
        path=path,
    )


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


def head_problem(spec: str) -> str | None:
    """Why a `head` value cannot be loaded, when that shows without loading it (None otherwise).
    random, builtin:NAME (reported by `validate` with its fallback) and hub ids (owner/name) pass;
    a local path must be a folder with a readable config.json."""
    if spec == "random" or spec.startswith("builtin:"):
        return None
    path = Path(spec).expanduser()
    looks_local = spec.startswith((".", "/", "~")) or spec.count("/") != 1 or path.exists()
    if not looks_local:
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


def expand(suite: Suite) -> list[Cell]:
    """models x tasks x methods (x sweep grid) x temperatures x seeds, in that order; duplicates dropped."""
    from eagle2.methods import METHODS

    cells: list[Cell] = []
    seen: set[str] = set()
    for model in suite.models:
        for task in suite.tasks:
            for method in suite.methods:
                if model.methods is not None and method.name not in model.methods:
                    continue
                for params in method.grid():
                    resolved = _plain(METHODS[method.name].resolve(params))
                    for temperature in suite.sampling.temperatures:
                        for seed in suite.seeds:
                            cell = Cell(
                                model=model,
                                task=task,
                                method=method.name,
                                method_params=resolved,
                                temperature=float(temperature),
                                top_p=suite.sampling.top_p,
                                top_k=suite.sampling.top_k,
                                seed=seed,
                                repeats=suite.repeats,
                                head=effective_head(model, METHODS[method.name].head_kind) if METHODS[method.name].needs_head else None,
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
