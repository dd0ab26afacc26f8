"""YAML as ssl-bf reads and writes it: one schema, YAML 1.2 core, for every file and override.

Every reader of YAML (config files, `key=value` overrides, cluster presets, sweep files, a run's
config.yaml) goes through `StrictLoader`. It differs from PyYAML's SafeLoader (YAML 1.1) in what a
plain scalar means, and in what it refuses:

- scalars follow the YAML 1.2 core schema: `010` is 10 (not 8), `0o10` is 8, `0x1f` is 31, `1:30`,
  `1_000`, `yes`, `on` and `2024-01-01` are strings, `1e3` is a float; null is `null`, `Null`,
  `NULL`, `~` or nothing; booleans are `true`/`false` (any of `true True TRUE`).
- refused: a key given twice in one mapping; a key that is a sequence or a mapping; an alias
  inside the node it names (a recursive alias); aliases that expand to more than `MAX_VALUES`
  values or nest deeper than `MAX_DEPTH` (alias bombs); an integer beyond 64 bits; tags outside
  the core schema (`!!set`, `!!binary`, `!!timestamp`, `!!python/...`).
- kept from common YAML use: merge keys (`<<: *defaults`), whose keys the mapping may override.

`dump_yaml` writes with the same rules and quotes every string that YAML 1.2 core or YAML 1.1
would read as something else, so a file it writes reads back the same in either.
Each reader passes its own exception class, so a bad file surfaces as that layer's error
(ConfigError, LaunchError, ...) with the file's path in the message.
"""
from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Iterable

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

MAX_DEPTH = 64  # nesting levels, aliases expanded
MAX_VALUES = 100_000  # values in a document, aliases expanded
INT64 = 2 ** 63

CORE = "tag:yaml.org,2002:"
NULL, BOOL, INT, FLOAT, STR = (CORE + t for t in ("null", "bool", "int", "float", "str"))

# The YAML 1.2 core schema (spec 10.3.2), tag by tag.
_NULL = re.compile(r"null|Null|NULL|~|")
_TRUE = re.compile(r"true|True|TRUE")
_FALSE = re.compile(r"false|False|FALSE")
_INT10 = re.compile(r"[-+]?[0-9]+")
_INT8 = re.compile(r"0o[0-7]+")
_INT16 = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")


class YamlFileError(ValueError):
    """A YAML file that is missing, malformed or not a mapping (the default error class)."""


def core_tag(text: str) -> str:
    """The tag YAML 1.2 core gives the plain scalar `text` (STR when it is none of the others)."""
    if _NULL.fullmatch(text):
        return NULL
    if _TRUE.fullmatch(text) or _FALSE.fullmatch(text):
        return BOOL
    if _INT10.fullmatch(text) or _INT8.fullmatch(text) or _INT16.fullmatch(text):
        return INT
    if _FLOAT.fullmatch(text) or _INF.fullmatch(text) or _NAN.fullmatch(text):
        return FLOAT
    return STR


def _int(text: str) -> int:
    if _INT8.fullmatch(text):
        value = int(text[2:], 8)
    elif _INT16.fullmatch(text):
        value = int(text[2:], 16)
    elif _INT10.fullmatch(text) and len(text.lstrip("+-").lstrip("0")) <= 19:  # more digits: beyond 64 bits
        value = int(text, 10)
    elif _INT10.fullmatch(text):
        raise ValueError(f"the integer {text[:24]}... is beyond 64 bits")
    else:
        raise ValueError(f"'{text}' is not a YAML 1.2 integer (10, -3, 0o17, 0x1f)")
    if not -INT64 <= value < INT64:
        raise ValueError(f"the integer {text if len(text) <= 24 else text[:24] + '...'} is beyond 64 bits")
    return value


def _float(text: str) -> float:
    if _INF.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    if _FLOAT.fullmatch(text) or _INT10.fullmatch(text):
        return float(text)
    raise ValueError(f"'{text}' is not a YAML 1.2 float (1.5, -2e-3, .inf, .nan)")


def scalar_value(text: str) -> Any:
    """A plain scalar's value under YAML 1.2 core: None, bool, int, float or the text itself
    (ValueError for an integer beyond 64 bits)."""
    tag = core_tag(text)
    if tag == NULL:
        return None
    if tag == BOOL:
        return bool(_TRUE.fullmatch(text))
    if tag == INT:
        return _int(text)
    if tag == FLOAT:
        return _float(text)
    return text


class StrictLoader(yaml.SafeLoader):
    """YAML 1.2 core on PyYAML's SafeLoader, with the refusals listed in the module docstring."""

    yaml_implicit_resolvers: dict = {}
    yaml_constructors: dict = {}

    def __init__(self, stream):
        super().__init__(stream)
        self._open_anchors: list[str] = []
        self._depth = 0

    # --- composing: nesting depth and recursive aliases ----------------------------------------
    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) and event.anchor in self._open_anchors:
            raise ComposerError(None, None, f"the alias *{event.anchor} lies inside the node &{event.anchor} it "
                                f"names (a recursive alias)", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        opens = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)) and event.anchor
        if opens:
            self._open_anchors.append(event.anchor)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if opens:
                self._open_anchors.pop()

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    # --- constructing: keys ----------------------------------------------------------------------
    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode):
                    kind = "sequence" if isinstance(key_node, SequenceNode) else "mapping"
                    raise ConstructorError(None, None, f"a mapping key must be a single value, not a {kind} "
                                           f"(a complex key)", key_node.start_mark)
                if key_node.tag == CORE + "merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen or (isinstance(key, float) and math.isnan(key)):
                    raise ConstructorError(None, None, f"the key '{key_node.value}' is given twice in one mapping",
                                           key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep)


def _check_expansion(root) -> None:
    """Refuse a document whose aliases expand to more than MAX_VALUES values or MAX_DEPTH levels
    (an alias bomb). Each node is visited once (shared nodes are memoised), so this is linear in
    the document's size, whatever its expansion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        if isinstance(node, ScalarNode):
            size[id(node)], depth[id(node)] = 1, 1
            continue
        children = [v for pair in node.value for v in pair] if isinstance(node, MappingNode) else list(node.value)
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        size[id(node)] = 1 + sum(size[id(c)] for c in children)
        depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[id(node)] > MAX_VALUES or depth[id(node)] > MAX_DEPTH:
            what = (f"more than {MAX_VALUES} values" if size[id(node)] > MAX_VALUES
                    else f"more than {MAX_DEPTH} levels")
            raise ComposerError(None, None, f"aliases expand this document to {what} (an alias bomb?)",
                                node.start_mark)


def _construct_core(tag: str):
    def construct(loader: StrictLoader, node):
        text = loader.construct_scalar(node)
        try:
            value = scalar_value(text)
        except ValueError as err:
            raise ConstructorError(None, None, str(err), node.start_mark) from None
        if core_tag(text) != tag and not (tag == FLOAT and core_tag(text) == INT):
            raise ConstructorError(None, None, f"'{text}' is not a YAML 1.2 {tag[len(CORE):]}", node.start_mark)
        return float(value) if tag == FLOAT else value
    return construct


def _construct_other(loader: StrictLoader, node):
    raise ConstructorError(None, None, f"the tag {node.tag} is not allowed (YAML 1.2 core: strings, numbers, "
                           f"true/false, null, lists and mappings)", node.start_mark)


for _tag, _regexp, _first in (
        (NULL, _NULL, ["~", "n", "N", ""]), (BOOL, re.compile(r"true|True|TRUE|false|False|FALSE"), list("tTfF")),
        (INT, re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"), list("-+0123456789")),
        (FLOAT, re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"),
         list("-+.0123456789")),
        (CORE + "merge", re.compile(r"<<"), ["<"])):
    StrictLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_regexp.pattern})$"), _first)
for _tag in (NULL, BOOL, INT, FLOAT):
    StrictLoader.add_constructor(_tag, _construct_core(_tag))
StrictLoader.add_constructor(STR, yaml.SafeLoader.construct_yaml_str)
StrictLoader.add_constructor(CORE + "seq", yaml.SafeLoader.construct_yaml_seq)
StrictLoader.add_constructor(CORE + "map", yaml.SafeLoader.construct_yaml_map)
StrictLoader.add_constructor(None, _construct_other)


class _Problem(Exception):
    """A YAML text that the strict loader refuses (the message is one line)."""


def _describe(err: yaml.YAMLError) -> str:
    """A YAML error on one line: "line L, column C: what" (PyYAML's spans several)."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    mark = err.problem_mark or err.context_mark
    what = ": ".join(" ".join(p.split()) for p in (err.context, err.problem) if p)
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark else what


def _load(stream) -> Any:
    try:
        return yaml.load(stream, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise _Problem(_describe(err)) from None
    except RecursionError:  # not reached with MAX_DEPTH; kept so that no input gives a traceback
        raise _Problem(f"nested too deeply (at most {MAX_DEPTH} levels)") from None


def read_yaml_value(text: str, where: str, *, error: type[Exception] = YamlFileError) -> Any:
    """`text` read as one YAML 1.2 core document (an override's value, for example). Raises
    `error` with "WHERE: not valid YAML (...)" for anything the strict loader refuses."""
    try:
        return _load(text)
    except _Problem as err:
        raise error(f"{where}: not valid YAML ({err})") from None


def load_yaml_mapping(path: str, what: str, *, error: type[Exception] = YamlFileError) -> dict:
    """The top-level mapping of the YAML file at `path` ({} for an empty file).

    `what` names the kind of file in messages ("config file", "cluster preset", ...). Raises
    `error` when the file is missing ("WHAT not found: PATH"), is not valid YAML 1.2 core or is
    refused by the strict loader ("PATH: not valid YAML (...)": a key given twice, a complex key,
    a recursive alias, an alias bomb, ...) or holds something other than a mapping ("PATH: the top
    level of a WHAT must be a mapping, got list").
    """
    if os.path.isdir(path):
        raise error(f"{what} {path} is a folder; give the YAML file")
    if not os.path.isfile(path):
        raise error(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = _load(f)
    except _Problem as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file (not UTF-8); give the YAML {what}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{path}: the top level of a {what} must be a mapping, got {type(data).__name__}")
    return data


class _StrictDumper(yaml.SafeDumper):
    """SafeDumper that quotes a string whenever YAML 1.2 core or YAML 1.1 would read it as a
    number, a boolean or null, and never writes aliases."""

    def ignore_aliases(self, data) -> bool:
        return True

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            tag = core_tag(value)
            if tag != STR:
                return tag
        return super().resolve(kind, value, implicit)


def _represent_str(dumper: _StrictDumper, text: str):
    """A string with a line break goes double-quoted, as escapes: PyYAML's other styles fold a
    NEL or a line separator into a space."""
    style = '"' if any(c in text for c in "\n\r\x85\u2028\u2029") else None
    return dumper.represent_scalar(STR, text, style=style)


_StrictDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """`data` as YAML text that `StrictLoader` (and YAML 1.1 readers) read back as `data`."""
    return yaml.dump(data, Dumper=_StrictDumper, sort_keys=False, allow_unicode=True)


def did_you_mean(key: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """"; did you mean 'CLOSEST'?" for the closest of `choices`, or "" when none is close."""
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=cutoff)
    return f"; did you mean '{close[0]}'?" if close else ""
