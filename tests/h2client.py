"""A blocking HTTP/2 client for the tests: the ``h2`` package over a real socket
(TLS with ALPN ``h2``, or h2c with prior knowledge), plus raw frames for the
framing-error cases. Every read has a deadline.
"""
from __future__ import annotations

import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import Frame


@dataclass
class Answer:
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None       # RST_STREAM code, if the server reset it


class H2Client:
    """One HTTP/2 connection; ``answers`` by stream id, ``goaway`` once one came."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None = None, name: str = "a.test",
                 auto_ack: bool = True) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        if ctx is not None:
            ctx.set_alpn_protocols(["h2"])
            self.sock: socket.socket = ctx.wrap_socket(raw, server_hostname=name)
            assert self.sock.selected_alpn_protocol() == "h2"  # type: ignore[attr-defined]
        else:
            self.sock = raw
        self.name = name
        self.auto_ack = auto_ack
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.answers: dict[int, Answer] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.send_failed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.send_failed:
            try:
                self.sock.sendall(data)
            except OSError:     # the server closed (a flood test): keep reading what it sent
                self.send_failed = True

    def request(self, path: str, method: str = "GET", body: bytes | None = None,
                headers: list[tuple[str, str]] | None = None) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "https"),
                  (":authority", self.name), *(headers or [])]
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in fields],
                               end_stream=body is None)
        self.answers[sid] = Answer()
        if body is not None:
            self.send_body(sid, body)
        self.flush()
        return sid

    def send_body(self, sid: int, body: bytes) -> None:
        """Send ``body`` as the windows allow, reading WINDOW_UPDATEs meanwhile."""
        while body:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.flush()
                self.read_once(10)
                continue
            chunk, body = body[:window], body[window:]
            self.conn.send_data(sid, chunk)
        self.conn.end_stream(sid)
        self.flush()

    def read_once(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            return
        for event in self.conn.receive_data(data):
            self.on_event(event)
        self.flush()

    def on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            answer = self.answers.setdefault(event.stream_id, Answer())
            answer.headers = dict(event.headers)
            answer.status = int(answer.headers[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.answers[event.stream_id].body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.answers[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.answers.setdefault(event.stream_id, Answer()).reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, condition: Any, timeout: float = 10.0, what: str = "answers") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(f"timed out (or closed) waiting for {what}")
            try:
                self.read_once(left)
            except TimeoutError:
                pass

    def get(self, path: str, timeout: float = 10.0) -> Answer:
        sid = self.request(path)
        self.wait(lambda: self.answers[sid].ended or self.answers[sid].reset is not None, timeout)
        return self.answers[sid]

    def close(self) -> None:
        self.sock.close()


def read_frames(sock: socket.socket, timeout: float = 10.0) -> list[Frame]:
    """Every frame the server sends until it closes the connection (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


class FrameClient:
    """HTTP/2 from frames (hyperframe + hpack), for what h2's client state
    machine refuses: it stops reading at a GOAWAY, where the streams the
    GOAWAY keeps still have their answers to come (RFC 9113 §6.8)."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self, sock: socket.socket, name: str = "a.test") -> None:
        from hpack import Decoder, Encoder
        from hyperframe.frame import SettingsFrame
        self.sock = sock
        self.name = name
        self.encoder, self.decoder = Encoder(), Decoder()
        self.next_id = 1
        self.buffer = b""
        self.answers: dict[int, Answer] = {}
        self.goaway: Any = None
        self.closed = False
        sock.sendall(self.PREFACE + SettingsFrame(0).serialize())

    def request(self, path: str) -> int:
        from hyperframe.frame import HeadersFrame
        sid, self.next_id = self.next_id, self.next_id + 2
        frame = HeadersFrame(sid)
        frame.data = self.encoder.encode([(":method", "GET"), (":path", path),
                                          (":scheme", "https"), (":authority", self.name)])
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        self.answers[sid] = Answer()
        self.sock.sendall(frame.serialize())
        return sid

    def read_once(self, timeout: float) -> None:
        from hyperframe.frame import (DataFrame, GoAwayFrame, HeadersFrame, RstStreamFrame,
                                      SettingsFrame)
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return
        self.buffer += data
        while len(self.buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
            if len(self.buffer) < 9 + length:
                break
            frame.parse_body(memoryview(self.buffer[9:9 + length]))
            self.buffer = self.buffer[9 + length:]
            answer = self.answers.get(frame.stream_id)
            if isinstance(frame, HeadersFrame) and answer is not None:
                answer.headers = dict(self.decoder.decode(frame.data, raw=True))
                answer.status = int(answer.headers[b":status"])
            elif isinstance(frame, DataFrame) and answer is not None:
                answer.body += frame.data
            elif isinstance(frame, RstStreamFrame) and answer is not None:
                answer.reset = frame.error_code
            elif isinstance(frame, GoAwayFrame):
                self.goaway = frame
            elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                self.sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
            if answer is not None and "END_STREAM" in frame.flags:
                answer.ended = True

    def wait(self, condition: Any, timeout: float = 10.0, what: str = "answers") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0 or self.closed:
                raise AssertionError(f"timed out (or closed) waiting for {what}")
            try:
                self.read_once(left)
            except TimeoutError:
                pass
