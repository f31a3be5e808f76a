"""The frame-boundary tracker a WebSocket tunnel uses (http/wsframes.py), as tables.

Streams are built with wsproto (client frames, masked; server frames, plain;
compressed frames) so the tracker is checked against the real encoder, and
fed whole, in 1-byte and in 10-byte slices.
"""
from __future__ import annotations

import struct

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate

from pyresty.http.wsframes import FrameTracker


def _encoder(client: bool, deflate: bool = False) -> Connection:
    extensions = []
    if deflate:
        ext = PerMessageDeflate()
        ext.accept("permessage-deflate")
        extensions.append(ext)
    return Connection(ConnectionType.CLIENT if client else ConnectionType.SERVER, extensions)


def _stream(client: bool, deflate: bool = False) -> tuple[bytes, list[int]]:
    """A stream of assorted frames and the offset where each frame ends."""
    conn = _encoder(client, deflate)
    events = [TextMessage(data="hi"), BytesMessage(data=b""), BytesMessage(data=b"x" * 200),
              TextMessage(data="part one ", message_finished=False), Ping(payload=b"mid"),
              TextMessage(data="part two"), BytesMessage(data=b"y" * 70000), Pong(payload=b""),
              CloseConnection(code=1000, reason="bye")]
    data, ends = b"", []
    for event in events:
        data += conn.send(event)
        ends.append(len(data))
    return data, ends


def _slices(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] if size else [data]


@pytest.mark.parametrize("client", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("size", [0, 1, 10], ids=["whole", "1-byte", "10-byte"])
def test_counts_frames_messages_and_the_close(client, deflate, size):
    data, ends = _stream(client, deflate)
    tracker = FrameTracker()
    for piece in _slices(data, size):
        assert tracker.consume(piece) == len(piece)
    assert tracker.at_boundary
    assert tracker.frames == len(ends)
    assert tracker.messages == 5          # text, empty binary, binary, fragmented text, big binary
    assert tracker.close_seen and not tracker.broken


@pytest.mark.parametrize("size", [0, 1, 10], ids=["whole", "1-byte", "10-byte"])
def test_stop_at_boundary_finds_every_frame_end(size):
    data, ends = _stream(client=True)
    tracker = FrameTracker()
    found, offset = [], 0
    for piece in _slices(data, size):
        while piece:
            taken = tracker.consume(piece, stop_at_boundary=True)
            if taken == 0:        # already at a boundary: step over one byte of the next frame
                taken = tracker.consume(piece[:1])
            offset += taken
            piece = piece[taken:]
            if tracker.at_boundary:
                found.append(offset)
    assert found == ends


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 250])
def test_not_at_boundary_inside_a_header_or_payload(cut):
    data = _encoder(client=True).send(BytesMessage(data=b"z" * 300))
    tracker = FrameTracker()
    tracker.consume(data[:cut])
    assert not tracker.at_boundary
    assert tracker.consume(data[cut:], stop_at_boundary=True) == len(data) - cut
    assert tracker.at_boundary and tracker.frames == 1


def test_a_length_with_the_top_bit_set_breaks_the_stream():
    tracker = FrameTracker()
    tracker.consume(b"\x82\x7f" + struct.pack("!Q", 1 << 63) + b"rest")
    assert tracker.broken and not tracker.at_boundary
    assert tracker.consume(b"anything") == len(b"anything")


def test_at_boundary_stops_before_any_byte():
    tracker = FrameTracker()
    assert tracker.at_boundary
    assert tracker.consume(b"\x81\x00", stop_at_boundary=True) == 0
