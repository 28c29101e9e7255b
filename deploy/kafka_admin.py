"""Create and wait for Kafka topics with kafka-python's admin client.

Works against any Kafka-compatible cluster given its bootstrap string (``host:port[,host:port]``,
a ``kafka://`` prefix is accepted): the embedded Tansu broker of :mod:`mlink.deploy.broker` or a
real Kafka cluster. Topics are created idempotently::

    ensure_topics(bootstrap, [
        TopicSpec("frames", partitions=4),
        TopicSpec("outputs", partitions=4, config={"retention.ms": "3600000"}),
    ])

A topic that already exists is fine when it has at least the partitions asked for; one with
fewer partitions raises :class:`TopicPartitionsError`, since keyed streams would then be spread
differently than the operators expect (grow it with ``kafka-topics --alter --partitions N`` or
delete it). Configs of existing topics are not compared or altered.

Only long-standing kafka-python admin calls are used (``list_topics``, ``create_topics`` with
``NewTopic``, ``describe_topics``), and both the 2.x and 3.x shapes of their answers are read.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlink.topics.bootstrap import bootstrap_servers

__all__ = [
    "TopicPartitionsError",
    "TopicSpec",
    "admin_client",
    "ensure_topics",
    "topic_partitions",
    "wait_for_topics",
]

log = logging.getLogger(__name__)


class TopicPartitionsError(RuntimeError):
    """A topic exists with fewer partitions than asked for."""


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partition count, topic configs (``{"retention.ms": "..."}``).

    ``replication_factor`` defaults to 1 (all a single broker can hold); use the cluster's
    replication (e.g. 3) on a real cluster, or -1 for the broker default (Kafka >= 2.4).
    ``exact``: more partitions than asked for are an error too (a topic read from partition 0
    only, whose order every reader must share).
    """

    name: str
    partitions: int = 1
    config: Mapping[str, str] = field(default_factory=dict)
    replication_factor: int = 1
    exact: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"topic name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.partitions, int) or self.partitions < 1:
            raise ValueError(f"topic {self.name!r}: partitions must be >= 1, got {self.partitions}")
        bad = {k: v for k, v in self.config.items() if not isinstance(v, str)}
        if bad:
            raise ValueError(f"topic {self.name!r}: config values must be strings, got {bad}")


@contextlib.contextmanager
def admin_client(bootstrap: str, *, request_timeout: float = 30.0, **kwargs: Any) -> Iterator[Any]:
    """A kafka-python ``KafkaAdminClient`` for ``bootstrap``, closed on exit.

    Extra keyword arguments go to the client (``security_protocol``, ``sasl_*``, ``ssl_*`` ...).
    """
    from kafka import KafkaAdminClient

    timeout_ms = int(request_timeout * 1000)
    kwargs.setdefault("client_id", "mlink-admin")
    for key in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):  # 3.x / 2.x names
        if key in KafkaAdminClient.DEFAULT_CONFIG:
            kwargs.setdefault(key, timeout_ms)
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers(bootstrap),
        request_timeout_ms=timeout_ms,
        **kwargs,
    )
    try:
        yield admin
    finally:
        with contextlib.suppress(Exception):
            admin.close()


def _topic_name(info: Mapping[str, Any]) -> str | None:
    return info.get("name", info.get("topic"))  # kafka-python 3.x / 2.x


def _not_ready(info: Mapping[str, Any] | None) -> str | None:
    """Why a describe_topics entry is not usable yet, or None when it is."""
    if info is None:
        return "missing from metadata"
    if info.get("error_code", 0):
        return f"error code {info['error_code']}"
    partitions = info.get("partitions") or []
    if not partitions:
        return "no partitions yet"
    for p in partitions:
        index = p.get("partition_index", p.get("partition"))
        if p.get("error_code", 0):
            return f"partition {index}: error code {p['error_code']}"
        if p.get("leader_id", p.get("leader", -1)) < 0:
            return f"partition {index}: no leader"
    return None


def _wait(admin: Any, names: Sequence[str], timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    pending: dict[str, str] = {}
    while True:
        described: dict[str, Mapping[str, Any]] = {}
        failure = None
        try:
            existing = set(admin.list_topics())
            present = [n for n in names if n in existing]
            if present:
                for info in admin.describe_topics(present):
                    name = _topic_name(info)
                    if name is not None:
                        described[name] = info
        except Exception as exc:  # e.g. a leader election on a real cluster: retry
            failure = f"metadata request failed: {exc!r}"
        pending = {}
        for name in names:
            reason = failure or _not_ready(described.get(name))
            if reason is not None:
                pending[name] = reason
        if not pending:
            return {n: len(described[n]["partitions"]) for n in names}
        if time.monotonic() >= deadline:
            raise TimeoutError(f"topics not ready after {timeout}s: {pending}")
        time.sleep(0.1)


def wait_for_topics(
    bootstrap: str, names: Iterable[str], timeout: float = 10.0, **admin_kwargs: Any
) -> dict[str, int]:
    """Block until every topic exists with a leader for each partition.

    Returns ``{topic: partition count}``; raises ``TimeoutError`` naming what is missing.
    ``admin_kwargs`` go to the admin client (e.g. ``mlink.deploy.security.kafka_python_kwargs``).
    """
    names = list(dict.fromkeys(names))
    if not names:
        return {}
    with admin_client(bootstrap, request_timeout=max(timeout, 1.0), **admin_kwargs) as admin:
        return _wait(admin, names, timeout)


def topic_partitions(bootstrap: str, name: str, **admin_kwargs: Any) -> int | None:
    """Partition count of ``name``, or None when the topic does not exist."""
    with admin_client(bootstrap, **admin_kwargs) as admin:
        if name not in set(admin.list_topics()):
            return None
        for info in admin.describe_topics([name]):
            if _topic_name(info) == name:
                return len(info.get("partitions") or [])
    return None


def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    timeout: float = 30.0,
    **admin_kwargs: Any,
) -> list[str]:
    """Create the topics of ``specs`` that do not exist yet; return the names it created.

    Idempotent: existing topics are left alone (a concurrent creator winning the race is fine
    too). Waits until every topic has a leader for each partition. Raises
    :class:`TopicPartitionsError` when a topic exists with fewer partitions than its spec asks
    for (more is logged and accepted).
    """
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    by_name: dict[str, TopicSpec] = {}
    for spec in specs:
        other = by_name.setdefault(spec.name, spec)
        if other != spec:
            raise ValueError(f"topic {spec.name!r} is given twice, differently: {other} / {spec}")
    if not by_name:
        return []

    created: list[str] = []
    with admin_client(bootstrap, request_timeout=timeout, **admin_kwargs) as admin:
        existing = set(admin.list_topics())
        for spec in by_name.values():
            if spec.name in existing:
                continue
            new = NewTopic(
                name=spec.name,
                num_partitions=spec.partitions,
                replication_factor=spec.replication_factor,
                topic_configs=dict(spec.config),
            )
            # One request per topic: kafka-python 2.x raises on the first error of a batch
            # and drops the results of the rest.
            try:
                admin.create_topics([new], timeout_ms=int(timeout * 1000))
            except TopicAlreadyExistsError:
                log.info("topic %s was created concurrently", spec.name)
                continue
            created.append(spec.name)
            log.info("created topic %s (%d partitions)", spec.name, spec.partitions)

        counts = _wait(admin, list(by_name), timeout)

    short = {
        name: (count, by_name[name].partitions)
        for name, count in counts.items()
        if count < by_name[name].partitions
    }
    wide = {
        name: count
        for name, count in counts.items()
        if by_name[name].exact and count > by_name[name].partitions
    }
    if wide:
        details = "; ".join(
            f"{name!r} has {count} partitions, {by_name[name].partitions} needed"
            for name, count in wide.items()
        )
        raise TopicPartitionsError(
            f"{details}. The pipeline reads such a topic from one partition in one order, and "
            "messages on the others would never be read. It was most likely created by the "
            "broker's auto-create (a client that used it before the first worker created it): "
            "delete it (kafka-topics --delete --topic NAME) or use another topics.prefix, and "
            "start the workers again."
        )
    if short:
        details = "; ".join(
            f"{name!r} has {have} partition(s), {want} asked for"
            for name, (have, want) in short.items()
        )
        raise TopicPartitionsError(
            f"topics exist with fewer partitions than requested: {details}. Existing topics are "
            "never changed here: add partitions (kafka-topics --alter --partitions N) or delete "
            "and recreate them."
        )
    for name, count in counts.items():
        if count > by_name[name].partitions:
            log.warning(
                "topic %s already exists with %d partitions (%d asked for); using it as is",
                name,
                count,
                by_name[name].partitions,
            )
    return created
