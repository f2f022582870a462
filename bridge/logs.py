"""The bridge's log under hostile input: every record is escaped (a lone surrogate cannot stop
a handler, a newline cannot start a forged record), cut short, and all records together stay
within a byte budget, so no client can make the engine write more than a few KB of log per
second however many datagrams it sends."""

from __future__ import annotations

import logging
import threading
import time

from stepfoley.request import printable

MAX_RECORD_CHARS = 500
MAX_TRACEBACK_CHARS = 2000
TRACEBACK_INDENT = "  | "
LOG_BYTES_PER_S = 2048  # sustained
LOG_BURST_BYTES = 8192  # at once, after a quiet spell
# control characters (newlines, carriage returns, escape sequences) as the escapes that name them
_CONTROL_ESCAPES = {c: ascii(chr(c))[1:-1] for c in (*range(0x20), 0x7F, 0x85, 0x2028, 0x2029)}


class LogBudget(logging.Filter):
    """A token bucket in bytes: a record passes while the bucket holds its size. The first
    record after some were held back says how many."""

    def __init__(self, bytes_per_s: float = LOG_BYTES_PER_S, burst: float = LOG_BURST_BYTES, clock=time.monotonic):
        super().__init__()
        self.bytes_per_s, self.burst, self._clock = bytes_per_s, burst, clock
        self._tokens, self._last = burst, clock()
        self.suppressed = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        # one record, one line: a client's text (a path with a newline) cannot forge another
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not fit its format: logged as given, never raised
            message = f"{record.msg!s} {record.args!r}"
        text = printable(message, MAX_RECORD_CHARS).translate(_CONTROL_ESCAPES)
        if record.exc_info:  # its end, as shown: the frame that failed and the error itself
            trace = logging.Formatter().formatException(record.exc_info)
            # every line indented under the record: a client's newline inside the error's message
            # starts a line that cannot be read as another record
            trace = "\n".join(TRACEBACK_INDENT + line.encode("utf-8", "backslashreplace").decode("utf-8")
                              .translate(_CONTROL_ESCAPES) for line in trace.splitlines())
            if len(trace) > MAX_TRACEBACK_CHARS:
                trace = "…" + trace[-(MAX_TRACEBACK_CHARS - 1):]
            text += "\n" + trace
        record.exc_info, record.exc_text = None, None
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.bytes_per_s)
            self._last = now
            cost = len(text.encode("utf-8")) + 64  # the handler's time stamp and level
            if cost > self._tokens:
                self.suppressed += 1
                return False
            self._tokens -= cost
            if self.suppressed:
                text += f" [{self.suppressed} earlier log records suppressed]"
                self.suppressed = 0
        record.msg, record.args = text, ()
        return True


def bridge_logger() -> logging.Logger:
    """The "stepfoley.bridge" logger, with one LogBudget (shared by the server and the jobs)."""
    log = logging.getLogger("stepfoley.bridge")
    if not any(isinstance(f, LogBudget) for f in log.filters):
        log.addFilter(LogBudget())
    return log
