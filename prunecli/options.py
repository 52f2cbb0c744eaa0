"""Typed options: a config node parsed once into a frozen dataclass.

A group's options are a frozen dataclass whose fields are the keys of its YAML, with their
types and defaults. :func:`parse` turns the node into one, checking

* every key is a field (an unknown key: one line naming it and the closest field),
* every value has the field's type: ``int`` refuses booleans and floats, ``float`` takes
  ints, ``bool`` only booleans, ``Literal[...]`` lists its choices, ``X | None`` allows null,
  ``list[X]`` checks each item, ``dict`` / ``Any`` take what they get,
* then the class's own :meth:`Options.check` for rules between fields or ranges.

Fields missing from the node take their defaults (direct API use with a partial node); the
test ``test_yaml_defaults_match_the_options`` keeps each YAML's values equal to them.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, TypeVar, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from prunecli.errors import PruneError

O = TypeVar("O", bound="Options")


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every typed option set: ``name`` is the config group's choice (``method=wanda`` ->
    ``wanda``); ``check`` holds the rules a type cannot state."""

    name: str = ""

    def check(self, prefix: str) -> None:
        """Raise :class:`PruneError` naming ``<prefix>.<key>`` for a value the type allows but the rule does not."""


def choice_of(cfg: Any, group: str, default: str = "none") -> str:
    """The option a config group is set to (its node's ``name``), ``default`` where the run has no such node."""
    return (cfg.get(group) or {}).get("name", default)


def node_values(node: Any, prefix: str) -> dict:
    """A config node (or mapping) as a plain dict, interpolations resolved; a mandatory value left
    unset (``???``) is one line naming it."""
    if not isinstance(node, DictConfig):
        return dict(node or {})
    missing = unset_keys(OmegaConf.to_container(node, resolve=False))
    if missing:
        raise PruneError(f"{prefix}.{missing[0]} must be set: {prefix}.{missing[0]}=...")
    return OmegaConf.to_container(node, resolve=True)


def unset_keys(values: dict, path: str = "") -> list[str]:
    """The dotted keys whose raw value is OmegaConf's mandatory marker ``???``."""
    keys = []
    for key, value in values.items():
        if value == MISSING:
            keys.append(f"{path}{key}")
        elif isinstance(value, dict):
            keys.extend(unset_keys(value, f"{path}{key}."))
    return keys


def parse(cls: type[O], node: Any, prefix: str) -> O:
    """``cls`` filled from ``node`` (a DictConfig or mapping), every key and value checked (see module doc)."""
    values = node_values(node, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            hint = f" (did you mean {prefix}.{close[0]}?)" if close else f" (its keys: {', '.join(fields) or 'none'})"
            raise PruneError(f"unknown key {prefix}.{key}{hint}")
    for key, value in values.items():
        check_type(value, hints[key], f"{prefix}.{key}")
    options = cls(**values)
    options.check(prefix)
    return options


def check_type(value: Any, expected: Any, name: str) -> None:
    """Raise one line naming ``name`` unless ``value`` has type ``expected`` (see module doc)."""
    if not matches(value, expected):
        if typing.get_origin(expected) is Literal:
            raise PruneError(f"unknown {name} {value!r} (choose from: {', '.join(map(str, typing.get_args(expected)))})")
        raise PruneError(f"{name} must be {describe(expected)} (got {value!r})")


def matches(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is Any:
        return True
    if origin is Literal:
        return any(type(value) is type(choice) and value == choice for choice in args)
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple) or expected in (list, tuple):
        return isinstance(value, (list, tuple)) and all(matches(item, args[0]) for item in value if args)
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    return isinstance(value, expected)


def describe(expected: Any) -> str:
    """``int | None`` -> "an integer or null"."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin in (list, tuple):
        return f"a list of {describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping", type(None): "null"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def at_least(options: Options, prefix: str, key: str, minimum: float) -> None:
    """``options.<key> >= minimum`` (null passes), else one line naming ``<prefix>.<key>`` and its type."""
    value = getattr(options, key)
    if value is None or value >= minimum:
        return
    hint = typing.get_type_hints(type(options))[key]
    integer = int in (hint, *typing.get_args(hint))
    kind = "a positive integer" if integer and minimum == 1 else f"{'an integer' if integer else 'a number'} >= {minimum:g}"
    raise PruneError(f"{prefix}.{key} must be {kind} (got {value!r})")
