"""The engine's client: send one request, follow it to its end, and keep a JSON status file
that a DAW script can poll. Usable three ways:

    send_request(request, "status.json")            # blocking, what `stepfoley send` does
    job = EngineClient().submit(request)            # non-blocking, for a ReaScript defer loop:
    status = job.poll()                             #   call each tick; job.finished tells the end
    EngineClient().ping() / engine_status() / cancel(job_id)

UDP can lose datagrams, so nothing here trusts a single packet: the request is resent until
the engine accepts it (the engine recognizes the resend by its request_id), and when the
engine is quiet the client asks for the job's state (/result), which also returns a final
result whose /done reply was lost. Imports no torch: this starts in milliseconds."""

from __future__ import annotations

import collections
import ipaddress
import json
import math
import os
import secrets
import socket
import time
from typing import Any, Callable

from stepfoley.bridge import osc, protocol
from stepfoley.atomic import write_text_atomically
from stepfoley.bridge.auth import TokenError, resolve_token
from stepfoley.request import RequestError, parse_request, printable

EXIT_DONE = 0
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
EXIT_REJECTED = 4
EXIT_FAILED = 5
EXIT_CANCELLED = 6
EXIT_TIMED_OUT = 7

DEFAULT_TIMEOUT_S = 120.0  # no sign of life from the engine for this long = timed out
CONNECT_TIMEOUT_S = 3.0  # no answer to a request for this long = engine not running
RESEND_INTERVAL_S = 0.25
# the status file's phase while an engine still loading its model refuses the request (the
# engine's own error code for it): the client sends it again until it is taken
LOADING_PHASE = "engine_loading"
QUIET_POLL_S = 1.0
ROUTES_KEPT = 8  # a job's "result" (or "cancel") queries answered: an answer up to 8 polls late
# A status file may refuse a write for a moment (a reader holding it on Windows); one that
# refuses for this long has gone for good, and nobody can follow the job any more.
STATUS_WRITE_GRACE_S = 5.0
# While the engine shows signs of life, the status file is rewritten at least this often.
HEARTBEAT_S = 2.0


# What a socket raises once the system has heard that nobody listens on the engine's port
# (ICMP port unreachable): ECONNREFUSED on Linux and macOS, WSAECONNRESET (10054) on Windows.
NOBODY_LISTENING = (ConnectionRefusedError, ConnectionResetError)


JOB_LOST = ("job_lost", "The engine no longer knows this job (was it restarted?). Resend the request.")


class EngineNotRunning(Exception):
    code = "engine_not_running"


class RequestRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def not_running_message(host: str, port: int) -> str:
    return (
        f"No StepFoley engine answered at {protocol.address_text(host, port)}. Start it with `stepfoley serve` "
        "(and check that host, port and token match)."
    )


def _network_words(error: OSError) -> str:
    return error.strerror or type(error).__name__


def request_payload(request: dict) -> str:
    """A request's JSON as it is sent: compact, in UTF-8 (a caption in another script costs its
    UTF-8 bytes, not six per character), at most protocol.MAX_REQUEST_BYTES of it."""
    return json.dumps(request, ensure_ascii=False, separators=(",", ":"))


def too_large_message(size: int) -> str:
    return (f"The request is {size} bytes, more than the {protocol.MAX_REQUEST_BYTES} one message carries; "
            "shorten the caption or the previous captions.")


def new_request_id() -> str:
    return secrets.token_hex(8)


class EngineClient:
    """One UDP socket talking to one engine. Not thread-safe: one client per thread."""

    def __init__(self, host: str = protocol.DEFAULT_HOST, port: int = protocol.DEFAULT_PORT, token: str | None = None):
        """`token` None: $STEPFOLEY_TOKEN or the token file, as bridge/auth.py says (TokenError
        when that file is unsafe, or the token is not 1-256 characters of text)."""
        self.host, self.port, self.token = host, port, resolve_token(token)
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_UDP)
        # "localhost" may resolve to ::1 first while the engine listens on 127.0.0.1 (its default)
        info = min(infos, key=lambda i: i[0] != socket.AF_INET)
        # the whole sockaddr: an IPv6 link-local address keeps its interface (scope id)
        family, self._target = info[0], info[4]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        protocol.make_room_for_datagrams(self._sock)
        loopback = ipaddress.ip_address(self._target[0]).is_loopback
        self._sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0) if loopback else ("", 0))
        # A connected socket learns at once (ICMP port unreachable) that nobody listens;
        # off loopback the reply may come from another of the engine's addresses, so don't.
        self._connected = loopback
        if loopback:
            self._sock.connect(self._target)
        self._answers: dict[str, tuple[str, list]] = {}
        self._routes: dict[str, tuple["RemoteJob", str]] = {}
        # the last error the network gave (no route, a dropped link, a refused address); each is
        # taken as a lost datagram, so the timeouts decide, and their messages name it
        self.network_error: str | None = None

    @property
    def reply_port(self) -> int:
        return self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "EngineClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- one-shot queries -------------------------------------------------------------

    def ping(self, timeout: float = 2.0) -> dict:
        """{"protocol", "model", "device", "round_trip_s"}; raises EngineNotRunning."""
        start = time.perf_counter()
        _, args = self._call(protocol.PING, (), timeout)
        return {"protocol": args[1], "model": args[2], "device": args[3], "round_trip_s": time.perf_counter() - start}

    def engine_status(self, timeout: float = 2.0) -> dict:
        _, args = self._call(protocol.STATUS, (), timeout)
        return json.loads(args[1])

    def cancel(self, job_id: str, timeout: float = 2.0) -> str:
        """The outcome: "dropped", "stopping" or "finished"; raises RequestRejected("unknown_job")."""
        _, args = self._call(protocol.CANCEL, (job_id,), timeout)
        return args[2]

    def result(self, job_id: str, timeout: float = 2.0) -> dict:
        _, args = self._call(protocol.RESULT, (job_id,), timeout)
        return json.loads(args[1])

    def submit(self, request: dict, timeout: float = DEFAULT_TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S) -> "RemoteJob":
        """Send a generation request and return its handle at once; call `poll()` on it."""
        return RemoteJob(self, request, timeout, connect_timeout)

    # --- transport --------------------------------------------------------------------

    def _send(self, address: str, request_id: str, *args: Any) -> None:
        datagram = osc.encode(address, self.reply_port, request_id, self.token, *args)
        try:
            if self._connected:
                self._sock.send(datagram)
            else:
                self._sock.sendto(datagram, self._target)
        except NOBODY_LISTENING:
            raise EngineNotRunning(self.not_running()) from None
        except OSError as e:  # maybe for a moment (a link down, Wi-Fi roaming): as if lost
            self.network_error = _network_words(e)

    def not_running(self) -> str:
        """What to tell a user no engine answered: not_running_message, and the network's last error."""
        return not_running_message(self.host, self.port) + self.network_said()

    def network_said(self) -> str:
        """" The network said: ...", its last error, to end a message with; "" while it gave none."""
        return f" The network said: {self.network_error}." if self.network_error else ""

    def _call(self, address: str, args: tuple, timeout: float) -> tuple[str, list]:
        request_id = new_request_id()
        give_up = time.monotonic() + timeout
        while True:
            self._send(address, request_id, *args)
            resend_at = min(give_up, time.monotonic() + RESEND_INTERVAL_S)
            while time.monotonic() < resend_at:
                self._pump(resend_at - time.monotonic())
                if request_id in self._answers:
                    reply_address, reply_args = self._answers.pop(request_id)
                    if reply_address == protocol.ERROR:
                        raise RequestRejected(reply_args[2], reply_args[3])
                    return reply_address, reply_args
            if time.monotonic() >= give_up:
                raise EngineNotRunning(self.not_running())

    def _pump(self, wait: float) -> None:
        """Route every datagram that arrives within `wait` seconds (then all that are queued)."""
        self._sock.settimeout(max(wait, 0.0))
        until = time.monotonic() + max(wait, 0.0)
        while True:
            try:
                data = self._sock.recv(65536)
            except (TimeoutError, BlockingIOError, socket.timeout):
                return
            except NOBODY_LISTENING:
                raise EngineNotRunning(self.not_running()) from None
            except OSError as e:  # an ICMP error of the network's, as in _send
                self.network_error = _network_words(e)
                time.sleep(max(until - time.monotonic(), 0.0))  # nothing comes now: wait, not spin
                return
            self.network_error = None  # something came through: the network works again
            self._sock.settimeout(0.0)
            try:
                messages = osc.decode(data)
            except osc.DecodeError:
                continue
            for address, args in messages:
                self._route(address, args)

    def _route(self, address: str, args: list) -> None:
        if not args or not isinstance(args[0], str):
            return
        request_id = args[0]
        route = self._routes.get(request_id)
        if route is not None:
            job, kind = route
            job._on_reply(address, args, kind)
        elif request_id:
            self._answers[request_id] = (address, args)
            if len(self._answers) > 256:  # answers nobody waits for any more
                self._answers.pop(next(iter(self._answers)))


class RemoteJob:
    """One generation request followed on the engine. `status` is the status-file content."""

    def __init__(self, client: EngineClient, request: dict, timeout: float, connect_timeout: float):
        self._client = client
        self.timeout = timeout
        self.connect_timeout = min(connect_timeout, timeout)
        self.request_id = new_request_id()
        self.status: dict = {**queued_status(), "request_id": self.request_id}
        self.accepted = False
        self.cancel_wanted = False
        self._engine_steps = -1
        now = time.monotonic()
        self._first_sent = now
        self._last_sent = -1.0
        self._last_heard = now
        self._last_sign_of_life = now
        self._last_cancel_sent = -1.0
        self._recent_routes: dict[str, collections.deque] = {}  # kind -> its last request ids
        self._loading_heard: float | None = None  # when the engine last said it was still loading its model
        # Whatever goes wrong before the request is sent ends this job with a status (rejected),
        # so a DAW script polling the status file always sees an end, never a client that died.
        try:
            parse_request(request)  # the engine checks again with its model's methods and its folders
        except RequestError as e:
            self._finish("error", EXIT_REJECTED, error=(e.code, e.message))
            return
        except Exception as e:  # a bug in the parser: reported, not raised
            self._finish("error", EXIT_REJECTED, error=(
                "internal_error", f"The request could not be checked ({_describe(e)}). This is a bug in StepFoley; "
                "please report it with the request."))
            return
        try:
            self._payload = request_payload(request)
            size = len(self._payload.encode("utf-8"))  # parse_request refused lone surrogates
        except Exception as e:  # TypeError, ValueError, RecursionError, or whatever a value's repr raises
            self._finish("error", EXIT_REJECTED, error=(
                "invalid_request", f"The request cannot be written as JSON: {_describe(e)}."))
            return
        if size > protocol.MAX_REQUEST_BYTES:
            self._finish("error", EXIT_REJECTED, error=("payload_too_large", too_large_message(size)))
            return
        message = len(osc.encode(protocol.GENERATE, client.reply_port, self.request_id, client.token, self._payload))
        if message > protocol.MAX_DATAGRAM_BYTES:  # a long token takes the room a request leaves for it
            self._finish("error", EXIT_REJECTED, error=("payload_too_large", (
                f"With the token, the request makes a message of {message} bytes, more than the "
                f"{protocol.MAX_DATAGRAM_BYTES} the engine takes; shorten the token or the request.")))
            return
        client._routes[self.request_id] = (self, "generate")
        try:
            self._send_request()
        except EngineNotRunning as e:
            self._finish("error", EXIT_NOT_RUNNING, error=("engine_not_running", str(e)))

    @property
    def finished(self) -> bool:
        return self.status["exit_code"] is not None

    @property
    def job_id(self) -> str | None:
        return self.status["job_id"]

    def cancel(self) -> None:
        """Ask the engine to cancel; the job ends in state "cancelled" (or "done" if it
        finished first). Before the engine accepted the request, the cancel waits for it."""
        self.cancel_wanted = True
        if not self.accepted and self._loading_heard is not None and not self.finished:
            # no job exists yet (each copy so far was refused): withdraw any copy still on its way
            self._withdraw()
            self._finish("cancelled", EXIT_CANCELLED)
            return
        self._send_cancel()

    def poll(self, wait: float = 0.0) -> dict:
        """Take in the engine's replies (waiting up to `wait` s), resend or ask when it is
        quiet, apply the watchdogs, and return the status dict."""
        if self.finished:
            return self.status
        try:
            self._client._pump(wait)
            if not self.finished:
                self._keep_alive()
        except EngineNotRunning as e:
            self._finish("error", EXIT_NOT_RUNNING, error=("engine_not_running", str(e)))
        return self.status

    def wait(self, on_update: Callable[[dict], None] | None = None, should_cancel: Callable[[], bool] | None = None) -> dict:
        """Poll until the job ends; `on_update(status)` after each change, and at least every
        HEARTBEAT_S with a new `client_alive` (this client is there: one that died or was
        closed is told in seconds, not after the engine's watchdog) and, while the engine shows
        signs of life, a new `updated` (a job waiting behind a long one changes nothing else)."""
        last, told, told_alive = None, -math.inf, -math.inf
        while True:
            status = self.status
            snapshot = {k: v for k, v in status.items() if k not in ("updated", "client_alive")}
            now = time.monotonic()
            alive = self._last_sign_of_life > told_alive and now - told_alive >= HEARTBEAT_S
            if on_update is not None and (snapshot != last or alive or now - told >= HEARTBEAT_S):
                if snapshot == last and alive:
                    status["updated"] = time.time()
                if snapshot != last or alive:
                    told_alive = now
                status["client_alive"] = time.time()
                told = now
                on_update(status)  # the first call comes before any wait, so a status file exists at once
            last = snapshot
            if self.finished:
                return status
            self.poll(0.05)
            if should_cancel is not None and not self.cancel_wanted and not self.finished and should_cancel():
                self.cancel()

    # --- internals --------------------------------------------------------------------

    def _keep_alive(self) -> None:
        now = time.monotonic()
        if not self.accepted:
            if self._loading_heard is not None and now - self._first_sent > self.timeout:
                self._withdraw()  # the last copy may reach an engine that has just loaded
                self._finish("error", EXIT_REJECTED, error=(
                    "engine_loading", f"The engine was still loading its model after {self.timeout:g} s; wait "
                                      "until it prints 'StepFoley engine ready', then send again (or give a "
                                      "longer --timeout)."))
                return
            # an engine that says it is loading is there: it is given connect_timeout from its last word
            if now - (self._loading_heard or self._first_sent) > self.connect_timeout:
                self._withdraw()
                raise EngineNotRunning(self._client.not_running())
            if now - self._last_sent >= RESEND_INTERVAL_S:
                self._send_request()
            return
        if now - self._last_sign_of_life > self.timeout:
            self._send_cancel()  # nobody will collect the job once this client has gone: free the engine
            if not self.finished:
                self._finish("error", EXIT_TIMED_OUT, error=(
                    "timed_out", f"The engine showed no progress for {self.timeout:g} s; the job was asked to "
                                 "cancel, so that it does not hold the engine or leave a stem nobody collects."
                                 + self._client.network_said()))
            return
        # ask often enough that a short watchdog still sees the engine's heartbeat
        quiet = min(QUIET_POLL_S, self.timeout / 4)
        if now - self._last_heard > quiet and now - self._last_sent > quiet:
            rid = self._new_route("result")
            self._last_sent = now
            self._client._send(protocol.RESULT, rid, self.job_id)
        if self.cancel_wanted and now - self._last_cancel_sent > QUIET_POLL_S:
            self._send_cancel()

    def _new_route(self, kind: str) -> str:
        """A request id for this job's next "result" or "cancel" query. Only the last
        ROUTES_KEPT of each kind are answered: one was kept per quiet second for the job's
        whole life (3,600 an hour of waiting); an answer later than that says no more than a
        newer one."""
        kept = self._recent_routes.setdefault(kind, collections.deque())
        if len(kept) == ROUTES_KEPT:
            self._client._routes.pop(kept.popleft(), None)
        rid = new_request_id()
        kept.append(rid)
        self._client._routes[rid] = (self, kind)
        return rid

    def _withdraw(self) -> None:
        """Giving up on an engine that never answered: it may only be stalled, with our request
        waiting in its socket, and would then run a job nobody collects. A cancel by our
        request_id, sent after the request's copies, withdraws it when the engine reads on."""
        try:
            self._client._send(protocol.CANCEL, self.request_id, "")
        except (OSError, EngineNotRunning):
            pass  # nobody listens: nothing to withdraw

    def _send_request(self) -> None:
        self._last_sent = time.monotonic()
        self._client._send(protocol.GENERATE, self.request_id, self._payload)

    def _send_cancel(self) -> None:
        if self.finished or not self.accepted:
            return
        rid = self._new_route("cancel")
        self._last_cancel_sent = time.monotonic()
        try:
            self._client._send(protocol.CANCEL, rid, self.job_id)
        except EngineNotRunning as e:
            self._finish("error", EXIT_NOT_RUNNING, error=("engine_not_running", str(e)))

    def _on_reply(self, address: str, args: list, kind: str) -> None:
        if self.finished:
            return
        self._last_heard = time.monotonic()
        try:
            self._apply(address, args, kind)
        except (IndexError, TypeError, ValueError, KeyError):
            pass  # a reply that does not fit protocol 1 says nothing we can use

    def _apply(self, address: str, args: list, kind: str) -> None:
        if address == protocol.ACCEPTED:
            if not self.accepted:
                self.accepted = True
                self._update(job_id=args[1], queue_position=int(args[2]), phase=self._phase_once_accepted())
                if self.cancel_wanted:
                    self._send_cancel()
        elif address == protocol.PROGRESS:
            self._accept_implicitly(args[1])
            phase = args[4] if len(args) > 4 and isinstance(args[4], str) else None
            self._update(state="running", phase=phase, step=int(args[2]), total=int(args[3]), queue_position=0)
        elif address == protocol.DONE:
            self._accept_implicitly(args[1])
            self._finish("done", EXIT_DONE, stem_path=args[2], metadata=json.loads(args[3]))
        elif address == protocol.DONE_STEMS:
            self._accept_implicitly(args[1])
            self._finish_stems(args[2], json.loads(args[3]))
        elif address == protocol.CANCELLED:
            self._finish("cancelled", EXIT_CANCELLED)
        elif address == protocol.ERROR:
            if kind == "cancel":
                return  # a cancel that came too late or twice changes nothing
            if kind == "generate" and args[2] == LOADING_PHASE:
                # refused only for now ("send again shortly"): the request is resent until taken; an
                # answer to an earlier copy that arrives after /accepted says nothing
                if not self.accepted:
                    self._loading_heard = self._last_sign_of_life = time.monotonic()
                    self._update(phase=LOADING_PHASE)
                return
            if kind == "result" and args[2] == "unknown_job":
                self._finish("error", EXIT_FAILED, error=JOB_LOST)
                return
            exit_code = EXIT_FAILED if (self.accepted or args[1]) else EXIT_REJECTED
            self._finish("error", exit_code, error=(args[2], args[3]))
        elif address == protocol.JOB:
            self._apply_summary(json.loads(args[1]))

    def _apply_summary(self, job: dict) -> None:
        if self.accepted and job.get("request_id") != self.request_id:
            # another client's job under our job id: a new engine on the port gave it out again
            self._finish("error", EXIT_FAILED, error=JOB_LOST)
            return
        self._accept_implicitly(job["job_id"])
        if job.get("engine_steps", -1) != self._engine_steps:
            self._engine_steps = job.get("engine_steps", -1)
            self._last_sign_of_life = time.monotonic()
        state = job["state"]
        if state == "done" and job.get("paths_lost"):
            self._finish("error", EXIT_FAILED, error=(
                "result_lost", "The engine finished the job, but the stem's folder is too long a name to send "
                "back in one reply; the new stem is in the output folder."))
        elif state == "done" and job.get("stems"):
            self._finish_stems(job["stems"]["folder"], job["stems"])
        elif state == "done":
            self._finish("done", EXIT_DONE, stem_path=job["stem_path"], metadata=job["metadata"])
        elif state == "cancelled":
            self._finish("cancelled", EXIT_CANCELLED)
        elif state == "error":
            self._finish("error", EXIT_FAILED, error=(job["error"]["code"], job["error"]["message"]))
        else:
            self._update(state=state, phase=job.get("phase"), step=job["step"], total=job["total"],
                         queue_position=job["queue_position"])

    def _finish_stems(self, folder: str, reply: dict) -> None:
        """A protocol-2 result: `stems` best first, each with its full metadata; `stem_path` and
        `metadata` are the best one's, so a reader of protocol-1 status files still finds a stem."""
        stems = protocol.merged_stems(folder, reply)
        if not stems:
            raise ValueError("a /done_stems reply without stems")
        self._finish("done", EXIT_DONE, stem_path=stems[0]["stem_path"], metadata=stems[0]["metadata"],
                     stems=stems, ranking=reply.get("ranking"))

    def _accept_implicitly(self, job_id: str) -> None:
        # the /accepted reply may have been lost while later replies arrived
        if not self.accepted and job_id:
            self.accepted = True
            self._update(job_id=job_id, phase=self._phase_once_accepted())

    def _phase_once_accepted(self) -> str | None:
        return None if self.status["phase"] == LOADING_PHASE else self.status["phase"]

    def _update(self, **changes: Any) -> None:
        if any(self.status.get(k) != v for k, v in changes.items()):
            self._last_sign_of_life = time.monotonic()
            self.status.update(changes)
            self.status["updated"] = time.time()

    def _finish(self, state: str, exit_code: int, error: tuple[str, str] | None = None, **changes: Any) -> None:
        self.status.update(changes)
        self.status.update(
            state=state,
            exit_code=exit_code,
            error={"code": error[0], "message": error[1]} if error else None,
            updated=time.time(),
        )
        if state == "done":
            self.status["step"] = self.status["total"] or self.status["step"]
        for rid in [r for r, (job, _) in self._client._routes.items() if job is self]:
            del self._client._routes[rid]


def _describe(error: BaseException) -> str:
    """An exception as "Type: message" for a status file, short and never raising."""
    try:
        text = str(error)
    except Exception:
        text = ""
    return printable(f"{type(error).__name__}: {text}" if text else type(error).__name__, 300)


def unwritable_status_file(path: str, error: OSError) -> dict:
    """The final status of a job whose status file cannot be written (a usage error)."""
    return failure_status("bad_status_file", f"Cannot write the status file '{path}': {_describe(error)}. "
                          "Choose a file in a folder you can write to.", EXIT_USAGE)


def unreachable_engine(host: str, port: int, error: BaseException) -> dict:
    """The final status when the engine's address cannot be reached at all."""
    return failure_status("engine_not_running", f"Cannot reach {protocol.address_text(host, port)}: {_describe(error)}.", EXIT_NOT_RUNNING)


def write_status(path: str, status: dict) -> None:
    """Replace the status file atomically (stepfoley.atomic): a reader sees the old or the new
    file, never half; a reader that holds it open on Windows delays the replace by about a
    second at most. The temporary file never stays behind."""
    text = json.dumps(status, indent=1)
    write_text_atomically(path, text, replace=True)


def send_request(
    request: dict,
    status_path: str | None = None,
    host: str = protocol.DEFAULT_HOST,
    port: int = protocol.DEFAULT_PORT,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    on_update: Callable[[dict], None] | None = None,
) -> tuple[int, dict]:
    """Send one request and follow it to the end, keeping `status_path` up to date.
    Creating STATUS.cancel next to the status file cancels the job, as
    does Ctrl-C while it is followed. A status file that cannot be written before the request
    is sent ends it there (usage error, bad_status_file); one that takes no write for
    STATUS_WRITE_GRACE_S later on cancels the job (the same error, state cancelled). Returns
    (exit code, final status)."""
    cancel_path = status_path + ".cancel" if status_path is not None else None
    # Written before anything is sent, so a status file that cannot be written stops here and
    # the engine makes nothing that no one would pick up.
    if status_path is not None:
        try:
            write_status(status_path, queued_status())
        except OSError as e:
            status = unwritable_status_file(status_path, e)
            if on_update is not None:
                on_update(status)
            return EXIT_USAGE, status
    status_file = _StatusFile(status_path)

    def update(status: dict) -> None:
        status_file.write(status)
        if on_update is not None:
            on_update(status)

    def should_cancel() -> bool:
        if status_file.retry() > STATUS_WRITE_GRACE_S:
            status_file.gave_up = True  # nobody can follow the job any more
            return True
        return cancel_path is not None and os.path.exists(cancel_path)

    try:
        client = EngineClient(host, port, token)
    except TokenError as e:  # as `stepfoley send` reports it: a usage error, before anything is sent
        status = failure_status(e.code, str(e), EXIT_USAGE)
        update(status)
        return EXIT_USAGE, status
    except (OSError, UnicodeError) as e:  # UnicodeError: a host name no resolver takes
        status = unreachable_engine(host, port, e)
        update(status)
        return EXIT_NOT_RUNNING, status
    with client:
        job = client.submit(request, timeout=timeout, connect_timeout=connect_timeout)
        try:
            status = job.wait(on_update=update, should_cancel=should_cancel)
        except KeyboardInterrupt:
            # Ctrl-C (or SIGTERM, which `send` takes as Ctrl-C): nobody will collect the stem,
            # so the job is cancelled, as the watchdog does, and the file is given that end; a
            # second Ctrl-C leaves at once
            job.cancel()
            status = job.wait(on_update=update)
    if status_file.gave_up and status["state"] == "cancelled":
        status = _bad_status_file(status, status_path, f"took no write for {STATUS_WRITE_GRACE_S:g} s "
                                  f"({_describe(status_file.error)}), so the job was cancelled")
        status_file.write(status)  # it may take writes again: the file then says why
    # the final status must reach the file: a reader would otherwise wait on "running" for ever
    deadline = time.monotonic() + STATUS_WRITE_GRACE_S
    while status_file.retry() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    if status_file.pending is not None and status["exit_code"] != EXIT_USAGE:
        status = _bad_status_file(status, status_path,
                                  f"could not be given the final status ({_describe(status_file.error)})")
    return status["exit_code"], status


def _bad_status_file(status: dict, path: str | None, problem: str) -> dict:
    return {**status, "exit_code": EXIT_USAGE, "error": {"code": "bad_status_file", "message": (
        f"The status file '{path}' {problem}.")}}


class _StatusFile:
    """The status file of send_request: a write that fails is kept and tried again (retry),
    so one refused write costs nothing once the file takes writes again."""

    def __init__(self, path: str | None):
        self.path = path
        self.pending: dict | None = None  # the latest status not yet written
        self.failing_since: float | None = None  # monotonic time of the first failure in a row
        self.error: BaseException | None = None
        self.gave_up = False

    def write(self, status: dict) -> None:
        if self.path is not None:
            self.pending = dict(status)
            self.retry()

    def retry(self) -> float:
        """Write what is pending; seconds the file has refused writes (0: it takes them)."""
        if self.pending is None:
            return 0.0
        try:
            write_status(self.path, self.pending)
        except OSError as e:  # a reader holding it a moment, or a file gone for good
            self.error = e
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            return max(time.monotonic() - self.failing_since, 1e-9)
        self.pending, self.failing_since = None, None
        return 0.0


def queued_status() -> dict:
    """The status of a job not yet accepted by the engine."""
    return {"state": "queued", "phase": None, "job_id": None, "queue_position": None, "step": 0, "total": 0,
            "stem_path": None, "metadata": None, "error": None, "exit_code": None, "updated": time.time()}


def failure_status(code: str, message: str, exit_code: int) -> dict:
    """A final status for a request that never reached the engine: every key a job's status
    has (a script reads the same fields whatever went wrong)."""
    return {**queued_status(), "request_id": None, "state": "error", "error": {"code": code, "message": message},
            "exit_code": exit_code}
