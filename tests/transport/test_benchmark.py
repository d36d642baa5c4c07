"""The transport benchmark runs end to end (two processes) and reports every field; speed is not asserted."""

from __future__ import annotations

import json

import msgpack
import pytest
from typer.testing import CliRunner

from agentnode.cli.main import app
from agentnode.transport.benchmark import MESSAGE_BYTES, make_msg


def test_message_is_256_bytes() -> None:
    for seq in (0, 1, 12345, 2**31, 2**40):
        assert len(msgpack.packb(make_msg(seq), use_bin_type=True)) == MESSAGE_BYTES == 256


@pytest.mark.processes
@pytest.mark.loopback
@pytest.mark.timeout(120)
def test_bench_transport_json_has_the_fields() -> None:
    result = CliRunner().invoke(app, ["bench", "transport", "--duration", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["transport"] == "tls" and data["message_bytes"] == 256 and data["window"] == 4096
    for side in ("agentnode", "raw_tls"):
        assert data[side]["msgs_per_s"] > 0
        assert 0 < data[side]["rtt_p50_us"] <= data[side]["rtt_p99_us"]
        assert data[side]["rtt_samples"] > 0
    assert set(data["ratios"]) == {"throughput", "rtt_p50", "rtt_p99"}
    assert set(data["met"]) == {"throughput_ratio", "rtt_p50_ratio"}
    assert data["agentnode"]["frames_dropped"] == 0


def test_bench_rejects_bad_arguments() -> None:
    result = CliRunner().invoke(app, ["bench", "transport", "--transport", "pigeon"])
    assert result.exit_code == 1 and "unknown transport" in result.output
