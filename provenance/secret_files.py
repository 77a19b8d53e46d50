"""Writing secrets to disk so that a crash or a concurrent writer never leaves half a key.

A key file is created 0600 from the start (no moment in which it is world-readable), filled and
fsynced under a temporary name, then renamed over its target: readers see the old file or the
new one, never a mix. Kept apart from the key formats so every key store writes the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["exclusive_lock", "write_atomic"]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0600): temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder_fd)  # the rename itself survives a power cut only once the folder is synced
    finally:
        os.close(folder_fd)


@contextlib.contextmanager
def exclusive_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` exclusively (POSIX advisory lock; released when the block ends)."""
    fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
