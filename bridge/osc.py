"""OSC datagram encoding and decoding. No sockets here: the server and the client own their
transports, this module only turns bytes into messages and back.

Decoding does bounded work on any input, before anything else looks at it: bundles are walked
here (python-osc's bundle parser loops for ever on a negative element size and logs each
element it cannot identify), element sizes, nesting, the number of messages and of arguments
are checked, and only then does python-osc parse each message's arguments. Nothing here logs.
"""

from __future__ import annotations

from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

# Type tags this protocol can meet; python-osc logs a warning (on the root logger) for any
# other tag, so a burst of junk would flood the engine's log: refuse those datagrams first.
_KNOWN_TYPE_TAGS = frozenset(b"ihfdsbTFN")
_BUNDLE = b"#bundle\x00"
_BUNDLE_HEADER_BYTES = len(_BUNDLE) + 8  # the prefix and the 64-bit time tag

# A bundle may nest messages; more than this many in one datagram is not a real client.
MAX_MESSAGES_PER_DATAGRAM = 16
MAX_BUNDLE_DEPTH = 4
# Protocol messages have at most 4 arguments; a few more still get a bad_arguments reply.
MAX_ARGUMENTS = 16


class DecodeError(ValueError):
    """Bytes that are not an OSC message or bundle, or exceed this protocol's bounds."""


def encode(address: str, *args: Any) -> bytes:
    """One OSC message. Ints go out as int32 (or int64 when they do not fit), strings as UTF-8;
    what UTF-8 cannot carry (a lone surrogate from JSON's \\ud800) goes out escaped."""
    builder = OscMessageBuilder(address=_encodable(address))
    for value in args:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"OSC argument of unsupported type {type(value).__name__}")
        builder.add_arg(_encodable(value) if isinstance(value, str) else value)
    return builder.build().dgram


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def decode(datagram: bytes) -> list[tuple[str, list[Any]]]:
    """Every message in a datagram (one, or the contents of a bundle) as (address, args)."""
    messages: list[tuple[str, list[Any]]] = []
    _decode_into(bytes(datagram), 0, messages)
    return messages


def _decode_into(data: bytes, depth: int, out: list) -> None:
    if not data.startswith(_BUNDLE):
        if len(out) >= MAX_MESSAGES_PER_DATAGRAM:
            raise DecodeError(f"more than {MAX_MESSAGES_PER_DATAGRAM} messages in one datagram")
        out.append(_message(data))
        return
    if depth >= MAX_BUNDLE_DEPTH:
        raise DecodeError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}")
    if len(data) < _BUNDLE_HEADER_BYTES:
        raise DecodeError("bundle without a time tag")
    index = _BUNDLE_HEADER_BYTES
    while index < len(data):
        if len(data) - index < 4:
            raise DecodeError("bundle element without a size")
        size = int.from_bytes(data[index:index + 4], "big", signed=True)
        index += 4
        if size <= 0 or size % 4 or size > len(data) - index:
            raise DecodeError(f"bundle element size {size} (must be a positive multiple of 4 within the bundle)")
        _decode_into(data[index:index + size], depth + 1, out)
        index += size


def _message(data: bytes) -> tuple[str, list[Any]]:
    if not data.startswith(b"/"):
        raise DecodeError(f"OSC address must start with '/', got {data[:40]!r}")
    address, index = _string(data, 0)
    if index < len(data):
        tags, _ = _string(data, index)
        if not tags.startswith(",") or len(tags) - 1 > MAX_ARGUMENTS:
            raise DecodeError(f"type tags {tags[:40]!r}: not ',' then at most {MAX_ARGUMENTS} tags")
        if not set(tags[1:].encode()) <= _KNOWN_TYPE_TAGS:
            raise DecodeError(f"unsupported OSC type tags {tags[:40]!r}")
    try:
        return address, list(OscMessage(data).params)
    except Exception as e:  # python-osc raises several types (ParseError, UnicodeDecodeError, ...)
        raise DecodeError(f"not an OSC message: {str(e)[:200]}") from None


def _string(data: bytes, start: int) -> tuple[str, int]:
    """An OSC string at `start` and the index after its padding."""
    end = data.find(b"\x00", start)
    if end < 0:
        raise DecodeError("unterminated OSC string")
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("OSC string is not UTF-8") from None
    return text, (end // 4 + 1) * 4
