"""A stand-in worker for the orphan test: starts an isolated model with two children, leaves
one of them hung in a call, prints the children's pids and waits to be killed.

Run as ``python -m tests.isolation_parent``.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from mlink.operators.isolation import ProcessExecutor
from mlink.operators.model_settings import ExecutorSettings, IsolationSettings, ModelFactory
from tests.misbehaving_models import SPEC, frames


def main() -> None:
    factory = ModelFactory("tests.misbehaving_models:misbehaving", {"fault": "hang", "trigger": 7})
    settings = ExecutorSettings(timeout_s=600, isolation=IsolationSettings(processes=2))
    executor = ProcessExecutor("orphan", factory, SPEC, settings=settings).start()
    threading.Thread(target=executor.run, args=(frames(7),), daemon=True).start()
    time.sleep(0.5)  # let the hung call reach its child
    print(json.dumps(executor.pids()), flush=True)
    sys.stdin.read()  # until killed


if __name__ == "__main__":
    main()
