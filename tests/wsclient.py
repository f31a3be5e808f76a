"""A blocking WebSocket client for tests: wsproto over a real socket.

Every read has a deadline (``timeout``); ``receive`` returns whole messages
(fragments joined) and the other events as wsproto reports them. ``send_raw``
writes bytes as they are, for frames wsproto would refuse to build.
"""
from __future__ import annotations

import socket
import time
from collections import deque
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, Pong,
                            RejectConnection, RejectData, Request, TextMessage)
from wsproto.extensions import PerMessageDeflate


class Rejected(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"handshake refused with {status}: {body!r}")
        self.status = status
        self.body = body


class WsClient:
    def __init__(self, port: int, path: str = "/", *, subprotocols: tuple[str, ...] = (),
                 compress: bool = False, timeout: float = 10.0, host: str = "127.0.0.1",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: deque[Any] = deque()
        self.extensions = [PerMessageDeflate()] if compress else []
        self.sock.sendall(self.ws.send(Request(host=f"{host}:{port}", target=path,
                                               subprotocols=list(subprotocols),
                                               extensions=list(self.extensions),
                                               extra_headers=list(headers))))
        self.accepted: AcceptConnection = self._handshake()
        self.subprotocol = self.accepted.subprotocol
        self._parts: list[Any] = []
        self.closed_by_server = False

    def _handshake(self) -> AcceptConnection:
        status, body = 0, b""
        deadline = time.monotonic() + self.timeout
        while True:
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return event
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise Rejected(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        raise Rejected(status, body)
            self._read(deadline)

    def _read(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the server in time")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        self.ws.receive_data(data or None)
        return bool(data)

    # sending
    def send(self, message: str | bytes) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self.sock.sendall(self.ws.send(event))

    def send_fragments(self, parts: list[str] | list[bytes]) -> None:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            event = TextMessage(data=part, message_finished=last) if isinstance(part, str) \
                else BytesMessage(data=part, message_finished=last)
            self.sock.sendall(self.ws.send(event))

    def ping(self, payload: bytes = b"") -> None:
        self.sock.sendall(self.ws.send(Ping(payload=payload)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.sock.sendall(self.ws.send(CloseConnection(code=code, reason=reason or None)))

    # receiving
    def receive(self, timeout: float | None = None) -> Any:
        """The next whole message (str/bytes), or a Ping/Pong/CloseConnection event."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self.ws.events():
                if isinstance(event, Message):
                    self._parts.append(event.data)
                    if event.message_finished:
                        parts, self._parts = self._parts, []
                        return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                elif isinstance(event, CloseConnection):
                    self.closed_by_server = True
                    return event
                else:
                    return event
            if not self._read(deadline):
                return CloseConnection(code=1006)

    def receive_close(self, timeout: float | None = None, answer: bool = True) -> CloseConnection:
        """Skip messages until the server's close frame; answer it (by default)."""
        while True:
            event = self.receive(timeout)
            if isinstance(event, CloseConnection):
                if answer and event.code != 1006:
                    try:
                        self.sock.sendall(self.ws.send(event.response()))
                    except Exception:  # the server may have closed already  # noqa: BLE001
                        pass
                return event

    def wait_eof(self, timeout: float | None = None) -> bool:
        """True once the server closed the TCP connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                if not self.sock.recv(65536):
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False

    def shutdown(self) -> None:
        self.sock.close()

    def __enter__(self) -> WsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


__all__ = ["Rejected", "WsClient", "Pong", "Ping", "CloseConnection"]
