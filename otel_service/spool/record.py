"""The spool record: an accepted event with everything resolved at intake (IDs, times, correlation)."""

from __future__ import annotations

import msgspec

from ..model.events import Event

__all__ = ["Envelope", "decode_envelope", "encode_envelope"]


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    """What intake writes to the spool for one accepted event.

    IDs are fixed here, so a replay after a crash produces the same span and log record.
    """

    event: Event
    trace_id: str
    span_id: str
    parent_span_id: str | None
    correlation_id: str
    end_ns: int
    received_ns: int
    source: str  # "track" | "events"
    #: The parent's W3C sampled flag and ``tracestate``, carried on to the span (records written
    #: before these fields existed decode with the defaults).
    sampled: bool = True
    tracestate: str | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    """Decode one spool record; raises ``msgspec.DecodeError`` / ``ValidationError`` if damaged."""
    return _decoder.decode(data)
