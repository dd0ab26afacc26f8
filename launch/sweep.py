"""Sweeps: `--sweep key=v1,v2` options and `--sweep-file` variants -> the cartesian product,
one run folder per element."""
from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

import yaml

from .options import LaunchError

SWEEP_FILE = "sweep.json"  # written into the sweep's base folder; read by `ssl-bf sweep-report`


VARIANT_KEY = "variant"  # the axis of a sweep file's named variants


@dataclass
class Element:
    name: str  # the run folder's name under the base folder
    overrides: dict  # {config key: value string} given to this element's pretrain run
    run_dir: str
    job_id: Optional[str] = None
    eval_job_id: Optional[str] = None
    params: Optional[dict] = None  # {axis: value} that names the element (None: the overrides)

    def labels(self) -> dict:
        return dict(self.params) if self.params is not None else dict(self.overrides)


@dataclass
class Sweep:
    base_dir: str
    keys: list
    elements: list = field(default_factory=list)
    command: list = field(default_factory=list)

    def to_json(self) -> dict:
        return {"base_dir": self.base_dir, "keys": self.keys, "command": self.command,
                "elements": [asdict(e) for e in self.elements]}


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """['seed=0,1', 'batchformer.enabled=false,true'] -> {'seed': ['0', '1'], ...} (order kept)."""
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
        vals = [v.strip() for v in values.split(",")]
        if any(v == "" for v in vals) or len(set(vals)) != len(vals):
            raise LaunchError(f"--sweep {key}: values must be non-empty and distinct, got '{values}'")
        axes[key] = vals
    return axes


def _scalar(value, where: str) -> str:
    """A YAML scalar as the string an override takes (as the command line would spell it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        raise LaunchError(f"{where}: expected a single value, got {value!r}")
    return str(value)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would keep the last silently);
    keys brought in by a `<<: *anchor` merge may still be overridden."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value
            if key == "<<":
                continue
            if key in seen:
                raise LaunchError(f"line {key_node.start_mark.line + 1}: the key '{key}' is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _read_sweep_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise LaunchError(f"--sweep-file: no such file: {path}")
    with open(path) as f:
        try:
            data = yaml.load(f, Loader=_StrictLoader) or {}
        except LaunchError as e:
            raise LaunchError(f"{path}: {e}") from None
        except yaml.YAMLError as e:
            raise LaunchError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or set(data) - {"variants", "axes"}:
        extra = sorted(map(str, set(data) - {"variants", "axes"})) if isinstance(data, dict) else data
        raise LaunchError(f"{path}: a sweep file holds 'variants' and/or 'axes' only, got {extra}")
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
                              f"on/off/yes/no/numbers as such): quote it")
        if not isinstance(overrides, dict) or not overrides:
            raise LaunchError(f"{path}: variant '{name}' must map config keys to values")
        if "run.dir" in overrides:
            raise LaunchError(f"{path}: variant '{name}' sets run.dir; each element gets its own run folder")
        variants[name] = {str(k): _scalar(v, f"{path}: variant '{name}', key '{k}'") for k, v in overrides.items()}
    axes: dict[str, list[str]] = {}
    for key, values in (data.get("axes") or {}).items():
        values = [_scalar(v, f"{path}: axis '{key}'") for v in (values if isinstance(values, list) else [values])]
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
    os.makedirs(sweep.base_dir, exist_ok=True)
    path = os.path.join(sweep.base_dir, SWEEP_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(sweep.to_json(), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def element_dirs(sweep: Sweep, folder: str) -> list[tuple[Element, str]]:
    """(element, its run folder): the recorded path, or FOLDER/NAME when the sweep was moved."""
    return [(el, el.run_dir if os.path.isdir(el.run_dir) else os.path.join(folder, el.name))
            for el in sweep.elements]


def read_sweep(folder: str) -> Optional[Sweep]:
    path = os.path.join(folder, SWEEP_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        data = json.load(f)
    return Sweep(base_dir=data.get("base_dir", folder), keys=list(data.get("keys", [])),
                 command=list(data.get("command", [])),
                 elements=[Element(**e) for e in data.get("elements", [])])
