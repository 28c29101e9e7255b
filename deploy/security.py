"""TLS and SASL settings for every Kafka client of a pipeline, from one config section.

One :class:`SecurityConfig` (the ``security:`` section of a pipeline config) is turned into the
settings each client library spells differently::

    security:
      protocol: SASL_SSL                   # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
      sasl_mechanism: SCRAM-SHA-512        # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
      username: mlink-worker
      password_env: MLINK_KAFKA_PASSWORD   # the password itself never sits in the YAML
      ca_file: /etc/mlink/ca.pem           # verifies the brokers; omitted = system CAs
      cert_file: /etc/mlink/client.pem     # optional client certificate (mutual TLS) ...
      key_file: /etc/mlink/client.key      # ... and its key
      check_hostname: true

- :func:`faust_settings` -> ``faust.App(..., **faust_settings(cfg))`` (``broker_credentials``);
- :func:`aiokafka_kwargs` -> ``AIOKafkaConsumer/Producer(..., **aiokafka_kwargs(cfg))``;
- :func:`kafka_python_kwargs` -> ``KafkaProducer/KafkaConsumer/KafkaAdminClient(..., **...)``.

All three share one :func:`ssl_context`, so a CA, client certificate or hostname rule means the
same thing in every client. Secrets are read from the environment when a client is built, not
when the config is parsed, so ``mlink status`` on a machine without the secret still parses the
config, and an unset variable fails with its name at connect time. What was verified against a
real broker, and what could not be, is in ``docs/security.md``.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "SecurityConfig",
    "SecurityError",
    "aiokafka_kwargs",
    "faust_settings",
    "kafka_python_kwargs",
    "password",
    "ssl_context",
]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
_TLS = ("SSL", "SASL_SSL")
_SASL = ("SASL_PLAINTEXT", "SASL_SSL")


class SecurityError(ValueError):
    """Security settings are inconsistent or a secret is missing; the message says which."""


class SecurityConfig(BaseModel):
    """How the pipeline's Kafka clients authenticate and encrypt (default: plaintext)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Protocol = Field("PLAINTEXT", description="Kafka security.protocol")
    sasl_mechanism: Mechanism | None = Field(None, description="SASL mechanism (SASL_* only)")
    username: str | None = Field(None, min_length=1, description="SASL user name")
    password_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the SASL password",
    )
    ca_file: Path | None = Field(None, description="PEM CA bundle; None = the system's CAs")
    cert_file: Path | None = Field(None, description="PEM client certificate (mutual TLS)")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    check_hostname: bool = Field(True, description="the broker certificate must name the host")

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError(
                "security.password is not allowed: secrets stay out of config files. Set "
                "password_env: NAME and export NAME=<password> where the workers run"
            )
        return data

    @model_validator(mode="after")
    def _consistent(self) -> SecurityConfig:
        sasl_keys = {
            k: v
            for k, v in (
                ("sasl_mechanism", self.sasl_mechanism),
                ("username", self.username),
                ("password_env", self.password_env),
            )
        }
        if self.protocol in _SASL:
            missing = [k for k, v in sasl_keys.items() if v is None]
            if missing:
                raise ValueError(f"protocol {self.protocol} needs {', '.join(missing)}")
        else:
            given = [k for k, v in sasl_keys.items() if v is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} only apply to SASL_PLAINTEXT/SASL_SSL, "
                    f"not to protocol {self.protocol}"
                )
        tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k)]
        if self.protocol not in _TLS and tls_keys:
            raise ValueError(
                f"{', '.join(tls_keys)} only apply to SSL/SASL_SSL, not to protocol {self.protocol}"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("give cert_file and key_file together (mutual TLS) or neither")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.protocol in _TLS

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in _SASL


def password(config: SecurityConfig) -> str | None:
    """The SASL password from the environment variable the config names (None without SASL)."""
    if not config.uses_sasl:
        return None
    assert config.password_env is not None  # checked by the model
    value = os.environ.get(config.password_env)
    if not value:
        raise SecurityError(
            f"security.password_env names ${config.password_env}, which is not set (or empty) "
            f"in this process; export {config.password_env}=<password> before starting"
        )
    return value


def _readable(path: Path, key: str) -> str:
    if not path.is_file():
        raise SecurityError(f"security.{key} {path} does not exist or is not a file")
    return str(path)


def ssl_context(config: SecurityConfig) -> ssl.SSLContext | None:
    """The TLS context every client uses (None when the protocol has no TLS).

    Verifies the broker certificate (always) and its host name (``check_hostname``); loads the
    client certificate for mutual TLS when given.
    """
    if not config.uses_tls:
        return None
    cafile = _readable(config.ca_file, "ca_file") if config.ca_file else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        context.check_hostname = config.check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        if config.cert_file is not None and config.key_file is not None:
            context.load_cert_chain(
                _readable(config.cert_file, "cert_file"), _readable(config.key_file, "key_file")
            )
    except ssl.SSLError as exc:
        raise SecurityError(f"cannot load the TLS files of the security section: {exc}") from exc
    return context


def _sasl(config: SecurityConfig) -> dict[str, Any]:
    if not config.uses_sasl:
        return {}
    return {
        "sasl_mechanism": config.sasl_mechanism,
        "sasl_plain_username": config.username,
        "sasl_plain_password": password(config),
    }


def aiokafka_kwargs(config: SecurityConfig) -> dict[str, Any]:
    """Keyword arguments for aiokafka's consumer, producer and admin client."""
    kwargs: dict[str, Any] = {"security_protocol": config.protocol}
    if config.uses_tls:
        kwargs["ssl_context"] = ssl_context(config)
    kwargs.update(_sasl(config))
    return kwargs


def kafka_python_kwargs(config: SecurityConfig) -> dict[str, Any]:
    """Keyword arguments for kafka-python's ``KafkaProducer``, ``KafkaConsumer`` and
    ``KafkaAdminClient`` (an ``ssl_context`` wins over kafka-python's ``ssl_*`` file options,
    so the same context as aiokafka's is used)."""
    return aiokafka_kwargs(config)  # kafka-python spells every key the same way


def faust_settings(config: SecurityConfig) -> dict[str, Any]:
    """Settings for ``faust.App(...)``: ``broker_credentials`` (nothing for plaintext)."""
    import faust  # deferred: faust is heavy and only workers need it

    if config.protocol == "PLAINTEXT":
        return {}
    context = ssl_context(config)
    if config.protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(context)}
    return {
        "broker_credentials": faust.SASLCredentials(
            username=config.username,
            password=password(config),
            mechanism=config.sasl_mechanism,
            ssl_context=context,  # None -> SASL_PLAINTEXT, a context -> SASL_SSL
        )
    }
