"""Fuzzing the configuration language (issue 21, cause 5): generated YAML documents and `key=value`
overrides through `ssl-bf pretrain --config F --print-config`, and every subcommand's options
given twice.

The contract (tests/fuzz_contract.py): exit 0 or 2, never a traceback; a refusal names the file,
the key or the option. For accepted inputs the printed value equals an independent reading: a
YAML 1.2 core resolver written here from the spec (10.3.2), typed as the key's type and checked
against the key's range. The printed config is read back with PyYAML's own YAML 1.1 SafeLoader,
so the writer is checked too: whatever it writes, an outside reader reads the same values.
"""
from __future__ import annotations

import argparse
import math
import re
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fuzz_contract import check_contract, count, fuzz_examples, run_cli, snapshot
from tiny_run import TINY

# --- an independent YAML 1.2 core resolver for plain scalars (spec 10.3.2) ----------------------
_CORE: list[tuple[str, Any]] = [
    (r"null|Null|NULL|~|", lambda t: None),
    (r"true|True|TRUE", lambda t: True),
    (r"false|False|FALSE", lambda t: False),
    (r"[-+]?[0-9]+", lambda t: int(t, 10)),
    (r"0o[0-7]+", lambda t: int(t[2:], 8)),
    (r"0x[0-9a-fA-F]+", lambda t: int(t[2:], 16)),
    (r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?", float),
    (r"[-+]?\.(inf|Inf|INF)", lambda t: -math.inf if t[0] == "-" else math.inf),
    (r"\.(nan|NaN|NAN)", lambda t: math.nan),
]


def core_reading(text: str) -> Any:
    """The value YAML 1.2 core gives the plain scalar `text` (the text itself when no tag matches)."""
    for pattern, construct in _CORE:
        if re.fullmatch(pattern, text):
            return construct(text)
    return text


# The keys fuzzed, with their types as the schema documents them (docs/config.md); none of them
# takes part in a cross-key rule of configs/tiny.yaml.
INT_KEYS = ["seed", "train.epochs", "train.log_every", "train.max_steps", "train.checkpoint_every_steps",
            "monitor.knn_k"]
FLOAT_KEYS = ["moco.temperature", "moco.momentum", "train.time_budget_min", "augment.jitter_strength",
              "batchformer.dropout", "monitor.knn_temperature"]
OPTIONAL_FLOAT_KEYS = ["train.base_lr"]
BOOL_KEYS = ["train.amp", "run.progress", "run.tensorboard", "monitor.knn_at_start", "batchformer.enabled"]
TEXT_KEYS = ["data.root"]  # Optional[str]: an override's text as written, null for the YAML nulls
KEYS = INT_KEYS + FLOAT_KEYS + OPTIONAL_FLOAT_KEYS + BOOL_KEYS


def _range(key: str):
    from ssl_bf.config import key_field

    return key_field(key).metadata["range"]


REFUSED = object()


def expected(key: str, value: Any) -> Any:
    """What the config holds for `key` given the YAML value `value`, or REFUSED."""
    if value is None:
        return None if key in OPTIONAL_FLOAT_KEYS else REFUSED
    if key in BOOL_KEYS:
        return value if isinstance(value, bool) else REFUSED
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return REFUSED
    if isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:  # ssl-bf reads 64-bit integers only
        return REFUSED
    if isinstance(value, float) and not math.isfinite(value):
        return REFUSED
    if key in INT_KEYS:
        if isinstance(value, float) and not value.is_integer():
            return REFUSED
        value = int(value)
    else:
        value = float(value)
    bound = _range(key)
    return value if bound is None or bound.contains(value) else REFUSED


def _null_means_the_methods(key: str, want: Any, got: Any) -> bool:
    """An Optional key set to null takes its method's default (mocov2 here): what a config that
    does not set it at all prints."""
    if want is not None or key not in OPTIONAL_FLOAT_KEYS:
        return False
    code, out = run_cli(["pretrain", "run.dir=never-written", "--print-config"])
    return code == 0 and got == printed(out, key)


def printed(output: str, key: str) -> Any:
    """`key`'s value in `--print-config` output, read with PyYAML's YAML 1.1 SafeLoader."""
    node: Any = yaml.safe_load(output)
    for part in key.split("."):
        node = node[part]
    return node


def _plain(text: str) -> bool:
    """Whether `text` is one plain YAML scalar whose value is `text` (what the resolver reads)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return False
    return text == "" or (isinstance(node, yaml.ScalarNode) and node.style is None and node.value == text)


# --- generated scalars: the spellings YAML dialects disagree on, and plain noise -----------------
SPELLINGS = ["010", "0o10", "0o8", "0x1f", "0X1F", "0b101", "1:30", "190:20:30", "1_000", "+12", "-0", "00",
             "1e3", "1E3", "1.5e-3", "1.", ".5", "-.inf", ".Inf", ".NaN", "nan", "inf", "infinity", "1e400",
             "9" * 19, "9" * 25, "-" + "9" * 30, "0x" + "f" * 16, "0x7fffffffffffffff", "true", "True", "TRUE",
             "tRuE", "false", "yes", "no", "on", "off", "y", "n", "Yes", "ON", "null", "Null", "NULL", "~", "none",
             "None", "nil", "", "2024-01-01", "12:30:00", "0.1", "3", "64", "0", "1", "2", "20", "4294967295",
             "4294967296", "1e12", "1e9", "0.999", "1.0", "2.5", "2.51"]
NOISE = st.text(alphabet="0123456789abcdefnoxyEINLTU._:+-~ ", min_size=0, max_size=12)
SCALARS = st.one_of(st.sampled_from(SPELLINGS), NOISE, st.integers(-10 ** 22, 10 ** 22).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))


def _tiny_args(tmp_path) -> list[str]:
    return ["--config", TINY, f"run.dir={tmp_path}/never-written", "--print-config"]


@settings(max_examples=fuzz_examples(300))
@given(key=st.sampled_from(KEYS), text=SCALARS)
def test_an_override_is_read_as_yaml_1_2_core(tmp_path, key, text):
    count("config: override scalars", 1)
    want = expected(key, core_reading(text)) if _plain(text) else None
    code, out = run_cli(["pretrain", *_tiny_args(tmp_path), f"{key}={text}"])
    check_contract(code, out, names=(key,))
    if not _plain(text):  # not a plain scalar (a quote, a flow indicator): the contract only
        return
    if want is REFUSED:
        assert code == 2, (key, text, out)
    else:
        assert code == 0, (key, text, out)
        got = printed(out, key)
        assert (got == want and type(got) is type(want)) or _null_means_the_methods(key, want, got), \
            (key, text, got, want)


@settings(max_examples=fuzz_examples(150))
@given(text=st.text(max_size=30))
def test_a_text_key_takes_the_override_as_written(tmp_path, text):
    count("config: text overrides", 1)
    assume("\x00" not in text)  # argv cannot carry NUL
    code, out = run_cli(["pretrain", *_tiny_args(tmp_path), f"data.root={text}"])
    check_contract(code, out, names=("data.root",))
    assert code == 0, out
    want = None if re.fullmatch(r"null|Null|NULL|~|", text) else text
    assert printed(out, "data.root") == want


# --- generated YAML documents ---------------------------------------------------------------------
def _document(values: dict[str, str]) -> str:
    """{'train.epochs': '010', 'seed': 'x'} -> nested YAML with the texts as plain scalars."""
    sections: dict[str, dict[str, str]] = {}
    top = []
    for key, text in values.items():
        if "." in key:
            head, leaf = key.split(".", 1)
            sections.setdefault(head, {})[leaf] = text
        else:
            top.append(f"{key}: {text}")
    lines = top + [f"{head}:\n" + "".join(f"  {leaf}: {text}\n" for leaf, text in leaves.items()).rstrip("\n")
                   for head, leaves in sections.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=fuzz_examples(200))
@given(values=st.dictionaries(st.sampled_from(KEYS), SCALARS.filter(lambda t: t.strip() == t and _plain(t)),
                              min_size=1, max_size=5))
def test_a_config_file_is_read_as_yaml_1_2_core(tmp_path, values):
    count("config: YAML documents", 1)
    path = tmp_path / "c.yaml"
    path.write_text(_document(values))
    code, out = run_cli(["pretrain", "--config", str(path), f"run.dir={tmp_path}/never-written", "--print-config"])
    check_contract(code, out, names=(str(path), *values))  # the file, or the key out of range
    wants = {key: expected(key, core_reading(text)) for key, text in values.items()}
    if any(w is REFUSED for w in wants.values()):
        assert code == 2, (values, out)
        return
    assert code == 0, (values, out)
    for key, want in wants.items():
        got = printed(out, key)
        assert (got == want and type(got) is type(want)) or _null_means_the_methods(key, want, got), \
            (key, values[key], got, want)


STRUCTURES = {
    "recursive alias": ["train: &t {epochs: *t}\n", "batchformer: {insert_after: &l [1, *l]}\n",
                        "train: &t\n  epochs: [*t]\n", "seed: &s [[[*s]]]\n"],
    "complex key": ["? [train, epochs]\n: 3\n", "train: {{epochs: 1}: 2}\n", "train: {[a, b]: 1}\n",
                    "? {seed: 1}\n: 2\n"],
    "given twice": ["seed: 1\nseed: 2\n", "train: {epochs: 1, epochs: 1}\n", "train: {epochs: 1}\ntrain: {epochs: 2}\n",
                    "seed: 1\n~: 2\nnull: 3\n", "moco: {dim: 32, 0x1: a, 1: b}\n"],
    "alias bomb": ["a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))],
    "nested deeper": ["seed: " + "[" * 100 + "]" * 100 + "\n", "seed: " + "{a: " * 80 + "1" + "}" * 80 + "\n"],
    "tag": ["seed: !!set {a: null}\n", "seed: !!python/object/apply:os.system ['true']\n", "seed: !!binary aGk=\n",
            "seed: !!timestamp 2024-01-01\n", "seed: !!omap [a: 1]\n"],
    "64 bits": ["seed: 123456789012345678901234567890\n", "seed: 0x1ffffffffffffffff\n"],
}


@settings(max_examples=fuzz_examples(120))
@given(kind=st.sampled_from(sorted(STRUCTURES)), pick=st.integers(0, 10), prefix=st.sampled_from(
    ["", "train: {epochs: 1}\n", "# a comment\n", "method: mocov2\n", "defaults: &common {a: 1}\n"]))
def test_bad_structures_are_refused_naming_the_file(tmp_path, kind, pick, prefix):
    count("config: bad structures", 1)
    text = STRUCTURES[kind][pick % len(STRUCTURES[kind])]
    assume(not (prefix.startswith("train:") and text.startswith("train:")))  # that would be a duplicate key
    path = tmp_path / "c.yaml"
    path.write_text(prefix + text)
    before = snapshot([str(path)])
    code, out = run_cli(["pretrain", "--config", str(path), f"run.dir={tmp_path}/never-written", "--print-config"])
    check_contract(code, out, names=(str(path),), before=before)
    assert code == 2 and kind in out, (prefix + text, out)


@settings(max_examples=fuzz_examples(200))
@given(raw=st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_any_file_given_as_a_config_gives_exit_0_or_2(tmp_path, raw):
    count("config: arbitrary files", 1)
    path = tmp_path / "c.yaml"
    if isinstance(raw, bytes):
        path.write_bytes(raw)
    else:
        path.write_text(raw, encoding="utf-8", errors="surrogatepass")
    code, out = run_cli(["pretrain", "--config", str(path), f"run.dir={tmp_path}/never-written", "--print-config"])
    check_contract(code, out, names=(str(path),))


ALL_KEYS_AND_NOISE = st.one_of(st.sampled_from(KEYS + TEXT_KEYS + ["batchformer.insert_after", "backbone.name",
                                                                   "train", "moco", "method", "nope.key", ""]),
                               st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", max_size=15))
VALUES = st.one_of(SCALARS, st.text(max_size=20), st.sampled_from(
    ["[1,3", "[1,3]", "1,3", "1,[3", "]", "{epochs: 1}", "{epochs: 1", "&a [*a]", "*nope", "[[[[[[[[", "{a: b, a: c}",
     "'quoted'", '"dq', "- x", "? x", "!!int 010", "!!bool yes", "|\n x", ">- x", "%YAML 1.2", "---", "...",
     "a: b: c", "#", "@x", "`x", "[1, 2], 3"]))


@settings(max_examples=fuzz_examples(250))
@given(overrides=st.lists(st.tuples(ALL_KEYS_AND_NOISE, VALUES), min_size=1, max_size=3))
def test_any_overrides_give_exit_0_or_2_naming_the_key(tmp_path, overrides):
    count("config: arbitrary overrides", 1)
    argv = [f"{key}={value}" for key, value in overrides]
    assume(all("\x00" not in a for a in argv))
    code, out = run_cli(["pretrain", *_tiny_args(tmp_path), *argv])
    folded = {" ".join(a.split()) for a in argv}  # a one-line message folds white space
    names = tuple({key.strip() for key, _ in overrides if key.strip()} | set(argv) | folded)
    check_contract(code, out, names=names)
    keys = [key.strip() for key, _ in overrides]
    if len(set(keys)) < len(keys) and code == 2:  # one key twice: refused naming it (or its value's fault)
        assert "set twice" in out or any(k in out for k in keys), out


# --- every subcommand's options, each given twice ----------------------------------------------------
def _parsers() -> dict:
    from ssl_bf.checkpoints.cli import export_parser
    from ssl_bf.eval.embed_cli import embed_parser
    from ssl_bf.eval.evaluate_cli import evaluate_parser
    from ssl_bf.eval.inspect_cli import inspect_parser
    from ssl_bf.eval.knn_cli import knn_parser
    from ssl_bf.eval.linear_cli import linear_parser
    from ssl_bf.launch.cli import _submit_parser
    from ssl_bf.report.run_report import report_parser
    from ssl_bf.report.sweep_table import sweep_report_parser
    from ssl_bf.train.cli import pretrain_parser

    return {"pretrain": pretrain_parser, "export": export_parser, "inspect": inspect_parser, "embed": embed_parser,
            "knn": knn_parser, "linear": linear_parser, "evaluate": evaluate_parser, "submit": _submit_parser,
            "sweep-report": sweep_report_parser, "report": report_parser}


CANDIDATES = ["2", "3", "0.5", "cpu", "none", "cached", "x", "a.yaml"]


def _values(action) -> list[str]:
    """Two distinct texts the action's type and choices accept (one when there is only one)."""
    pool = [str(c) for c in action.choices] if action.choices else CANDIDATES
    ok = []
    for text in pool:
        try:
            if action.type is not None and not action.choices:
                action.type(text)
        except Exception:  # noqa: BLE001 - this candidate is not a value of the option
            continue
        ok.append(text)
    return ok[:2] if len(ok) >= 2 else ok * 2


def _required(parser, skip) -> list[str]:
    """Arguments that satisfy every required option and positional except `skip`: positionals
    first, in order."""
    positionals, options = [], []
    for action in parser._actions:
        if action is skip or action.dest == "help":
            continue
        if action.option_strings:
            if action.required:
                options += [action.option_strings[0], _values(action)[0]]
        elif action.nargs not in ("*", "?"):
            positionals.append(_values(action)[0])
    return positionals + options


COMMANDS = sorted(_parsers())


@pytest.mark.parametrize("command", COMMANDS)
@settings(max_examples=fuzz_examples(6))
@given(data=st.data())
def test_every_option_given_twice_is_merged_or_refused_never_dropped(command, data):
    """Each option of `command` in turn, given twice with values the option accepts (drawn)."""
    make = _parsers()[command]
    for dest in [a.dest for a in make()._actions if a.option_strings and a.dest != "help"]:
        count("cli: options given twice", 1)
        parser = make()
        action = next(a for a in parser._actions if a.dest == dest and a.option_strings)
        flag = data.draw(st.sampled_from(action.option_strings))
        values = _values(action)
        first, second = data.draw(st.sampled_from(values)), data.draw(st.sampled_from(values))
        equals = data.draw(st.booleans())

        def use(value: str) -> list[str]:
            if action.nargs == 0:
                return [flag]
            if isinstance(action.nargs, int) and action.nargs > 1:  # e.g. --group-thresholds HIGH LOW
                return [flag, *[value] * action.nargs]
            return [f"{flag}={value}"] if equals and flag.startswith("--") else [flag, value]

        argv = [*_required(parser, action), *use(first), *use(second)]
        convert = action.type or str
        if action.nargs in ("+", "*"):  # a list option: both uses kept, in order
            assert getattr(parser.parse_args(argv), dest) == [convert(first), convert(second)], argv
        elif isinstance(action, argparse._AppendAction):  # --sweep, --setup, --slurm-extra: every use collected
            assert getattr(parser.parse_args(argv), dest)[-2:] == [convert(first), convert(second)], argv
        elif action.nargs == 0:  # a flag repeated asks for the same thing twice
            parser.parse_args(argv)
        else:  # a single value: refused in one line naming the option, never the last silently kept
            code, out = run_cli([command, *argv])
            check_contract(code, out, names=(flag,))
            assert code == 2 and "given twice" in out and flag in out, (argv, out)
            assert out.count("\n") == 1, out


# --- the writer: whatever dump_yaml writes reads back the same, under YAML 1.2 and 1.1 ---------------
TEXTS = st.one_of(st.sampled_from(SPELLINGS + ["<<", "- x", "a: b", "#c", "'q'", "[1", "&a", "*a", "!t", "%"]),
                  st.text(max_size=12))
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 63, 2 ** 63 - 1),
                   st.floats(allow_nan=False), TEXTS)
TREES = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(TEXTS, inner, max_size=4)), max_leaves=16)


@settings(max_examples=fuzz_examples(200))
@given(tree=st.dictionaries(TEXTS, TREES, max_size=5))
def test_dump_yaml_reads_back_the_same(tree):
    from ssl_bf.yaml_io import dump_yaml, read_yaml_value

    count("config: YAML written and read back", 1)
    text = dump_yaml(tree)
    assert read_yaml_value(text, "dumped") == tree
    assert yaml.safe_load(text) == tree  # an outside YAML 1.1 reader agrees
