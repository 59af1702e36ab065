"""What the spool remembers besides events: its series identity, and the export side's cumulative
metric state with the position it covers.

- ``identity``: a ``service.instance.id`` and a start time, made once per spool directory. Every process
  serving this spool reports under them, restart after restart, so the collector and Prometheus see one
  continuous series per attribute set instead of a new one per start.
- ``metrics.checkpoint``: the totals of every event before a position, written atomically (temporary
  file, fsync, rename) *before* any of them is exposed (pushed or scraped) and before the cursor's
  ``metrics`` position moves to it. After any stop, kill -9 included, the export side restores these
  totals and counts the events from that position on: each event is counted exactly once.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .cursor import Position

__all__ = ["Checkpoint", "Identity", "read_checkpoint", "spool_identity", "write_checkpoint"]

IDENTITY_FILE = "identity"
CHECKPOINT_FILE = "metrics.checkpoint"


@dataclass(frozen=True, slots=True)
class Identity:
    instance_id: str
    start_ns: int


def spool_identity(directory: Path) -> Identity:
    """The spool's identity, made on first use (by whichever process gets there first)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / IDENTITY_FILE
    try:
        return _load_identity(path)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        pass
    made = Identity(str(uuid.uuid4()), time.time_ns())
    tmp = directory / f"{IDENTITY_FILE}.{os.getpid()}.tmp"
    _write_synced(tmp, orjson.dumps({"instance_id": made.instance_id, "start_ns": made.start_ns}))
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs is the identity
    except FileExistsError:
        return _load_identity(path)
    except OSError:  # no hard links on this file system: last writer wins, before anyone reports
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return made


def _load_identity(path: Path) -> Identity:
    data = orjson.loads(path.read_bytes())
    return Identity(str(data["instance_id"]), int(data["start_ns"]))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Cumulative metric ``state`` of every event before ``position``."""

    position: Position
    state: dict[str, Any]


def read_checkpoint(directory: Path) -> Checkpoint | None:
    """The last checkpoint written, ``None`` if there is none; ``ValueError`` if it is unreadable."""
    try:
        data = orjson.loads((directory / CHECKPOINT_FILE).read_bytes())
    except FileNotFoundError:
        return None
    try:
        segment, offset = data["position"]
        return Checkpoint(Position(int(segment), int(offset)), dict(data["state"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"unreadable metric checkpoint: {exc!r}") from None


def write_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    """Replace the checkpoint atomically and durably (it must never lag the cursor that points at it)."""
    tmp = directory / (CHECKPOINT_FILE + ".tmp")
    position = checkpoint.position
    _write_synced(
        tmp, orjson.dumps({"position": [position.segment, position.offset], "state": checkpoint.state})
    )
    os.replace(tmp, directory / CHECKPOINT_FILE)


def _write_synced(path: Path, data: bytes) -> None:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
