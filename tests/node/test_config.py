"""NodeConfig validates at the edge and says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentnode.config import DEFAULT_PORT, ConfigError, NodeConfig
from agentnode.transport.base import Address


def test_defaults_and_parsing(tmp_path: Path) -> None:
    config = NodeConfig.build(data_dir=tmp_path, listen="127.0.0.1:0", bootstrap="10.0.0.1:7000,node-b")
    assert config.listen == Address("127.0.0.1", 0)
    assert config.bootstrap == (Address("10.0.0.1", 7000), Address("node-b", DEFAULT_PORT))
    assert config.cluster == "default" and config.transport == "tls" and config.mdns
    assert config.advertised == config.listen


def test_every_problem_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        NodeConfig.build(data_dir=tmp_path, cluster="Bad Name", bootstrap="x:99999", transport="udp", bogus=1)
    text = str(info.value)
    for expected in ("cluster:", "bootstrap:", "99999", "transport:", "bogus:"):
        assert expected in text


def test_wildcard_listen_needs_advertise(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="advertise"):
        NodeConfig.build(data_dir=tmp_path, listen="0.0.0.0:7946")
    config = NodeConfig.build(data_dir=tmp_path, listen="0.0.0.0:7946", advertise="192.0.2.1:7946")
    assert config.advertised == Address("192.0.2.1", 7946)


def test_metadata_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="metadata"):
        NodeConfig.build(data_dir=tmp_path, metadata={f"k{i}": "v" for i in range(40)})


@pytest.mark.parametrize("text", ["", "host", "host:port", "[::1", "h:-1"])
def test_address_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


def test_address_round_trip() -> None:
    for text in ("127.0.0.1:7946", "[::1]:80", "example.org:1"):
        assert str(Address.parse(text)) == text
