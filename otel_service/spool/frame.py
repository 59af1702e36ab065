"""The frame of one spool record: 4-byte little-endian payload length, 4-byte CRC-32 of the payload,
the payload. A torn frame (a process killed mid-write) or a corrupt one is detected by its length
and CRC."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable

from .cursor import Position

__all__ = ["HEADER", "MAX_RECORD_BYTES", "frames", "parse_frames"]

HEADER = struct.Struct("<II")
MAX_RECORD_BYTES = 16 << 20


def frames(payloads: Iterable[bytes]) -> bytes:
    """``payloads`` framed, as one buffer to write at once."""
    pack, crc32 = HEADER.pack, zlib.crc32
    return b"".join([part for p in payloads for part in (pack(len(p), crc32(p)), p)])


def parse_frames(
    data: bytes, out: list[bytes], ends: list[Position], max_records: int, base: Position
) -> tuple[int, int]:
    """Append whole, valid frames of ``data`` (read from ``base``) to ``out``, and the position after
    each to ``ends``; (bytes consumed, 0 if it stopped cleanly, else the bytes the next frame needs
    from where it stopped, or -1 if that frame is corrupt)."""
    offset = 0
    size = HEADER.size
    while len(out) < max_records and offset < len(data):
        if offset + size > len(data):
            return offset, size
        length, crc = HEADER.unpack_from(data, offset)
        if length > MAX_RECORD_BYTES:
            return offset, -1
        end = offset + size + length
        if end > len(data):
            return offset, size + length
        payload = data[offset + size : end]
        if zlib.crc32(payload) != crc:
            return offset, -1
        out.append(payload)
        ends.append(Position(base.segment, base.offset + end))
        offset = end
    return offset, 0
