"""The ``memory`` store's snapshot file: the whole state of a shard, saved
atomically and loaded at start.

The file is one ``codec`` blob of kind ``snapshot``: when it was written,
every session the shard held (online ones as if their connection had ended at
that moment, so their expiry and will delay count from it) and every retained
message. Writing goes to a temporary file in the same directory, is fsynced,
renamed over the old one and the directory fsynced, so a crash leaves either
the old snapshot or the new one, never half of one. A file that cannot be read
(truncated, corrupt, another format version) is refused with a one-line
``SnapshotError`` naming it: the broker never starts silently empty.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ..protocol.session import NEVER_EXPIRES, Message, Session
from . import codec
from .base import StoredState


class SnapshotError(Exception):
    """A snapshot file that cannot be used; the message names the file."""


def worker_path(path: str, shard_id: int, workers: int) -> str:
    """With several workers each keeps its own file: ``PATH.<worker>``."""
    return path if workers == 1 else f"{path}.{shard_id}"


def pack_snapshot_session(session: Session, owner: int, now: float) -> dict[str, Any]:
    """A session as the snapshot keeps it; an online one as if disconnected ``now``."""
    body = codec.pack_session(session, owner)
    if session.connection is not None:
        expiry = session.expiry_interval
        if expiry not in (0, NEVER_EXPIRES):
            body["expires_at"] = now + expiry
        will = session.will
        if will is not None:
            # the connection did not end with DISCONNECT: its will is due
            body["will_at"] = now + (will.properties.will_delay_interval or 0)
    return body


def write_snapshot(
    path: str, sessions: Iterable[Session], retained: Iterable[Message], owner: int, now: float
) -> int:
    """Write the snapshot atomically; returns its size in bytes."""
    body = {
        "saved_at": now,
        "sessions": [pack_snapshot_session(s, owner, now) for s in sessions if s.expiry_interval],
        "retained": [codec.pack_message(m) for m in retained],
    }
    data = codec.dumps(codec.SNAPSHOT, body)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def read_snapshot(path: str) -> StoredState | None:
    """The saved state, None when there is no file yet; SnapshotError if unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        body = codec.loads(data, codec.SNAPSHOT)
        sessions = [codec.unpack_session(s) for s in body["sessions"]]
        retained = [codec.unpack_message(m) for m in body["retained"]]
    except codec.FormatError as exc:
        raise SnapshotError(f"{path}: not a usable snapshot: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{path}: not a usable snapshot: {exc!r}") from None
    return StoredState(sessions, retained)
