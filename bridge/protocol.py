"""The StepFoley OSC protocol, version 2: addresses, argument signatures and message limits.
The generation request itself (fields, bounds, parser) is stepfoley.request. docs/osc-protocol.md
is the human-readable twin of both; change them together.

Pure Python on purpose: the client imports this inside a DAW, so no torch, no engine."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from stepfoley.request import PROTOCOL_VERSION, is_utf8, is_whole  # noqa: F401  (PROTOCOL_VERSION re-exported: protocol.PROTOCOL_VERSION)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9017

# UDP datagrams can carry 64 KiB; half of that leaves room for OSC framing and keeps a
# request well inside what every OS delivers on loopback without fragmentation trouble.
MAX_DATAGRAM_BYTES = 32 * 1024
# macOS gives a UDP socket a 9,216-byte send buffer and refuses (EMSGSIZE) any datagram larger
# than it, loopback included: every socket of the protocol gets room for the largest.
SEND_BUFFER_BYTES = 2 * MAX_DATAGRAM_BYTES
# A /generate's request JSON (UTF-8): what a datagram leaves after the address, the header
# arguments and OSC's padding.
MAX_REQUEST_BYTES = MAX_DATAGRAM_BYTES - 512
MAX_REQUEST_ID_CHARS = 64
MAX_TOKEN_CHARS = 256
# Every reply fits one datagram by construction: the JSON it carries is cut to these sizes
# (status_json and job_json leave room for the address and the request id; metadata_json
# leaves room for a stem path of MAX_PATH_CHARS).
MAX_REPLY_JSON_BYTES = MAX_DATAGRAM_BYTES - 512
MAX_METADATA_JSON_BYTES = MAX_DATAGRAM_BYTES // 2
# /done_stems (protocol 2) carries the stems' folder once, as its own argument: at most
# MAX_PATH_CHARS characters of at most 4 UTF-8 bytes, half a datagram. stems_json gets the other
# half less the framing; each stem's own metadata (what differs between takes: seed, levels,
# rank, scores) at most MAX_STEM_METADATA_JSON_BYTES, what they share gets the rest.
MAX_STEMS_JSON_BYTES = MAX_DATAGRAM_BYTES // 2 - 512
MAX_STEM_METADATA_JSON_BYTES = 1024
MAX_RANKING_JSON_BYTES = 512

PREFIX = "/stepfoley"

# Client -> engine. Every message starts with the same three arguments:
#   reply_port (int), request_id (string, chosen by the client), token (string, "" if none)
PING = PREFIX + "/ping"
STATUS = PREFIX + "/status"
GENERATE = PREFIX + "/generate"  # + request_json (string)
CANCEL = PREFIX + "/cancel"  # + job_id (string)
RESULT = PREFIX + "/result"  # + job_id (string)

# Engine -> client. The first argument is always the request_id the reply belongs to.
PONG = PREFIX + "/pong"  # request_id, protocol (int), model, device
STATUS_REPLY = PREFIX + "/status_reply"  # request_id, status_json (with the model's capabilities)
ACCEPTED = PREFIX + "/accepted"  # request_id, job_id, queue_position (int, 0 = running next)
PROGRESS = PREFIX + "/progress"  # request_id, job_id, step (int), total (int), phase
# Phases of a running job, in order; step and total count within the phase ("starting" is
# the step-0 reply that tells a client its job left the queue).
PHASES = ("starting", "features", "sampling", "decoding", "finishing")
DONE = PREFIX + "/done"  # request_id, job_id, stem_path, metadata_json (a protocol-1 request)
DONE_STEMS = PREFIX + "/done_stems"  # request_id, job_id, folder, stems_json (a protocol-2 request)
ERROR = PREFIX + "/error"  # request_id, job_id ("" before a job exists), code, message
CANCELLED = PREFIX + "/cancelled"  # request_id, job_id
CANCEL_REPLY = PREFIX + "/cancel_reply"  # request_id, job_id, outcome
JOB = PREFIX + "/job"  # request_id, job_json (answer to /result)

HEADER = (("reply_port", int), ("request_id", str), ("token", str))
# address -> (name, python type) of the arguments after the header
CLIENT_MESSAGES: dict[str, tuple[tuple[str, type], ...]] = {
    PING: (),
    STATUS: (),
    GENERATE: (("request_json", str),),
    CANCEL: (("job_id", str),),
    RESULT: (("job_id", str),),
}
JSON_ARGUMENTS = ("request_json",)
FINAL_REPLIES = (DONE, DONE_STEMS, ERROR, CANCELLED)

# Outcomes of /cancel, in /cancel_reply.
CANCEL_DROPPED = "dropped"  # it was queued and never ran
CANCEL_STOPPING = "stopping"  # it is running and stops before its next sampling step
CANCEL_TOO_LATE = "finished"  # it had already finished (done, error or cancelled)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,%d}" % MAX_REQUEST_ID_CHARS)


class ProtocolError(Exception):
    """A message or request that breaks the protocol. `code` goes into the /error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Header:
    reply_port: int
    request_id: str
    token: str


def parse_header(address: str, args: list[Any]) -> tuple[Header, list[Any]]:
    """Split a client message into its header and its own arguments, checking both.
    Raises ProtocolError; `reply_port_of(args)` tells whether an error can be answered."""
    if address not in CLIENT_MESSAGES:
        known = ", ".join(sorted(CLIENT_MESSAGES))
        raise ProtocolError("unknown_address", f"Unknown OSC address '{address[:80]}'. Known: {known}.")
    expected = HEADER + CLIENT_MESSAGES[address]
    if len(args) != len(expected):
        names = ", ".join(name for name, _ in expected)
        raise ProtocolError("bad_arguments", f"{address} takes {len(expected)} arguments ({names}), got {len(args)}.")
    for (name, kind), value in zip(expected, args):
        if not _is_type(value, kind):
            raise ProtocolError(
                "bad_arguments",
                f"{address}: argument '{name}' must be an OSC {_osc_type_name(kind)}, "
                f"got {type(value).__name__}.",
            )
        # a string whose bytes were not UTF-8 arrives escaped (osc._arguments); the request's
        # JSON is parsed on, to name the field that holds them
        if kind is str and name not in JSON_ARGUMENTS and not is_utf8(value):
            raise ProtocolError("bad_arguments", f"{address}: argument '{name}' holds bytes that are not UTF-8 text; "
                                                 "send every string as UTF-8.")
    reply_port, request_id, token = args[0], args[1], args[2]
    if not 1 <= reply_port <= 65535:
        raise ProtocolError("bad_arguments", f"reply_port {reply_port} is not a UDP port (1-65535).")
    if not _REQUEST_ID.fullmatch(request_id):
        raise ProtocolError(
            "bad_arguments",
            f"request_id must be 1-{MAX_REQUEST_ID_CHARS} characters of A-Z a-z 0-9 . _ : -",
        )
    if len(token) > MAX_TOKEN_CHARS:
        raise ProtocolError("bad_arguments", "token is too long.")
    return Header(reply_port, request_id, token), list(args[3:])


def reply_port_of(args: list[Any]) -> int | None:
    """The reply port of a message that may be malformed, or None when none can be trusted."""
    if args and _is_type(args[0], int) and 1 <= args[0] <= 65535:
        return args[0]
    return None


def request_id_of(args: list[Any]) -> str:
    if len(args) > 1 and isinstance(args[1], str) and _REQUEST_ID.fullmatch(args[1]):
        return args[1]
    return ""


def fit_json(value: Any, max_bytes: int) -> str:
    """`value` as JSON text of at most `max_bytes` (ASCII: anything else is escaped). When it is
    larger, its strings and lists are cut ever shorter (strings end in "…") and an object gets
    "truncated": true; the last resort is {"truncated": true}."""
    text = json.dumps(value)
    limit = 1024
    while len(text) > max_bytes and limit >= 1:
        value = _shorten(value, limit)
        if isinstance(value, dict):
            value["truncated"] = True
        text = json.dumps(value)
        limit //= 4
    return text if len(text) <= max_bytes else json.dumps({"truncated": True})


def job_json(summary: dict) -> str:
    """The job_json of /job (a Job summary) within MAX_REPLY_JSON_BYTES. Its paths, what a
    client recovers a lost final reply for, are never cut: the caption, metadata, error message
    and the stems' metadata and ranking are cut first ("truncated": true), and a version-2 job's
    best stem is then sent once, as the folder and the first file name ("stem_path" null).
    Paths that alone leave no room (thousands of characters, every one escaped) are left out,
    with "paths_lost": true."""
    text = json.dumps(summary)
    if len(text) <= MAX_REPLY_JSON_BYTES:
        return text
    stems = summary.get("stems")
    kept = {k: v for k, v in summary.items() if k not in ("caption", "metadata", "error", "stems")}
    cuttable: dict = {"caption": summary.get("caption"), "metadata": summary.get("metadata"),
                      "error": summary.get("error")}
    if stems:
        kept["stem_path"] = None
        kept["stems"] = {"folder": stems.get("folder"), "stems": [{"file": e.get("file")} for e in stems["stems"]]}
        cuttable.update(shared=stems.get("metadata"), ranking=stems.get("ranking"),
                        own=[e.get("metadata") for e in stems["stems"]])
    kept["truncated"] = True
    room = MAX_REPLY_JSON_BYTES - len(json.dumps(kept))
    while room >= len('{"truncated": true}'):
        cut = json.loads(fit_json(cuttable, room))
        reply = {**kept, "caption": cut.get("caption"), "metadata": cut.get("metadata"), "error": cut.get("error")}
        if stems:
            own = cut.get("own") if isinstance(cut.get("own"), list) else []
            reply["stems"] = {**kept["stems"], "metadata": cut.get("shared") or {}, "ranking": cut.get("ranking") or {},
                              "stems": [{**entry, "metadata": own[i] if i < len(own) and own[i] else {}}
                                        for i, entry in enumerate(kept["stems"]["stems"])]}
        text = json.dumps(reply)
        if len(text) <= MAX_REPLY_JSON_BYTES:
            return text
        room //= 2
    lost = {k: v for k, v in kept.items() if k != "stems"}
    return json.dumps({**lost, "stem_path": None, "paths_lost": True})


_ABSENT = object()
STEM_OWN_KEYS = ("seed", "rank", "ranking")  # in each stem's own metadata, however many stems


def stems_json(stems: list[tuple[str, dict]], ranking: dict) -> str:
    """The stems_json of /done_stems: {"stems": [{"file", "metadata"}, ...] best first,
    "ranking", "metadata"}, within MAX_STEMS_JSON_BYTES. `stems` are (file name, metadata) pairs;
    what every stem's metadata shares goes once under "metadata", each stem keeps what is its
    own and always its STEM_OWN_KEYS (a client merges the two). File names are never cut: ValueError when they alone leave
    no room."""
    shared = {}
    if stems:
        first = stems[0][1]
        # a stem's seed and place always its own: of one stem, everything counted as shared and
        # its entry was empty, where the document has a client read them
        shared = {k: v for k, v in first.items()
                  if k not in STEM_OWN_KEYS and all(m.get(k, _ABSENT) == v for _, m in stems[1:])}
    entries = [{"file": name, "metadata": json.loads(fit_json({k: v for k, v in m.items() if k not in shared},
                                                               MAX_STEM_METADATA_JSON_BYTES))}
               for name, m in stems]
    reply = {"stems": entries, "ranking": json.loads(fit_json(ranking, MAX_RANKING_JSON_BYTES))}
    room = MAX_STEMS_JSON_BYTES - len(json.dumps(reply)) - len(', "metadata": ')
    if room < len("{}"):
        raise ValueError(f"the names of {len(stems)} stems leave no room in one reply")
    reply["metadata"] = json.loads(fit_json(shared, room))
    return json.dumps(reply)


def merged_stems(folder: str, stems: dict) -> list[dict]:
    """A /done_stems reply as the client keeps it: [{"stem_path", "metadata"}, ...] best first,
    each stem's metadata merged with what they share. ValueError when a file name is not a plain
    name in `folder`."""
    out = []
    for entry in stems["stems"]:
        name = entry["file"]
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError(f"the engine named a stem {name!r}, which is not a file name")
        out.append({"stem_path": os.path.join(folder, name),
                    "metadata": {**stems.get("metadata", {}), **entry.get("metadata", {})}})
    return out


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit - 1] + "…"
    if isinstance(value, (list, tuple)):
        return [_shorten(v, limit) for v in value[:limit]]
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    return value


def _is_type(value: Any, kind: type) -> bool:
    if kind is int:
        return is_whole(value)
    return isinstance(value, kind)


def _osc_type_name(kind: type) -> str:
    return {int: "int32 (i)", str: "string (s)", float: "float (f)"}[kind]


def make_room_for_datagrams(sock) -> None:
    """Raise a UDP socket's send buffer to SEND_BUFFER_BYTES where it is smaller (Linux's
    default is larger and stays)."""
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < SEND_BUFFER_BYTES:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


def address_text(host: str, port: int) -> str:
    """A host and port as messages write them: an IPv6 address in brackets ("[::1]:9017"), as
    in a URL, since "::1:9017" reads as one longer address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
