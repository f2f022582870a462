"""The engine's OSC server: a UDP socket loop (the transport), a dispatcher that turns each
client message into replies, and the job book whose worker runs generation. The dispatch
thread only parses, validates and queues, so it answers pings while a job runs.

Nothing a client sends can stop the loop: every datagram is decoded with bounded work
(bridge/osc.py), the log is budgeted (bridge/logs.py), every reply is encodable and fits one
datagram, and with a token set a datagram without it gets no reply at all."""

from __future__ import annotations

import collections
import errno
import hmac
import ipaddress
import json
import select
import selectors
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from stepfoley.bridge import osc, protocol
from stepfoley.bridge.auth import TokenError, check_token
from stepfoley.bridge.jobs import Job, JobBook, Runner, engine_stopping
from stepfoley.bridge.logs import bridge_logger
from stepfoley.engine.input_files import check_request_paths
from stepfoley.request import SUPPORTED_PROTOCOLS, Capabilities, RequestError, parse_request, printable, request_json

log = bridge_logger()

# Room for bursts of requests from several DAW scripts while the worker holds the GIL.
_RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
# An error reply's message, escaped: 4,000 bytes of UTF-8 at most, within any datagram.
MAX_ERROR_MESSAGE_CHARS = 1000
# A local client that floods the engine (a script polling /status in a tight loop) must not
# make it deaf to the others. The loop reads what is waiting in batches of up to DRAIN_BATCH; a
# full batch means a backlog, and then a sender past FLOOD_RATE datagrams, or past FLOOD_BUSY_S
# of the loop's time, in the current second has the rest dropped unread, a few microseconds
# each, so the socket drains faster than one sender can fill it and the other clients'
# datagrams find room. The time budget matters once answers are dear (a /status over a long
# queue takes milliseconds): counted in datagrams alone, a flood then never reached the rate
# within a second of the loop's time and was answered at the others' expense. Without a backlog
# nothing is dropped: a burst (a project's worth of requests) waits in the socket's buffer and
# is answered.
DRAIN_BATCH = 256
FLOOD_RATE = 2000
FLOOD_BUSY_S = 0.25
FLOOD_LOG_INTERVAL_S = 10.0  # a flood is logged once, not once a batch
_CANCEL_ADDRESS = protocol.CANCEL.encode("ascii") + b"\0"  # how an OSC /cancel datagram begins
# MSG_DONTWAIT reads without waiting on a blocking socket (replies stay blocking sends);
# Windows has no such flag, so there the loop asks the selector before each further read.
_DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)
# What stops a serving engine cleanly: Ctrl-C, SIGTERM, and SIGHUP where there is one (the
# terminal it runs in was closed: by default that killed it mid-job, leaving a .part file).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def stop_signals() -> tuple:
    """STOP_SIGNALS but SIGHUP where this process was started ignoring it: `nohup stepfoley
    serve` asks to outlive its terminal."""
    hangup = getattr(signal, "SIGHUP", None)
    return tuple(s for s in STOP_SIGNALS if s != hangup or signal.getsignal(s) is not signal.SIG_IGN)


def _may_hold_a_cancel(datagram: bytes) -> bool:
    """A /cancel, or a bundle with one somewhere inside (a cheap look, no parsing)."""
    return datagram.startswith(_CANCEL_ADDRESS) or (datagram.startswith(b"#bundle\0") and _CANCEL_ADDRESS in datagram)


@dataclass(frozen=True)
class ServerConfig:
    host: str = protocol.DEFAULT_HOST
    port: int = protocol.DEFAULT_PORT  # 0 picks a free port (tests, benchmarks)
    token: str = ""  # required on every message when set; mandatory off loopback
    model: str = "unknown"  # named in /pong and /status_reply
    device: str = "unknown"
    max_queue: int = 256
    cpu: dict | None = None  # how the engine shares the CPU (devices.share_cpu), shown in /status


class ConfigError(ValueError):
    """A server configuration that would be unsafe or cannot work. `port_in_use`: its port is
    taken (whoever holds it may be asked who it is)."""

    def __init__(self, message: str, port_in_use: bool = False):
        super().__init__(message)
        self.port_in_use = port_in_use


def sender_address(sockaddr: tuple) -> tuple[str, int]:
    """(host, port) of a datagram's sender. An IPv6 link-local sender's interface (its scope id,
    only in the sockaddr's 4th item) goes into the host ("fe80::1%4"), as replies to it must
    leave by that interface: without it, on a machine with several (Docker, a VPN), they left
    by the first and were lost. Its jobs and flood counts are that address's too."""
    if len(sockaddr) == 4 and sockaddr[3]:
        return f"{sockaddr[0]}%{sockaddr[3]}", sockaddr[1]
    return sockaddr[0], sockaddr[1]


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is this computer's loopback ("", every interface, is
    not). Raises socket.gaierror for a name that names no address: said as that, not as an
    address off loopback (which it was, and only without a token)."""
    if host == "":  # bind() takes it for every interface; getaddrinfo knows no such name
        return False
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    return all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


def listening_address(host: str, port: int | None = None) -> str:
    """A --host (and port) as a message names it: "" is every interface, not an empty name."""
    if host == "":
        return "every interface" if port is None else f"every interface, port {port}"
    return host if port is None else protocol.address_text(host, port)


def _cannot_listen(host: str, port: int, error: OSError) -> ConfigError:
    if isinstance(error, socket.gaierror) or error.errno == errno.EADDRNOTAVAIL:
        advice = ("This computer has no such address: give --host 127.0.0.1 (this computer only), or one "
                  "of its own network addresses.")
    else:
        advice = "Is another engine already running? Pick another --port."
    return ConfigError(f"Cannot listen on {listening_address(host, port)} ({error.strerror or error}). {advice}",
                       port_in_use=error.errno == errno.EADDRINUSE)


class Dispatcher:
    """Maps one decoded client message to the datagrams that answer it. No sockets here."""

    def __init__(self, config: ServerConfig, jobs: JobBook, capabilities: Capabilities | None = None):
        self.config = config
        self.jobs = jobs
        self.capabilities = capabilities  # None until the model has loaded
        self._handlers = {
            protocol.PING: self._ping,
            protocol.STATUS: self._status,
            protocol.GENERATE: self._generate,
            protocol.CANCEL: self._cancel,
            protocol.RESULT: self._result,
        }

    def handle_datagram(self, data: bytes, sender: tuple[str, int]) -> list[tuple[bytes, tuple[str, int]]]:
        """Replies (datagram, address) for one received datagram; never raises."""
        try:
            messages = osc.decode(data)
        except osc.DecodeError as e:
            log.debug("dropped %d bytes from %s: %s", len(data), sender[0], e)
            return []  # no reply address can be trusted in bytes we cannot parse
        replies = []
        for address, args in messages:
            replies.extend(self._handle_message(address, args, sender, oversized=len(data) > protocol.MAX_DATAGRAM_BYTES))
        return replies

    def _handle_message(self, address: str, args: list[Any], sender: tuple[str, int], oversized: bool):
        if self.config.token and not self._carries_token(args):
            # no reply at all: an unauthenticated sender cannot aim the engine's replies anywhere
            log.debug("dropped %s from %s: wrong or missing token", address[:80], sender[0])
            return []
        port = protocol.reply_port_of(args)
        request_id = protocol.request_id_of(args)
        try:
            if oversized:
                raise protocol.ProtocolError(
                    "payload_too_large", f"Messages are limited to {protocol.MAX_DATAGRAM_BYTES} bytes; shorten the request."
                )
            header, rest = protocol.parse_header(address, args)
            reply = self._handlers[address](header, rest, sender)
            return [(reply, (sender[0], header.reply_port))]
        except protocol.ProtocolError as e:
            if port is None:
                log.debug("dropped %s from %s: %s", address[:80], sender[0], e.message)
                return []
            # escaped and cut: a client's text in the message must never make the reply too big to send
            message = printable(e.message, MAX_ERROR_MESSAGE_CHARS)
            return [(osc.encode(protocol.ERROR, request_id, "", e.code, message), (sender[0], port))]
        except Exception as e:  # a bug here must cost one reply, not the server
            log.exception("internal error handling %s", address[:80])
            if port is None:
                return []
            return [(osc.encode(protocol.ERROR, request_id, "", "internal_error", str(e)[:500]), (sender[0], port))]

    def _carries_token(self, args: list[Any]) -> bool:
        token = args[2] if len(args) > 2 else None
        # surrogateescape: a token that was not UTF-8 arrives with its bytes escaped (osc._arguments)
        return isinstance(token, str) and hmac.compare_digest(token.encode("utf-8", "surrogateescape"),
                                                              self.config.token.encode())

    def _ping(self, header: protocol.Header, rest: list, sender) -> bytes:
        return osc.encode(protocol.PONG, header.request_id, protocol.PROTOCOL_VERSION, self.config.model, self.config.device)

    def _status(self, header: protocol.Header, rest: list, sender) -> bytes:
        status = {"protocol": protocol.PROTOCOL_VERSION, "protocols": list(SUPPORTED_PROTOCOLS),
                  "model": self.config.model, "device": self.config.device,
                  "cpu": self.config.cpu}
        status.update(self.jobs.snapshot())
        # a stop asked for while the model loads is what a client must hear: it will not load
        if self.jobs.stopping:
            status["state"] = "stopping"
        elif self.jobs.runner is None:
            status["state"] = "loading"
        status["capabilities"] = self.capabilities.to_json() if self.capabilities else None
        # The jobs get what the rest leaves of one datagram: long captions and a long queue are cut.
        jobs = {"current": status.pop("current"), "queue": status.pop("queue")}
        status["queue_length"] = len(jobs["queue"])  # what a cut queue no longer shows
        room = protocol.MAX_REPLY_JSON_BYTES - len(json.dumps(status)) - 64
        fitted = json.loads(protocol.fit_json(jobs, room))
        status["current"], status["queue"] = fitted.get("current"), fitted.get("queue", [])
        if len(status["queue"]) < len(jobs["queue"]):
            status["queue_truncated"] = True
        if fitted.get("truncated"):
            status["jobs_truncated"] = True
        return osc.encode(protocol.STATUS_REPLY, header.request_id, json.dumps(status))

    def _generate(self, header: protocol.Header, rest: list, sender) -> bytes:
        if self.jobs.runner is None and self.jobs.stopping:  # it will not load: not "send again"
            raise engine_stopping()
        if self.jobs.runner is None:
            raise protocol.ProtocolError("engine_loading", "The engine is still loading its model; send again in a moment.")
        try:
            payload = request_json(rest[0])
        except ValueError as e:
            raise protocol.ProtocolError("invalid_request", f"The request is not valid JSON: {e}.") from None
        except RecursionError:
            raise protocol.ProtocolError("invalid_request", "The request JSON is nested too deeply.") from None
        reply_to = (sender[0], header.reply_port)
        try:
            request = parse_request(payload, self.capabilities)
            # a client resends until it hears /accepted: a copy gets its job back at once, not
            # its files read again on this thread, which answers every client
            again = self.jobs.resent(header.request_id, request, reply_to)
            if again is None:
                check_request_paths(request)
        except RequestError as e:
            raise protocol.ProtocolError(e.code, e.message) from None
        job, position = again or self.jobs.submit(header.request_id, request, reply_to)
        return osc.encode(protocol.ACCEPTED, header.request_id, job.job_id, position)

    def _cancel(self, header: protocol.Header, rest: list, sender) -> bytes:
        job_id = rest[0]
        if not job_id:  # withdraw the job of this request_id from this sender (docs/osc-protocol.md)
            job_id = self.jobs.owned_by((sender[0], header.reply_port, header.request_id))
            if job_id is None:
                raise protocol.ProtocolError("unknown_job", f"No job of request '{header.request_id}' from this "
                                                            "client is known.")
        outcome = self.jobs.cancel(job_id)
        return osc.encode(protocol.CANCEL_REPLY, header.request_id, job_id, outcome)

    def _result(self, header: protocol.Header, rest: list, sender) -> bytes:
        summary = self.jobs.describe(rest[0])
        return osc.encode(protocol.JOB, header.request_id, protocol.job_json(summary))


def job_reply(job: Job, kind: str) -> bytes:
    """The datagram that tells a job's client about a change (progress or a final state)."""
    if kind == protocol.PROGRESS:
        return osc.encode(protocol.PROGRESS, job.request_id, job.job_id, job.step, job.total, job.phase)
    if kind == protocol.DONE:  # the metadata was cut to fit when the job ended (jobs._checked_result)
        return osc.encode(protocol.DONE, job.request_id, job.job_id, job.stem_path, json.dumps(job.metadata))
    if kind == protocol.DONE_STEMS:  # fitted when the job ended too (jobs._checked_stems)
        return osc.encode(protocol.DONE_STEMS, job.request_id, job.job_id, job.stems_folder, job.stems_json)
    if kind == protocol.CANCELLED:
        return osc.encode(protocol.CANCELLED, job.request_id, job.job_id)
    return osc.encode(protocol.ERROR, job.request_id, job.job_id, job.error_code, job.error_message)


class EngineServer:
    """Binds the socket at construction (so `address` is known at once); `serve_forever`
    runs the dispatch loop in the calling thread, `start` runs it in a background thread."""

    def __init__(self, runner: Runner | None, config: ServerConfig = ServerConfig(),
                 capabilities: Capabilities | None = None):
        if config.token:
            try:  # a token no message can carry would make the engine refuse every message
                check_token(config.token)
            except TokenError as e:
                raise ConfigError(str(e)) from None
        if not config.token:
            try:
                loopback = is_loopback(config.host)
            except socket.gaierror as e:  # never bound: the name may name an address by the time bind() asks
                raise _cannot_listen(config.host, config.port, e) from None
            if not loopback:
                raise ConfigError(
                    f"Listening on {listening_address(config.host)} lets other machines reach the engine; "
                    "give a shared --token (every client must send it) or use 127.0.0.1."
                )
        self.config = config
        self.jobs = JobBook(runner, self._notify, max_queue=config.max_queue)
        self.dispatcher = Dispatcher(config, self.jobs, capabilities)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER_BYTES)
            protocol.make_room_for_datagrams(self._sock)
            self._sock.bind((config.host, config.port))
            self._address = tuple(self._sock.getsockname()[:2])  # kept: asked for after a stop closed the socket too
        except OSError as e:
            self._sock.close()
            raise _cannot_listen(config.host, config.port, e) from None
        if not config.token and not ipaddress.ip_address(self._address[0].split("%")[0]).is_loopback:
            # bind() looked the name up again: what it took is what other machines could reach
            self._sock.close()
            raise ConfigError(f"Listening on {listening_address(config.host)} took {self._address[0]}, which lets "
                              "other machines reach the engine; give a shared --token (every client must send it) "
                              "or use 127.0.0.1.")
        self._send_lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._closed = False
        self._stop_timeout = 10.0  # how long a stop waits for the running job (stop() sets it)
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None  # whichever thread runs serve_forever
        self._loop_ended = threading.Event()
        self.dropped_datagrams = 0
        self.flood_dropped = 0  # of those, dropped unread from a sender past flood_rate in a backlog
        self.drain_batch, self.flood_rate, self.flood_busy_s = DRAIN_BATCH, FLOOD_RATE, FLOOD_BUSY_S
        self._second_began, self._per_sender = time.monotonic(), collections.Counter()
        self._busy_per_sender: collections.Counter = collections.Counter()  # seconds of handling
        self._flood_logged_at = -FLOOD_LOG_INTERVAL_S

    def attach(self, runner: Runner, model: str, device: str, capabilities: Capabilities,
               cpu: dict | None = None) -> None:
        """Hand the runner to a server that started before its model loaded (until then it
        answers pings, says "loading" in /status and refuses generation with "engine_loading")."""
        self.config = replace(self.config, model=model, device=device, cpu=cpu if cpu is not None else self.config.cpu)
        self.dispatcher.config = self.config
        self.dispatcher.capabilities = capabilities
        self.jobs.runner = runner

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def serve_forever(self) -> None:
        """Serve until `shutdown()`; then fail queued jobs, stop the running one at its next
        step, and close the socket."""
        self._loop_thread = threading.current_thread()
        waited = False
        try:
            self.jobs.start()
            selector = selectors.DefaultSelector()
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            try:
                while not self._stop.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is self._sock:
                            self._receive_batch()
                # While the running job stops (up to the stop's timeout), messages are still
                # answered: a ping by a pong, /status by "stopping", a request by engine_stopping.
                # The engine held its port and said nothing: a client took it for not running.
                selector.unregister(self._wake_r)
                stopper = threading.Thread(target=self.jobs.stop, args=(self._stop_timeout,),
                                           name="stepfoley-stop", daemon=True)
                stopper.start()
                while stopper.is_alive():
                    if selector.select(timeout=0.05):
                        self._receive_batch()
                waited = True
            finally:
                selector.close()
                self._close(0.0 if waited else self._stop_timeout)  # the job was waited for once already
        finally:
            self._loop_ended.set()

    def _receive_batch(self) -> None:
        batch = self._drain()
        backlog = len(batch) == self.drain_batch
        now = time.monotonic()
        if now - self._second_began >= 1.0:
            self._second_began, self._per_sender = now, collections.Counter()
            self._busy_per_sender = collections.Counter()
        flooder = None
        # A job starts as soon as its /accepted is out, not once the rest of the batch is
        # handled; but a /cancel already waiting behind it is read first, so that a request its
        # client gave up on while the engine stalled is withdrawn before it runs.
        last_cancel = max((i for i, (data, _) in enumerate(batch) if _may_hold_a_cancel(data)), default=-1)
        try:
            for i, (data, sender) in enumerate(batch):
                self._per_sender[sender] += 1
                if backlog and (self._per_sender[sender] > self.flood_rate
                                or self._busy_per_sender[sender] > self.flood_busy_s):
                    self.dropped_datagrams += 1
                    self.flood_dropped += 1
                    flooder = sender
                    continue
                began = time.monotonic()
                try:
                    replies = self.dispatcher.handle_datagram(data, sender)
                except Exception:  # handle_datagram answers its own errors; this is the last line of defence
                    log.exception("internal error on a datagram from %s", sender[0])
                    replies = []
                self._busy_per_sender[sender] += time.monotonic() - began
                if not replies:
                    self.dropped_datagrams += 1
                for datagram, address in replies:
                    self._send(datagram, address)
                if i >= last_cancel:
                    self.jobs.replies_sent()
        finally:
            # the batch's last datagrams may have been dropped unread; and the jobs book waits for
            # this word however long a batch takes, so it is given whatever happened
            self.jobs.replies_sent()
        if flooder and now - self._flood_logged_at >= FLOOD_LOG_INTERVAL_S:
            self._flood_logged_at = now
            log.warning("%s:%d sends more than the engine can answer; what it sends over %g a second, or over "
                        "%g s of the engine's time a second, is dropped while this lasts",
                        *flooder, self.flood_rate, self.flood_busy_s)

    def _drain(self) -> list[tuple[bytes, tuple[str, int]]]:
        """Up to `drain_batch` datagrams that are waiting (at least one: the selector said so)."""
        batch = []
        for i in range(self.drain_batch):
            if i and not _DONT_WAIT and not self._waiting():
                break
            try:
                # one byte more than the UDP maximum payload, so nothing is silently cut short
                data, sender = self._sock.recvfrom(65536, _DONT_WAIT if i else 0)
            except BlockingIOError:
                break
            except OSError:
                # an ICMP error reported on the socket (Windows' WSAECONNRESET after a reply to a
                # client that has gone away); the next datagram is fine
                continue
            batch.append((data, sender_address(sender)))
        return batch

    def _waiting(self) -> bool:
        ready, _, _ = select.select([self._sock], [], [], 0)
        return bool(ready)

    def _send(self, datagram: bytes, address: tuple[str, int]) -> None:
        try:
            with self._send_lock:
                if self._sock.fileno() >= 0:  # not yet closed by _close
                    self._sock.sendto(datagram, address)
        except OSError as e:
            log.warning("could not reply to %s: %s", address, e)

    def _notify(self, job: Job, kind: str) -> None:
        self._send(job_reply(job, kind), job.reply_to)  # JobBook._tell catches what this raises

    def start(self) -> "EngineServer":
        self._thread = threading.Thread(target=self.serve_forever, name="stepfoley-dispatch", daemon=True)
        self._thread.start()
        return self

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def shutdown(self) -> None:
        """Ask the loop to end. Safe from a signal handler or any thread."""
        self.jobs.refuse_new()  # /status says "stopping" from now on, not once the stop has begun
        self._stop.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        """shutdown() and wait until the loop and the worker have ended, at most `timeout`
        seconds for a running job (then its client is told engine_stopped)."""
        self._stop_timeout = timeout
        self.shutdown()
        try:
            if self._thread is not None:
                self._thread.join(timeout + 5.0)  # the loop's own close waits for the job up to `timeout`
                return
        except RuntimeError:  # never started: a signal ended start() before the thread ran
            pass
        loop = self._loop_thread
        if loop is not None:  # serve_forever runs in a caller's thread: it closes when its batch is answered
            if loop is not threading.current_thread():
                self._loop_ended.wait(timeout + 5.0)
            return
        self._close(timeout)

    def _close(self, timeout: float = 10.0) -> None:
        with self._send_lock:
            if self._closed:
                return
            self._closed = True
        self.jobs.stop(timeout)
        for s in (self._sock, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self) -> "EngineServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_signalled(server: EngineServer) -> None:
    """Serve (or, after `start()`, wait for the serving thread) in the main thread until one of
    stop_signals() (Ctrl-C, SIGTERM, SIGHUP unless started under nohup), then shut down cleanly:
    queued jobs fail with "engine_stopped", the running one stops at its next step."""

    def on_signal(signum, frame):
        try:  # after SIGHUP the terminal may be gone: the stop must not depend on telling it
            print(f"{signal.Signals(signum).name}: stopping; the running job stops at its next step.",
                  file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass
        server.shutdown()

    previous = {s: signal.signal(s, on_signal) for s in stop_signals()}
    try:
        if server._thread is None:
            server.serve_forever()
        else:
            while server._thread.is_alive():
                server._thread.join(0.2)  # a bounded join lets the main thread run the handlers
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
