"""Typed configuration: dataclasses to and from YAML, with type-checked dotted overrides.

A config is a tree of dataclasses whose fields all have defaults. Every value read
from YAML or from a ``key=value`` override is checked against the field's
annotation, so a typo or a wrong type stops the run with one line naming the field.

Supported annotations: ``int``, ``float`` (ints accepted), ``bool`` (real bools
only), ``str``, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``Literal[...]``, nested dataclasses and ``list[SomeDataclass]``, and a class written
as text: one with a ``parse(text)`` classmethod whose ``str()`` gives the text back
(e.g. ``budget.Budget``, ``bitops<=3e7``), held parsed and dumped as text.

Comment convention (read by :func:`describe`, shown by ``oqat config show``):
each field is declared on its own line and ends with a ``#`` comment saying what
it is and why its default was chosen::

    lr: float = 0.1  # peak learning rate; 0.1 suits SGD at batch 128

For a field spanning several lines the comment goes on its last line. Comments
are read from the class source with ``inspect`` and ``tokenize``; a class whose
source is unavailable is described without comments.

A dataclass whose fields were renamed or retyped may define a static
``upgrade(data: dict) -> dict``: it maps the plain form older versions wrote to
today's, so that their files (a run's config.yaml, the config kept in a supernet
file) still load.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import os
import textwrap
import tokenize
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar

import yaml

from .io import write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message is one line."""


def _show(value: Any) -> str:
    # Error messages must stay on one line and short, whatever the user typed.
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _is_text_type(tp: Any) -> bool:
    return isinstance(tp, type) and callable(getattr(tp, "parse", None))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it in the annotated form."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"field '{where}' expects {_type_name(tp)}, got {_show(value)}")
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"field '{where}' expects one of {choices}, got {_show(value)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field '{where}' expects {_type_name(tp)}, got {_show(value)}")
        if origin is list:
            return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"field '{where}' expects {len(args)} items ({_type_name(tp)}), got {_show(value)}"
            )
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if _is_text_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"field '{where}' expects {_type_name(tp)} text, got {_show(value)}")
        try:
            return tp.parse(value)
        except ValueError as e:
            raise ConfigError(f"field '{where}': {e}") from None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        ok = type(value) is bool
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        # YAML 1.1 reads "1e-4" (no dot) as a string, so numeric strings are accepted here.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"field '{where}' expects float, got an integer too large for one") from None
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"field '{where}': unsupported annotation {tp!r}")
    if not ok:
        raise ConfigError(f"field '{where}' expects {_type_name(tp)}, got {_show(value)}")
    return value


def _build(cls: type[T], kwargs: dict[str, Any], where: str) -> T:
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        # __post_init__ validation: keep its message, say which section it is about.
        raise ConfigError(f"invalid '{where or 'config'}': {e}") from None


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, type-checking every field."""
    if not isinstance(data, dict):
        raise ConfigError(f"section '{where or 'config'}' expects a mapping, got {_show(data)}")
    if hasattr(cls, "upgrade"):
        data = cls.upgrade(data)
    fields = {f.name: f for f in _init_fields(cls)}
    for key in data:
        if key not in fields:
            valid = ", ".join(fields)
            raise ConfigError(f"unknown field '{_join(where, str(key))}' (valid: {valid})")
    hints = _hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required field '{_join(where, name)}'")
    return _build(cls, kwargs, where)


def to_dict(cfg: Any) -> Any:
    """Plain, YAML-serialisable form of a config (tuples become lists)."""
    if _is_text_type(type(cfg)):
        return str(cfg)
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in _init_fields(type(cfg))}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _override_value(raw: str, tp: Any, key: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"override '{key}={raw}' is not valid YAML: {problem}") from None
    # A str field takes the text as typed, so `run.name=001` stays '001' rather than int 1.
    text_ok = tp is str or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                            and str in typing.get_args(tp))
    if text_ok and isinstance(value, (int, float, bool)):
        return raw
    return value


def _set_path(tree: dict, cls: type, path: list[str], raw: str, key: str, where: str = "") -> None:
    """Store the checked value of one override in ``tree``, the plain form of a ``cls``."""
    fields = [f.name for f in _init_fields(cls)]
    name, here = path[0], _join(where, path[0])
    if name not in fields:
        raise ConfigError(f"unknown field '{here}' (valid: {', '.join(fields)})")
    tp = _hints(cls)[name]
    if len(path) == 1:
        value = _override_value(raw, tp, key)
        current = tree.get(name)
        if isinstance(value, dict) and isinstance(current, dict):
            value = {**current, **value}  # a mapping updates the section
        tree[name] = to_dict(_convert(value, tp, here))
        return
    if not dataclasses.is_dataclass(tp):
        raise ConfigError(f"field '{here}' is not a section, cannot set '{key}'")
    section = tree.setdefault(name, {})
    if not isinstance(section, dict):
        raise ConfigError(f"section '{here}' expects a mapping, got {_show(section)}")
    _set_path(section, tp, path[1:], raw, key, here)


def _apply(tree: dict, cls: type, overrides: Iterable[str]) -> dict:
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.1)")
        path = key.split(".")
        if any(not p for p in path):
            raise ConfigError(f"override key {key!r} has an empty part")
        _set_path(tree, cls, path, raw, key)
    return tree


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Return a copy of ``cfg`` with dotted ``key=value`` overrides applied in order.

    Each value is type-checked as it comes; ``__post_init__`` validation runs once at
    the end, so fields checked against each other can be overridden in any order.
    """
    return from_dict(type(cfg), _apply(to_dict(cfg), type(cfg), overrides))


def load(cls: type[T], path: str | None, overrides: Iterable[str] = ()) -> T:
    """Defaults of ``cls``, updated from the YAML file at ``path`` (if any), then overrides. A
    file may name another it extends (``base: other.yaml``, relative to it): the other's
    values first, then this file's on top (mappings merged key by key, lists replaced)."""
    if path is None:
        return from_dict(cls, _apply({}, cls, overrides))
    tree = _apply(_read(path), cls, overrides)
    try:
        return from_dict(cls, tree)
    except ConfigError as e:
        raise ConfigError(f"config file '{path}': {e}") from None


def _read(path: str, seen: tuple[str, ...] = ()) -> dict:
    """The mapping in the YAML file at ``path``, merged over its ``base`` file's."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file '{path}' is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"config file '{path}'{line}: invalid YAML: {problem}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' expects a mapping at the top, got {_show(data)}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config file '{path}': base must be the path of the YAML file it extends, got {_show(base)}")
    base = os.path.join(os.path.dirname(path), base)
    if os.path.abspath(base) in seen:
        raise ConfigError(f"config file '{path}': base '{base}' extends itself in a cycle")
    return _merge(_read(base, seen + (os.path.abspath(path),)), data)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def dump(cfg: Any, path: str) -> None:
    """Write ``cfg`` as YAML atomically: a reader sees the old file or the whole new one."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_text(os.fspath(path), text)


@functools.lru_cache(maxsize=None)
def _own_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        body = ast.parse(source).body[0]
    except (tokenize.TokenError, SyntaxError):
        return {}
    out = {}
    for node in getattr(body, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if node.end_lineno in comments:
                out[node.target.id] = comments[node.end_lineno]
    return out


def field_comments(cls: type) -> dict[str, str]:
    """The ``# ...`` comment of each field of dataclass ``cls``, base classes included."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_comments(klass))
    return out


def _yaml_inline(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _describe_lines(cfg: Any, indent: str) -> list[str]:
    comments = field_comments(type(cfg))
    lines = []
    for f in _init_fields(type(cfg)):
        value = getattr(cfg, f.name)
        note = f"  # {comments[f.name]}" if f.name in comments else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{indent}{f.name}:{note}")
            lines.extend(_describe_lines(value, indent + "  "))
        else:
            lines.append(f"{indent}{f.name}: {_yaml_inline(to_dict(value))}{note}")
    return lines


def describe(cfg: Any) -> str:
    """YAML text of a config (a dataclass instance, or a class: its defaults), each field
    followed by its comment."""
    if isinstance(cfg, type):
        cfg = _build(cfg, {}, "")
    return "\n".join(_describe_lines(cfg, "")) + "\n"
