"""Import layering, as docs/architecture.md states it. Every import counts, also one inside a function.

Between the installed packages: the core (ssl_bf/) imports nothing from eval/, launch/ or report/;
eval/ imports only the core; launch/ and report/ import eval/ and the core (never each other); only
ssl_bf/cli.py, ssl_bf/__main__.py (and the package's __init__) may import anything.

Inside the core, by folder, bottom to top:
  base         io, yaml_io, devices, process_env, distributed, cli_args, sweep_file, config/
  models/      base
  data/        base
  knn/         base
  run_config   base, models
  checkpoints/ base, models, data, run_config
  train/       base, models, data, knn, run_config, checkpoints
"""
from __future__ import annotations

import ast
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("ssl_bf.cli", "ssl_bf.__main__")
CORE_FOLDERS = ("models", "data", "knn", "checkpoints", "train")
ALLOWED = {
    "base": {"base"},
    "models": {"base", "models"},
    "data": {"base", "data"},
    "knn": {"base", "knn"},
    "run_config": {"base", "models", "run_config"},
    "checkpoints": {"base", "models", "data", "run_config", "checkpoints"},
    "train": {"base", "models", "data", "knn", "run_config", "checkpoints", "train"},
    "eval": {"base", "models", "data", "knn", "run_config", "checkpoints", "train", "eval"},
}
ALLOWED["launch"] = ALLOWED["eval"] | {"launch"}
ALLOWED["report"] = ALLOWED["eval"] | {"report"}
ALLOWED["cli"] = set(ALLOWED) | {"cli"}


def _layer(module: str) -> str:
    if module == "ssl_bf" or any(module == top or module.startswith(top + ".") for top in TOP):
        return "cli"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("eval", "launch", "report", "run_config", *CORE_FOLDERS):
        return parts[1]
    return "base"


def _packages() -> dict[str, str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def _imports(source: str, package: str, module: str) -> list[tuple[int, str]]:
    """(line, imported ssl_bf module) of every import in `source`; `from X import name` counts as
    X.name too (it may be a sub-module)."""
    tree = ast.parse(source, module)
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


def _modules() -> dict[str, tuple[str, str]]:
    """module name -> (file, package) for every module of every installed package (sub-folders too)."""
    found = {}
    for package, folder in _packages().items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if os.path.isfile(os.path.join(dirpath, d, "__init__.py"))]
            rel = os.path.relpath(dirpath, base)
            pkg = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            if pkg != package and pkg in _packages():
                continue  # a folder installed as its own package
            for name in filenames:
                if name.endswith(".py"):
                    module = pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"
                    found[module] = (os.path.join(dirpath, name), pkg)
    return found


def _sources() -> dict[str, tuple[str, str]]:
    """module name -> (source text, package)."""
    out = {}
    for module, (path, package) in _modules().items():
        with open(path) as f:
            out[module] = (f.read(), package)
    return out


def violations(sources: dict[str, tuple[str, str]]) -> list[str]:
    """Every import that reaches a layer its module may not use, as 'module:line: ... imports ...'."""
    bad = []
    for module, (source, package) in sorted(sources.items()):
        for line, target in _imports(source, package, module):
            if _layer(target) not in ALLOWED[_layer(module)]:
                bad.append(f"{module}:{line}: {module} ({_layer(module)}) imports {target} ({_layer(target)})")
    return bad


def test_no_module_imports_from_a_layer_above_it():
    bad = violations(_sources())
    assert not bad, "\n".join(bad)


def test_the_core_folders_are_where_the_rules_expect_them():
    modules = _modules()
    for folder in CORE_FOLDERS:
        assert f"ssl_bf.{folder}" in modules, folder
    assert "ssl_bf.run_config" in modules and "ssl_bf.config" in modules


def test_an_injected_upward_import_is_caught():
    """The rule bites: the real sources plus one line that climbs a layer fail, naming that module."""
    sources = _sources()
    for module, upward in [("ssl_bf.models.heads", "from ..train import trainer"),
                           ("ssl_bf.models.losses", "from ssl_bf.checkpoints.checkpoint import load"),
                           ("ssl_bf.knn.vote", "from ..models.registry import build_model"),
                           ("ssl_bf.config.parse", "from ..run_config import load_config"),
                           ("ssl_bf.data.base", "from ..knn import features"),
                           ("ssl_bf.train.trainer", "from ssl_bf.eval import embed"),
                           ("ssl_bf.eval.embed", "from ssl_bf.launch import job")]:
        injected = dict(sources)
        text, package = injected[module]
        injected[module] = (text + f"\n\ndef _climb():\n    {upward}\n", package)
        found = violations(injected)
        assert found and all(f.startswith(f"{module}:") for f in found), (module, upward, found)


def test_no_import_cycles():
    """Every import counts, also one inside a function: a lazy import that closes a cycle is still
    two modules that cannot be understood apart."""
    modules = _sources()
    graph = {m: sorted({t for _, t in _imports(src, pkg, m) if t in modules and t != m})
             for m, (src, pkg) in modules.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)
