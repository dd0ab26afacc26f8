"""The bad-input corpus: every case exits with its code, prints no traceback, names the file or
option at fault, and leaves every file it should not write byte-identical. Cases live in the
`bad_cases_*.py` tables, grouped by command; the harness is tests/bad_inputs_harness.py."""
import importlib
import os
import pkgutil

import pytest

from bad_inputs_harness import TRACEBACK, Env, digest, fill, run_case

HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = sorted(m.name for m in pkgutil.iter_modules([HERE]) if m.name.startswith("bad_cases_"))
CASES = [case for table in TABLES for case in importlib.import_module(table).CASES]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env.build(str(tmp_path_factory.mktemp("bad_inputs")))


def test_the_corpus_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(CASES) >= 165, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_BF_PWNED", str(tmp_path / "pwned"))
    for name, value in case.environ.items():
        monkeypatch.setenv(name, value) if value is not None else monkeypatch.delenv(name, raising=False)
    values = env.paths(str(tmp_path))
    if case.setup is not None:
        case.setup(env, str(tmp_path))
    watched = [fill(p, values) for p in case.unchanged]
    before = {p: digest(p) for p in watched}
    code, output = run_case(case, env, str(tmp_path), capsys)
    assert TRACEBACK not in output, output[-3000:]
    assert code == case.code, output[-3000:]
    for word in case.says:
        assert fill(word, values) in output, (fill(word, values), output[-3000:])
    for path in watched:
        assert digest(path) == before[path], f"{path} changed"
    if case.check is not None:
        case.check(str(tmp_path))
    assert not (tmp_path / "pwned").exists(), "a pickle in a data file was executed"


SUBCOMMANDS = ["pretrain", "export", "inspect", "shard", "embed", "knn", "linear", "evaluate", "submit", "sweep-report",
               "report"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_refuses_a_bad_argument_in_one_line(command, capsys):
    """One parser, one error behaviour: exit code 2 and the one line `ssl-bf CMD: error: ...
    (see ssl-bf CMD --help)` on stderr (never argparse's usage dump); `--help` still exits 0."""
    from ssl_bf.cli import main

    assert main([command, "--no-such-option"]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.count("\n") == 1, out.err
    assert out.err.startswith(f"ssl-bf {command}: error: ") and out.err.endswith(f" (see ssl-bf {command} --help)\n")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and f"usage: ssl-bf {command}" in capsys.readouterr().out


def test_an_unknown_subcommand_is_one_line(capsys):
    from ssl_bf.cli import main

    assert main(["pretrian"]) == 2
    assert capsys.readouterr().err == "ssl-bf: error: unknown command 'pretrian' (see ssl-bf --help)\n"
