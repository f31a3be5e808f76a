"""Where the frames of a WebSocket byte stream begin and end, without decoding them.

A tunnel that passes WebSocket bytes through untouched (a proxied WebSocket,
SPEC §8 and §4 step 5) must still be able to put a close frame 1001 into the
stream at shutdown, and only between two frames: a close frame written into
the middle of a frame would be read as that frame's payload. ``FrameTracker``
follows one direction of the stream: it reads each frame header (RFC 6455
§5.2: 2 bytes, then 0, 2 or 8 bytes of extended length, then 4 bytes of
masking key if masked) and skips the payload by count. Payloads are never
unmasked, inflated or copied.

Rules
-----
1. ``consume(data)`` follows ``data`` and returns how many of its bytes it
   took: all of them, or with ``stop_at_boundary`` only up to the first frame
   boundary it reaches (so a tunnel can forward exactly that much and then
   inject its close frame; what follows belongs to frames it will not send).
2. ``at_boundary`` is true when no frame is partly through: before the first
   byte, and right after the last payload byte of a frame. Control frames may
   come between the fragments of a message (RFC 6455 §5.4), so a boundary
   inside a fragmented message is as good a place for a close frame as any.
3. The tracker is not a validator: it follows lengths as written. A header
   whose 64-bit length has its top bit set (§5.2 forbids it) makes the stream
   ``broken``; from then on nothing is a boundary and the tunnel must close
   without a close frame.
4. It counts frames, messages (a data frame with FIN) and notes a close frame
   (opcode 0x8) having passed: after it, no close frame may be injected.
"""
from __future__ import annotations

from typing import Final

_HEAD: Final = 2
_OPCODE_CLOSE: Final = 0x8
_CONTROL: Final = 0x8          # opcodes 0x8-0xF are control frames


class FrameTracker:
    """Frame boundaries of one direction of a WebSocket stream (rules above)."""

    __slots__ = ("_head", "_need", "_remaining", "frames", "messages", "close_seen", "broken",
                 "_opcode", "_fin")

    def __init__(self) -> None:
        self._head = bytearray()   # the header bytes read so far of the current frame
        self._need = _HEAD         # header bytes still needed (0: in the payload)
        self._remaining = 0        # payload bytes still to pass
        self._opcode = 0
        self._fin = False
        self.frames = 0
        self.messages = 0
        self.close_seen = False
        self.broken = False

    @property
    def at_boundary(self) -> bool:
        """No frame is partly through (rule 2)."""
        return not self.broken and not self._head and self._remaining == 0

    def consume(self, data: bytes | bytearray | memoryview, stop_at_boundary: bool = False) -> int:
        """Follow ``data``; the number of its bytes taken (rule 1)."""
        view = memoryview(data)
        size = len(view)
        pos = 0
        if self.broken:
            return size
        if stop_at_boundary and self.at_boundary:
            return 0
        while pos < size:
            if self._remaining:
                step = min(self._remaining, size - pos)
                self._remaining -= step
                pos += step
                if self._remaining == 0:
                    self._end_frame()
                    if stop_at_boundary:
                        return pos
                continue
            step = min(self._need, size - pos)
            self._head += view[pos:pos + step]
            pos += step
            self._need -= step
            if self._need == 0 and self._parse_head():
                if stop_at_boundary:
                    return pos
            if self.broken:
                return size
        return pos

    def _parse_head(self) -> bool:
        """Header bytes complete so far: need more, or start the payload.
        True when the frame ended here (an empty payload)."""
        head = self._head
        if len(head) == _HEAD:
            length = head[1] & 0x7F
            extra = (2 if length == 126 else 8 if length == 127 else 0) + (4 if head[1] & 0x80 else 0)
            if extra:
                self._need = extra
                return False
        self._fin = bool(head[0] & 0x80)
        self._opcode = head[0] & 0x0F
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
            if length >> 63:
                self.broken = True     # rule 3
                return False
        self._head = bytearray()
        self._need = _HEAD
        self._remaining = length
        if length == 0:
            self._end_frame()
            return True
        return False

    def _end_frame(self) -> None:
        self.frames += 1
        if self._opcode >= _CONTROL:
            if self._opcode == _OPCODE_CLOSE:
                self.close_seen = True
        elif self._fin:
            self.messages += 1
