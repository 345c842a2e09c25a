"""Typed settings from plain dictionaries: strict conversion, dotted overrides, YAML.

:func:`from_dict` turns a nested ``dict`` (from YAML) into nested dataclasses, checking
every key and value against the dataclass field types: an unknown key or a value of the
wrong type raises :class:`~brainldm.errors.SettingsError` naming the dotted key
(``autoencoder.optim.lr``), so a typo in a preset never passes silently.
:func:`apply_overrides` applies ``key=value`` strings (the CLI's ``--set``) to such a dict.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from brainldm.errors import SettingsError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to type ``tp`` or raise SettingsError mentioning ``key``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise SettingsError(f"Setting '{key}' must not be empty (null).")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except SettingsError as error:
                errors.append(str(error))
        raise SettingsError(errors[0] if len(errors) == 1 else
                            f"Setting '{key}' = {value!r} does not fit {_type_name(tp)}.")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise SettingsError(f"Setting '{key}' must be one of {list(allowed)}, got {value!r}.")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise SettingsError(f"Setting '{key}' must be a mapping of {tp.__name__} fields, got {value!r}.")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise SettingsError(f"Setting '{key}' must be a list, got {value!r}.")
        args = get_args(tp)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise SettingsError(f"Setting '{key}' must have {len(args)} entries, got {len(value)}.")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_type = args[0] if args else Any
            items = [_convert(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else list(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise SettingsError(f"Setting '{key}' must be a mapping, got {value!r}.")
        key_type, value_type = get_args(tp) or (Any, Any)
        return {_convert(k, key_type, key): _convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise SettingsError(f"Setting '{key}' must be true or false, got {value!r}.")
    if tp is int:
        if isinstance(value, bool):
            raise SettingsError(f"Setting '{key}' must be an integer, got {value!r}.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise SettingsError(f"Setting '{key}' must be an integer, got {value!r}.")
    if tp is float:
        if isinstance(value, bool):
            raise SettingsError(f"Setting '{key}' must be a number, got {value!r}.")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise SettingsError(f"Setting '{key}' must be a number, got {value!r}.")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise SettingsError(f"Setting '{key}' must be text, got {value!r}.")
    if tp is Path:
        return Path(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except Exception as error:
            raise SettingsError(f"Setting '{key}' = {value!r} is not a valid {tp.__name__}.") from error
    return value


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; missing keys take the dataclass defaults."""
    data = dict(data or {})
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # unresolvable annotations: fall back to the raw ones
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    field_names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - field_names)
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise SettingsError(
            f"Unknown setting '{_join(prefix, unknown[0])}'{where}"
            + (f" (and {len(unknown) - 1} more: {unknown[1:]})" if len(unknown) > 1 else "")
            + f". Known keys: {sorted(field_names)}."
        )
    kwargs = {name: _convert(value, hints.get(name, Any), _join(prefix, name)) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except SettingsError as error:
        if prefix and not str(error).startswith(prefix):
            raise SettingsError(f"{prefix}: {error}") from error
        raise
    except (TypeError, ValueError) as error:
        raise SettingsError(f"Invalid settings{' for ' + repr(prefix) if prefix else ''}: {error}") from error
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclasses -> plain dict/list/scalars (tuples become lists), for YAML/JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (``update`` wins; nested mappings are merged, lists replaced)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"denoiser.optim.lr=1e-4"`` -> (["denoiser", "optim", "lr"], 1e-4); values are parsed as YAML."""
    if "=" not in text:
        raise SettingsError(f"Override {text!r} must look like key=value (e.g. autoencoder.max_steps=500).")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise SettingsError(f"Override {text!r} has an empty key.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Apply ``key=value`` overrides to a nested dict (keys are checked later by :func:`from_dict`)."""
    result = dict(data)
    for text in overrides or ():
        path, value = parse_override(text)
        node = result
        for part in path[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[path[-1]] = value
    return result


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SettingsError(f"Configuration file {path} does not exist.") from error
    except yaml.YAMLError as error:
        raise SettingsError(f"Configuration file {path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"Configuration file {path} must hold a mapping of settings at the top level.")
    return data
