"""Install metadata: pinned torch, environment.yml agrees with pyproject, subpackage mapping."""
import os
import re
import subprocess
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    with open(os.path.join(ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip_section if not r.startswith("-e")}
    assert listed == wanted  # same names AND the same version specifiers
    assert "torch==2.14.1" in listed and "torchvision==0.29.1" in listed


def test_eval_and_launch_install_as_subpackages():
    import ssl_bf.eval.embed
    import ssl_bf.launch
    assert os.path.samefile(os.path.dirname(ssl_bf.eval.embed.__file__), os.path.join(ROOT, "eval"))
    assert os.path.samefile(os.path.dirname(ssl_bf.launch.__file__), os.path.join(ROOT, "launch"))


SUBCOMMANDS = {"pretrain", "export", "inspect", "shard", "embed", "knn", "linear", "evaluate", "submit", "sweep-report", "report"}


def listed_subcommands(help_text: str) -> list[str]:
    """The subcommand names in `ssl-bf --help`: the entries of the COMMAND list under
    "positional arguments", each a whole word at the list's indentation (a long name puts its
    help text on the next, deeper-indented line)."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "COMMAND") + 1
    names = []
    for line in lines[start:]:
        if not line.strip():
            break  # the end of the section
        m = re.match(r"^ {4}(\S+)(?: {2,}\S.*)?$", line)
        if m:
            names.append(m.group(1))
    return names


def test_console_script_help_lists_every_subcommand():
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ssl-bf"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    names = listed_subcommands(out)
    assert len(names) == len(set(names))  # no subcommand twice
    assert set(names) == SUBCOMMANDS  # exact names: "sweep-report" does not stand in for "report"
