"""The database log handler and the bounded background writer it shares with the request metrics.

Nothing here may slow down or break a request: ``emit`` and ``submit`` only put a row on a bounded
queue and return. One writer thread inserts the rows in batches. With the queue full, or while the
database is failing, rows are dropped and counted (``writer.dropped``); the writer reconnects by
itself on the next batch.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone

logger = logging.getLogger("system_app.writer")

MAX_MESSAGE_CHARS = 20000
RUNNER_LOGGER_PREFIX = "models_app.serving.runner."  # EngineManager logs a runner's lines under models_app.serving.runner.<model>
# SQL logging: at DEBUG every query would become a row, and the writer's own inserts would feed it.
IGNORED_LOGGERS = ("django.db.backends",)


class BackgroundWriter:
    """A bounded queue of (model label, field dict) rows and one thread that bulk-inserts them."""

    def __init__(self, *, batch_size: int = 500, linger_s: float = 0.05):
        self.batch_size = batch_size
        self.linger_s = linger_s
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.dropped = 0
        self.written = 0
        self._failing = False

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def thread_ident(self) -> int | None:
        return self._thread.ident if self._thread is not None else None

    def start(self, *, queue_size: int) -> None:
        with self._lock:
            if self.running:
                return
            self._queue = queue.Queue(maxsize=queue_size)
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="beautyai-db-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Writes what is queued, then ends the thread (tests call this before their database goes away)."""
        with self._lock:
            thread = self._thread
            self._stop.set()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            self._thread = None
            self._queue = None

    def submit(self, label: str, fields: dict) -> bool:
        """Queues one row; False when it was dropped. Without a running writer rows are not kept at all."""
        rows = self._queue
        if rows is None or not self.running:
            return False
        try:
            rows.put_nowait((label, fields))
        except queue.Full:
            self.count_dropped(1)
            return False
        return True

    def count_dropped(self, count: int) -> None:
        with self._lock:
            self.dropped += count

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every queued row was written or dropped; True if that happened within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self._queue
            if rows is None or rows.unfinished_tasks == 0:
                return True
            time.sleep(0.01)
        return False

    def _run(self) -> None:
        from django.db import connection

        rows = self._queue
        try:
            while True:
                try:
                    first = rows.get(timeout=0.2)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                batch = [first]
                if self.linger_s and rows.qsize() < self.batch_size - 1 and not self._stop.is_set():
                    # Rows arrive one per request: a short wait turns a commit per row (a journal file
                    # created, synced and deleted: ~0.6 ms of CPU each on SQLite) into one per batch.
                    # A backlog that already fills a batch is written at once.
                    time.sleep(self.linger_s)
                while len(batch) < self.batch_size:
                    try:
                        batch.append(rows.get_nowait())
                    except queue.Empty:
                        break
                self._write(batch)
                for _ in batch:
                    rows.task_done()
        finally:
            connection.close()

    def _write(self, batch: list[tuple[str, dict]]) -> None:
        from django.apps import apps
        from django.db import close_old_connections, connection, transaction

        grouped: dict[str, list[dict]] = defaultdict(list)
        for label, fields in batch:
            grouped[label].append(fields)
        try:
            # Drops a connection that a database restart broke, so this batch reconnects.
            close_old_connections()
            with transaction.atomic():
                for label, rows in grouped.items():
                    model = apps.get_model(label)
                    model.objects.bulk_create([model(**fields) for fields in rows])
        except Exception as exc:
            self.count_dropped(len(batch))
            if not self._failing:
                logger.warning("background writes are failing (%s); dropping rows until the database answers",
                               exc.__class__.__name__)
                self._failing = True
            try:
                connection.close()
            except Exception:  # closing a connection to a server that is gone may fail too; it is gone either way
                pass
            return
        self.written += len(batch)
        if self._failing:
            logger.warning("background writes recovered; %d rows dropped so far", self.dropped)
            self._failing = False


writer = BackgroundWriter()


# Scrubbing ---------------------------------------------------------------------------------------

REDACTED = "[REDACTED]"
_SCRUBBERS = [
    # API keys: bai_<8 hex prefix>_<secret>. The prefix is only a lookup id (the admin shows it), so it stays.
    (re.compile(r"\b(bai_[0-9a-f]{8}_)[A-Za-z0-9_\-]+"), rf"\g<1>{REDACTED}"),
    # Authorization headers in any spelling: "Authorization: Bearer x", 'HTTP_AUTHORIZATION': 'Basic x'.
    (re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:(bearer|basic|token|digest)\s+)?[^\s'\",;}]+"),
     lambda m: f"{m[1]}{m[2] + ' ' if m[2] else ''}{REDACTED}"),
    # password=..., "db_password": "...", api_key: ..., access_token=..., secret=... The match starts at
    # the keyword, not at the name before it: a leading [\w-]* made every search quadratic in the
    # longest run of word characters (seconds for a 10 KB Host header), and the name is kept anyway.
    (re.compile(r"(?i)((?:password|passwd|pwd|secret|token|api[_\-]?key)['\"]?\s*[:=]\s*)(['\"]?)[^'\"\s,&;}]+"),
     rf"\g<1>\g<2>{REDACTED}"),
    # Credentials inside URLs: postgres://user:secret@host
    (re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^:/\s@]+:)[^@\s/]+@"), rf"\g<1>{REDACTED}@"),
]


def scrub(text: str) -> str:
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


# What clients can make the server log at will -----------------------------------------------------

class ClientTriggeredLogThrottle(logging.Filter):
    """Keeps records that any client can cause at will from filling the log and its table.

    Django logs every request with a bad Host header, a CSRF failure or another suspicious operation
    on ``django.security.<kind>`` (4xx responses on ``django.request``), with the client's text (a
    10 KB Host header in full) and the exception's traceback: one row per request, from clients that
    need no account. Such records pass once per ``interval_s`` per logger and status, the next one
    saying how many were left out; their text is cut to ``max_chars``, and tracebacks (absolute paths,
    nothing the client did not know) are dropped. On every handler, so the console gets the same; a
    record is judged once, by the first handler that sees it.
    """

    def __init__(self, interval_s: float = 60, max_chars: int = 200, clock=time.monotonic):
        super().__init__()
        self.interval_s, self.max_chars, self.clock = interval_s, max_chars, clock
        self.windows: dict[tuple, list] = {}  # (logger, status) -> [window start, records left out]
        self._lock = threading.Lock()

    @staticmethod
    def applies_to(record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security."):
            return True
        return record.name == "django.request" and 400 <= getattr(record, "status_code", 500) < 500

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.applies_to(record):
            return True
        judged = getattr(record, "_client_throttle", None)
        if judged is not None:
            return judged
        key, now = (record.name, getattr(record, "status_code", None)), self.clock()
        with self._lock:
            window = self.windows.get(key)
            if window is not None and now - window[0] < self.interval_s:
                window[1] += 1
                record._client_throttle = False
                return False
            left_out = window[1] if window is not None else 0
            self.windows[key] = [now, 0]
        message = record.getMessage()
        if len(message) > self.max_chars:
            message = message[:self.max_chars] + f"… ({len(message)} characters)"
        if left_out:
            message += f" [{left_out} more like this in the {self.interval_s:g} s before, not logged]"
        record.msg, record.args = message, None
        record.exc_info = record.exc_text = record.stack_info = None
        record._client_throttle = True
        return True


# The handler -------------------------------------------------------------------------------------

def log_source(logger_name: str) -> str:
    if logger_name.startswith(RUNNER_LOGGER_PREFIX):
        return logger_name[len(RUNNER_LOGGER_PREFIX):]
    return logger_name


class DatabaseLogHandler(logging.Handler):
    """Stores log records as LogRecord rows through the background writer, scrubbed first.

    Records logged by the writer thread itself are skipped: a failing insert would otherwise log a
    warning that queues another insert that fails.
    """

    def __init__(self, level=logging.NOTSET):
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == writer.thread_ident or record.name.startswith(IGNORED_LOGGERS):
            return
        try:
            message = scrub(self.format(record))[:MAX_MESSAGE_CHARS]
            writer.submit("system_app.LogRecord", {
                "created_at": datetime.fromtimestamp(record.created, tz=timezone.utc),
                "level": record.levelname[:10],
                "levelno": record.levelno,
                "source": log_source(record.name)[:200],
                "message": message,
            })
        except Exception:  # a log call must never raise into the code that logged
            writer.count_dropped(1)
