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


def test_no_module_imports_from_a_layer_above_it():
    bad = []
    for module, (path, package) in sorted(_modules().items()):
        folder, name = os.path.relpath(os.path.dirname(path), ROOT), os.path.basename(path)
        if True:
            for line, target in _imports(path, package, module):
                if _layer(target) not in ALLOWED[_layer(module)]:
                    bad.append(f"{folder}/{name}:{line}: {module} ({_layer(module)}) imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """Every import counts, also one inside a function: a lazy import that closes a cycle is still
    two modules that cannot be understood apart."""
    modules = _modules()
    graph = {m: sorted({t for _, t in _imports(path, pkg, m) if t in modules and t != m})
             for m, (path, pkg) in modules.items()}
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
