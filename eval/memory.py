"""How much memory a model adds to a fresh process, and a single-threaded scope to time it in.

``memory_mb`` is the resident memory a model adds to a **fresh** Python process: its loaded weights
plus the peak working memory of one call on one frame (Linux ``VmHWM`` - ``VmRSS`` before the model
was built). It is measured in a child interpreter, so the figure does not depend on what this
process allocated and freed before. That needs the model to be picklable (a class instance,
``functools.partial``...); for any other callable it falls back to the peak RSS growth of one call
in this process (weights not included), which can be near zero when the allocator reuses freed
memory.

Calls are timed **single-threaded** (:func:`single_threaded`): the machine is shared and costs must
add up; a model that grabs every core looks cheap alone but is not when several share a worker.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["measure_memory_mb", "single_threaded"]

Model = Callable[[np.ndarray], Any]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run OpenCV and torch (when loaded) on one thread, restoring their settings afterwards."""
    restore: list[Callable[[], None]] = []
    cv2 = sys.modules.get("cv2")
    if cv2 is not None and hasattr(cv2, "setNumThreads"):
        before = cv2.getNumThreads()
        cv2.setNumThreads(1)
        restore.append(lambda: cv2.setNumThreads(before))
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch_before = torch.get_num_threads()
        torch.set_num_threads(1)
        restore.append(lambda: torch.set_num_threads(torch_before))
    try:
        yield
    finally:
        for undo in restore:
            undo()


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


_CHILD = r"""
import importlib, json, pickle, sys
payload = sys.stdin.buffer.read()
header, model_blob, frame_blob = payload.split(b"\0MLINK\0", 2)
meta = json.loads(header)
sys.path[:] = meta["path"]
for module in meta["modules"]:
    importlib.import_module(module)
import io, numpy as np
frame = np.load(io.BytesIO(frame_blob), allow_pickle=False)
if "cv2" in sys.modules:
    sys.modules["cv2"].setNumThreads(1)
if "torch" in sys.modules:
    sys.modules["torch"].set_num_threads(1)
def status(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
base = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
except OSError:
    pass
model = pickle.loads(model_blob)
model(frame)
peak = max(status("VmHWM"), status("VmRSS"))
print(json.dumps({"kb": peak - base}))
"""
_SEP = b"\0MLINK\0"


def _memory_in_child(model: Model, frame: np.ndarray, timeout: float) -> float:
    blob = pickle.dumps(model)
    modules = sorted({type(model).__module__, getattr(model, "__module__", None) or ""} - {""})
    modules = [m for m in modules if m not in ("__main__", "builtins", "functools")]
    if isinstance(model, functools.partial):
        modules.append(model.func.__module__)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(frame), allow_pickle=False)
    header = json.dumps({"path": sys.path, "modules": modules}).encode()
    result = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=header + _SEP + blob + _SEP + buf.getvalue(),
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"memory probe exited with {result.returncode}: {' | '.join(tail)}")
    return json.loads(result.stdout.decode().strip().splitlines()[-1])["kb"] / 1024.0


def _memory_in_process(model: Model, frame: np.ndarray) -> float:
    base = _status_kb("VmRSS")
    if base is None:  # not Linux: no per-call figure; report what the call left resident
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model(frame)
        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0
    reset = _reset_peak()
    model(frame)
    after = _status_kb("VmRSS") or base
    peak = (_status_kb("VmHWM") or after) if reset else after
    return max(0, max(peak, after) - base) / 1024.0


def measure_memory_mb(
    model: Model, frame: np.ndarray, timeout: float = 300.0, label: str = "model"
) -> float:
    """Resident MB ``model`` adds to a fresh process (weights + one call on ``frame``).

    Picklable models are measured in a child interpreter; others (lambdas, closures) fall back to
    the peak RSS growth of one call here, which excludes weights already loaded.
    """
    try:
        return _memory_in_child(model, frame, timeout)
    except (pickle.PicklingError, TypeError, AttributeError):
        pass  # not picklable: measure here
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
        warnings.warn(
            f"memory probe for {label} failed ({exc}); measuring one call in this process instead",
            stacklevel=2,
        )
    return _memory_in_process(model, frame)
