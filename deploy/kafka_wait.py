"""Waiting for a Kafka(-compatible) cluster to answer, and picking free loopback ports.

Nothing here is Tansu specific: :func:`wait_for_kafka` takes a bootstrap string and works the
same against a real cluster.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

from mlink.topics.bootstrap import bootstrap_servers

__all__ = ["HOST", "BrokerError", "free_port", "port_accepts", "port_free", "wait_for_kafka"]

HOST = "127.0.0.1"


class BrokerError(RuntimeError):
    """The embedded broker could not be started, died, or never became ready."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR (as servers set it): TIME_WAIT leftovers do not count, a listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            return True
    except OSError:
        return False


def _split_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    return [
        (host, int(port))
        for host, _, port in (s.rpartition(":") for s in bootstrap_servers(bootstrap))
    ]


def wait_for_kafka(
    bootstrap: str,
    timeout: float = 15.0,
    *,
    cluster_id: str | None = None,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Block until a Kafka(-compatible) cluster answers a metadata request.

    First waits for a TCP connection to one of the ``host:port`` entries of ``bootstrap``, then
    asks for cluster metadata with kafka-python's admin client. With ``cluster_id`` the answer
    must also come from that cluster (so a stray broker already on the port is not mistaken for
    ours). ``alive`` is called while waiting; if it returns a string the wait stops with
    :class:`BrokerError` carrying that message (used to report a broker subprocess that died).
    Works against a real cluster too.
    """
    from kafka import KafkaAdminClient  # deferred: importing kafka costs ~0.1 s

    addresses = _split_bootstrap(bootstrap)
    deadline = time.monotonic() + timeout
    last_error: Exception | str = "no TCP connection yet"

    def check_alive() -> None:
        if alive is not None and (why := alive()) is not None:
            raise BrokerError(why)

    while True:
        check_alive()
        if any(port_accepts(host, port) for host, port in addresses):
            break
        if time.monotonic() >= deadline:
            raise BrokerError(f"nothing accepts TCP connections at {bootstrap} after {timeout}s")
        time.sleep(0.02)

    while True:
        check_alive()
        step_ms = min(5000, max(500, int((deadline - time.monotonic()) * 1000)))
        # Bound every phase of the client's own bootstrap too (names differ across versions).
        limits = {
            key: step_ms
            for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms")
            if key in KafkaAdminClient.DEFAULT_CONFIG
        }
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=[f"{host}:{port}" for host, port in addresses],
                client_id="mlink-wait-for-kafka",
                request_timeout_ms=step_ms,
                **limits,
            )
            if cluster_id is None:
                admin.list_topics()  # a real MetadataRequest
                return
            found = admin.describe_cluster().get("cluster_id")
            if found == cluster_id:
                return
            last_error = f"cluster id is {found!r}, expected {cluster_id!r}"
        except Exception as exc:  # kafka-python raises many kinds while a broker starts
            last_error = exc
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    admin.close()
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka at {bootstrap} accepts TCP connections but did not answer a metadata "
                f"request within {timeout}s: {last_error!r}"
            )
        time.sleep(0.05)
