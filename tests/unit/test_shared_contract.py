"""Pure parts of the shared dicts: argument checks, value codecs, names, paths."""
from __future__ import annotations

import enum
import math
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyresty.runtime.shared import SharedDicts, base_dir_for, contract, embedded, redis_backend, store_path

values = st.one_of(st.text(), st.binary(), st.integers(), st.booleans(),
                   st.floats(allow_nan=False))


class Color(enum.IntEnum):
    RED = 7


class Shade(str, enum.Enum):  # noqa: UP042 - the mixin whose str() is not its value
    DARK = "dark"


@pytest.mark.parametrize("key, raw", [("a", b"a"), (b"a", b"a"), ("é", "é".encode()),
                                      ("k" * 65535, b"k" * 65535)])
def test_key_bytes_accepts_str_and_bytes(key: object, raw: bytes) -> None:
    assert contract.key_bytes(key) == raw


@pytest.mark.parametrize("key, exc, text", [
    (1, TypeError, "must be str or bytes, not int"),
    (None, TypeError, "not NoneType"),
    ("", ValueError, "must not be empty"),
    (b"", ValueError, "must not be empty"),
    ("k" * 65536, ValueError, "65536 bytes (at most 65535)"),
])
def test_key_bytes_refuses(key: object, exc: type[Exception], text: str) -> None:
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        contract.key_bytes(key)


@pytest.mark.parametrize("ttl, ns", [(None, 0), (0, 0), (0.0, 0), (1, 10**9), (0.25, 25 * 10**7),
                                     (1e-12, 1)])
def test_ttl_ns(ttl: object, ns: int) -> None:
    assert contract.ttl_ns(ttl) == ns


@pytest.mark.parametrize("ttl, exc", [(-1, ValueError), (math.nan, ValueError),
                                      ("1", TypeError), (True, TypeError)])
def test_ttl_ns_refuses(ttl: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        contract.ttl_ns(ttl)


def test_redis_ttl_ms_rounds_up() -> None:
    assert redis_backend.ttl_ms(None) == 0
    assert redis_backend.ttl_ms(0.0001) == 1
    assert redis_backend.ttl_ms(1.5) == 1500


@given(values)
def test_embedded_codec_round_trips_with_type(value: object) -> None:
    t, payload = embedded.encode(value)
    out = embedded.decode(t, b"hdr" + payload, 3)
    assert type(out) is type(value) and out == value


@given(values)
def test_redis_codec_round_trips_with_type(value: object) -> None:
    out = redis_backend.decode(redis_backend.encode(value))
    assert type(out) is type(value) and out == value


@pytest.mark.parametrize("codec", ["embedded", "redis"])
def test_subclasses_are_stored_as_their_base_type(codec: str) -> None:
    def trip(value: object) -> object:
        if codec == "embedded":
            return embedded.decode(*embedded.encode(value), 0)
        return redis_backend.decode(redis_backend.encode(value))
    assert trip(Color.RED) == 7 and type(trip(Color.RED)) is int
    assert trip(Shade.DARK) == "dark" and type(trip(Shade.DARK)) is str


@pytest.mark.parametrize("bad", [None, [1], {"a": 1}, object(), 1j])
def test_codecs_refuse_other_types(bad: object) -> None:
    with pytest.raises(TypeError, match="str, bytes, int, float or bool"):
        embedded.encode(bad)
    with pytest.raises(TypeError, match="str, bytes, int, float or bool"):
        redis_backend.encode(bad)


def test_long_keys_are_hashed_to_a_fixed_width_distinct_from_short_keys() -> None:
    short = b"k" * embedded.SHORT_KEY_MAX
    assert embedded.stored_key(short) is short
    a = embedded.stored_key(b"k" * 600 + b"a")
    b = embedded.stored_key(b"k" * 600 + b"b")
    assert len(a) == len(b) == 500 and a != b
    assert len(a) <= 511 - 8          # room for a list item index in LMDB's key limit


def test_glob_escape() -> None:
    assert redis_backend.glob_escape(b"pyresty:a*b?[c]\\:") == b"pyresty:a\\*b\\?\\[c\\]\\\\:"


def test_base_dir_for_is_per_prefix_on_dev_shm(tmp_path: os.PathLike[str]) -> None:
    a = base_dir_for(str(tmp_path))
    assert a == base_dir_for(str(tmp_path) + "/")
    assert a != base_dir_for(str(tmp_path) + "/other")
    if os.access("/dev/shm", os.W_OK):
        assert a.startswith("/dev/shm/pyresty-") and len(os.path.basename(a)) == 8 + 16
    else:
        assert a == os.path.join(str(tmp_path), "logs", "shm")


def test_store_path_keeps_plain_names_and_hashes_others() -> None:
    assert store_path("/b", "cache_1.x") == "/b/cache_1.x"
    for odd in ("../up", "a/b", ".hidden", "sp ace"):
        path = store_path("/b", odd)
        assert os.path.dirname(path) == "/b" and os.path.basename(path).startswith("_")


def test_unknown_dict_key_error_names_the_configured_ones() -> None:
    dicts = SharedDicts()
    dicts._dicts = {"limits": object(), "cache": object()}  # type: ignore[dict-item]
    with pytest.raises(KeyError) as info:
        dicts["x"]
    assert str(info.value) == "no shared dict 'x' (configured: cache, limits)"
    assert "x" not in dicts and "cache" in dicts and len(dicts) == 2
    with pytest.raises(KeyError, match=r"configured: none"):
        SharedDicts()["x"]
