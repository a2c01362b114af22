"""Frozen-dataclass configs: defaults live in code, YAML files only override them.

``from_dict`` builds a (possibly nested) dataclass from plain data, checking every key and
type so a typo fails at load time with the full key path; ``to_dict`` gives the resolved
config back as plain data for ``config.yaml`` next to every run and artifact.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from quantir.errors import ConfigError

EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 2e-5, 1E3: numbers PyYAML leaves as text

T = TypeVar("T")


def _convert(tp, value, path: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{path}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{path}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{path}: {value!r} is not one of {[m.value for m in tp]}") from None
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and EXPONENT_NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 2e-5 (no dot) as a string; people write it that way
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict | None, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys keep their defaults."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{where}; "
                          f"valid keys: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        default = _field_default(fields[name])
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            # A partial mapping overrides the parent's default for this field (e.g. qat.train keeps
            # its QAT learning rate when only its steps are given), not the nested class's defaults.
            value = merge(to_dict(default), value)
        kwargs[name] = _convert(hints[name], value, f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except ConfigError as err:  # __post_init__ names the field; add where the dataclass sits in the config
        raise ConfigError(f"{path}.{err}" if path else str(err)) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{path or cls.__name__}: {err}") from None


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str] | None) -> dict:
    """``["train.steps=10", "model.name=abpn"]`` -> nested dict with YAML-parsed values."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _yaml().safe_load(raw)
    return out


def _yaml():
    # Imported on use: the torch-free inference install has no PyYAML, and its configs
    # (DegradationConfig, ModelInfo) never touch a file.
    import yaml

    return yaml


def load(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    yaml = _yaml()
    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
    if overrides:
        data = merge(data, overrides)
    return from_dict(cls, data)


def dump(obj, path: str | Path) -> None:
    from quantir.utils import atomic_write_text

    atomic_write_text(Path(path), dump_text(obj))


def dump_text(obj) -> str:
    return _yaml().safe_dump(to_dict(obj), sort_keys=False)


def check_choices(obj) -> None:
    """Validate the closed-set fields (``Literal`` / ``Enum``) of a dataclass built directly in code.

    ``from_dict`` already rejects a bad value with its key path; this covers ``Config(field=...)``
    calls, so a typo cannot slip past a config built in Python. Call it from ``__post_init__``.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is tuple and args and typing.get_origin(args[0]) is typing.Literal:
            choices, values = typing.get_args(args[0]), tuple(value)  # tuple[Literal[...], ...]
        elif origin is typing.Literal:
            choices, values = args, (value,)
        else:
            continue
        bad = [v for v in values if v not in choices]
        if bad:
            raise ConfigError(f"{type(obj).__name__}.{f.name}: {bad[0]!r} is not one of {list(choices)}")
