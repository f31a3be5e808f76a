"""Case-insensitive, multi-valued HTTP header fields (RFC 9110 §5).

Names compare case-insensitively; the spelling first used is kept for output.
``h[name]`` and ``h.get(name)`` give the first value, ``h.get_all(name)`` every
value; ``h[name] = value`` replaces, ``h.add(name, value)`` appends, and a list
value sets several fields at once (``Set-Cookie``).

``set_encoded`` sets fields whose wire lines the caller has already built, for
fields a server adds to every response (a limiter's ``RateLimit-*``, issue 15:
formatting and checking them per response cost more than the decision). They
read like any other field; ``encode`` sends the caller's lines for them until
one of those names is changed, and from then on encodes them as usual.
``Headers.from_wire`` uses the same mechanism for the fields of a response
another server sent (a proxied response, read by a ``header_filter``): they
go out as the lines they came in until one of them is changed.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from typing import Any


class Headers(MutableMapping[str, str]):
    __slots__ = ("_fields", "_encoded", "_encoded_names", "_wire")

    _encoded: bytes             # the lines of the fields set by set_encoded
    _encoded_names: tuple[str, ...]   # their lowercased names (empty: none)
    _wire: bool                 # _encoded are another server's lines (from_wire)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        # lowercased name -> [spelling, value, value, ...]
        self._fields: dict[str, list[str]] = {}
        self._encoded = b""
        self._encoded_names = ()
        self._wire = False
        if items:
            for name, value in items:
                self.add(name, value)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()][1]

    def __setitem__(self, name: str, value: object) -> None:
        if self._encoded_names:
            self._changed(name.lower())
        if value.__class__ is str:
            self._fields[name.lower()] = [name, value]
        elif isinstance(value, (list, tuple)):
            self._fields[name.lower()] = [name, *map(str, value)]
        else:
            self._fields[name.lower()] = [name, str(value)]

    def __delitem__(self, name: str) -> None:
        if self._encoded_names:
            self._changed(name.lower())
        del self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return (field[0] for field in self._fields.values())

    def __len__(self) -> int:
        return len(self._fields)

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        field = self._fields.get(name.lower())
        return field[1] if field else default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in arrival order (empty when absent)."""
        field = self._fields.get(name.lower())
        return field[1:] if field else []

    def add(self, name: str, value: object) -> None:
        """Append one more field ``name: value``."""
        if self._encoded_names:
            self._changed(name.lower())
        field = self._fields.get(name.lower())
        if field is None:
            self._fields[name.lower()] = [name, str(value)]
        else:
            field.append(str(value))

    def add_raw(self, name: bytes, value: bytes) -> None:
        """``add`` for a field as it came off the wire (latin-1 bytes)."""
        spelling = name.decode("latin-1")
        lowered = spelling.lower()
        if self._encoded_names:
            self._changed(lowered)
        field = self._fields.get(lowered)
        if field is None:
            self._fields[lowered] = [spelling, value.decode("latin-1")]
        else:
            field.append(value.decode("latin-1"))

    def encode(self, without: tuple[str, ...] = ()) -> bytes:
        """Every field as ``Name: value\r\n`` lines (latin-1, as HTTP/1.1 allows),
        except those named in ``without`` (lowercase names). The lines of
        ``set_encoded`` fields come first, as given."""
        encoded = self._encoded_names
        if encoded and len(encoded) == len(self._fields):
            return self._encoded
        lines = [f"{field[0]}: {value}\r\n" for lowered, field in self._fields.items()
                 if lowered not in without and lowered not in encoded for value in field[1:]]
        text = "".join(lines)
        if text.count("\n") != len(lines) or text.count("\r") != len(lines):
            # a CR or LF of a handler's would start a new header line (response splitting)
            raise ValueError("CR or LF in a response header field")
        return self._encoded + text.encode("latin-1")

    def set_encoded(self, lowered: tuple[str, ...], names: tuple[str, ...],
                    values: tuple[str, ...], lines: bytes) -> None:
        """Set the fields ``names[i]: values[i]`` (``lowered[i]`` is ``names[i].lower()``),
        whose wire form the caller has already built as ``lines``: exactly what
        ``encode`` would make of them, so no CR or LF in a name or value and no
        connection-specific field (RFC 9110 §7.6.1), which ``encode`` would leave
        out. Fields set this way earlier are encoded as usual from now on."""
        if self._encoded_names:
            self._changed(self._encoded_names[0])
        fields = self._fields
        for i in range(len(names)):
            fields[lowered[i]] = [names[i], values[i]]
        self._encoded = lines
        self._encoded_names = lowered

    def encoded_alone(self) -> bytes | None:
        """The ``set_encoded`` lines when those fields are all there is, else None
        (``from_wire`` lines are not: they may frame the body themselves)."""
        names = self._encoded_names
        return self._encoded if names and len(names) == len(self._fields) \
            and not self._wire else None

    @staticmethod
    def from_wire(fields: list[tuple[bytes, bytes]], lines: bytes) -> Headers:
        """The fields of a message another server sent, ``fields`` as parsed and
        ``lines`` their wire form (``Name: value\r\n`` each, in order, no
        connection-specific field): ``encode`` sends ``lines`` as they are until
        one of these fields is changed (the module's ``set_encoded`` rule)."""
        headers = Headers()
        for name, value in fields:
            headers.add_raw(name, value)
        if headers._fields:
            headers._encoded = lines
            headers._encoded_names = tuple(headers._fields)
            headers._wire = True
        return headers

    def _changed(self, lowered: str) -> None:
        """A field of ``set_encoded``'s may change: encode them all as usual from now on."""
        if lowered in self._encoded_names:
            self._encoded = b""
            self._encoded_names = ()
            self._wire = False

    def has(self, lowered: str) -> bool:
        """``lowered in self`` for a name already in lower case (no lower() call)."""
        return lowered in self._fields

    def fields(self) -> Iterator[tuple[str, str]]:
        """Every (name, value) pair, one per field line."""
        for field in self._fields.values():
            name = field[0]
            for value in field[1:]:
                yield name, value

    def __repr__(self) -> str:
        return f"Headers({list(self.fields())!r})"
