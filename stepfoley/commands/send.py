"""`stepfoley send`: send one request to a running engine and follow it to its end, keeping
a JSON status file up to date for the DAW script that started it. Imports no torch."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from stepfoley.bridge import protocol
from stepfoley.commands.runtime import is_special_file, same_file, say


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--request", metavar="FILE", help="the request JSON (docs/osc-protocol.md)")
    what.add_argument("--ping", action="store_true", help="check that the engine answers; print its model and device")
    what.add_argument("--cancel", metavar="JOB_ID", help="cancel a queued or running job")
    what.add_argument("--engine-status", action="store_true", help="print the engine's queue and current job")
    parser.add_argument("--status", metavar="FILE",
                        help="JSON status file kept up to date (atomically); creating FILE.cancel cancels the job")
    parser.add_argument("--host", default=protocol.DEFAULT_HOST, help=f"engine address (default {protocol.DEFAULT_HOST})")
    # read as text and checked in run(): argparse's own refusal gave no final status (a DAW script
    # reading the status file alone waited for one)
    parser.add_argument("--port", default=str(protocol.DEFAULT_PORT), help=f"engine UDP port (default {protocol.DEFAULT_PORT})")
    parser.add_argument("--token", default=None,
                        help="the engine's shared token (visible to other users in `ps`; default: $STEPFOLEY_TOKEN, "
                             "else the token file, see --token-file)")
    parser.add_argument("--token-file", metavar="FILE", default=None,
                        help="read the token from FILE (mode 600; default $STEPFOLEY_TOKEN_FILE or "
                             "$XDG_CONFIG_HOME/stepfoley/token (~/.config/stepfoley/token) when it exists)")
    parser.add_argument("--timeout", default="120",
                        help="give up after this many seconds without any progress from the engine (a number "
                             "above 0; default 120)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing but the final JSON")


def run(args: argparse.Namespace) -> int:
    from stepfoley.bridge import client
    from stepfoley.bridge.auth import TokenError, resolve_token

    problem = _status_file_problem(args.status, args.request)
    if problem:  # said on stdout as a final status, as every other ending (the file cannot take it)
        _say_final(args, client.failure_status("bad_status_file", problem, client.EXIT_USAGE))
        return client.EXIT_USAGE
    given_timeout, given_port = args.timeout, args.port
    try:
        args.timeout = float(args.timeout)
    except (TypeError, ValueError):
        args.timeout = math.nan
    try:
        args.port = int(args.port)
    except (TypeError, ValueError):
        args.port = 0
    wrong = []  # each option wrong, named alone
    # not `timeout <= 0`: nan passes that, and a nan watchdog never fires
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        wrong.append(f"--timeout must be a number of seconds above 0 (got {given_timeout})")
    if not 1 <= args.port <= 65535:
        wrong.append(f"--port must be a UDP port, 1-65535 (got {given_port})")
    if args.cancel is not None and not args.cancel.strip():
        # what an unset shell variable gives; "" on the wire means "this client's own request"
        wrong.append("--cancel needs the job id to cancel (it is empty); `stepfoley send --engine-status` lists "
                     "the jobs")
    if wrong:  # a final status too (a DAW script reads the outcome from the file alone)
        return _finish(args, client, client.failure_status("bad_option", "; ".join(wrong) + ".", client.EXIT_USAGE))
    try:
        args.token = resolve_token(args.token, args.token_file)
    except TokenError as e:
        return _finish(args, client, client.failure_status(e.code, str(e), client.EXIT_USAGE))
    if args.request is not None:
        return _send(args, client)
    return _query(args, client)


def _status_file_problem(path: str | None, request: str | None = None) -> str | None:
    """Why `send` must not write its status to `path` (None: it may): never a folder, a device
    or a pipe, the request file, or a file of the user's that is not a status file."""
    if path is None:
        return None
    if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return f"The folder of the status file '{path}' does not exist; create it first."
    if os.path.isdir(path):
        return f"The status file '{path}' is a folder; name a file inside it."
    cancel = path + ".cancel"
    if os.path.lexists(cancel) and not _is_a_cancel_file(cancel):
        # a file of the user's that has the name (notes.txt.cancel beside a new status notes.txt)
        # was removed unread, or would have cancelled the job at once
        return (f"'{cancel}' already exists and is not a cancel file (one is empty, or says 'cancel'); it is left as "
                "it is, and beside this status file it would cancel the job. Name another status file.")
    if not os.path.lexists(path):
        return None  # not there yet
    if is_special_file(path):  # the file is replaced: never a device or a pipe
        return f"The status file '{path}' is not a regular file (a device or a pipe); name a file to write."
    if request is not None and same_file(path, request):
        return f"The status file '{path}' is the request file; name another file for the status."
    status = _earlier_status(path)
    if status is None:
        return (f"'{path}' already exists and is not a status file of StepFoley's; it is left as it is. Name a "
                "new file for the status (an earlier status file, or an empty one, may be reused).")
    heard = status.get("client_alive")
    if status["exit_code"] is None and isinstance(heard, (int, float)) and abs(time.time() - heard) <= LIVE_STATUS_S:
        # two clients writing one file: each job's end was lost to the other's, and one cancel
        # file stopped both
        return (f"The status file '{path}' is being written by a `stepfoley send` that is still running (its last "
                f"sign of life {max(0.0, time.time() - heard):.0f} s ago); give this job a status file of its own.")
    return None


# A status file is a few KB (its metadata is cut to fit a datagram); a file far larger is not one.
STATUS_FILE_MOST_BYTES = 2**20
# A status whose send wrote `client_alive` this recently (it does every 2 s) is still followed.
LIVE_STATUS_S = 10.0


def _earlier_status(path: str) -> dict | None:
    """The status at `path` when the file is empty or one this command wrote (a JSON object with
    `state` and `exit_code`; {"exit_code": None} read from an empty one), else None: what
    `send` may replace."""
    from stepfoley.engine.input_files import open_regular_input  # opened without waiting: a link may point at a pipe

    try:
        file = open_regular_input(path)
        if file is None:
            return None
        with file:
            data = file.read(STATUS_FILE_MOST_BYTES + 1)
    except FileNotFoundError:
        return {"exit_code": None}  # a link to nothing: replacing the link loses nothing
    except OSError:
        return None
    if not data.strip():
        return {"exit_code": None}
    try:
        status = json.loads(data) if len(data) <= STATUS_FILE_MOST_BYTES else None
    except (ValueError, RecursionError):
        return None
    return status if isinstance(status, dict) and "state" in status and "exit_code" in status else None


# A request file may be indented and escape every character; its request, packed, must fit a datagram.
REQUEST_FILE_BYTES_PER_REQUEST_BYTE = 16


def _read_request_file(path: str):
    """The request JSON in the file at `path`, read no further than a request can be (the path
    may name an endless device or pipe). Raises OSError, ValueError or RecursionError."""
    from stepfoley.bridge.protocol import MAX_REQUEST_BYTES
    from stepfoley.engine.input_files import open_input
    from stepfoley.request import request_json

    most = REQUEST_FILE_BYTES_PER_REQUEST_BYTE * MAX_REQUEST_BYTES
    # opened without waiting: a named pipe nobody writes to held `send` for ever, with no status
    # written; read as it comes once open (a pipe's writer, `<(...)` in a shell, may be slow)
    handle = open_input(path)
    with open(handle, "rb") as f:
        if getattr(os, "O_NONBLOCK", 0):  # Windows opens none without waiting (and sets only a pipe's)
            os.set_blocking(handle, True)
        data = f.read(most + 1)
    if len(data) > most:
        raise ValueError(f"it is larger than {most // 1024} KiB, far more than one request can hold "
                         f"({MAX_REQUEST_BYTES // 1024} KiB on the wire)")
    if not data:
        raise ValueError("it is empty (a pipe nobody writes to reads as empty)")

    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("it is saved as UTF-16 (PowerShell 5's > and Out-File do that); save it as UTF-8")
    # utf-8-sig: PowerShell and .NET write a byte-order mark before UTF-8 unless told not to
    return request_json(data.decode("utf-8-sig"))


def _send(args, client) -> int:
    try:
        request = _read_request_file(args.request)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested past Python's depth
        reason = "it is nested too deeply" if isinstance(e, RecursionError) else e
        status = client.failure_status("bad_request_file", f"Cannot read the request file '{args.request}': {reason}",
                                       client.EXIT_USAGE)
        return _finish(args, client, status)
    if args.status is not None:
        remove_stale_cancel(args.status + ".cancel", args.request, args.status)

    def show(status: dict) -> None:
        if not args.quiet and status["exit_code"] is None:
            phase = f" {status['phase']}" if status.get("phase") else ""
            step = f"{phase} {status['step']}/{status['total']}" if status["state"] == "running" else phase
            try:
                print(f"{status['state']}{step}", file=sys.stderr, flush=True)
            except (OSError, ValueError):  # nobody reads stderr any more: the status file still tells
                pass

    code, status = client.send_request(request, args.status, host=args.host, port=args.port, token=args.token,
                                       timeout=args.timeout, on_update=show)
    _say_final(args, status)
    return code


def _query(args, client) -> int:
    try:
        with client.EngineClient(args.host, args.port, args.token) as c:
            if args.ping:
                answer = c.ping()
            elif args.engine_status:
                answer = c.engine_status()
            else:
                answer = {"job_id": args.cancel, "outcome": c.cancel(args.cancel)}
        status = {"state": "done", "exit_code": client.EXIT_DONE, "error": None, "answer": answer}
    except client.EngineNotRunning as e:
        status = client.failure_status(e.code, str(e), client.EXIT_NOT_RUNNING)
    except client.RequestRejected as e:
        status = client.failure_status(e.code, e.message, client.EXIT_REJECTED)
    except (OSError, UnicodeError) as e:  # UnicodeError: a host name no resolver takes
        status = client.unreachable_engine(args.host, args.port, e)
    return _finish(args, client, status)


def _finish(args, client, status: dict) -> int:
    """Writes the final status (to --status too) and returns the exit code."""
    if args.status is not None:
        try:
            client.write_status(args.status, status)
        except OSError as e:
            status = client.unwritable_status_file(args.status, e)
    _say_final(args, status)
    return status["exit_code"]


def _say_final(args, status: dict) -> None:
    """The final status on stdout (and its error in words on stderr), as far as anyone reads
    them: a reader that has gone (a pipe into `head`) made the job's end a traceback and exit 1,
    while the status file said it was done."""
    say(json.dumps(status))
    if status.get("error") and not args.quiet:
        say(f"{status['error']['code']}: {status['error']['message']}", sys.stderr)


# A cancel file is empty (touch) or says "cancel" (the REAPER actions); what is larger is read no further.
CANCEL_FILE_MOST_BYTES = 64


def _is_a_cancel_file(path: str) -> bool:
    """Whether `path` is a regular file that is empty or holds the word "cancel"."""
    from stepfoley.engine.input_files import open_regular_input

    try:
        f = open_regular_input(path)
        if f is None:  # a pipe or a device
            return False
        with f:
            text = f.read(CANCEL_FILE_MOST_BYTES + 1)
    except OSError:
        return False
    # PowerShell 5's `"cancel" > s.json.cancel` writes UTF-16 with a byte-order mark
    words = text.lstrip(b"\xef\xbb\xbf\xff\xfe").replace(b"\x00", b"").strip().lower()
    return len(text) <= CANCEL_FILE_MOST_BYTES and words in (b"", b"cancel")


def remove_stale_cancel(path: str, request_path: str, status_path: str) -> None:
    """Remove a cancel file an earlier job on the same status path left: any, when the status
    file there holds that job's end (a cancel may come in after it finished); else one written
    before this job's request file. One written since is this job's and stays: a caller
    (REAPER's actions, which remove the earlier status first) writes the request, starts this
    process, and may cancel before the process is up."""
    try:
        cancel_written = os.stat(path).st_mtime_ns
    except OSError:
        return  # none (or unreadable: the job's own check of it fails the same way)
    if not _holds_an_end(status_path):
        try:
            if cancel_written >= os.stat(request_path).st_mtime_ns:
                return
        except OSError:
            pass
    if not _is_a_cancel_file(path):  # put there since the status file was checked: a user's
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        print(f"warning: cannot remove the old cancel file '{path}': {e}", file=sys.stderr)


def _holds_an_end(status_path: str) -> bool:
    try:
        with open(status_path, encoding="utf-8") as f:
            status = json.load(f)
    except (OSError, ValueError, RecursionError):
        return False
    # the status file's own mark of an end (docs/osc-protocol.md): exit_code is null until then
    return isinstance(status, dict) and status.get("exit_code") is not None
