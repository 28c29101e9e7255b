"""Imports point one way: topics <- linkstore <- operators <- deploy, with eval on top.

The runtime core (topics, linkstore, operators) must never need the evaluation package nor the
heavy libraries only evaluation uses, so a production worker installs and imports without them.
Checked twice: statically on every import statement (also the lazy ones inside functions), and
dynamically by importing every core module in a fresh interpreter and looking at ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ("topics", "linkstore", "operators")
#: What the core may not import: our evaluation package and the libraries only it needs.
FORBIDDEN = ("mlink.eval", "sklearn", "skvideo", "matplotlib")
#: Which first-party packages each layer may import (itself included).
ALLOWED = {
    "topics": {"topics"},
    "linkstore": {"topics", "linkstore"},
    "operators": {"topics", "linkstore", "operators", "deploy"},  # deploy: until issue 8 lands
}


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


@pytest.mark.parametrize("package", CORE)
def test_no_core_module_imports_eval_or_evaluation_libraries(package):
    offenders = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in _modules(package)
        for name in _imports(path)
        if _forbidden(name)
    }
    assert not offenders, f"the runtime core imports evaluation code: {sorted(offenders)}"


@pytest.mark.parametrize("package", CORE)
def test_core_layers_import_only_layers_below(package):
    offenders = set()
    for path in _modules(package):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "mlink" and len(parts) > 1 and parts[1] not in ALLOWED[package]:
                offenders.add(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders, f"{package} imports a layer above it: {sorted(offenders)}"


#: Entry points that load a pipeline config (and so the user's models) when imported. None is
#: left in the core: the worker entry lives in deploy/ (mlink.deploy.worker_app).
ENTRY_POINTS: set[str] = set()


def test_importing_the_core_loads_no_evaluation_library():
    modules = [
        "mlink." + ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in CORE
        for path in _modules(package)
    ]
    modules = [m for m in modules if m not in ENTRY_POINTS]
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(modules) > 20
    assert not [m for m in loaded if _forbidden(m)]
