"""Sweeps: `--sweep key=v1,v2` options and `--sweep-file` variants -> the cartesian product,
one run folder per element, recorded in the base folder's sweep.json (format: ssl_bf/sweep_file.py)."""
from __future__ import annotations

import itertools
import os
import re
from typing import Optional

from ssl_bf.atomic_write import write_json
from ssl_bf.config import Config, ConfigError, apply_dict, format_override_value
from ssl_bf.run_layout import Owner
from ssl_bf.sweep_file import SWEEP_FILE, VARIANT_KEY, Element, Sweep
from ssl_bf.yaml_io import load_yaml_mapping

from .options import LaunchError


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """['seed=0,1', 'batchformer.insert_after=[1,3],[2]'] -> {'seed': ['0', '1'],
    'batchformer.insert_after': ['[1,3]', '[2]']} (order kept). A comma inside brackets or quotes
    belongs to its value: `KEY=[1,3]` is ONE value (a list-valued key), never two sweep points."""
    axes: dict[str, list[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values:
            raise LaunchError(f"--sweep expects key=v1,v2,..., got '{item}'")
        if key == "run.dir":
            raise LaunchError("--sweep run.dir=... is not allowed: each element gets its own run folder")
        if key in axes:
            raise LaunchError(f"--sweep key '{key}' given twice")
        vals = split_values(values, f"--sweep {item}")
        if any(v == "" for v in vals) or len(set(vals)) != len(vals):
            raise LaunchError(f"--sweep {key}: values must be non-empty and distinct, got '{values}'")
        axes[key] = vals
    return axes


def split_values(text: str, where: str) -> list[str]:
    """`text` split at the commas outside brackets and quotes, each value as written (stripped).
    A bracket or quote that does not close is a LaunchError naming `where` (never repaired)."""
    values, depth, start, quote, escaped = [], 0, 0, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "'\"" and not text[start:i].strip():  # a quote opens a value, as in YAML
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"{where}: the '{ch}' at character {i + 1} closes no bracket")
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    if quote or depth:
        raise LaunchError(f"{where}: a {'quote' if quote else 'bracket'} that does not close; write a list "
                          f"value as [1,3] (one value) and separate values with commas: [1,3],[2]")
    values.append(text[start:].strip())
    return values


def _override_text(key: str, value, where: str) -> str:
    """A sweep file's YAML value of config key `key` as the override text that sets it. The value
    is checked against the key's type now (YAML 1.2 core, as a config file: '010' quoted is text,
    which a number key refuses); a list is one value of a list-valued key."""
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
        raise LaunchError(f"{where}: expected a single value (or a flat list for a list-valued key), got {value!r}")
    try:
        apply_dict(Config(), {key: value})  # the config's own reading: the key exists, the value fits its type
    except ConfigError as err:
        raise LaunchError(f"{where}: {err}") from None
    return format_override_value(value)


def _read_sweep_yaml(path: str) -> dict:
    if os.path.isdir(path):
        raise LaunchError(f"--sweep-file {path} is a folder; give the sweep's YAML file")
    if not os.path.isfile(path):
        raise LaunchError(f"--sweep-file: no such file: {path}")
    data = load_yaml_mapping(path, "sweep file", error=LaunchError)
    if set(data) - {"variants", "axes"}:
        raise LaunchError(f"{path}: a sweep file holds 'variants' and/or 'axes' only, "
                          f"got {sorted(map(str, set(data) - {'variants', 'axes'}))}")
    for section in ("variants", "axes"):
        if not isinstance(data.get(section) or {}, dict):
            raise LaunchError(f"{path}: '{section}' must be a mapping, got {type(data[section]).__name__}")
    return data


def load_sweep_file(path: str) -> tuple[dict[str, dict[str, str]], dict[str, list[str]], bool]:
    """A sweep definition: named variants (each a set of overrides) times plain axes.

    axes:                          # optional; as --sweep key=v1,v2
      seed: [0, 1, 2]
    variants:                      # optional; becomes the axis 'variant'
      mocov2: {method: mocov2, batchformer.enabled: false}
      mocov2+bf: {method: mocov2, batchformer.enabled: true}

    Whichever of the two sections comes first varies slowest (here: every variant of seed 0
    runs before seed 1, so a sweep cut short still compares all variants). Returns
    (variants, axes, variants_first), the last for `expand`.
    """
    data = _read_sweep_yaml(path)
    variants: dict[str, dict[str, str]] = {}
    for name, overrides in (data.get("variants") or {}).items():
        if not isinstance(name, str) or not name.strip():
            raise LaunchError(f"{path}: variant name {name!r} is not a non-empty string (YAML reads unquoted "
                              f"true/false/null and numbers as such): quote it")
        if not isinstance(overrides, dict) or not overrides:
            raise LaunchError(f"{path}: variant '{name}' must map config keys to values")
        if "run.dir" in overrides:
            raise LaunchError(f"{path}: variant '{name}' sets run.dir; each element gets its own run folder")
        variants[name] = {str(k): _override_text(str(k), v, f"{path}: variant '{name}', key '{k}'")
                          for k, v in overrides.items()}
    axes: dict[str, list[str]] = {}
    for key, values in (data.get("axes") or {}).items():
        if values is None or values == []:
            raise LaunchError(f"{path}: axis '{key}' has no values (it needs distinct values, e.g. {key}: [0, 1, 2])")
        values = [_override_text(str(key), v, f"{path}: axis '{key}'")
                  for v in (values if isinstance(values, list) else [values])]
        if str(key) == "run.dir":
            raise LaunchError(f"{path}: an axis over run.dir is not allowed: each element gets its own run folder")
        if not values or len(set(values)) != len(values):
            raise LaunchError(f"{path}: axis '{key}' needs distinct values, got {values}")
        axes[str(key)] = values
    if not variants and not axes:
        raise LaunchError(f"{path}: defines no variants and no axes")
    return variants, axes, list(data).index("variants") == 0 if "variants" in data else True


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def expand(axes: dict[str, list[str]], base_dir: str,
           variants: Optional[dict[str, dict[str, str]]] = None, variants_first: bool = True) -> Sweep:
    """The cartesian product, the first axis slowest (the variant axis first or last); element
    folders are BASE/key=value__variant=NAME__... in axis order."""
    variants = variants or {}
    if VARIANT_KEY in axes:
        raise LaunchError(f"'{VARIANT_KEY}' is reserved for a sweep file's variants")
    clash = sorted({k for ov in variants.values() for k in ov} & set(axes))
    if clash:
        raise LaunchError(f"the keys {clash} are set by both a variant and a sweep axis")
    all_axes = dict(axes)
    if variants:
        variant_axis = {VARIANT_KEY: list(variants)}
        all_axes = (variant_axis | all_axes) if variants_first else (all_axes | variant_axis)
    keys = list(all_axes)
    sweep = Sweep(base_dir=base_dir, keys=keys)
    for combo in itertools.product(*(all_axes[k] for k in keys)):
        params = dict(zip(keys, combo))
        overrides = dict(variants.get(params.get(VARIANT_KEY), {}))
        overrides.update({k: v for k, v in params.items() if k != VARIANT_KEY})
        name = "__".join(f"{_safe(k)}={_safe(v)}" for k, v in params.items())
        sweep.elements.append(Element(name=name, overrides=overrides, run_dir=os.path.join(base_dir, name),
                                      params=params if variants else None))
    folders: dict[str, dict] = {}
    for el in sweep.elements:  # e.g. variants 'a b' and 'a_b' would train into one folder
        if el.name in folders:
            raise LaunchError(f"two sweep elements share the folder name '{el.name}' "
                              f"({folders[el.name]} and {el.labels()}): rename one")
        folders[el.name] = el.labels()
    return sweep


def write_sweep(sweep: Sweep) -> str:
    """BASE/sweep.json (atomically, strict JSON); returns its path."""
    path = os.path.join(sweep.base_dir, SWEEP_FILE)
    write_json(sweep.to_json(), path, option="the sweep file", owner=Owner.SUBMIT)
    return path
