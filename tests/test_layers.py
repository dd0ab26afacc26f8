"""Import layering: the core (ssl_bf/ except cli.py and __main__.py) imports nothing from eval/,
launch/ or report/; eval/ imports only the core; launch/ and report/ import eval/ and the core
(never each other); only ssl_bf/cli.py and __main__.py may import anything. Every import counts,
also one inside a function."""
from __future__ import annotations

import ast
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("ssl_bf.cli", "ssl_bf.__main__")
ALLOWED = {"core": {"core"}, "eval": {"core", "eval"}, "launch": {"core", "eval", "launch"},
           "report": {"core", "eval", "report"}, "cli": {"core", "eval", "launch", "report", "cli"}}
# Imports that break the rule today and are being fixed elsewhere: (importing module, imported module).
KNOWN = {
    ("ssl_bf.launch.job", "ssl_bf.cli"),  # jobs run subcommands through the CLI
    ("ssl_bf.launch.submission", "ssl_bf.cli"),
}


def _layer(module: str) -> str:
    if any(module == top or module.startswith(top + ".") for top in TOP):
        return "cli"
    for sub in ("eval", "launch", "report"):
        if module == f"ssl_bf.{sub}" or module.startswith(f"ssl_bf.{sub}."):
            return sub
    return "core"


def _packages() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def _imports(path: str, package: str, module: str) -> list[tuple[int, str]]:
    """(line, imported ssl_bf module) of every import in the file; `from X import name` counts as
    X.name too (it may be a sub-module)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.startswith("ssl_bf.") and name != module]


def test_no_module_imports_from_a_layer_above_it():
    bad = []
    for package, folder in _packages().items():
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if not name.endswith(".py"):
                continue
            module = package if name == "__init__.py" else f"{package}.{name[:-3]}"
            for line, target in _imports(os.path.join(ROOT, folder, name), package, module):
                known = any(module == m and (target == t or target.startswith(t + ".")) for m, t in KNOWN)
                if _layer(target) not in ALLOWED[_layer(module)] and not known:
                    bad.append(f"{folder}/{name}:{line}: {module} ({_layer(module)}) imports {target}")
    assert not bad, "\n".join(bad)
