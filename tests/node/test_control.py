"""The control endpoint: requests, errors by blame, streaming, and a clear 'not running'."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentnode.control import ControlClient, ControlError, ControlServer, NodeNotRunning
from agentnode.datadir import DataDir, DataDirBusy


async def test_request_response_and_errors(tmp_path: Path) -> None:
    server = ControlServer(tmp_path / "c.sock")

    async def echo(args: dict[str, Any]) -> Any:
        return {"echo": args}

    async def broken(args: dict[str, Any]) -> Any:
        raise KeyError("no such agent 'x'")

    async def count(args: dict[str, Any]) -> AsyncIterator[int]:
        for i in range(int(args["n"])):
            yield i

    server.add("echo", echo)
    server.add("broken", broken)
    server.add_stream("count", count)
    await server.start()
    assert stat.S_IMODE((tmp_path / "c.sock").stat().st_mode) & 0o077 == 0
    client = ControlClient(tmp_path / "c.sock")
    try:
        assert await asyncio.to_thread(client.call, "echo", a=1) == {"echo": {"a": 1}}
        with pytest.raises(ControlError) as info:
            await asyncio.to_thread(client.call, "broken")
        assert info.value.kind == "KeyError" and "no such agent" in str(info.value)
        with pytest.raises(ControlError, match="unknown operation 'nope'"):
            await asyncio.to_thread(client.call, "nope")
        assert await asyncio.to_thread(lambda: list(client.stream("count", n=3))) == [0, 1, 2]
        # the server keeps serving after errors
        assert await asyncio.to_thread(client.call, "echo") == {"echo": {}}
    finally:
        await server.close()
    assert not (tmp_path / "c.sock").exists()


def test_not_running_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(NodeNotRunning, match="agentnode join --data-dir"):
        ControlClient(tmp_path / "missing.sock", tmp_path).call("status")


def test_data_dir_has_one_owner(tmp_path: Path) -> None:
    first, second = DataDir(tmp_path), DataDir(tmp_path)
    first.lock()
    try:
        with pytest.raises(DataDirBusy, match="already runs"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


def test_long_data_dir_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    path = DataDir(deep).control_socket
    assert len(str(path)) <= 100
    assert DataDir(deep).control_socket == path  # the client finds the same socket


def test_state_survives_and_garbage_is_ignored(tmp_path: Path) -> None:
    data = DataDir(tmp_path)
    assert data.read_state() == {}
    data.write_state({"incarnation": 3})
    assert data.read_state() == {"incarnation": 3}
    data.state_file.write_text("{not json")
    assert data.read_state() == {}


def test_failed_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    from agentnode.datadir import write_atomic

    target = tmp_path / "missing-dir" / "state.json"  # the write fails: no such directory
    with pytest.raises(OSError):
        write_atomic(target, b"{}")
    full = tmp_path / "ro"
    full.mkdir()
    (full / "state.json").write_text("old")
    full.chmod(0o500)
    try:
        if os.access(full, os.W_OK):  # root ignores the mode: make the rename fail instead
            (full / "state.json").unlink()
            (full / "state.json").mkdir()
        with pytest.raises(OSError):
            write_atomic(full / "state.json", b"new")
        assert not [p for p in full.iterdir() if p.name.endswith(".tmp")]
    finally:
        full.chmod(0o700)
