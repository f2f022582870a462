"""OSC datagram encoding and decoding with python-osc. No sockets here: the server and the
client own their transports, this module only turns bytes into messages and back."""

from __future__ import annotations

from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket
from pythonosc.parsing import osc_types

# Type tags this protocol can meet; python-osc logs a warning (on the root logger) for any
# other tag, so a burst of junk would flood the engine's log: refuse those datagrams first.
_KNOWN_TYPE_TAGS = set("ihfdsbTFN")

# A bundle may nest messages; more than this many in one datagram is not a real client.
MAX_MESSAGES_PER_DATAGRAM = 16


class DecodeError(ValueError):
    """Bytes that are not an OSC message or bundle."""


def encode(address: str, *args: Any) -> bytes:
    """One OSC message. Ints go out as int32 (or int64 when they do not fit), strings as UTF-8."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"OSC argument of unsupported type {type(value).__name__}")
        builder.add_arg(value)
    return builder.build().dgram


def decode(datagram: bytes) -> list[tuple[str, list[Any]]]:
    """Every message in a datagram (one, or the contents of a bundle) as (address, args)."""
    if datagram[:1] == b"/":
        _check_type_tags(datagram)
    try:
        packet = OscPacket(datagram)
        messages = [(m.message.address, list(m.message.params)) for m in packet.messages]
    except Exception as e:  # python-osc raises several types (ParseError, UnicodeDecodeError, ...)
        raise DecodeError(f"not an OSC packet: {e}") from None
    if len(messages) > MAX_MESSAGES_PER_DATAGRAM:
        raise DecodeError(f"bundle of {len(messages)} messages (at most {MAX_MESSAGES_PER_DATAGRAM})")
    for address, _ in messages:
        if not isinstance(address, str) or not address.startswith("/"):
            raise DecodeError(f"OSC address must start with '/', got {address!r:.80}")
    return messages


def _check_type_tags(datagram: bytes) -> None:
    try:
        _, index = osc_types.get_string(datagram, 0)
        if index >= len(datagram):
            return
        tags, _ = osc_types.get_string(datagram, index)
    except Exception as e:
        raise DecodeError(f"not an OSC message: {e}") from None
    if not tags.startswith(",") or not set(tags[1:]) <= _KNOWN_TYPE_TAGS:
        raise DecodeError(f"unsupported OSC type tags {tags[:40]!r}")
