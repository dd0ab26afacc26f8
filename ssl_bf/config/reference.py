"""docs/config.md, written from the schema: every key with its type, default, range, resume role
and help. `python -m ssl_bf.config.reference > docs/config.md` regenerates it; a test keeps the two
equal, so the reference cannot drift from the code."""
from __future__ import annotations

import typing
from typing import Any, Literal

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
             "run (docs/guarantees.md)."]
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
