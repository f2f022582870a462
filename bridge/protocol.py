"""The StepFoley OSC protocol, version 1: addresses, argument signatures, limits, and the
validation of the generation request. docs/osc-protocol.md is the human-readable twin of
this module; change both together.

Pure Python on purpose: the client imports this inside a DAW, so no torch, no engine."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9017

# UDP datagrams can carry 64 KiB; half of that leaves room for OSC framing and keeps a
# request well inside what every OS delivers on loopback without fragmentation trouble.
MAX_DATAGRAM_BYTES = 32 * 1024
MAX_REQUEST_ID_CHARS = 64
MAX_TOKEN_CHARS = 256
MAX_CAPTION_CHARS = 1000
MAX_PREVIOUS_CAPTIONS = 64
MAX_PATH_CHARS = 4096
MAX_REGION_SECONDS = 600.0
MAX_STEPS = 1000
MAX_GUIDANCE = 100.0
SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000, 176400, 192000)
FORMATS = ("wav24", "wav32f")
METHODS = ("nag", "independent", "negative_prompt", "reference")

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
STATUS_REPLY = PREFIX + "/status_reply"  # request_id, status_json
ACCEPTED = PREFIX + "/accepted"  # request_id, job_id, queue_position (int, 0 = running next)
PROGRESS = PREFIX + "/progress"  # request_id, job_id, step (int), total (int)
DONE = PREFIX + "/done"  # request_id, job_id, stem_path, metadata_json
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
FINAL_REPLIES = (DONE, ERROR, CANCELLED)

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


def _is_type(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _osc_type_name(kind: type) -> str:
    return {int: "int32 (i)", str: "string (s)", float: "float (f)"}[kind]


# --- the generation request --------------------------------------------------------------

# field -> default; None marks a required field. Region fields are checked separately.
_REQUEST_DEFAULTS: dict[str, Any] = {
    "protocol": PROTOCOL_VERSION,
    "region": None,
    "caption": None,
    "method": "nag",
    "alpha": 4.5,
    "beta": 1.5,
    "seed": 0,
    "steps": 25,
    "negative_caption": "",
    "previous_captions": [],
    "existing_mix": None,
    "reference_audio": None,
    "output_dir": None,
    "sample_rate": 48000,
    "format": "wav24",
    "name_hint": "",
}
_REGION_DEFAULTS: dict[str, Any] = {
    "video": None,
    "file_in": None,
    "file_out": None,
    "playrate": 1.0,
    "project_start": 0.0,
    "project_end": None,  # default: project_start + (file_out - file_in) / playrate
}


def validate_request(request: Any, check_paths: bool = True) -> dict:
    """Check a decoded request against protocol version 1 and return a new dict with every
    optional field filled in. With `check_paths` (the engine side), output_dir must be an
    existing writable directory. Raises ProtocolError(code="invalid_request")."""
    if not isinstance(request, dict):
        _invalid("The request must be a JSON object ({...}).")
    _reject_unknown(request, _REQUEST_DEFAULTS, "request")
    out = _with_defaults(request, _REQUEST_DEFAULTS, "request")

    if not _is_type(out["protocol"], int) or out["protocol"] != PROTOCOL_VERSION:
        _invalid(
            f"This engine speaks protocol {PROTOCOL_VERSION}, the request says "
            f"{out['protocol']!r}. Update the REAPER scripts or the engine so they match."
        )
    out["region"] = _validate_region(out["region"])
    out["caption"] = _text(out["caption"], "caption", allow_empty=False)
    out["negative_caption"] = _text(out["negative_caption"], "negative_caption", allow_empty=True)
    out["name_hint"] = _text(out["name_hint"], "name_hint", allow_empty=True)
    prev = out["previous_captions"]
    if not isinstance(prev, list) or len(prev) > MAX_PREVIOUS_CAPTIONS:
        _invalid(f"previous_captions must be a list of at most {MAX_PREVIOUS_CAPTIONS} captions.")
    out["previous_captions"] = [_text(c, "previous_captions[]", allow_empty=True) for c in prev]

    if out["method"] not in METHODS:
        _invalid(f"method {out['method']!r} is unknown; use one of {', '.join(METHODS)}.")
    out["alpha"] = _number(out["alpha"], "alpha", 0.0, MAX_GUIDANCE)
    out["beta"] = _number(out["beta"], "beta", 0.0, MAX_GUIDANCE)
    out["seed"] = _integer(out["seed"], "seed", 0, 2**63 - 1)
    out["steps"] = _integer(out["steps"], "steps", 1, MAX_STEPS)

    if out["existing_mix"] is not None:
        out["existing_mix"] = _path(out["existing_mix"], "existing_mix")
    if (out["method"] == "reference") != (out["reference_audio"] is not None):
        _invalid("method 'reference' needs reference_audio (the recording to sound like), and "
                 "reference_audio is only used by method 'reference'.")
    if out["reference_audio"] is not None:
        out["reference_audio"] = _path(out["reference_audio"], "reference_audio")
    out["output_dir"] = _path(out["output_dir"], "output_dir")
    if check_paths:
        d = out["output_dir"]
        if not os.path.isdir(d):
            _invalid(f"output_dir '{d}' does not exist or is not a folder. Create it (or save the project) first.")
        if not os.access(d, os.W_OK | os.X_OK):
            _invalid(f"output_dir '{d}' is not writable by the engine. Pick a folder you can write to.")

    if not _is_type(out["sample_rate"], int) or out["sample_rate"] not in SAMPLE_RATES:
        _invalid(
            f"sample_rate {out['sample_rate']!r} is not supported; use one of "
            f"{', '.join(map(str, SAMPLE_RATES))} (the project's rate)."
        )
    if out["format"] not in FORMATS:
        _invalid(f"format {out['format']!r} is unknown; use {' or '.join(FORMATS)}.")
    return out


def _validate_region(region: Any) -> dict:
    if not isinstance(region, dict):
        _invalid("region must be a JSON object with video, file_in and file_out.")
    _reject_unknown(region, _REGION_DEFAULTS, "region")
    out = _with_defaults(region, _REGION_DEFAULTS, "region")
    out["video"] = _path(out["video"], "region.video")
    file_in = _number(out["file_in"], "region.file_in", 0.0, math.inf)
    file_out = _number(out["file_out"], "region.file_out", 0.0, math.inf)
    if not 0 < file_out - file_in <= MAX_REGION_SECONDS:
        _invalid(
            f"region.file_out ({file_out}) must be after region.file_in ({file_in}) "
            f"and the region at most {MAX_REGION_SECONDS:g} s long."
        )
    playrate = _number(out["playrate"], "region.playrate", 0.01, 100.0)
    start = _number(out["project_start"], "region.project_start", 0.0, math.inf)
    if out["project_end"] is None:
        end = start + (file_out - file_in) / playrate
    else:
        end = _number(out["project_end"], "region.project_end", 0.0, math.inf)
        if end <= start:
            _invalid(f"region.project_end ({end}) must be after region.project_start ({start}).")
    out.update(file_in=file_in, file_out=file_out, playrate=playrate, project_start=start, project_end=end)
    return out


def _invalid(message: str):
    raise ProtocolError("invalid_request", message)


def _reject_unknown(obj: dict, known: dict, where: str) -> None:
    extra = sorted(str(k) for k in obj if k not in known)
    if extra:
        _invalid(f"Unknown field(s) in {where}: {', '.join(extra)}. Known: {', '.join(known)}.")


def _with_defaults(obj: dict, defaults: dict, where: str) -> dict:
    out = {}
    for key, default in defaults.items():
        if key in obj:
            out[key] = obj[key]
        elif default is None and key not in ("existing_mix", "reference_audio", "project_end"):
            _invalid(f"{where} is missing the required field '{key}'.")
        else:
            out[key] = list(default) if isinstance(default, list) else default
    return out


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _invalid(f"{name} must be a number, got {value!r}.")
    if not low <= value <= high:
        _invalid(f"{name} = {value} is outside {low:g} .. {high:g}.")
    return float(value)


def _integer(value: Any, name: str, low: int, high: int) -> int:
    if not _is_type(value, int):
        _invalid(f"{name} must be a whole number, got {value!r}.")
    if not low <= value <= high:
        _invalid(f"{name} = {value} is outside {low} .. {high}.")
    return value


def _text(value: Any, name: str, allow_empty: bool) -> str:
    if not isinstance(value, str):
        _invalid(f"{name} must be a string, got {type(value).__name__}.")
    if not allow_empty and not value.strip():
        _invalid(f"{name} is empty; describe the sound to generate.")
    if len(value) > MAX_CAPTION_CHARS:
        _invalid(f"{name} is longer than {MAX_CAPTION_CHARS} characters.")
    return value


def _path(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value or "\x00" in value or len(value) > MAX_PATH_CHARS:
        _invalid(f"{name} must be a file path (a non-empty string).")
    # The engine's working directory has nothing to do with the DAW's, so relative paths
    # would silently point somewhere else.
    if not os.path.isabs(value):
        _invalid(f"{name} '{value}' must be an absolute path.")
    return value
