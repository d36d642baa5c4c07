"""The local control endpoint: how the CLI talks to a running node.

A Unix socket in the data directory (mode 0600), so there is no network exposure and the file
system decides who may operate the node. One JSON object per line: a request
`{"op": NAME, "args": {...}}` gets `{"ok": true, "result": ...}` or
`{"ok": false, "error": MESSAGE, "kind": ERROR_CLASS}`. Streaming operations answer with one
`{"ok": true, "item": ...}` line per item until the client closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["ControlClient", "ControlError", "ControlServer", "NodeNotRunning"]

log = logging.getLogger("agentnode.control")

REQUEST_BYTES_MAX = 1 << 20
"""A control request is a command line's worth of JSON; anything bigger is a client bug."""

Handler = Callable[[dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[Any]]


class ControlError(RuntimeError):
    """The node refused or failed a control request; `kind` names the node-side error class."""

    def __init__(self, message: str, kind: str = "ControlError") -> None:
        super().__init__(message)
        self.kind = kind


class NodeNotRunning(ControlError):
    """No node answers on this data directory's control socket."""


class ControlServer:
    """Serves registered operations on the control socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handlers: dict[str, Handler] = {}
        self._streams: dict[str, StreamHandler] = {}
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    def add(self, op: str, handler: Handler) -> None:
        self._handlers[op] = handler

    def add_stream(self, op: str, handler: StreamHandler) -> None:
        self._streams[op] = handler

    async def start(self) -> None:
        if self.path.exists():
            if _answers(self.path):
                raise ControlError(f"a node already answers on {self.path}")
            self.path.unlink()
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=REQUEST_BYTES_MAX)
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            line = await reader.readline()
            response = await self._dispatch(line, writer)
            if response is not None:
                writer.write(_encode(response))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _dispatch(self, line: bytes, writer: asyncio.StreamWriter) -> dict[str, Any] | None:
        try:
            request = json.loads(line)
            op = request["op"]
            args = request.get("args") or {}
            if not isinstance(args, dict):
                raise TypeError("args must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return {"ok": False, "error": f"malformed control request: {exc}", "kind": "ControlError"}
        if op in self._streams:
            try:
                async for item in self._streams[op](args):
                    writer.write(_encode({"ok": True, "item": item}))
                    await writer.drain()
            except Exception as exc:  # the error goes back to the operator, the node keeps running
                return {"ok": False, "error": str(exc), "kind": type(exc).__name__}
            return None
        handler = self._handlers.get(op)
        if handler is None:
            known = ", ".join(sorted([*self._handlers, *self._streams]))
            return {"ok": False, "error": f"unknown operation {op!r}; known: {known}", "kind": "ControlError"}
        try:
            return {"ok": True, "result": await handler(args)}
        except Exception as exc:  # the error goes back to the operator, the node keeps running
            log.debug("control op %s failed", op, exc_info=True)
            return {"ok": False, "error": str(exc), "kind": type(exc).__name__}


class ControlClient:
    """Blocking client for the CLI: one request per connection."""

    def __init__(self, path: Path, data_dir: Path | None = None, timeout_s: float = 10.0) -> None:
        self.path = path
        self.data_dir = data_dir or path.parent
        self.timeout_s = timeout_s

    def call(self, op: str, **args: Any) -> Any:
        with self._connect() as sock:
            sock.sendall(_encode({"op": op, "args": args}))
            reader = sock.makefile("rb")
            line = reader.readline(REQUEST_BYTES_MAX * 16)
        if not line:
            raise ControlError(f"the node closed the control connection without answering {op!r}")
        return _result(json.loads(line))

    def stream(self, op: str, **args: Any) -> Iterator[Any]:
        """Yield items until the node ends the stream; Ctrl-C ends it from this side."""
        with self._connect(timeout_s=None) as sock:
            sock.sendall(_encode({"op": op, "args": args}))
            reader = sock.makefile("rb")
            while line := reader.readline(REQUEST_BYTES_MAX * 16):
                message = json.loads(line)
                if "item" in message:
                    yield message["item"]
                else:
                    _result(message)
                    return

    def _connect(self, timeout_s: float | None = -1.0) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s if timeout_s == -1.0 else timeout_s)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise NodeNotRunning(
                f"no node is running with data dir {self.data_dir}; start one with "
                f"`agentnode join --data-dir {self.data_dir}`"
            ) from None
        return sock


def _answers(path: Path) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def _result(message: dict[str, Any]) -> Any:
    if message.get("ok"):
        return message.get("result")
    raise ControlError(message.get("error", "unknown error"), message.get("kind", "ControlError"))
