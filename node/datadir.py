"""The node's data directory: one owner at a time, small files written atomically."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["DataDir", "DataDirBusy"]

_UNIX_PATH_MAX = 100
"""AF_UNIX paths are limited to 108 bytes on Linux (sun_path); keep a margin."""


class DataDirBusy(RuntimeError):
    """Another node process already runs on this data directory."""


class DataDir:
    """Paths inside a node's data directory, and the lock that makes one process its owner."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self._lock_fd: int | None = None

    @property
    def control_socket(self) -> Path:
        """Where the control endpoint listens; under the temp dir when the data dir path is too long."""
        candidate = self.path / "control.sock"
        if len(str(candidate)) <= _UNIX_PATH_MAX:
            return candidate
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"agentnode-{digest}.sock"

    @property
    def peer_cache(self) -> Path:
        return self.path / "peers.json"

    @property
    def state_file(self) -> Path:
        return self.path / "node-state.json"

    def lock(self) -> None:
        """Take the exclusive lock, or raise `DataDirBusy` naming the holder's pid."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "node.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another node (pid {holder}) already runs with data dir {self.path}; stop it first "
                f"(agentnode leave --data-dir {self.path}) or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def read_state(self) -> dict[str, Any]:
        """The persisted node state (incarnation, ...); empty when absent or unreadable."""
        try:
            value = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        write_atomic(self.state_file, json.dumps(state, sort_keys=True).encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file, fsync and rename, so a crash leaves the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not leave litter that fills it further
        raise
