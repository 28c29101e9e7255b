"""One reading of a broker address, for every Kafka client we make.

A user writes the broker in several places (the config's ``broker:``, ``--broker``,
``MLINK_BROKER``) and copies it from wherever their cluster documents it: ``host:port``, a
comma-separated list, faust's ``kafka://host:port``, with spaces after the commas. kafka-python,
aiokafka and faust each take a different spelling, so every client reads the address through
:func:`bootstrap_servers` and none splits the raw string itself.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_PORT", "bootstrap_servers", "normalize_bootstrap"]

DEFAULT_PORT = 9092
_SCHEME = re.compile(r"^([A-Za-z][\w+.\-]*)://")
_ACCEPTED_SCHEMES = {"kafka"}  # faust's spelling; TLS and SASL are set in `security:`, not here


def _server(entry: str, whole: str) -> str:
    text = entry.strip()
    scheme = _SCHEME.match(text)
    if scheme:
        if scheme.group(1).lower() not in _ACCEPTED_SCHEMES:
            raise ValueError(
                f"broker {whole!r}: {scheme.group(1)}:// is not a bootstrap address; write "
                "'host:port' (TLS and SASL go in the config's `security:` section)"
            )
        text = text[scheme.end() :]
    text = text.rstrip("/")
    if not text or any(c.isspace() for c in text) or "/" in text:
        raise ValueError(
            f"broker {whole!r}: {entry.strip()!r} is not 'host:port'; write "
            "'host:port[,host:port...]'"
        )
    if text.startswith("["):  # IPv6 literal: [::1] or [::1]:9092
        close = text.find("]")
        host, rest = text[: close + 1], text[close + 1 :]
        if close < 2 or (rest and not rest.startswith(":")):
            raise ValueError(f"broker {whole!r}: {entry.strip()!r} is not '[ipv6]:port'")
        port = rest[1:]
    elif text.count(":") > 1:
        raise ValueError(
            f"broker {whole!r}: {entry.strip()!r} has several ':'; write an IPv6 host in "
            "brackets, '[::1]:9092'"
        )
    else:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"broker {whole!r}: {entry.strip()!r} has no host")
    if not port:
        return f"{host}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"broker {whole!r}: port {port!r} is not a number in 1..65535")
    return f"{host}:{int(port)}"


def bootstrap_servers(bootstrap: str) -> list[str]:
    """``['host:port', ...]`` of a broker address; a missing port is Kafka's 9092.

    Accepts a list separated by commas (Kafka's clients) or semicolons (faust's), with or
    without spaces, and faust's ``kafka://`` prefix on any entry; anything else raises
    :class:`ValueError` naming the entry.
    """
    if not isinstance(bootstrap, str):
        raise ValueError(f"broker must be a string 'host:port', got {type(bootstrap).__name__}")
    entries = [e for e in re.split(r"[,;]", bootstrap) if e.strip()]
    if not entries:
        raise ValueError(f"empty broker {bootstrap!r}; write 'host:port[,host:port...]'")
    servers = [_server(e, bootstrap) for e in entries]
    return list(dict.fromkeys(servers))


def normalize_bootstrap(bootstrap: str) -> str:
    """The one spelling we store and pass on: ``host:port[,host:port...]``."""
    return ",".join(bootstrap_servers(bootstrap))
