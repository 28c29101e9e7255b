"""A broker address is read one way by every client: kafka://, spaces, a missing port and
several entries are settled once, and an address no client could use fails at load."""

from __future__ import annotations

import pytest

from mlink.deploy.config import ConfigError, parse_config, with_broker
from mlink.deploy.kafka_wait import _split_bootstrap
from mlink.topics.bootstrap import bootstrap_servers, normalize_bootstrap

CONFIG = {
    "name": "boot",
    "source": {"factory": "mlink.eval.workloads.digits:frames"},
    "models": [
        {"name": "a", "factory": "x:y", "output": {"kind": "vector", "size": 2, "task": "softmax"}},
        {"name": "b", "factory": "x:y", "output": {"kind": "vector", "size": 2, "task": "softmax"}},
    ],
    "budget": {"fraction": 0.5},
}


@pytest.mark.parametrize(
    ("given", "servers"),
    [
        ("localhost:9092", ["localhost:9092"]),
        ("kafka://a:1, b:2", ["a:1", "b:2"]),
        ("kafka://a:1;kafka://b:2", ["a:1", "b:2"]),  # faust's own list
        (" KAFKA://a:1/ ,, ", ["a:1"]),
        ("broker", ["broker:9092"]),
        ("a:1,a:1,b:01", ["a:1", "b:1"]),
        ("[::1]:9093,[::1]", ["[::1]:9093", "[::1]:9092"]),
    ],
)
def test_every_spelling_a_user_copies_reads_as_host_port(given: str, servers: list[str]) -> None:
    assert bootstrap_servers(given) == servers
    assert normalize_bootstrap(given) == ",".join(servers)


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "empty broker"),
        (" , ", "empty broker"),
        ("ssl://a:9093", "security"),
        ("a:b", "1..65535"),
        ("a:70000", "1..65535"),
        ("a:1/topic", "not 'host:port'"),
        ("a b:1", "not 'host:port'"),
        ("::1:9092", "brackets"),
        (":9092", "no host"),
    ],
)
def test_an_address_no_client_could_use_names_the_entry(given: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        bootstrap_servers(given)


def test_the_config_stores_one_spelling_from_the_file_the_environment_and_the_flag(
    monkeypatch,
) -> None:
    assert parse_config({**CONFIG, "broker": "kafka://a:1, b"}).broker == "a:1,b:9092"
    monkeypatch.setenv("MLINK_BROKER", " kafka://c:3 ")
    config = parse_config(CONFIG)
    assert config.broker == "c:3"
    assert with_broker(config, "kafka://d:4,").broker == "d:4"


def test_a_bad_broker_in_the_config_or_the_flag_is_a_config_error(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"broker[\s\S]*security"):
        parse_config({**CONFIG, "broker": "SASL_SSL://a:9093"})
    monkeypatch.setenv("MLINK_BROKER", "a:port")
    with pytest.raises(ConfigError, match=r"1\.\.65535"):
        parse_config(CONFIG)
    monkeypatch.delenv("MLINK_BROKER")
    with pytest.raises(ConfigError, match="empty broker"):
        with_broker(parse_config(CONFIG), " ")


def test_the_readiness_probe_dials_the_same_addresses() -> None:
    assert _split_bootstrap("kafka://a:1, [::1]") == [("a", 1), ("[::1]", 9092)]
