"""docs/config.md, written from the schema: every key with its type, default, range, resume role
and help. `python -m ssl_bf.config.reference > docs/config.md` regenerates it; a test keeps the two
equal, so the reference cannot drift from the code."""
from __future__ import annotations

import typing
from typing import Any, Literal

from ..yaml_io import MAX_DEPTH, MAX_VALUES
from .parse import all_keys, format_override_value, key_field, key_type
from .schema import Config, Role

_ROLE_TEXT = {Role.DEFINES: "defines the run", Role.FREE: "free on resume",
              Role.PRESENTATION: "free on resume (presentation)", Role.EXTEND_ONLY: "may grow on resume"}


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)][0]
        return f"{_type_text(inner)} or null"
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    return tp.__name__


def _default(key: str) -> Any:
    obj: Any = Config()
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def reference_markdown() -> str:
    lines = ["# Config keys", "",
             "Generated from `ssl_bf/config/schema.py` by `python -m ssl_bf.config.reference` (a test keeps it",
             "current). `auto` and null defaults take the method's value when the config is loaded; the run",
             "folder's `config.yaml` holds the resolved values. A resume may not change a key that defines the",
             "run (docs/guarantees.md).", "",
             "## How values are read", "",
             "Config files, `key=value` overrides, cluster presets and sweep files are all read as YAML 1.2",
             "core (`ssl_bf/yaml_io.py`), never YAML 1.1: `010` is 10 and `0o10` is 8; `0x1f` is 31; `1e-3` is a",
             "number; booleans are `true` and `false`; null is `null`, `~` or nothing. `yes`, `on`, `none`,",
             "`1:30`, `1_000` and `2024-01-01` are text, so a number or true/false key refuses them (exit 2,",
             "naming the key) rather than guessing. A number key takes a YAML number (a whole number for an",
             "integer key: `1e3` is 1000); a true/false key takes `true` or `false`; a text key (`run.dir`,",
             "`data.root`, `train.device`, `method`) takes an override's text as written. A list key takes",
             "`[1, 3]` or `1,3`; a bracket that does not close is refused, never repaired. Refused as well,",
             "naming the file: a key given twice in one mapping (also the same key set by two overrides), a",
             "key that is a list or a mapping, an alias inside the node it names, aliases that expand past",
             f"{MAX_VALUES} values or {MAX_DEPTH} levels, an integer beyond 64 bits, and tags such as `!!set` or",
             "`!!python/...`. Merge keys (`<<: *defaults`) work, and the mapping may override what they bring.",
             "Every size and count has an upper bound far above real runs (the range column), so a typo such as",
             "`moco.dim=1e12` is refused at load time; a model that still would not fit in the memory left is",
             "refused before it is built, naming its size keys."]
    section = None
    for key in all_keys():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            lines += ["", f"## {head or 'top level'}", "", "| key | type | default | range | resume | meaning |",
                      "|---|---|---|---|---|---|"]
        meta = key_field(key).metadata
        bound = meta["range"]
        span = (bound.text() + (f" ({bound.note})" if bound.note else "")) if bound is not None else ""
        lines.append(f"| `{key}` | {_type_text(key_type(key))} | `{format_override_value(_default(key))}` | {span} "
                     f"| {_ROLE_TEXT[meta['role']]} | {meta['help']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
