"""The durable spool between intake and export: an append-only log of framed records on disk.

Intake appends each accepted event before answering 202; the export side reads from a committed cursor
and commits further only once what it read has been delivered. Design constraints:

- one writer and one reader per directory (flock on ``writer.lock`` / ``reader.lock``);
- records are framed with their length and a CRC-32 (``frame``), at most ``MAX_RECORD_BYTES``;
- segments (``directory``) hold up to ``SEGMENT_BYTES`` each; the writer creates them in increasing
  order and never goes back (``writer``); the reader deletes those the committed cursor has passed
  (``reader``); the cursor (``cursor``, the ledger) is saved atomically;
- records survive a crash of either side (the page cache keeps written bytes when a process dies; with
  ``fsync="always"``, whose callers await a group commit before answering, also a power loss:
  ``commit``);
- with several intake processes, each but the first writes a shard of its own, copied into the main
  spool at least once (``shards``).

``record`` is what a record holds: the accepted event with its IDs (``Envelope``).
"""

from .commit import GroupCommit, sync_every
from .cursor import Cursor, Position, read_cursor
from .directory import (
    SpoolLocked,
    SpoolStats,
    count_records,
    end_position,
    first_pending,
    stats,
    undelivered,
    usage,
    writer_active,
)
from .frame import MAX_RECORD_BYTES
from .reader import SpoolReader
from .record import Envelope, decode_envelope, encode_envelope
from .writer import SEGMENT_BYTES, SpoolWriter

__all__ = [
    "MAX_RECORD_BYTES",
    "SEGMENT_BYTES",
    "Cursor",
    "Envelope",
    "GroupCommit",
    "Position",
    "SpoolLocked",
    "SpoolReader",
    "SpoolStats",
    "SpoolWriter",
    "count_records",
    "decode_envelope",
    "encode_envelope",
    "end_position",
    "first_pending",
    "read_cursor",
    "stats",
    "sync_every",
    "undelivered",
    "usage",
    "writer_active",
]
