"""The durable spool: framing, batching, cursor saves, rotation, torn tails, corruption and locks."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from otel_service.spool import (
    Cursor,
    Position,
    SpoolLocked,
    SpoolReader,
    SpoolStats,
    SpoolWriter,
    read_cursor,
    stats,
)


def _frame(payload: bytes) -> bytes:
    """The documented frame: little-endian length, CRC-32 of the payload, the payload."""
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def _segments(directory: Path) -> list[int]:
    return sorted(int(path.name.removesuffix(".seg")) for path in directory.glob("*.seg"))


def _segment(directory: Path, number: int) -> Path:
    return directory / f"{number:016d}.seg"


def _read(reader: SpoolReader, max_records: int = 1000) -> tuple[list[bytes], Position | None]:
    """The records read and the position after the last one (None when nothing was read)."""
    records, ends = reader.read(max_records)
    assert len(ends) == len(records)
    return records, (ends[-1] if ends else None)


def _records(reader: SpoolReader, max_records: int = 1000) -> list[bytes]:
    return _read(reader, max_records)[0]


def _commit(reader: SpoolReader, position: Position | None) -> None:
    assert position is not None
    reader.save(Cursor.at(position))


def test_round_trip_in_order_with_the_documented_framing(tmp_path: Path) -> None:
    """Appended records come back in order with their end positions; the segment holds their frames."""
    writer = SpoolWriter(tmp_path)
    payloads = [b"a", b"", b"\x00" * 300, "é".encode()]
    written = writer.append(payloads[:2]) + writer.append(payloads[2:])
    reader = SpoolReader(tmp_path)
    records, ends = reader.read(100)
    assert records == payloads
    frames = [_frame(p) for p in payloads]
    assert _segment(tmp_path, 1).read_bytes() == b"".join(frames)
    assert written == sum(map(len, frames))
    assert ends == [Position(1, sum(map(len, frames[: i + 1]))) for i in range(len(frames))]
    assert reader.corrupt_bytes == 0
    writer.close()
    reader.close()


def test_read_returns_at_most_max_records_and_continues(tmp_path: Path) -> None:
    """Reads are batched by max_records, each continuing where the last stopped."""
    writer = SpoolWriter(tmp_path)
    writer.append([f"r{i}".encode() for i in range(7)])
    reader = SpoolReader(tmp_path)
    batches = [_records(reader, 3) for _ in range(4)]
    assert batches == [[b"r0", b"r1", b"r2"], [b"r3", b"r4", b"r5"], [b"r6"], []]
    writer.close()
    reader.close()


def test_saved_cursor_survives_a_restart(tmp_path: Path) -> None:
    """A new reader resumes after the saved cursor; records read but not saved are read again."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b", b"c", b"d"])
    reader = SpoolReader(tmp_path)
    _, position = _read(reader, 2)
    _commit(reader, position)
    assert _records(reader, 1) == [b"c"]  # read but not saved
    reader.close()
    writer.close()

    assert position is not None
    assert read_cursor(tmp_path) == Cursor.at(position)
    writer = SpoolWriter(tmp_path)
    writer.append([b"e"])
    reader = SpoolReader(tmp_path)
    assert reader.cursor == Cursor.at(position)
    assert _records(reader) == [b"c", b"d", b"e"]
    writer.close()
    reader.close()


def test_without_a_save_a_new_reader_starts_from_the_beginning(tmp_path: Path) -> None:
    """Nothing is lost when the reader dies before saving its cursor."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b"])
    reader = SpoolReader(tmp_path)
    assert _records(reader) == [b"a", b"b"]
    reader.close()
    reader = SpoolReader(tmp_path)
    assert _records(reader) == [b"a", b"b"]
    writer.close()
    reader.close()


def test_restart_resumes_from_the_lesser_of_delivered_and_metrics(tmp_path: Path) -> None:
    """Only what is both delivered and exported as metrics is done; a restart re-reads the rest."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"a", b"b", b"c"])
    reader = SpoolReader(tmp_path)
    _, ends = reader.read(10)
    cursor = Cursor(delivered=ends[2], metrics=ends[0], inflight=ends[2])
    reader.save(cursor)
    assert cursor.committed == ends[0]
    assert stats(tmp_path) == SpoolStats(1, ends[2].offset - ends[0].offset)
    reader.close()
    reader = SpoolReader(tmp_path)
    assert reader.cursor == cursor
    assert _records(reader) == [b"b", b"c"]
    writer.close()
    reader.close()


@pytest.mark.parametrize(
    ("cursor", "text"),
    [
        (Cursor.at(Position(1, 0)), "1 0 1 0 1 0"),
        (Cursor(Position(3, 10), Position(2, 99), Position(3, 40)), "3 10 2 99 3 40"),
    ],
)
def test_cursor_text_round_trip(cursor: Cursor, text: str) -> None:
    """A cursor is written as six numbers and read back equal."""
    assert cursor.dumps() == text
    assert Cursor.loads(text) == cursor


def test_a_cursor_written_before_checkpoints_is_read() -> None:
    """Eight numbers (with the metric push under way, before checkpoints): the first six count."""
    assert Cursor.loads("3 10 2 99 3 40 3 5") == Cursor(Position(3, 10), Position(2, 99), Position(3, 40))


def test_cursor_inflight_is_never_behind_delivered() -> None:
    """An in-flight position behind the delivered one is read as the delivered one."""
    assert Cursor.loads("2 50 2 10 1 0") == Cursor(Position(2, 50), Position(2, 10), Position(2, 50))


@pytest.mark.parametrize("text", ["", "1 2 3", "1 2 3 4 5 6 7", "a b c d e f"])
def test_a_damaged_cursor_file_reads_as_no_cursor(tmp_path: Path, text: str) -> None:
    """An unreadable cursor file is treated as absent (the reader starts from the oldest segment)."""
    (tmp_path / "cursor").write_text(text)
    assert read_cursor(tmp_path) is None


def test_segments_rotate_at_segment_bytes(tmp_path: Path) -> None:
    """A write that would overflow the segment starts a new one; reads cross segments in order."""
    payload_size = 30  # 38-byte frames: two fit in an 80-byte segment
    writer = SpoolWriter(tmp_path, segment_bytes=80)
    for i in range(5):
        writer.append([bytes([65 + i]) * payload_size])
    assert _segments(tmp_path) == [1, 2, 3]
    assert [_segment(tmp_path, n).stat().st_size for n in (1, 2, 3)] == [76, 76, 38]
    reader = SpoolReader(tmp_path)
    records, ends = reader.read(100)
    assert records == [bytes([65 + i]) * payload_size for i in range(5)]
    assert ends == [Position(1, 38), Position(1, 76), Position(2, 38), Position(2, 76), Position(3, 38)]
    writer.close()
    reader.close()


def test_one_append_larger_than_a_segment_stays_whole(tmp_path: Path) -> None:
    """A batch bigger than segment_bytes is written whole into a fresh segment, never split."""
    writer = SpoolWriter(tmp_path, segment_bytes=64)
    writer.append([b"x"])
    writer.append([b"y" * 100, b"z" * 100])
    assert _segments(tmp_path) == [1, 2]
    assert _segment(tmp_path, 2).read_bytes() == _frame(b"y" * 100) + _frame(b"z" * 100)
    reader = SpoolReader(tmp_path)
    assert _records(reader) == [b"x", b"y" * 100, b"z" * 100]
    writer.close()
    reader.close()


def test_save_deletes_consumed_segments_only(tmp_path: Path) -> None:
    """Segments wholly before the committed position are deleted; the current one is kept."""
    writer = SpoolWriter(tmp_path, segment_bytes=40)
    for i in range(4):
        writer.append([bytes([97 + i]) * 30])  # one frame per segment
    reader = SpoolReader(tmp_path)
    records, position = _read(reader, 2)
    assert records == [b"a" * 30, b"b" * 30]
    assert position == Position(2, 38)
    _commit(reader, position)
    assert _segments(tmp_path) == [2, 3, 4]
    records, position = _read(reader, 10)
    assert records == [b"c" * 30, b"d" * 30]
    _commit(reader, position)
    assert _segments(tmp_path) == [4]
    writer.close()
    reader.close()


def test_a_new_writer_appends_to_a_new_segment(tmp_path: Path) -> None:
    """A restarted writer never appends after a possibly torn tail: it opens the next segment."""
    writer = SpoolWriter(tmp_path)
    writer.append([b"before"])
    writer.close()
    writer = SpoolWriter(tmp_path)
    writer.append([b"after"])
    assert _segments(tmp_path) == [1, 2]
    reader = SpoolReader(tmp_path)
    assert _records(reader) == [b"before", b"after"]
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
    assert (_read(reader), reader.corrupt_bytes) == (([b"one"], Position(1, 11)), 0)
    with path.open("ab") as handle:
        handle.write(frame[3:12])  # a whole header, part of the payload
    assert (_read(reader), reader.corrupt_bytes) == (([], None), 0)
    with path.open("ab") as handle:
        handle.write(frame[12:])
    assert _read(reader) == ([b"two-two-two"], Position(1, 11 + len(frame)))
    assert reader.corrupt_bytes == 0
    writer.append([b"three"])
    assert _records(reader) == [b"three"]
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
    assert _read(reader) == ([b"one", b"two"], Position(2, len(_frame(b"two"))))
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
    assert _records(reader) == [b"good", b"later"]
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
    assert _records(reader) == [b"good"]
    assert reader.corrupt_bytes == len(bad)
    writer.append([b"next"])
    assert _records(reader) == [b"next"]
    assert reader.corrupt_bytes == len(bad)
    writer.close()
    reader.close()


def test_stats_count_only_bytes_after_the_committed_cursor(tmp_path: Path) -> None:
    """stats() reports what is not yet done: reading does not change it, saving the cursor does."""
    assert stats(tmp_path) == SpoolStats(0, 0)
    writer = SpoolWriter(tmp_path, segment_bytes=40)
    for payload in (b"a" * 30, b"b" * 30, b"c" * 10):
        writer.append([payload])
    assert stats(tmp_path) == SpoolStats(3, 38 + 38 + 18)
    reader = SpoolReader(tmp_path)
    records, position = _read(reader, 1)
    assert records == [b"a" * 30]
    assert stats(tmp_path) == SpoolStats(3, 38 + 38 + 18)
    _commit(reader, position)
    assert position == Position(1, 38)
    assert stats(tmp_path) == SpoolStats(2, 38 + 18)
    writer.append([b"d"])  # same segment as "c": 18 + 9 <= 40
    _, position = _read(reader, 2)
    _commit(reader, position)
    assert position == Position(3, 18)
    assert stats(tmp_path) == SpoolStats(1, 9)
    _, position = _read(reader, 10)
    _commit(reader, position)
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
    assert _records(reader) == [b"x"]
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
    assert _records(reader) == payloads
    assert _segments(tmp_path) == [1, 2, 3]
    reader.close()


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([700_000, 700_000, 700_000], id="frames-straddling-read-chunks"),
        pytest.param([3_000_000, 10], id="one-frame-larger-than-a-read-chunk"),
        pytest.param([(1 << 20) - 8, 1], id="frame-ending-exactly-at-a-chunk"),
    ],
)
def test_large_records_are_read_whole(tmp_path: Path, sizes: list[int]) -> None:
    """Records larger than, or straddling, the reader's read size come back whole and uncorrupted."""
    payloads = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    writer = SpoolWriter(tmp_path)
    for payload in payloads:
        writer.append([payload])
    reader = SpoolReader(tmp_path, stale_tail_seconds=3600)
    records: list[bytes] = []
    for _ in range(len(payloads) + 1):
        records += _records(reader, 1)
    assert [len(r) for r in records] == sizes
    assert records == payloads
    assert reader.corrupt_bytes == 0
    writer.close()
    reader.close()
