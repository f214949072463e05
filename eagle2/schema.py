"""Settings described once: type, default, allowed values or bounds, and help of every key a user writes.

A `Field` describes a method parameter (eagle2.methods), a task option (harness.tasks) and a suite
key (harness.config) alike. The same description validates a value, fills in its default and
documents it (`python -m harness validate --explain`), so the checks, the defaults and the
documentation cannot drift apart. Every problem names what was given and what is allowed; an
unknown name gets "did you mean X?" and the list of known ones.

A `Registry` holds named specs (methods, task types): read-only, looked up with the same
"did you mean", and extended by building a larger copy (`with_entry`), never by changing a global.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar


class _Required:
    """The default of a key that must be given."""

    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()
_SCHEMA_METADATA = "eagle2.schema.field"  # where `setting` keeps a dataclass field's Field


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]  # accepted types; type(None) allows null; an int is accepted where float is
    default: Any = REQUIRED
    help: str = ""
    # Allowed values; a callable is asked when needed (the list may come from another package).
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False  # the minimum itself is not allowed: (minimum, maximum]
    each: Field | None = None  # the value is a list and every item must fit this field
    single: bool = False  # with `each`: one item alone stands for a list of one
    non_empty: bool = False  # an empty list is refused
    keys: Mapping[str, Field] | None = None  # the value is a mapping with these keys (checked by check_settings)
    # A rule the fields above cannot say; raises ValueError (or KeyError) naming the value and what is allowed.
    check: Callable[[Any], None] | None = None
    what: str | None = None  # how the accepted values read in messages and documentation ("a number >= 0")
    default_text: str | None = None  # the default in words, where it is not a value ("the name")
    # False for a setting added after results existed whose default reproduces what they measured: at
    # its default it is left out of a cell's identity, so those cell ids (and --resume) stay valid.
    identity_at_default: bool = True

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def allowed(self) -> list[Any] | None:
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def problems(self, value: Any, *, run_check: bool = True) -> list[tuple[tuple, str]]:
        """(path inside the value, message) for everything wrong with `value`; [] when it fits."""
        if self.each is not None:
            if self.single and not isinstance(value, list) and value is not None:
                return self.each.problems(value, run_check=run_check)
            return self._list_problems(value, run_check)
        if not self._has_kind(value):
            return [((), f"must be {self.what or type_names(self.kind)}, got {value!r}")]
        if self.non_empty and value == []:
            return [((), f"must be a non-empty list, got {value!r}")]
        if isinstance(value, float) and not math.isfinite(value):
            return [((), f"must be a finite number, got {value!r}")]
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return [((), f"must be one of the allowed values, got {value!r}; " + suggestion(value, allowed))]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self._in_bounds(value):
            return [((), f"must be {self.bounds()}, got {value!r}")]
        if run_check and self.check is not None:
            try:
                self.check(value)
            except (KeyError, ValueError) as error:
                return [((), error_text(error))]
        return []

    def _list_problems(self, value: Any, run_check: bool) -> list[tuple[tuple, str]]:
        if value is None and type(None) in _kinds(self.kind):
            return []
        if not isinstance(value, list):
            return [((), f"must be {self.what or 'a list'}, got {value!r}")]
        if self.non_empty and not value:
            return [((), f"must be a non-empty list, got {value!r}")]
        found = [((index, *where), message) for index, item in enumerate(value) for where, message in self.each.problems(item, run_check=run_check)]
        if not found and run_check and self.check is not None:
            try:
                self.check(value)
            except (KeyError, ValueError) as error:
                found.append(((), error_text(error)))
        return found

    def _has_kind(self, value: Any) -> bool:
        kinds = _kinds(self.kind)
        if isinstance(value, bool):
            return bool in kinds
        if isinstance(value, int) and float in kinds:
            return True  # 1 is a fine temperature
        return isinstance(value, kinds)

    def _in_bounds(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def bounds(self) -> str:
        """`>= 1`, `<= 8`, `in [1, 131072]`, `in (0, 1]`; '' without bounds."""
        if self.minimum is not None and self.maximum is not None:
            return f"in {'(' if self.exclusive_minimum else '['}{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f"{'>' if self.exclusive_minimum else '>='} {self.minimum}"
        return f"<= {self.maximum}" if self.maximum is not None else ""


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def type_names(kind: type | tuple[type, ...]) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in _kinds(kind))


def yaml_text(value: Any) -> str:
    """A value as a suite file writes it: true, null, [1, 2]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_text(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {yaml_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def suggestion(value: Any, known: Iterable[Any], label: str = "allowed") -> str:
    """`did you mean 'x'? allowed: a, b, c` (the first part only when a known name is close)."""
    known = list(known)
    close = difflib.get_close_matches(str(value), [str(k) for k in known], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{hint}{label}: {', '.join(yaml_text(k) for k in known) or 'none'}"


def error_text(error: Exception) -> str:
    """The message of a ValueError or KeyError (a KeyError's str() adds quotes)."""
    return str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)


# ----------------------------------------------------------------------------------------------
# Checking a mapping of settings against its fields.


@dataclass(frozen=True)
class Problem:
    path: tuple  # key path inside the mapping checked: ("sampling", "temperatures", 0)
    message: str


def check_settings(fields: Mapping[str, Field], given: Mapping[str, Any], *, owner: str | None = None,
                   noun: str = "key", needed_by: str | None = None) -> list[Problem]:
    """Unknown names (with "did you mean"), missing required ones, and every given value that does
    not fit its field, nested mappings (`Field.keys`) included. With an `owner` ("method 'eagle2'")
    messages say whose setting it is: "method 'eagle2' parameter 'depth' must be >= 1, got 0"; a
    missing one says what needs it (`needed_by`, else the owner): "task type 'questions' needs key 'path'"."""
    found = []
    for name in given:
        if name not in fields:
            lead = f"{owner} has no {noun} {name!r}" if owner else f"unknown {noun} {name!r}"
            found.append(Problem((name,), f"{lead}; {suggestion(name, fields)}"))
    for name, field in fields.items():
        if name not in given:
            if field.required:
                who = needed_by or owner
                what = f"{who} needs {noun} {name!r}" if who else f"missing required {noun} {name!r}"
                found.append(Problem((), f"{what}: {field.help}" if who and field.help else what))
            continue
        for where, message in field.problems(given[name]):
            if owner:  # "... parameter 'depth' must be >= 1", "... parameter 'tree': unknown static tree ..."
                message = f"{owner} {noun} {name!r}{' ' if message.startswith('must ') else ': '}{message}"
            found.append(Problem((name, *where), message))
        if field.keys is not None and isinstance(given[name], Mapping):
            found.extend(Problem((name, *p.path), p.message) for p in check_settings(field.keys, given[name], noun=noun))
    return found


def resolve_settings(fields: Mapping[str, Field], given: Mapping[str, Any] | None, *, owner: str, noun: str) -> dict[str, Any]:
    """Every field's value, defaults filled in. An unknown name raises KeyError, a bad value
    ValueError, each naming the owner, the setting and what is allowed; a field's own `check`
    raises as it does."""
    given = dict(given or {})
    unknown = [name for name in given if name not in fields]
    if unknown:
        raise KeyError(f"{owner} has no {noun} {unknown[0]!r}; {suggestion(unknown[0], fields)}")
    resolved = {}
    for name, field in fields.items():
        if name not in given and field.required:
            raise ValueError(f"{owner} needs {noun} {name!r}: {field.help}")
        value = given.get(name, field.default)
        bad = field.problems(value, run_check=False)
        if bad:
            raise ValueError(f"{owner} {noun} {name!r} {bad[0][1]}")
        if field.check is not None:
            field.check(value)
        resolved[name] = value
    return resolved


# ----------------------------------------------------------------------------------------------
# Dataclasses whose fields are settings.


def setting(kind: type | tuple[type, ...], help: str, default: Any = REQUIRED, **constraints: Any) -> Any:
    """A dataclass field that is also a setting: `dtype: str = setting(str, "...", "auto", choices=...)`.
    The dataclass default is the setting's default; `fields_of` reads the settings back."""
    field = Field(kind, default, help, **constraints)
    metadata = {_SCHEMA_METADATA: field}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (dict, list)):  # each instance gets its own copy
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def fields_of(cls: type) -> dict[str, Field]:
    """{name: Field} of a dataclass's settings, in declaration order (fields without one are not settings)."""
    return {f.name: f.metadata[_SCHEMA_METADATA] for f in dataclasses.fields(cls) if _SCHEMA_METADATA in f.metadata}


# ----------------------------------------------------------------------------------------------
# Registries.


class Named(Protocol):
    name: str


SpecT = TypeVar("SpecT", bound=Named)


class Registry(Mapping[str, SpecT], Generic[SpecT]):
    """Named specs in order, read-only. `lookup` explains a miss; `with_entry` builds a larger copy
    (a test, a plug-in or a script adds its own method this way, leaving the shipped registry alone)."""

    def __init__(self, noun: str, specs: Iterable[SpecT]) -> None:
        self.noun = noun  # "method", "task type": how a miss names what was asked for
        self._specs: dict[str, SpecT] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"{noun} {spec.name!r} is registered twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> SpecT:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def lookup(self, name: str) -> SpecT:
        if name not in self._specs:
            raise KeyError(self.unknown(name))
        return self._specs[name]

    def unknown(self, name: Any) -> str:
        """`unknown method 'vanila'; did you mean 'vanilla'? available: vanilla, eagle1, ...`"""
        return f"unknown {self.noun} {name!r}; {suggestion(name, self._specs, 'available')}"

    def with_entry(self, spec: SpecT) -> Registry[SpecT]:
        return Registry(self.noun, [*self._specs.values(), spec])
