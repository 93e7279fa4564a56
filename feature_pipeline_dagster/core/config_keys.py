"""A config key declared once: its type, default, allowed values and one line of help;
the YAML file read against the declarations; the reference generated from them.

core/settings.py declares each key of the file with `key(...)` on the dataclass attribute
it fills, and each model family its own `model.*` keys with a `Key` (core/models/*/__init__.py);
the file is checked from these declarations (`Node.read_keys`) and docs/configuration.md's
reference is generated from them (`reference`), so the checks, the defaults and the
documentation cannot drift apart. Nothing here imports the rest of the package but its
errors: the model families declare keys without importing the settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from feature_pipeline_dagster.core.errors import ConfigError

REQUIRED = MISSING  # the default of a key the file must give


@dataclass(frozen=True)
class Key:
    help: str
    default: Any = REQUIRED
    kind: type | tuple[type, ...] | None = None  # what the YAML holds; None: read from the attribute's type
    choices: tuple = ()
    noun: str = ""  # a value not in `choices` is an "unknown <noun>"; without one, "expected a or b"
    registry: bool = False  # the choices grow (model families): always listed as "one of: a, b"
    positive: bool = False
    upper: bool = False  # read in capitals (Milvus' names: INT64, HNSW, COSINE)
    # A rule beyond the above: None when kept, else the message, or (suffix, message) to name
    # a part of the value (`[2]`, `.ef`).
    check: Callable[[Any], str | tuple[str, str] | None] | None = None
    name: str = ""  # the YAML key, where it is not the attribute's name (`logs.path`)

    def refusal(self, value: Any) -> str | None:
        """Why `value` (of the right kind, not None) is refused: one line, or None."""
        if self.positive and value <= 0:
            return f"must be positive, got {value!r}"
        if self.choices and value not in self.choices:
            if self.noun:
                return f"unknown {self.noun} {value!r} (expected {listing(self.choices, self.registry)})"
            return f"expected {listing(self.choices, self.registry)}, got {value!r}"
        return None


def listing(choices: tuple, registry: bool = False) -> str:
    """`a, b or c`; past four (or from a registry), `one of: a, b, c, d, e`."""
    names = [str(c) for c in choices]
    if len(names) > 4 or registry:
        return f"one of: {', '.join(names)}"
    return " or ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else names[0]


def key(help: str, default: Any = REQUIRED, compare: bool = True, **declared) -> Any:
    """A dataclass field that is a key of the file, declared by a `Key`."""
    return field(default=default, compare=compare, metadata={"key": Key(help, default, **declared)})


def declared(cls) -> dict[str, tuple[Key, Any]]:
    """The keys `cls` declares: attribute -> (its Key, its type)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f.metadata["key"], hints[f.name]) for f in fields(cls) if "key" in f.metadata}


def _unwrap(hint) -> tuple[Any, tuple]:
    """(the type without `| None`, the type's arguments)."""
    if isinstance(hint, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint, typing.get_args(hint)


def _is_mapping(hint) -> bool:
    """tuple[tuple[str, X], ...]: a YAML mapping kept as sorted pairs."""
    hint, args = _unwrap(hint)
    return typing.get_origin(hint) is tuple and args[-1] is ... and len(typing.get_args(args[0])) == 2 \
        and typing.get_args(args[0])[-1] is not ...


def section_of(hint):
    """The dataclass a key's value is parsed into (itself or a list of them), else None."""
    hint, args = _unwrap(hint)
    inner = args[0] if typing.get_origin(hint) is tuple else hint
    return inner if dataclasses.is_dataclass(inner) else None


def _kind(hint, decl: Key):
    """What the YAML holds for a key."""
    if decl.kind is not None:
        return decl.kind
    hint, _ = _unwrap(hint)
    if _is_mapping(hint) or dataclasses.is_dataclass(hint):
        return dict
    if typing.get_origin(hint) is tuple:
        return list
    return str if hint is Path else hint


def _convert(value, hint):
    """The YAML value as the attribute's type: lists as tuples, mappings as sorted pairs."""
    hint, args = _unwrap(hint)
    if hint is Path:
        return Path(value)
    if typing.get_origin(hint) is tuple and isinstance(value, str):  # one item stands for a list of one (gpus: cpu)
        return (value,)
    if typing.get_origin(hint) is tuple and isinstance(value, (list, dict)):
        if _is_mapping(hint):
            return tuple(sorted(value.items()))
        return tuple(_convert(v, args[0]) for v in value)
    return value


class Node:
    """A mapping in the YAML file that knows its own key path, so errors can name it."""

    def __init__(self, data: Any, key: str, source: Path):
        self.key, self.source = key, source
        if not isinstance(data, dict):
            self.fail(f"expected a mapping, got {type(data).__name__}")
        self.data = data

    def fail(self, message: str, key: str | None = None):
        where = f"{self.key}.{key}" if key and self.key else (key or self.key)
        raise ConfigError(f"{self.source}: {where}: {message}")

    def check_keys(self, allowed: set[str]) -> None:
        for key in self.data:
            if key not in allowed:
                self.fail(f"unknown key (expected one of: {', '.join(sorted(allowed))})", key)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = REQUIRED):
        if key not in self.data or self.data[key] is None:
            if default is REQUIRED:
                self.fail("missing required key", key)
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"expected {names}, got {value!r}", key)
        return value

    def read(self, name: str, decl: Key, hint) -> Any:
        """One declared key: its default if absent, else checked against its declaration."""
        if name not in self.data or self.data[name] is None:
            if decl.default is REQUIRED:
                self.fail("missing required key", name)
            return decl.default
        value = self.get(name, _kind(hint, decl))
        if decl.upper:
            value = value.upper()
        problem = decl.refusal(value) or (decl.check(value) if decl.check else None)
        if isinstance(problem, tuple):
            self.fail(problem[1], name + problem[0])
        if problem:
            self.fail(problem, name)
        return _convert(value, hint)

    def read_keys(self, cls) -> dict[str, Any]:
        """Every key `cls` declares that is not a section of its own (those are left to
        their parser), after refusing keys it does not declare."""
        keys = declared(cls)
        self.check_keys({(decl.name or attr).split(".")[0] for attr, (decl, _) in keys.items()})
        return {attr: self.read(decl.name or attr, decl, hint) for attr, (decl, hint) in keys.items()
                if section_of(hint) is None and "." not in decl.name}

    def child(self, key: str, required: bool = True) -> Node:
        return Node(self.get(key, dict, REQUIRED if required else {}), _join(self.key, key), self.source)

    def items(self, key: str, required: bool = True) -> list[Node]:
        """The mappings of the list `key`, each a node (`key[i]`)."""
        given = self.get(key, list, REQUIRED if required else [])
        return [Node(item, f"{_join(self.key, key)}[{i}]", self.source) for i, item in enumerate(given)]


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# The reference (docs/configuration.md), generated.

def reference(root, extra: dict[str, list[tuple[str, Key]]]) -> str:
    """Markdown tables of every key under `root` (a dataclass of `key(...)` fields), one
    per section, depth first; `extra`: more rows for a section (a model family's keys)."""
    out: list[str] = []

    def table(title: str, rows: list[tuple[str, Key, Any]]) -> None:
        out.extend([f"### {title}", "", "| key | type | default | choices | help |", "|---|---|---|---|---|"])
        for name, decl, hint in rows:
            cells = (f"`{name}`", _type_name(hint, decl), _shown(decl.default, hint, decl),
                     ", ".join(f"`{c}`" for c in decl.choices), decl.help)
            out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        out.append("")

    def walk(cls, title: str) -> None:
        keys = declared(cls)
        table(title, [(decl.name or attr, decl, hint) for attr, (decl, hint) in keys.items()])
        for heading, rows in extra.items():
            if heading.startswith(f"{title} "):
                table(heading, [(name, decl, decl.kind) for name, decl in rows])
        for attr, (decl, hint) in keys.items():
            if (inner := section_of(hint)) is not None:
                name = (f"{title}." if title != "top level" else "") + (decl.name or attr)
                walk(inner, name + ("[]" if typing.get_origin(_unwrap(hint)[0]) is tuple else ""))

    walk(root, "top level")
    return "\n".join(out)


def _type_name(hint, decl: Key) -> str:
    if section_of(hint) is not None:
        return "list of mappings" if typing.get_origin(_unwrap(hint)[0]) is tuple else "mapping"
    if _unwrap(hint)[0] is Path:
        return "path"
    kinds = decl.kind if isinstance(decl.kind, tuple) else (_kind(hint, decl),)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list", dict: "mapping"}
    if kinds == (list,):  # of what
        return f"list of {_type_name(_unwrap(hint)[1][0], Key('', None))}s"
    return " or ".join(names[k] for k in kinds)


def _shown(default, hint, decl: Key) -> str:
    if default is REQUIRED:
        return "required"
    if default is None:
        return "none"
    if dataclasses.is_dataclass(default):
        return "(all defaults)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return "`{}`" if _kind(hint, decl) is dict else f"`[{', '.join(map(str, default))}]`"
    return f"`{default}`"
