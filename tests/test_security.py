"""The security section and the client settings built from it (no broker).

The runs against real brokers are in ``tests/test_security_broker.py``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError

from mlink.deploy.config import ConfigError, parse_config
from mlink.deploy.security import (
    SecurityConfig,
    SecurityError,
    aiokafka_kwargs,
    faust_settings,
    kafka_python_kwargs,
    password,
    ssl_context,
)
from tests.tls import make_pki

ENV = "MLINK_TEST_KAFKA_PASSWORD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def sasl(protocol: str = "SASL_PLAINTEXT", **extra) -> SecurityConfig:
    return SecurityConfig(
        protocol=protocol,
        sasl_mechanism="SCRAM-SHA-512",
        username="worker",
        password_env=ENV,
        **extra,
    )


def test_default_is_plaintext_and_adds_nothing() -> None:
    config = SecurityConfig()
    assert config.protocol == "PLAINTEXT"
    assert faust_settings(config) == {}
    assert aiokafka_kwargs(config) == {"security_protocol": "PLAINTEXT"}
    assert kafka_python_kwargs(config) == {"security_protocol": "PLAINTEXT"}
    assert ssl_context(config) is None and password(config) is None


def test_a_password_in_the_config_is_refused_pointing_to_password_env() -> None:
    with pytest.raises(ValidationError, match="password_env"):
        SecurityConfig.model_validate(
            {"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN", "password": "hunter2"}
        )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"protocol": "SASL_SSL", "username": "u", "password_env": "P"}, "needs sasl_mechanism"),
        ({"protocol": "PLAINTEXT", "username": "u"}, "only apply to SASL"),
        ({"protocol": "SASL_PLAINTEXT", "sasl_mechanism": "GSSAPI"}, "sasl_mechanism"),
        ({"protocol": "PLAINTEXT", "ca_file": "/ca.pem"}, "only apply to SSL"),
        ({"protocol": "SSL", "cert_file": "/c.pem"}, "together"),
        ({"protocol": "TLS"}, "protocol"),
        ({"protocol": "SSL", "password_env": "bad name"}, "password_env"),
        ({"protocol": "SSL", "verify": False}, "verify"),
    ],
)
def test_inconsistent_sections_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SecurityConfig.model_validate(data)


SPEC = {"kind": "vector", "size": 2, "task": "softmax"}


def test_pipeline_config_has_a_security_section() -> None:
    base = {
        "name": "p",
        "source": {"images": "*.png"},
        "models": [{"name": n, "factory": "m:f", "output": SPEC} for n in "ab"],
        "budget": {"fraction": 0.5},
    }
    assert parse_config(base).security == SecurityConfig()
    section = {"protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "username": "u"}
    with pytest.raises(ConfigError, match=r"security: .*needs password_env"):
        parse_config({**base, "security": section})
    with pytest.raises(ConfigError, match=r"security: .*password_env"):
        parse_config({**base, "security": {**section, "password": "x"}})


def test_missing_password_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(SecurityError, match=f"export {ENV}="):
        kafka_python_kwargs(sasl())
    monkeypatch.setenv(ENV, "")
    with pytest.raises(SecurityError, match=ENV):
        faust_settings(sasl())


def test_sasl_plaintext_settings_for_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "s3cret")
    expected = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "worker",
        "sasl_plain_password": "s3cret",
    }
    assert kafka_python_kwargs(sasl()) == expected
    assert aiokafka_kwargs(sasl()) == expected
    creds = faust_settings(sasl())["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.username, creds.password) == ("worker", "s3cret")
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_PLAINTEXT" and creds.ssl_context is None


def test_ssl_settings_share_one_verified_context(pki) -> None:
    config = SecurityConfig(protocol="SSL", ca_file=pki.ca_cert)
    context = ssl_context(config)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    kwargs = kafka_python_kwargs(config)
    assert kwargs["security_protocol"] == "SSL"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert "sasl_mechanism" not in kwargs
    creds = faust_settings(config)["broker_credentials"]
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL"
    assert not ssl_context(config.model_copy(update={"check_hostname": False})).check_hostname


def test_sasl_ssl_with_client_certificate(pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "s3cret")
    config = sasl(
        "SASL_SSL", ca_file=pki.ca_cert, cert_file=pki.client_cert, key_file=pki.client_key
    )
    kwargs = aiokafka_kwargs(config)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    creds = faust_settings(config)["broker_credentials"]
    assert creds.protocol.value == "SASL_SSL" and creds.ssl_context is not None


def test_unreadable_tls_files_are_named(pki, tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match=r"ca_file .*missing\.pem"):
        ssl_context(SecurityConfig(protocol="SSL", ca_file=tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(SecurityError, match="cannot load the TLS files"):
        ssl_context(
            SecurityConfig(
                protocol="SSL", ca_file=pki.ca_cert, cert_file=garbage, key_file=pki.client_key
            )
        )
