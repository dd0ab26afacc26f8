"""Reading a config: YAML presets and `key=value` overrides onto the typed schema, and back out.

Every value is coerced to its key's annotated type here (a bad type is a ConfigError naming the
key). Nothing here fills in method defaults or checks ranges: ssl_bf/run_config.py does that.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from typing import Any, Literal, Optional

from ..atomic_write import write_text
from ..run_layout import Owner
from ..yaml_io import NULL, core_tag, did_you_mean, dump_yaml, load_yaml_mapping, read_yaml_value, scalar_value
from .schema import Config, ConfigError

# Values a key no longer takes, with what they became. A user who gives one is told; a config saved
# before the rename (a checkpoint's, a run folder's) is read with the new name (`migrate`).
RENAMED = {
    ("backbone.name", "vit_tiny"): (
        "vit_mini", "ssl-bf's 6-block, 192-wide ViT is called vit_mini (timm's vit_tiny_patch16_224 has 12 "
                    "blocks, which ssl-bf does not build): use backbone.name=vit_mini"),
}


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of a schema dataclass (typing.get_type_hints, computed once)."""
    return typing.get_type_hints(cls)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = _hints(cls)
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
        cls = _hints(cls)[part]
    return found


def key_type(key: str) -> Any:
    """The annotated type of a dotted config key, or None when there is no such key."""
    cls: Any = Config
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return None
        hints = _hints(cls)
        if part not in hints:
            return None
        cls = hints[part]
    return cls


def _unknown_key(key: str) -> ConfigError:
    return ConfigError(f"unknown config key '{key}'{did_you_mean(key, all_keys(), cutoff=0.5)}")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` as read from YAML 1.2 core (a file, an override's value, a saved config) converted to
    the annotated type `tp`, or a ConfigError naming the key. Nothing is reinterpreted: a number
    key takes a YAML number (a whole float for an int key: 1e3), a true/false key a YAML boolean,
    a text key a YAML string, and null only an Optional key. Text that merely looks like a value in
    another dialect ('yes', 'none', '1:30', '1_000') is refused with the spelling to use."""
    return _coerce(value, tp, key, "")


def _coerce(value: Any, tp: Any, key: str, or_null: str) -> Any:
    """coerce(); `or_null` (" or null" for an Optional key) completes "expected ..." in messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(value, inner, key, " or null")
    if value is None:
        raise ConfigError(f"{key}: expected {_type_words(tp)}, got null; give a value (null is only for "
                          f"keys that allow it)")
    if origin is Literal:
        if isinstance(value, str) and (key, value) in RENAMED:
            raise ConfigError(f"{key}: '{value}' is no longer a choice: {RENAMED[key, value][1]}")
        if not isinstance(value, str) or value not in args:
            raise ConfigError(f"{key}: {_shown(value)} is not one of {list(args)}")
        return value
    if origin is list:
        return _coerce_list(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false{or_null}, got {_shown(value)}{_hint(value)}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text{or_null}, got {_shown(value)}; in a YAML file, quote it to "
                              f"keep it as written (e.g. '010')")
        return value
    if tp in (int, float):
        return _number(value, tp, key, or_null)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _type_words(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return "a list"
    if typing.get_origin(tp) is Literal:
        return f"one of {list(typing.get_args(tp))}"
    return {bool: "true or false", str: "text", int: "an integer", float: "a number"}.get(tp, str(tp))


def _shown(value: Any) -> str:
    """A YAML value as a message shows it: 'text', 3, 1.5, true, null, a list [...]."""
    if isinstance(value, str):
        return f"the text '{value}'" if len(value) <= 80 else f"the text '{value[:77]}...'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        text = repr(value)
        return f"a {'mapping' if isinstance(value, dict) else 'list'} {text if len(text) <= 80 else text[:77] + '...'}"
    return repr(value)


def _hint(value: Any) -> str:
    """How YAML 1.2 core spells what a text value may have meant (for refusals)."""
    if not isinstance(value, str):
        return ""
    word = value.strip().lower()
    if word in ("yes", "no", "on", "off", "y", "n"):
        return " (YAML 1.2 booleans are true and false)"
    if word in ("none", "nil", "nul"):
        return " (YAML 1.2 writes null as null or ~)"
    if word.lstrip("+-.") in ("nan", "inf", "infinity"):
        return " (a finite number is needed: NaN and infinities mean nothing here)"
    return " (YAML 1.2 numbers are written 10, -3, 1.5, 1e-3, 0o17 or 0x1f)"


def _number(value: Any, tp: type, key: str, or_null: str = "") -> int | float:
    words = ("an integer" if tp is int else "a number") + or_null
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected {words}, got {_shown(value)}{_hint(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # no config key gives NaN or inf a meaning
        raise ConfigError(f"{key}: expected a finite number, got '{value}' (NaN and inf mean nothing here)")
    if tp is float:
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(f"{key}: expected an integer (a whole number), got {value!r}")
        return int(value)
    return value


def _coerce_list(value: Any, item: Any, key: str) -> list:
    """A YAML list, one bare value, or comma-separated text (1,3) -> a list of `item`. Text with a
    bracket is not a list (an unbalanced or nested bracket is refused, never repaired)."""
    if isinstance(value, str):
        if any(c in value for c in "[]{}"):
            raise ConfigError(f"{key}: {_shown(value)} is not a list (an unbalanced or nested bracket); "
                              f"write it as [1, 3] or 1,3")
        try:
            value = [scalar_value(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    elif isinstance(value, dict):
        raise ConfigError(f"{key}: expected a list, got {_shown(value)}")
    elif not isinstance(value, (list, tuple)):
        value = [value]
    return [_coerce(v, item, f"{key}[{i}]", "") for i, v in enumerate(value)]


def _apply(obj: Any, key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise _unknown_key(full_key)
    tp = _hints(type(obj))[head]
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
    """'a.b=3' -> ('a.b', 3): the value is read as YAML 1.2 core (so 1e-3, true, null, [1, 3] work;
    010 is 10, and a value that is not valid YAML, such as '[1,3', is a ConfigError naming it)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}' has no key before '='")
    return key.strip(), read_yaml_value(raw, f"override '{text}'", error=ConfigError)


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

    A text key (run.dir, data.root, train.device, method) takes an override's text as written (so
    `run.dir=1e3` is the folder '1e3'; an optional one is null for the YAML nulls: null, ~, nothing);
    every other value is read as YAML 1.2 core. Overrides setting one key twice are refused.
    """
    cfg = Config()
    if path:
        values = load_yaml_mapping(path, "config file", error=ConfigError)
        try:
            apply_dict(cfg, values)
        except ConfigError as err:  # a bad key or value of the file: name the file too
            raise ConfigError(f"{path}: {err}") from None
    given: dict[str, str] = {}  # each key an override sets -> that override
    for text in overrides:
        key, value = _override_value(text)
        for leaf in flatten({key: value}) if isinstance(value, dict) else [key]:
            if leaf in given:
                raise ConfigError(f"the key '{leaf}' is set twice ('{given[leaf]}' and '{text}'); give it once")
            given[leaf] = text
        _apply(cfg, key, value, key)
    return cfg


def _override_value(text: str) -> tuple[str, Any]:
    """An override's key and value: a text key's value as written, every other key's as YAML."""
    if "=" in text:
        key, raw = text.split("=", 1)
        tp = key_type(key.strip())
        if _is_text(tp):
            optional = typing.get_origin(tp) is typing.Union
            return key.strip(), None if optional and core_tag(raw) == NULL else raw
    return parse_override(text)


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
    """Write the resolved config as YAML, atomically (the run folder's config.yaml: pretrain's file;
    every string that YAML 1.2 or 1.1 would read as another type is quoted, so it reads back the same)."""
    write_text(dump_yaml(to_dict(cfg)), path, option="the run's config file", owner=Owner.PRETRAIN)


def same_value(key: str, saved: Any, given: Any) -> bool:
    """Whether a saved and a given value of `key` are the same setting (data.root: the same folder)."""
    if key == "data.root" and isinstance(saved, str) and isinstance(given, str):
        return os.path.normpath(os.path.expanduser(saved)) == os.path.normpath(os.path.expanduser(given))
    return saved == given
