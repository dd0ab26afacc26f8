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
    import ssl_bf.eval.knn
    import ssl_bf.launch
    assert os.path.samefile(os.path.dirname(ssl_bf.eval.knn.__file__), os.path.join(ROOT, "eval"))
    assert os.path.samefile(os.path.dirname(ssl_bf.launch.__file__), os.path.join(ROOT, "launch"))


def test_console_script_help_lists_every_subcommand():
    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ssl-bf"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for command in ("pretrain", "export", "embed", "knn", "linear", "evaluate", "submit", "sweep-report",
                    "report"):
        assert command in out
