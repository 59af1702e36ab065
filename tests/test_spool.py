"""The durable spool: framing, batching, cursor commits, rotation, torn tails, corruption and locks."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from otel_service._spool import Position, SpoolLocked, SpoolReader, SpoolStats, SpoolWriter, stats


def _frame(payload: bytes) -> bytes:
    """The documented frame: little-endian length, CRC-32 of the payload, the payload."""
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _segments(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("*.seg"))


def _segment(directory: Path, number: int) -> Path:
    return directory / f"{number:016d}.seg"


def _read_all(reader: SpoolReader, max_records: int = 1000) -> list[bytes]:
    records, _ = reader.read(max_records)
    return records


def test_round_trip_in_order_with_the_documented_framing(tmp_path: Path) -> None:
    """Appended records come back in order, and the segment holds exactly their frames."""
    writer = SpoolWriter(tmp_path)
    payloads = [b"a", b"", b"\x00" * 300, "é".encode()]
    written = writer.append(payloads[:2]) + writer.append(payloads[2:])
    reader = SpoolReader(tmp_path)
    records, position = reader.read(100)
    assert records == payloads
    expected = b"".join(_frame(p) for p in payloads)
    assert _segment(tmp_path, 1).read_bytes() == expected
    assert written == len(expected)
    assert position == Position(1, len(expected))
    assert reader.corrupt_bytes == 0
    writer.close()
    reader.close()


def test_read_returns_at_most_max_records_and_continues(tmp_path: Path) -> None:
    """Reads are batched by max_records, each continuing where the last stopped."""
    writer = SpoolWriter(tmp_path)
    writer.append([f"r{i}".encode() for i in range(7)])
    reader = SpoolReader(tmp_path)
    batches = [reader.read(3)[0] for _ in range(4)]
    assert batches == [[b"r0", b"r1", b"r2"], [b"r3", b"r4", b"r5"], [b"r6"], []]
    writer.close()
    reader.close()


def test_rewind_returns_to_the_committed_cursor(tmp_path: Path) -> None:
    """After a failed delivery, rewind re-reads everything since the last commit."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b", b"c"])
    reader = SpoolReader(tmp_path)
    _, position = reader.read(1)
    reader.commit(position)
    assert reader.read(10)[0] == [b"b", b"c"]
    reader.rewind()
    assert reader.read(10)[0] == [b"b", b"c"]
    writer.close()
    reader.close()


def test_committed_cursor_survives_a_restart(tmp_path: Path) -> None:
    """A new reader resumes after the committed cursor; uncommitted reads are read again."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b", b"c", b"d"])
    reader = SpoolReader(tmp_path)
    _, position = reader.read(2)
    reader.commit(position)
    assert reader.read(1)[0] == [b"c"]  # read but not committed
    reader.close()
    writer.close()

    writer = SpoolWriter(tmp_path)
    writer.append([b"e"])
    reader = SpoolReader(tmp_path)
    assert reader.committed == position
    assert _read_all(reader) == [b"c", b"d", b"e"]
    writer.close()
    reader.close()


def test_without_a_commit_a_new_reader_starts_from_the_beginning(tmp_path: Path) -> None:
    """Nothing is lost when the reader dies before committing."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b"])
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == [b"a", b"b"]
    reader.close()
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == [b"a", b"b"]
    writer.close()
    reader.close()


def test_segments_rotate_at_segment_bytes(tmp_path: Path) -> None:
    """A write that would overflow the segment starts a new one; reads cross segments in order."""
    payload_size = 30  # 38-byte frames: one per 64-byte segment, two per 80-byte segment
    writer = SpoolWriter(tmp_path, segment_bytes=80)
    for i in range(5):
        writer.append([bytes([65 + i]) * payload_size])
    assert _segments(tmp_path) == [f"{n:016d}.seg" for n in (1, 2, 3)]
    assert [_segment(tmp_path, n).stat().st_size for n in (1, 2, 3)] == [76, 76, 38]
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == [bytes([65 + i]) * payload_size for i in range(5)]
    writer.close()
    reader.close()


def test_one_append_larger_than_a_segment_stays_whole(tmp_path: Path) -> None:
    """A batch bigger than segment_bytes is written whole into a fresh segment, never split."""
    writer = SpoolWriter(tmp_path, segment_bytes=64)
    writer.append([b"x"])
    writer.append([b"y" * 100, b"z" * 100])
    assert _segments(tmp_path) == [f"{n:016d}.seg" for n in (1, 2)]
    assert _segment(tmp_path, 2).read_bytes() == _frame(b"y" * 100) + _frame(b"z" * 100)
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == [b"x", b"y" * 100, b"z" * 100]
    writer.close()
    reader.close()


def test_commit_deletes_consumed_segments_only(tmp_path: Path) -> None:
    """Segments wholly before the committed position are deleted; the current one is kept."""
    writer = SpoolWriter(tmp_path, segment_bytes=40)
    for i in range(4):
        writer.append([bytes([97 + i]) * 30])  # one frame per segment
    reader = SpoolReader(tmp_path)
    records, position = reader.read(2)
    assert records == [b"a" * 30, b"b" * 30]
    assert position == Position(2, 38)
    reader.commit(position)
    assert _segments(tmp_path) == [f"{n:016d}.seg" for n in (2, 3, 4)]
    records, position = reader.read(10)
    assert records == [b"c" * 30, b"d" * 30]
    reader.commit(position)
    assert _segments(tmp_path) == [f"{4:016d}.seg"]
    writer.close()
    reader.close()


def test_a_new_writer_appends_to_a_new_segment(tmp_path: Path) -> None:
    """A restarted writer never appends after a possibly torn tail: it opens the next segment."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"before"])
    writer.close()
    writer = SpoolWriter(tmp_path)
    writer.append([b"after"])
    assert _segments(tmp_path) == [f"{n:016d}.seg" for n in (1, 2)]
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == [b"before", b"after"]
    writer.close()
    reader.close()


def test_torn_tail_of_the_active_segment_waits_for_the_writer(tmp_path: Path) -> None:
    """A partial frame at the end of the newest segment is neither consumed nor counted as corrupt."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"one"])
    frame = _frame(b"two-two-two")
    path = _segment(tmp_path, 1)
    reader = SpoolReader(tmp_path, stale_tail_seconds=3600)
    with path.open("ab") as handle:
        handle.write(frame[:3])  # inside the header
    records, position = reader.read(10)
    assert (records, position, reader.corrupt_bytes) == ([b"one"], Position(1, len(_frame(b"one"))), 0)
    with path.open("ab") as handle:
        handle.write(frame[3:12])  # a whole header, part of the payload
    assert reader.read(10) == ([], Position(1, len(_frame(b"one"))))
    with path.open("ab") as handle:
        handle.write(frame[12:])
    records, position = reader.read(10)
    assert records == [b"two-two-two"]
    assert position == Position(1, len(_frame(b"one")) + len(frame))
    assert reader.corrupt_bytes == 0
    writer.append([b"three"])
    assert _read_all(reader) == [b"three"]
    assert reader.corrupt_bytes == 0
    writer.close()
    reader.close()


def test_torn_tail_of_an_older_segment_is_skipped_and_counted(tmp_path: Path) -> None:
    """Once a later segment exists, a partial frame is final: it is skipped and counted in corrupt_bytes."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"one"])
    torn = _frame(b"lost-in-a-crash")[:10]
    with _segment(tmp_path, 1).open("ab") as handle:
        handle.write(torn)
    writer.close()  # a crash mid-write; the restarted writer opens segment 2
    writer = SpoolWriter(tmp_path)
    writer.append([b"two"])
    reader = SpoolReader(tmp_path, stale_tail_seconds=3600)
    records, position = reader.read(10)
    assert records == [b"one", b"two"]
    assert position == Position(2, len(_frame(b"two")))
    assert reader.corrupt_bytes == len(torn)
    writer.close()
    reader.close()


def test_crc_corrupted_record_is_skipped_and_counted(tmp_path: Path) -> None:
    """A frame whose payload fails its CRC is never delivered; its bytes are counted as corrupt."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"good"])
    writer.append([b"flipped"])
    writer.close()
    path = _segment(tmp_path, 1)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # last byte of the "flipped" payload
    path.write_bytes(bytes(data))
    writer = SpoolWriter(tmp_path)
    writer.append([b"later"])
    reader = SpoolReader(tmp_path, stale_tail_seconds=3600)
    assert _read_all(reader) == [b"good", b"later"]
    assert reader.corrupt_bytes == len(_frame(b"flipped"))
    writer.close()
    reader.close()


def test_corrupt_frame_in_the_active_segment_is_skipped_once_stale(tmp_path: Path) -> None:
    """In the newest segment a bad frame is skipped after stale_tail_seconds; later appends are read."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"good"])
    bad = bytearray(_frame(b"bad"))
    bad[-1] ^= 0xFF
    with _segment(tmp_path, 1).open("ab") as handle:
        handle.write(bytes(bad))
    reader = SpoolReader(tmp_path, stale_tail_seconds=0)
    assert _read_all(reader) == [b"good"]
    assert reader.corrupt_bytes == len(bad)
    writer.append([b"next"])
    assert _read_all(reader) == [b"next"]
    assert reader.corrupt_bytes == len(bad)
    writer.close()
    reader.close()


def test_stats_count_only_bytes_after_the_committed_cursor(tmp_path: Path) -> None:
    """stats() reports what is not yet delivered: reading does not change it, committing does."""
    assert stats(tmp_path) == SpoolStats(0, 0)
    writer = SpoolWriter(tmp_path, segment_bytes=40)
    for payload in (b"a" * 30, b"b" * 30, b"c" * 10):
        writer.append([payload])
    sizes = [38, 38, 18]
    assert stats(tmp_path) == SpoolStats(3, sum(sizes))
    reader = SpoolReader(tmp_path)
    records, position = reader.read(1)
    assert records == [b"a" * 30]
    assert stats(tmp_path) == SpoolStats(3, sum(sizes))
    reader.commit(position)
    assert position == Position(1, 38)
    assert stats(tmp_path) == SpoolStats(2, 38 + 18)
    writer.append([b"d"])  # same segment as "c": 18 + 9 <= 40
    _, position = reader.read(2)
    reader.commit(position)
    assert position == Position(3, 18)
    assert stats(tmp_path) == SpoolStats(1, 9)
    _, position = reader.read(10)
    reader.commit(position)
    assert stats(tmp_path) == SpoolStats(0, 0)
    writer.close()
    reader.close()


def test_a_second_writer_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    """Two writers on one directory would interleave segments: the second gets SpoolLocked."""
    first = SpoolWriter(tmp_path)
    with pytest.raises(SpoolLocked):
        SpoolWriter(tmp_path)
    first.close()
    second = SpoolWriter(tmp_path)
    second.close()


def test_a_second_reader_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    """Two readers would deliver records twice: the second gets SpoolLocked."""
    first = SpoolReader(tmp_path)
    with pytest.raises(SpoolLocked):
        SpoolReader(tmp_path)
    first.close()
    second = SpoolReader(tmp_path)
    second.close()


def test_one_writer_and_one_reader_may_share_a_directory(tmp_path: Path) -> None:
    """The writer and reader locks are distinct."""
    writer = SpoolWriter(tmp_path)
    reader = SpoolReader(tmp_path)
    writer.append([b"x"])
    assert _read_all(reader) == [b"x"]
    writer.close()
    reader.close()


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_every_fsync_policy_round_trips(tmp_path: Path, policy: str) -> None:
    """fsync policies change durability, not content, including across rotation and sync()."""
    writer = SpoolWriter(tmp_path, fsync=policy, segment_bytes=64)
    payloads = [bytes([i]) * 40 for i in range(3)]
    for payload in payloads:
        writer.append([payload])
    writer.sync()
    writer.close()
    reader = SpoolReader(tmp_path)
    assert _read_all(reader) == payloads
    assert len(_segments(tmp_path)) == 3
    reader.close()
