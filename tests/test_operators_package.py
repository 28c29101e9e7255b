"""The operators package imports its parts when they are used: an isolated model's child
imports only what it runs. With every operator imported up front (faust, torch and the rest)
a child took 4 s to start on a loaded machine, so a model that crashed was away ~9 s instead of
its 0.5 s backoff (a new user's audit, stop 45)."""

from __future__ import annotations

import subprocess
import sys

import mlink.operators as operators


def test_every_public_name_resolves() -> None:
    for name in operators.__all__:
        assert getattr(operators, name) is not None, name
    assert set(operators.__all__) <= set(dir(operators))


def test_a_model_process_does_not_import_faust_or_torch() -> None:
    code = (
        "import sys, mlink.operators.model_process; "
        "print(sorted(m for m in ('faust', 'torch', 'aiokafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
