"""The job book: a FIFO queue of generation jobs, the one worker thread that runs them on
the engine's device, and the record of finished jobs that clients can still ask about.

The runner is any callable with the FoleyService contract:
    runner(request: GenerationRequest, on_progress(phase, done, total), is_cancelled() -> bool)
        -> {"stem_path", "metadata"}                       for a protocol-1 request
        -> {"stems": [{"stem_path", "metadata"}, ...], "ranking"}   for a protocol-2 one (best first)
It raises exceptions carrying `.code`; code "cancelled" means it stopped because asked to.
`stem_path` (every `stems[].stem_path`) is a new file the job wrote: if the result is refused, the
worker removes it, and where the result gives its `stem_identity` ((st_dev, st_ino) as written),
only while that name still holds that file.

The worker survives any failure of a job or of a reply, and every accepted job gets exactly
one final reply. A job belongs to (address, reply port, request_id)."""

from __future__ import annotations

import collections
import itertools
import json
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from stepfoley.bridge import protocol
from stepfoley.bridge.logs import bridge_logger
from stepfoley.request import GenerationRequest

log = bridge_logger()

Runner = Callable[[GenerationRequest, Callable[[str, int, int], None], Callable[[], bool]], dict]
# notify(job, reply_address): the job changed in a way its client must hear about
Notify = Callable[["Job", str], None]

QUEUED, RUNNING, DONE, ERROR, CANCELLED = "queued", "running", "done", "error", "cancelled"
FINISHED_STATES = (DONE, ERROR, CANCELLED)
MAX_MESSAGE_CHARS = 2000
ENGINE_STOPPED_RUNNING = "The engine was stopped while this job ran. Start it again and resend."


def engine_stopping() -> protocol.ProtocolError:
    return protocol.ProtocolError("engine_stopping", "The engine is shutting down. Start it again and resend.")


@dataclass(eq=False)  # a job is itself: finding it in the queue compares identities, not every field
class Job:
    job_id: str
    request_id: str
    request: GenerationRequest
    reply_to: tuple[str, int]
    state: str = QUEUED
    phase: str = ""  # protocol.PHASES while running
    step: int = 0
    total: int = 0
    stem_path: str = ""
    metadata: dict = field(default_factory=dict)
    stems_folder: str = ""  # protocol 2: the folder of every stem, and the fitted stems_json
    stems_json: str = ""
    error_code: str = ""
    error_message: str = ""
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    # set once the /accepted reply is out: the job's own replies never overtake it
    announced: threading.Event = field(default_factory=threading.Event)

    @property
    def owner(self) -> tuple[str, int, str]:
        """Who may resend this job's request and get this job back: (address, port, request_id)."""
        return (*self.reply_to, self.request_id)

    def summary(self, queue_position: int, engine_steps: int) -> dict:
        """The job as the /job reply and `status` describe it. Its stems only once it is done: a
        job cancelled while its stems were written had them removed."""
        done = self.state == DONE
        return {
            "job_id": self.job_id,
            "request_id": self.request_id,
            "state": self.state,
            "phase": self.phase or None,
            "queue_position": queue_position,
            "step": self.step,
            "total": self.total,
            "caption": self.request.caption,
            "stem_path": self.stem_path or None if done else None,
            "metadata": self.metadata or None if done else None,
            "error": {"code": self.error_code, "message": self.error_message} if self.state == ERROR else None,
            "engine_steps": engine_steps,
            **({"stems": {"folder": self.stems_folder, **json.loads(self.stems_json)}}
               if self.stems_json and done else {}),
        }


class JobBook:
    """Owns the queue and the worker. Thread-safe: the dispatch thread submits, cancels and
    queries; the worker thread runs jobs. Generation never runs on the dispatch thread."""

    def __init__(self, runner: Runner | None, notify: Notify, max_queue: int = 256, keep_finished: int = 1024):
        """Whoever submits calls `replies_sent()` once its answers to the submits are out (the
        server: once a receive batch's /accepted replies, and any /cancel in the batch, are
        handled); a job waits for that however long it takes. (A fixed 1 s wait instead let a job
        start before a /cancel behind it in a slow batch was read.)"""
        self.runner = runner
        self._notify = notify
        self.max_queue = max_queue
        self._keep_finished = keep_finished
        self._lock = threading.Condition()
        self._queue: collections.deque[Job] = collections.deque()
        self._jobs: dict[str, Job] = {}
        self._by_owner: dict[tuple[str, int, str], str] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._current: Job | None = None
        self._unannounced: list[Job] = []  # submitted, their /accepted not yet sent
        self._cancelled_unannounced: list[Job] = []  # dropped before their /accepted went out
        self._stopping = False
        self._refusing = False  # set by refuse_new(), before stop() runs: no lock taken there
        self._counter = itertools.count(1)
        self._prefix = secrets.token_hex(4)  # an engine restarted on the port gives out other ids
        # Counts sampling steps and finished jobs: clients use it as the engine's heartbeat.
        self.engine_steps = 0
        self.jobs_finished = 0
        self._worker = threading.Thread(target=self._work, name="stepfoley-worker", daemon=True)

    # --- dispatch-thread side -------------------------------------------------------------

    def start(self) -> None:
        self._worker.start()

    def resent(self, request_id: str, request: GenerationRequest, reply_to: tuple[str, int]) -> tuple[Job, int] | None:
        """The job this request already has, when it is a retransmission (same address, reply port
        and request_id, the same request): (job, queue_position); None for a new request. The same
        request_id with another request is refused."""
        with self._lock:
            existing = self._by_owner.get((*reply_to, request_id))
            if not existing or existing not in self._jobs:
                return None
            job = self._jobs[existing]
            if job.request != request:  # not a retransmission: a client that numbers its requests anew
                raise protocol.ProtocolError(
                    "invalid_request", f"request_id '{request_id}' was already used for another request from "
                    f"this reply port (job {job.job_id}); give each request a request_id of its own.")
            return job, self._position(job)

    def submit(self, request_id: str, request: GenerationRequest, reply_to: tuple[str, int]) -> tuple[Job, int]:
        """Queue a validated request; a retransmitted request gets its existing job back
        instead of a second one (`resent`). Returns (job, queue_position)."""
        with self._lock:  # a Condition's lock is reentrant
            again = self.resent(request_id, request, reply_to)
            if again is not None:
                return again
            if self.stopping:
                raise engine_stopping()
            if len(self._queue) >= self.max_queue:
                raise protocol.ProtocolError(
                    "queue_full",
                    f"The engine already has {len(self._queue)} jobs waiting. Wait for some to finish, then resend.",
                )
            job = Job(f"{self._prefix}-{next(self._counter):06d}", request_id, request, reply_to)
            self._jobs[job.job_id] = job
            self._by_owner[job.owner] = job.job_id
            self._queue.append(job)
            self._unannounced.append(job)
            self._lock.notify_all()
            return job, self._position(job)

    def replies_sent(self) -> None:
        """The server has sent the replies to everything submitted so far (their /accepted):
        the worker may now tell those jobs' clients about them."""
        with self._lock:
            cancelled = self._announce()
        for job in cancelled:
            self._tell(job, protocol.CANCELLED)

    def _announce(self) -> list[Job]:
        """Under the lock: every submitted job counts as announced; returns those cancelled before
        their announcement, whose /cancelled is now due (sent outside the lock)."""
        for job in self._unannounced:
            job.announced.set()
        self._unannounced.clear()
        cancelled, self._cancelled_unannounced = self._cancelled_unannounced, []
        return cancelled

    def owned_by(self, owner: tuple[str, int, str]) -> str | None:
        """The id of the job that (address, reply port, request_id) submitted, if any."""
        with self._lock:
            return self._by_owner.get(owner)

    def cancel(self, job_id: str) -> str:
        """Drop a queued job or ask the running one to stop before its next step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise protocol.ProtocolError(
                    "unknown_job", f"No job '{job_id[:80]}' is known (it may be long finished, or from an earlier engine run)."
                )
            if job.state in FINISHED_STATES:
                return protocol.CANCEL_TOO_LATE
            job.cancel_requested.set()
            if job.state == RUNNING:
                return protocol.CANCEL_STOPPING
            self._queue.remove(job)
            self._finish(job, CANCELLED)
            if not job.announced.is_set():
                # cancelled in the datagram that submitted it: its /accepted is not out yet, and a
                # final reply for a job the client has not heard of would come first
                self._cancelled_unannounced.append(job)
                return protocol.CANCEL_DROPPED
        self._tell(job, protocol.CANCELLED)
        return protocol.CANCEL_DROPPED

    def describe(self, job_id: str) -> dict:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise protocol.ProtocolError("unknown_job", f"No job '{job_id[:80]}' is known to this engine.")
            return job.summary(self._position(job), self.engine_steps)

    def snapshot(self) -> dict:
        with self._lock:
            current = self._current.summary(0, self.engine_steps) if self._current else None
            ahead = 1 if self._current is not None else 0
            queue = [j.summary(ahead + i, self.engine_steps) for i, j in enumerate(self._queue)]
            return {
                "state": "busy" if current else "idle",
                "current": current,
                "queue": queue,
                "queue_limit": self.max_queue,
                "jobs_finished": self.jobs_finished,
                "engine_steps": self.engine_steps,
            }

    @property
    def stopping(self) -> bool:
        """Whether the engine is stopping: no job is taken any more."""
        return self._stopping or self._refusing

    def refuse_new(self) -> None:
        """Take no more jobs from now on (safe from a signal handler: no lock); stop() follows."""
        self._refusing = True

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new jobs, fail the queued ones, stop the running one at its next step."""
        with self._lock:
            self._stopping = True
            cancelled = self._announce()  # the worker may be holding one back: it stops at its first step
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.error_code, job.error_message = "engine_stopped", "The engine was stopped before this job ran. Start it again and resend."
                self._finish(job, ERROR)
            # the running job sees is_cancelled() turn true through _stopping
            self._lock.notify_all()
        for job in cancelled:
            self._tell(job, protocol.CANCELLED)
        for job in dropped:
            self._tell(job, protocol.ERROR)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
            self._abandon_running()

    def _abandon_running(self) -> None:
        """The running job did not stop in time (one step, window or stem that cannot be cut
        short): the process exits after stop() and takes the worker with it, so the job's client
        hears engine_stopped now, and the worker, should it still finish, removes its stems."""
        with self._lock:
            job = self._current
            if job is None or not self._worker.is_alive():
                return
            self._current = None
            job.error_code, job.error_message = "engine_stopped", ENGINE_STOPPED_RUNNING
            self._finish(job, ERROR)
        log.warning("job %s was still running when the engine stopped", job.job_id)
        self._tell(job, protocol.ERROR)

    # --- worker-thread side ---------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._stopping:
                    self._lock.wait()
                if self._stopping:
                    return
                job = self._queue.popleft()
                job.state, job.phase = RUNNING, "starting"
                self._current = job
            job.announced.wait()  # a reply sent before /accepted could reach a client first
            self._tell(job, protocol.PROGRESS)  # step 0: the client learns it started
            existing = _names_in(job.request.output_dir)
            kind, result = self._run(job, existing)
            made = kind in (protocol.DONE, protocol.DONE_STEMS)
            with self._lock:
                abandoned = self._current is not job  # stop() gave up on it and told its client
                # a cancel answered "stopping" after the runner's last check: it holds, as promised
                late_cancel = made and not abandoned and job.cancel_requested.is_set()
                if late_cancel:
                    kind = protocol.CANCELLED
                if not abandoned:
                    self._current = None
                    self._finish(job, {protocol.DONE: DONE, protocol.DONE_STEMS: DONE,
                                       protocol.CANCELLED: CANCELLED}.get(kind, ERROR))
            if abandoned or late_cancel:
                if made:
                    _discard_stem(result, job.request.output_dir, existing)
                if abandoned:
                    continue
            self._tell(job, kind)

    def _tell(self, job: Job, kind: str) -> None:
        """Notify the job's client; a reply that cannot be sent costs that reply, never the worker."""
        try:
            self._notify(job, kind)
        except Exception:
            log.exception("could not send %s for job %s", kind, job.job_id)

    def _run(self, job: Job, existing: dict[str, tuple[int, int, int]] | None) -> tuple[str, Any]:
        """Run one job to its end (`existing`: the names in its output folder as it began);
        returns the final reply address and the runner's result (None when it failed), and
        fills the job in."""

        def on_progress(phase: str, step: int, total: int) -> None:
            with self._lock:
                if job.state in FINISHED_STATES:  # given up by a stop: its client has had its final reply
                    return
                job.phase, job.step, job.total = phase, int(step), int(total)
                self.engine_steps += 1
            self._tell(job, protocol.PROGRESS)

        def is_cancelled() -> bool:
            return job.cancel_requested.is_set() or self._stopping

        result = None
        try:
            result = self.runner(job.request, on_progress, is_cancelled)
            if job.request.protocol >= 2:
                job.stems_folder, job.stems_json, job.stem_path = _checked_stems(result, job.request.output_dir)
                return protocol.DONE_STEMS, result
            job.stem_path, job.metadata = _checked_result(result, job.request.output_dir)
            return protocol.DONE, result
        except Exception as e:  # any failure ends this job only; the worker keeps serving
            _discard_stem(result, job.request.output_dir, existing)
            code = getattr(e, "code", None)
            message = _message_of(e)
            if not isinstance(code, str) or not code:
                # a bug: its kind is part of what the user reports, and the log keeps where it was
                code, message = "internal_error", _message_of(e, with_kind=True)
                log.error("job %s failed unexpectedly", job.job_id, exc_info=True)
            if code == "cancelled" and job.cancel_requested.is_set():
                return protocol.CANCELLED, None
            if code == "cancelled" and self._stopping:
                code, message = "engine_stopped", ENGINE_STOPPED_RUNNING
            job.error_code, job.error_message = code, message
            log.warning("job %s: %s: %s", job.job_id, code, message)
            return protocol.ERROR, None

    def _finish(self, job: Job, state: str) -> None:
        # caller holds the lock
        job.state = state
        self.jobs_finished += 1
        self.engine_steps += 1
        self._finished.append(job.job_id)
        while len(self._finished) > self._keep_finished:
            old = self._jobs.pop(self._finished.popleft(), None)
            if old is not None and self._by_owner.get(old.owner) == old.job_id:
                del self._by_owner[old.owner]

    def _position(self, job: Job) -> int:
        # caller holds the lock; jobs ahead of this one, the running job included
        if job.state != QUEUED:
            return 0
        return self._queue.index(job) + (1 if self._current is not None else 0)


def _message_of(error: Exception, with_kind: bool = False) -> str:
    kind = type(error).__name__
    try:
        text = str(error)
        return (f"{kind}: {text}" if with_kind and text else text or kind)[:MAX_MESSAGE_CHARS]
    except Exception:  # an exception whose message cannot be made still ends its job with a reply
        return kind


class BadResult(Exception):
    code = "internal_error"


def _checked_result(result: Any, output_dir: str) -> tuple[str, dict]:
    """The runner's result, checked: a stem that exists inside the request's output folder
    and a JSON object of metadata, cut to fit one reply datagram."""
    stem = _stem_in(result, output_dir)
    if stem is None:
        raise BadResult(f"The engine reported a stem that is not a new file in '{output_dir}' (internal error).")
    metadata = result.get("metadata", {})
    try:
        text = protocol.fit_json(metadata, protocol.MAX_METADATA_JSON_BYTES)
    except (TypeError, ValueError) as e:
        raise BadResult(f"The engine produced metadata that is not JSON ({e}).") from None
    if not isinstance(metadata, dict):
        raise BadResult("The engine produced metadata that is not a JSON object.")
    return stem, json.loads(text)


def _checked_stems(result: Any, output_dir: str) -> tuple[str, str, str]:
    """A protocol-2 result, checked: every stem a file inside output_dir, all in one folder,
    the metadata JSON objects. Returns (folder, stems_json fitted to its reply, best stem)."""
    stems = result.get("stems") if isinstance(result, dict) else None
    if not isinstance(stems, list) or not stems:
        raise BadResult("The engine reported no stems for a protocol-2 request (internal error).")
    paths = [_stem_in(s, output_dir) for s in stems]
    if any(p is None for p in paths):
        raise BadResult(f"The engine reported a stem that is not a new file in '{output_dir}' (internal error).")
    if len({os.path.dirname(p) for p in paths}) != 1:
        raise BadResult("The engine wrote the stems of one job into different folders (internal error).")
    metadata = [s.get("metadata", {}) for s in stems]
    ranking = result.get("ranking", {})
    if not all(isinstance(m, dict) for m in metadata) or not isinstance(ranking, dict):
        raise BadResult("The engine produced metadata that is not a JSON object.")
    try:
        text = protocol.stems_json([(os.path.basename(p), m) for p, m in zip(paths, metadata)], ranking)
    except (TypeError, ValueError) as e:
        raise BadResult(f"The engine's stems cannot be reported in one reply ({e}).") from None
    return os.path.dirname(paths[0]), text, paths[0]


def _stem_in(result: Any, output_dir: str) -> str | None:
    """The result's stem path when it names a file inside output_dir, else None."""
    if not isinstance(result, dict) or not isinstance(result.get("stem_path"), str):
        return None
    # the folder as the kernel resolves it (a `..` after a symlink goes up from the link's
    # target, which os.path.abspath, working on the text, gets wrong)
    folder_given, name = os.path.split(result["stem_path"])
    stem = os.path.join(os.path.realpath(folder_given), name)
    folder = os.path.realpath(output_dir)
    if os.path.commonpath([os.path.realpath(stem), folder]) != folder or not os.path.isfile(stem):
        return None
    if os.path.dirname(stem) == folder:
        # in the client's own words where they name this folder: a project reached through a
        # symlink (macOS's /tmp and /var too) keeps its media paths under the link
        said = os.path.abspath(output_dir)
        if os.path.realpath(said) == folder:
            return os.path.join(said, name)
    return stem


def _entry_identity(entry: os.DirEntry) -> tuple[int, int, int]:
    """What tells a file from a new one of the same name: inode, modification time, size (a
    freed inode is often given again at once). Windows's listing reports every inode as 0, so a
    file is always compared with what the same listing says of it, never with os.stat's."""
    info = entry.stat(follow_symlinks=False)
    return info.st_ino, info.st_mtime_ns, info.st_size


def _names_in(folder: str) -> dict[str, tuple[int, int, int]] | None:
    """Each file in `folder` now with its _entry_identity, or None when the folder cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            return {e.name: _entry_identity(e) for e in entries}
    except OSError:
        return None


def _identity_in(folder: str, name: str) -> tuple[int, int, int] | None:
    """The _entry_identity of `name` in `folder` now (None: not there). Raises OSError."""
    with os.scandir(folder) as entries:
        return next((_entry_identity(e) for e in entries if e.name == name), None)


def _discard_stem(result: Any, output_dir: str, existing: dict[str, tuple[int, int, int]] | None) -> None:
    """Remove the stems of a refused result: only files directly in output_dir that were not
    there as they are when the job began (`existing`: a name freed and taken again during the
    job is the job's; None: nothing is removed). Compared for equality, never for order: a file
    on a network share carries the server's clock, which may run behind the engine's."""
    stems = result.get("stems") if isinstance(result, dict) else None
    for one in (stems if isinstance(stems, list) else [result]):
        stem = _stem_in(one, output_dir)
        try:
            if stem is None or existing is None:
                continue
            if os.path.realpath(os.path.dirname(stem)) != os.path.realpath(output_dir):
                continue  # the engine writes stems into output_dir itself, never below it
            name = os.path.basename(stem)
            made = one.get("stem_identity")
            if isinstance(made, (list, tuple)) and len(made) == 2:
                # the very file the job wrote: a folder moved away or swapped for another during
                # the job may hold a user's file of that name, new to its listing at the start
                try:
                    found = os.lstat(stem)
                except FileNotFoundError:
                    continue  # gone already
                if (found.st_dev, found.st_ino) != tuple(made):
                    continue
            if existing.get(name) != _identity_in(os.path.dirname(stem), name):
                os.unlink(stem)
        except OSError as e:
            log.warning("could not remove the stem of a failed job: %s", e)
