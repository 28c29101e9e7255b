"""Optional HMAC signatures on the records that steer a pipeline.

Whoever can write the control topic can steer every worker's plan; whoever can write the
outputs or samples topics can forge results and poison link training. When the brokers cannot
restrict writers (or as a second line behind ACLs), every writer of those topics signs each
record with a secret shared by the deployment, and every reader rejects what is unsigned or
badly signed.

- The secret comes from the environment, :data:`SIGNING_KEY_ENV` (``MLINK_SIGNING_KEY``): one
  key, or several separated by commas for rotation. The first signs; any of them verifies. Roll
  a key by deploying ``new,old`` everywhere, running ``mlink resign CONFIG`` (the control state
  in force, signed again with the new key: :mod:`mlink.deploy.key_rotation`), then deploying
  ``new``. Keys are at least
  :data:`MIN_KEY_BYTES` bytes; make one with ``python -c "import secrets;
  print(secrets.token_urlsafe(32))"``.
- The signature is HMAC-SHA256 over the topic name, the key and the value, each length-prefixed,
  so a record cannot be moved to another topic or have its key swapped. It travels in the Kafka
  header :data:`SIGNATURE_HEADER` as ``b"v1=" + hex digest``.
- Verification compares in constant time. A signed record can still be replayed onto the same
  topic: epochs make a replayed active set stale, but a replayed budget message re-applies
  its budget.

Without a key, signing adds no header and verification accepts everything, so a deployment
opts in by setting the variable on every writer and reader at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from mlink.topics.headers import header_values
from mlink.topics.names import TopicNames
from mlink.topics.records import DecodeError

__all__ = [
    "MIN_KEY_BYTES",
    "SIGNATURE_HEADER",
    "SIGNING_KEY_ENV",
    "SignatureError",
    "Signer",
    "signed_topics",
]

SIGNING_KEY_ENV: Final = "MLINK_SIGNING_KEY"
SIGNATURE_HEADER: Final = "mlink-signature"
MIN_KEY_BYTES: Final = 16
_PREFIX: Final = b"v1="
_DOMAIN: Final = b"mlink-record-hmac-v1\x00"

Headers = Iterable[tuple[str | bytes, bytes | None]] | Mapping[str | bytes, bytes | None] | None


class SignatureError(DecodeError):
    """A record is unsigned or its signature does not verify.

    A :class:`~mlink.topics.records.DecodeError`, so it is dead-lettered like unreadable input.
    """


def signed_topics(names: TopicNames) -> frozenset[str]:
    """The topics whose records are signed when a key is set: the ones that steer a pipeline
    (control), carry its intermediate results (planned frames, outputs) or train its links
    (samples)."""
    return frozenset({names.control, names.planned, names.outputs, names.samples})


def _length(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big")


class Signer:
    """Signs and verifies records with the deployment's keys; a no-op without keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        keys = tuple(keys)
        for i, key in enumerate(keys):
            if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                raise ValueError(
                    f"signing key {i} must be at least {MIN_KEY_BYTES} bytes; make one with "
                    'python -c "import secrets; print(secrets.token_urlsafe(32))"'
                )
        self._keys = keys

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer:
        """The signer of ``MLINK_SIGNING_KEY`` (comma-separated keys, the first signs)."""
        value = (os.environ if environ is None else environ).get(SIGNING_KEY_ENV, "")
        keys = [part.strip().encode() for part in value.split(",") if part.strip()]
        try:
            return cls(keys)
        except ValueError as exc:
            raise ValueError(f"{SIGNING_KEY_ENV}: {exc}") from None

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:  # never show the keys
        return f"Signer({len(self._keys)} keys)"

    @staticmethod
    def _digest(secret: bytes, topic: str, key: bytes | None, value: bytes) -> bytes:
        mac = hmac.new(secret, _DOMAIN, hashlib.sha256)
        topic_bytes = topic.encode()
        mac.update(_length(topic_bytes) + topic_bytes)
        if key is None:
            mac.update(b"\x00")
        else:
            mac.update(b"\x01" + _length(key))
            mac.update(key)
        mac.update(_length(value))
        mac.update(value)  # no concatenation: a 2 MiB value is not copied
        return mac.digest()

    def sign(self, topic: str, key: bytes | None, value: bytes) -> list[tuple[str, bytes]]:
        """Headers to send with the record: ``[(SIGNATURE_HEADER, b"v1=<hex>")]``, or ``[]``
        without keys. Pass them as ``headers=`` to faust, aiokafka or kafka-python."""
        if not self._keys:
            return []
        digest = self._digest(self._keys[0], topic, key, value)
        return [(SIGNATURE_HEADER, _PREFIX + digest.hex().encode())]

    def verify(self, topic: str, key: bytes | None, value: bytes, headers: Headers) -> None:
        """Return if the record is signed by one of the keys (or there are no keys).

        ``headers`` as any client gives them: a list of ``(name, value)`` pairs or a mapping.
        Raises :class:`SignatureError` when keys are set and the record is unsigned, signed
        twice, or its signature matches none of them.
        """
        if not self._keys:
            return
        found = _signature_values(headers)
        if not found:
            raise SignatureError(
                f"unsigned record on {topic!r}: this deployment requires the "
                f"{SIGNATURE_HEADER!r} header ({SIGNING_KEY_ENV} is set)"
            )
        if len(found) > 1:
            raise SignatureError(f"record on {topic!r} carries {len(found)} signatures")
        given = found[0]
        if not isinstance(value, bytes | bytearray) or not isinstance(key, bytes | None):
            raise SignatureError(f"record on {topic!r} has no bytes to verify")
        ok = False
        for secret in self._keys:  # every key is tried, so timing does not tell which matched
            expected = _PREFIX + self._digest(secret, topic, key, bytes(value)).hex().encode()
            ok |= hmac.compare_digest(expected, given)
        if not ok:
            raise SignatureError(f"bad signature on a record of {topic!r}")


def _signature_values(headers: Any) -> list[bytes]:
    return header_values(headers, SIGNATURE_HEADER)
