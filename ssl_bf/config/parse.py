"""Reading a config: YAML presets and `key=value` overrides onto the typed schema, and back out.

Every value is coerced to its key's annotated type here (a bad type is a ConfigError naming the
key). Nothing here fills in method defaults or checks ranges: ssl_bf/run_config.py does that.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from typing import Any, Literal, Optional

import yaml

from ..io import atomic_write_bytes
from ..yaml_io import did_you_mean, load_yaml_mapping
from .schema import Config, ConfigError

# Values a key no longer takes, with what they became. A user who gives one is told; a config saved
# before the rename (a checkpoint's, a run folder's) is read with the new name (`migrate`).
RENAMED = {
    ("backbone.name", "vit_tiny"): (
        "vit_mini", "ssl-bf's 6-block, 192-wide ViT is called vit_mini (timm's vit_tiny_patch16_224 has 12 "
                    "blocks, which ssl-bf does not build): use backbone.name=vit_mini"),
}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def all_keys() -> list[str]:
    """Every config key, dotted ('train.batch_size'), in schema order."""
    return _all_keys(Config)


def key_field(key: str) -> Optional[dataclasses.Field]:
    """The dataclass field of a dotted key (its metadata holds help, role and range), or None."""
    cls: Any = Config
    found = None
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return None
        found = fields[part]
        cls = typing.get_type_hints(cls)[part]
    return found


def key_type(key: str) -> Any:
    """The annotated type of a dotted config key, or None when there is no such key."""
    cls: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _unknown_key(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{did_you_mean(key, all_keys(), cutoff=0.5)}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to the annotated type `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(value, inner, key)
    if origin is Literal:
        if (key, value) in RENAMED:
            raise ConfigError(f"{key}: '{value}' is no longer a choice: {RENAMED[key, value][1]}")
        if value not in args:
            raise ConfigError(f"{key}: '{value}' is not one of {list(args)}")
        return value
    if origin is list:
        return _coerce_list(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got '{value}'")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return str(value)
    if tp in (int, float):
        return _number(value, tp, key)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _number(value: Any, tp: type, key: str) -> int | float:
    if isinstance(value, bool) or isinstance(value, (dict, list)) or value is None:
        raise ConfigError(f"{key}: expected {tp.__name__}, got '{value}'")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: expected {tp.__name__}, got '{value}'") from None
    if not math.isfinite(number):  # no config key gives NaN or inf a meaning
        raise ConfigError(f"{key}: expected a finite {tp.__name__}, got '{value}' (NaN and inf mean nothing here)")
    if tp is float:
        return number
    if isinstance(value, int):
        return value
    if not number.is_integer():
        raise ConfigError(f"{key}: expected int (a whole number), got '{value}'")
    try:
        return int(value) if isinstance(value, str) else int(number)
    except ValueError:  # '1e3', '64.0'
        return int(number)


def _coerce_list(value: Any, item: Any, key: str) -> list:
    """A YAML list, one bare value, or comma-separated text -> a list of `item`."""
    if isinstance(value, str):
        value = [v.strip() for v in value.strip().strip("[]").split(",") if v.strip()]
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def _apply(obj: Any, key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise _unknown_key(full_key)
    tp = typing.get_type_hints(type(obj))[head]
    if dataclasses.is_dataclass(tp):
        if rest:
            _apply(getattr(obj, head), rest, value, full_key)
        elif isinstance(value, dict):
            for k, v in value.items():
                _apply(getattr(obj, head), str(k), v, f"{full_key}.{k}")
        else:
            raise ConfigError(f"'{full_key}' is a section; set one of its keys, e.g. {full_key}.<key>=...")
    else:
        if rest:
            raise _unknown_key(full_key)
        setattr(obj, head, coerce(value, tp, full_key))


def apply_dict(cfg: Config, values: dict, prefix: str = "") -> Config:
    """Set every (nested) key of `values` on `cfg`, validating names and types."""
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            apply_dict(cfg, v, key + ".")
        else:
            _apply(cfg, key, v, key)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3' -> ('a.b', 3); the value is parsed as YAML (so 1e-3, true, null work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def format_override_value(value: Any) -> str:
    """A config value as a `key=value` override spells it (parse_override reads it back): true,
    false, null, else str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):  # one shell word: [1,3]
        return "[" + ",".join(format_override_value(v) for v in value) + "]"
    return "null" if value is None else str(value)


def _is_text(tp: Any) -> bool:
    return tp is str or (typing.get_origin(tp) is typing.Union and str in typing.get_args(tp))


def read_config(path: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Defaults <- YAML preset <- key=value overrides, typed but not yet resolved or checked.

    A text key (run.dir, data.root, train.device) takes an override's text as written (so
    `run.dir=on` is the folder 'on', not true); every other value is read as YAML.
    """
    cfg = Config()
    if path:
        apply_dict(cfg, load_yaml_mapping(path, "config file", error=ConfigError, unique_keys=True))
    for text in overrides:
        key, value = parse_override(text)
        if _is_text(key_type(key)):
            value = text.split("=", 1)[1]
        _apply(cfg, key, value, key)
    return cfg


def flatten(values: dict, prefix: str = "") -> dict:
    """{'train': {'epochs': 3}} -> {'train.epochs': 3}."""
    flat = {}
    for k, v in values.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def migrate(values: dict) -> dict:
    """A saved config (nested dict) with renamed values under their new names (RENAMED)."""
    out = {k: migrate(v) if isinstance(v, dict) else v for k, v in values.items()}
    for (key, old), (new, _) in RENAMED.items():
        *sections, leaf = key.split(".")
        node = out
        for s in sections:
            node = node.get(s) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(leaf) == old:
            node[leaf] = new
    return out


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(values: dict) -> Config:
    """A saved config (a checkpoint's or a run folder's) as a Config: renamed values migrated, types
    checked; saved configs are already resolved, so nothing else is filled in."""
    return apply_dict(Config(), migrate(values))


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML, atomically."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def same_value(key: str, saved: Any, given: Any) -> bool:
    """Whether a saved and a given value of `key` are the same setting (data.root: the same folder)."""
    if key == "data.root" and isinstance(saved, str) and isinstance(given, str):
        return os.path.normpath(os.path.expanduser(saved)) == os.path.normpath(os.path.expanduser(given))
    return saved == given
