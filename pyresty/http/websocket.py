"""WebSocket (RFC 6455, RFC 7692) on the server side, sans-IO, over wsproto.

Two parts: the opening handshake, checked from a request the HTTP/1.1 parser
already read (``check_handshake``), and ``Session``, the frame protocol of one
upgraded connection: bytes in, messages and close events out; messages in,
bytes out. wsproto does the framing, masking, UTF-8 validation (incremental,
across fragments) and permessage-deflate; this module adds what a server
needs on top and wsproto leaves to its user.

Rules
-----
1. A handshake is refused with the status a client can act on (RFC 6455
   §4.2.1-4.2.2): 400 for a request that is not a WebSocket opening handshake
   (not GET, not HTTP/1.1, no ``Upgrade: websocket``, no ``Connection:
   Upgrade``, a missing or malformed ``Sec-WebSocket-Key``); 426 with ``Sec-WebSocket-Version: 13`` for
   another protocol version (§4.4). The reason goes in the body.
2. Subprotocol: the first of the server's list that the client offered
   (the server's preference wins, as in Python's ``websockets``); none if none.
   permessage-deflate: the first offer wsproto accepts, each tried on a fresh
   extension object (an offer it refuses leaves no trace on the next); an
   offer with an unknown or invalid parameter is declined (RFC 7692 §7).
3. Fragmented messages are reassembled; a message over ``max_message_size``
   (bytes of a binary message, characters of a text one) closes with 1009
   as soon as its size passes the limit, without buffering the rest. A
   compressed message is inflated with that bound too (``BoundedDeflate``):
   a small frame that would inflate past the limit (a deflate bomb: zlib
   reaches ~1000:1) closes with 1009 after at most limit + 1 inflated bytes.
4. A ping is answered (pong) as it is parsed, before later messages are
   handed on. A protocol error closes with the code wsproto reports (1002,
   1007 for bad UTF-8); after a close frame in either direction nothing
   more is parsed or sent but the closing handshake.
5. Every frame is serialised whole into one bytes object, so a caller that
   writes each result in one call never interleaves two frames: any point
   between two writes is a frame boundary, where a close frame 1001 may go.
"""
from __future__ import annotations

import base64
import binascii
import enum
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, generate_accept_token

__all__ = ["Accept", "Closed", "Refusal", "Session", "check_handshake", "CloseCode"]

VERSION: Final = b"13"
DEFAULT_MAX_MESSAGE: Final = 16 * 1024 * 1024   # SPEC §8b's example; Autobahn 9.x sends 16 MiB


class CloseCode(enum.IntEnum):
    """The close codes pyresty sends (RFC 6455 §7.4.1)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_DATA = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    NO_STATUS = 1005        # received without a code (never sent)
    ABNORMAL = 1006         # the connection ended without a close frame (never sent)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused handshake: answer ``status`` with ``reason`` and these fields."""

    status: int
    reason: str
    fields: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Accept:
    """An accepted handshake: the 101's fields and what was negotiated."""

    fields: tuple[tuple[str, str], ...]
    subprotocol: str | None
    deflate: PerMessageDeflate | None = field(default=None, compare=False)


def _values(fields: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    """Every comma-separated element of the field ``name`` (lowercase), stripped."""
    out: list[bytes] = []
    for key, value in fields:
        if key.lower() == name:
            out.extend(part.strip() for part in value.split(b",") if part.strip())
    return out


def _tokens(fields: Sequence[tuple[bytes, bytes]], name: bytes) -> set[bytes]:
    return {value.lower() for value in _values(fields, name)}


def check_handshake(method: str, version: str, fields: Sequence[tuple[bytes, bytes]],
                    subprotocols: Sequence[str] = (), compress: bool = False) -> Accept | Refusal:
    """Check a WebSocket opening handshake (rules 1 and 2); never raises."""
    if method != "GET":
        return Refusal(400, f"a WebSocket handshake is a GET request, not {method}")
    if version != "1.1":
        return Refusal(400, f"a WebSocket handshake needs HTTP/1.1, not HTTP/{version}")
    if b"websocket" not in _tokens(fields, b"upgrade"):
        return Refusal(400, "no \"Upgrade: websocket\" header")
    if b"upgrade" not in _tokens(fields, b"connection"):
        return Refusal(400, "no \"Connection: Upgrade\" header")
    versions = _values(fields, b"sec-websocket-version")
    if versions != [VERSION]:
        return Refusal(426, "unsupported Sec-WebSocket-Version (this server speaks 13)",
                       (("Sec-WebSocket-Version", "13"),))
    keys = _values(fields, b"sec-websocket-key")
    if len(keys) != 1:
        return Refusal(400, "missing or repeated Sec-WebSocket-Key")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:   # RFC 6455 §4.2.1 item 5: 16 bytes, base64-encoded
        return Refusal(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    out = [("Sec-WebSocket-Accept", generate_accept_token(keys[0]).decode("ascii"))]
    offered = [p.decode("latin-1") for p in _values(fields, b"sec-websocket-protocol")]
    chosen = next((p for p in subprotocols if p in offered), None)
    if chosen is not None:
        out.append(("Sec-WebSocket-Protocol", chosen))
    deflate = None
    if compress:
        for offer in _values(fields, b"sec-websocket-extensions"):
            text = offer.decode("latin-1")
            if text.split(";", 1)[0].strip() != PerMessageDeflate.name:
                continue
            if not _deflate_offer_valid(text):
                continue
            candidate = BoundedDeflate()
            try:
                params = candidate.accept(text)
            except ValueError:     # RFC 7692 §7: an invalid parameter value is declined
                continue
            if params is None or params is False:
                continue
            deflate = candidate
            value = PerMessageDeflate.name if params is True or params == "" \
                else f"{PerMessageDeflate.name}; {params}"
            out.append(("Sec-WebSocket-Extensions", value))
            break
    return Accept(tuple(out), chosen, deflate)


_DEFLATE_PARAMS: Final = {"server_no_context_takeover": False, "client_no_context_takeover": False,
                          "server_max_window_bits": True, "client_max_window_bits": None}


def _deflate_offer_valid(offer: str) -> bool:
    """RFC 7692 §7: only the four parameters, each once, window bits 8-15 where
    given (``client_max_window_bits`` may come without a value; wsproto takes
    9-15 and declines 8)."""
    seen = set()
    for param in offer.split(";")[1:]:
        name, eq, value = (part.strip() for part in param.partition("="))
        takes = _DEFLATE_PARAMS.get(name, False) if name in _DEFLATE_PARAMS else "unknown"
        if takes == "unknown" or name in seen:
            return False
        seen.add(name)
        if takes is False and eq:
            return False
        if takes is True and not eq:
            return False
        if eq and not (value.strip('"').isdigit() and 8 <= int(value.strip('"')) <= 15):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer's close frame, or our own close after a protocol error or a limit."""

    code: int
    reason: str
    by_peer: bool


class BoundedDeflate(PerMessageDeflate):
    """permessage-deflate whose inflation stops past ``limit`` bytes per
    message (rule 3): wsproto's inflates whatever a frame holds."""

    def __init__(self) -> None:
        super().__init__()
        self.limit = DEFAULT_MAX_MESSAGE
        self._inflated = 0          # bytes of the current message so far

    def frame_inbound_payload_data(self, proto: Any, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        return self._bounded(data)

    def frame_inbound_complete(self, proto: Any, fin: bool) -> bytes | CloseReason | None:
        if not fin:
            return None
        compressed = self._inbound_compressed and self._inbound_is_compressible
        self._inbound_compressed = None
        if not compressed:
            self._inflated = 0
            return None
        tail = self._bounded(b"\x00\x00\xff\xff")   # the empty block the sender dropped
        self._inflated = 0
        if proto.client:
            no_context_takeover = self.server_no_context_takeover
        else:
            no_context_takeover = self.client_no_context_takeover
        if no_context_takeover:
            self._decompressor = None
        return tail

    def _bounded(self, data: bytes) -> bytes | CloseReason:
        room = self.limit - self._inflated
        try:
            out = self._decompressor.decompress(data, room + 1)   # type: ignore[union-attr]
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._inflated += len(out)
        if self._inflated > self.limit:
            return CloseReason.MESSAGE_TOO_BIG
        return out


class Session:
    """The frame protocol of one server-side WebSocket (rules 3-5).

    ``receive(data)`` parses bytes from the client and returns the complete
    messages (``str`` or ``bytes``) and at most one ``Closed``; what must go
    back (pongs, the close reply) accumulates in ``outgoing`` for the caller
    to write. ``send``, ``ping`` and ``close`` return the bytes of one frame.
    """

    __slots__ = ("_conn", "max_message_size", "_parts", "_size", "_text", "outgoing",
                 "close_code", "close_reason", "pongs", "_dead")

    def __init__(self, deflate: PerMessageDeflate | None = None,
                 max_message_size: int = DEFAULT_MAX_MESSAGE) -> None:
        if isinstance(deflate, BoundedDeflate):
            deflate.limit = max_message_size
        self._conn = Connection(ConnectionType.SERVER, [deflate] if deflate is not None else None)
        self.max_message_size = max_message_size
        self._parts: list[str | bytes] = []
        self._size = 0
        self._text = False
        self.outgoing = bytearray()
        self.close_code: int | None = None
        self.close_reason = ""
        self.pongs = 0
        self._dead = False          # a protocol error or limit: the rest of the input is dropped

    @property
    def open(self) -> bool:
        """Messages may still be sent (no close frame went out yet)."""
        return self._conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING) \
            and self.close_code is None

    @property
    def finished(self) -> bool:
        """The closing handshake is complete, or our close followed a failure
        (the connection may be closed now)."""
        return self._conn.state is ConnectionState.CLOSED or (self._dead and not self.open)

    def receive(self, data: bytes) -> list[str | bytes | Closed]:
        """The messages and close event ``data`` completes (rules 3 and 4)."""
        if self._dead or self._conn.state is ConnectionState.CLOSED:
            return []
        self._conn.receive_data(data)
        out: list[str | bytes | Closed] = []
        for event in self._conn.events():
            if isinstance(event, Message):
                message = self._on_message(event)
                if isinstance(message, Closed):
                    out.append(message)
                    break
                if message is not None:
                    out.append(message)
            elif isinstance(event, Ping):
                self.outgoing += self._conn.send(event.response())
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, CloseConnection):
                out.append(self._on_close(event))
                break
        return out

    def receive_eof(self) -> Closed | None:
        """The connection ended: 1006 unless a close frame came first."""
        if self.close_code is not None or self._conn.state is ConnectionState.CLOSED:
            return None
        self._dead = True
        self.close_code = int(CloseCode.ABNORMAL)
        return Closed(self.close_code, "", True)

    def _on_message(self, event: Message[Any]) -> str | bytes | Closed | None:
        data: str | bytes = event.data
        if not self._parts:
            self._text = isinstance(event, TextMessage)
        self._size += len(data)
        if self._size > self.max_message_size:
            return self._fail(CloseCode.MESSAGE_TOO_BIG,
                              f"message over {self.max_message_size} bytes")
        if not event.message_finished:
            if data:
                self._parts.append(data)
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if not parts:
            return data
        parts.append(data)
        if self._text:
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    def _on_close(self, event: CloseConnection) -> Closed:
        if self._conn.state is ConnectionState.OPEN:
            # wsproto reports a parse failure as a CloseConnection with the
            # code to send (1002, 1007); the peer sent no close frame
            return self._fail(event.code, event.reason or "")
        # a close frame from the peer: answer it (RFC 6455 §5.5.1), echoing its code
        code = int(event.code)
        if self._conn.state is ConnectionState.REMOTE_CLOSING:
            self.outgoing += self._conn.send(event.response())
        if self.close_code is None:
            self.close_code, self.close_reason = code, event.reason or ""
        self._parts, self._size = [], 0
        return Closed(code, event.reason or "", True)

    def _fail(self, code: int, reason: str) -> Closed:
        self._dead = True
        self._parts, self._size = [], 0
        self.outgoing += self.close(code, reason)
        return Closed(code, reason, False)

    # sending
    def send(self, message: str | bytes) -> bytes:
        """One whole message as one frame. Raises ``LocalProtocolError`` once closing."""
        if isinstance(message, str):
            return bytes(self._conn.send(TextMessage(data=message)))
        return bytes(self._conn.send(BytesMessage(data=bytes(message))))

    def ping(self, payload: bytes = b"") -> bytes:
        return bytes(self._conn.send(Ping(payload=payload)))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> bytes:
        """Our close frame (b"" when one already went out)."""
        if self._conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return b""
        if self.close_code is None:
            self.close_code, self.close_reason = int(code), reason
        try:
            return bytes(self._conn.send(CloseConnection(code=code, reason=reason or None)))
        except LocalProtocolError:
            return b""

