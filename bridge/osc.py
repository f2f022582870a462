"""OSC datagram encoding and decoding. No sockets here: the server and the client own their
transports, this module only turns bytes into messages and back.

Decoding does bounded work on any input, before anything else looks at it: bundles are walked
here (python-osc's bundle parser loops for ever on a negative element size and logs each
element it cannot identify), element sizes, nesting, the number of messages and of arguments
are checked, then each message's arguments are read here (python-osc only builds messages).
Nothing here logs.
"""

from __future__ import annotations

import struct
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

# Type tags this protocol can meet; a datagram with any other is not a client's: refused whole.
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
    what UTF-8 or an OSC string cannot carry (a lone surrogate from JSON's \\ud800, a NUL) goes
    out escaped."""
    builder = OscMessageBuilder(address=_encodable(address))
    for value in args:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"OSC argument of unsupported type {type(value).__name__}")
        builder.add_arg(_encodable(value) if isinstance(value, str) else value)
    return builder.build().dgram


def _encodable(text: str) -> str:
    # an OSC string ends at its first NUL: one inside is written as the escape that names it
    text = text.replace("\x00", "\\x00")
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
        tags, index = _string(data, index)
        if not tags.startswith(",") or len(tags) - 1 > MAX_ARGUMENTS:
            raise DecodeError(f"type tags {tags[:40]!r}: not ',' then at most {MAX_ARGUMENTS} tags")
        if not set(tags[1:].encode()) <= _KNOWN_TYPE_TAGS:
            raise DecodeError(f"unsupported OSC type tags {tags[:40]!r}")
    else:
        tags, index = ",", len(data)
    return address, _arguments(data, tags[1:], index)


_FIXED = {"i": (4, "i"), "h": (8, "q"), "f": (4, "f"), "d": (8, "d")}
_CONSTANTS = {"T": True, "F": False, "N": None}


def _arguments(data: bytes, tags: str, index: int) -> list[Any]:
    """The arguments after the type tags. A string argument that is not UTF-8 (a host on a
    Windows code page) is kept with its bytes escaped (surrogateescape): the message still has
    its reply port, so its sender is told what is wrong instead of hearing nothing."""
    args: list[Any] = []
    for tag in tags:
        if tag in _CONSTANTS:
            args.append(_CONSTANTS[tag])
        elif tag in _FIXED:
            size, code = _FIXED[tag]
            if index + size > len(data):
                raise DecodeError(f"argument '{tag}' runs past the end of the message")
            args.append(struct.unpack(f">{code}", data[index:index + size])[0])
            index += size
        elif tag == "s":
            text, index = _string(data, index, errors="surrogateescape")
            args.append(text)
        else:  # "b": a 32-bit size, then the bytes, padded to 4
            if index + 4 > len(data):
                raise DecodeError("blob without a size")
            size = int.from_bytes(data[index:index + 4], "big", signed=True)
            if size < 0 or index + 4 + size > len(data):
                raise DecodeError(f"blob size {size} runs past the end of the message")
            args.append(data[index + 4:index + 4 + size])
            index += 4 + (size + 3) // 4 * 4
    return args


def _string(data: bytes, start: int, errors: str = "strict") -> tuple[str, int]:
    """An OSC string at `start` and the index after its padding."""
    end = data.find(b"\x00", start)
    if end < 0:
        raise DecodeError("unterminated OSC string")
    try:
        text = data[start:end].decode("utf-8", errors)
    except UnicodeDecodeError:
        raise DecodeError("OSC string is not UTF-8") from None
    return text, (end // 4 + 1) * 4
