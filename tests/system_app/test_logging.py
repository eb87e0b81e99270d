"""The database log handler, its background writer, and GET /system/logs."""

from __future__ import annotations

import logging
import threading
import time
from unittest import mock

import pytest
from django.db import OperationalError
from django.db.models.query import QuerySet

from system_app.logging import BackgroundWriter, ClientTriggeredLogThrottle, scrub, writer
from system_app.models import LogRecord
from tests.envelope import ISO_Z, assert_error, assert_ok

pytestmark = pytest.mark.django_db(transaction=True)

log = logging.getLogger("tests.system_app")


def stored(source: str = "tests.system_app") -> list[str]:
    assert writer.flush()
    return list(LogRecord.objects.filter(source=source).order_by("id").values_list("message", flat=True))


def test_logs_are_stored_and_served_at_a_level_and_above_newest_last(api_as, db_log_handler):
    log.debug("debug line")
    log.info("info line")
    log.warning("warning line")
    log.error("error line")
    log.critical("critical line")
    assert writer.flush()
    data = assert_ok(api_as("admin").get("/system/logs?level=warning"))["data"]
    assert data["log_level"] == "WARNING" and data["lines_requested"] == 100 and data["order"] == "oldest_first"
    ours = [entry for entry in data["logs"] if entry["source"] == "tests.system_app"]
    assert [entry["message"] for entry in ours] == ["warning line", "error line", "critical line"]
    assert [entry["level"] for entry in ours] == ["WARNING", "ERROR", "CRITICAL"]
    assert all(ISO_Z.match(entry["timestamp"]) for entry in ours)
    assert data["total_lines"] == len(data["logs"])


def test_lines_returns_the_newest_records(api_as, db_log_handler):
    for number in range(5):
        log.error("numbered %d", number)
    assert writer.flush()
    data = assert_ok(api_as("admin").get("/system/logs?level=ERROR&lines=2"))["data"]
    assert [entry["message"] for entry in data["logs"]] == ["numbered 3", "numbered 4"]
    assert data["total_lines"] == 2


def test_the_default_level_is_info(api_as, db_log_handler):
    log.debug("too detailed")
    log.info("worth keeping")
    assert writer.flush()
    messages = [entry["message"] for entry in assert_ok(api_as("admin").get("/system/logs"))["data"]["logs"]]
    assert "worth keeping" in messages and "too detailed" not in messages


def test_a_runners_log_lines_carry_the_model_name_as_source(db_log_handler):
    # EngineManager logs what a runner sends under models_app.serving.runner.<model name>.
    logging.getLogger("models_app.serving.runner.smol-1.5b").warning("kv cache full")
    assert writer.flush()
    row = LogRecord.objects.get(message="kv cache full")
    assert (row.source, row.level, row.levelno) == ("smol-1.5b", "WARNING", 30)


def test_keys_authorization_headers_and_passwords_are_scrubbed_before_storage(db_log_handler):
    key = "bai_0123abcd_Zm9vYmFyYmF6cXV4LXNlY3JldC1rZXktdmFsdWU"
    log.warning("request with Authorization: Bearer %s failed", key)
    log.warning("headers {'HTTP_AUTHORIZATION': 'Basic dXNlcjpodW50ZXIy'}")
    log.warning("key %s used from 10.0.0.1", key)
    log.warning('login {"username": "bob", "password": "hunter2"} and db_password=s3cret&x=1')
    log.warning("connecting to postgres://app:pg-secret@db:5432/beautyai")
    try:
        raise ValueError(f"token={key}")
    except ValueError:
        log.exception("failed with a key in the traceback")
    text = "\n".join(stored())
    for secret in ("Zm9vYmFy", "dXNlcjpodW50ZXIy", "hunter2", "s3cret", "pg-secret"):
        assert secret not in text
    assert "bai_0123abcd_[REDACTED]" in text and "Authorization: Bearer [REDACTED]" in text
    assert '"password": "[REDACTED]"' in text and "ValueError" in text


def test_scrubbing_leaves_ordinary_text_alone():
    text = "generated tokens_generated=128 max_tokens: 256 in 1.2 s for model org/name"
    assert scrub(text) == text


def test_scrubbing_a_long_run_of_word_characters_takes_linear_time():
    started = time.perf_counter()
    scrub("h" * 20000 + " " + "h-" * 10000)
    assert time.perf_counter() - started < 0.5


def test_sql_logging_and_the_writers_own_lines_are_not_stored(db_log_handler):
    logging.getLogger("django.db.backends").debug("SELECT 1")
    # A record made on the writer thread (its failure warnings) must not queue another write.
    record = logging.LogRecord("system_app.writer", logging.WARNING, __file__, 1, "writer says", None, None)
    record.thread = writer.thread_ident
    db_log_handler.handle(record)
    assert stored("django.db.backends") == [] and stored("system_app.writer") == []


def test_the_writer_drops_and_counts_while_the_database_fails_then_recovers(db_log_handler):
    dropped = writer.dropped
    with mock.patch.object(QuerySet, "bulk_create", side_effect=OperationalError("server closed the connection")):
        log.warning("lost while the database is down")
        assert writer.flush()
    assert writer.dropped == dropped + 1
    log.warning("stored after recovery")
    assert stored() == ["stored after recovery"]


def test_a_full_queue_drops_and_counts_without_blocking_the_caller():
    release = threading.Event()
    slow = BackgroundWriter()
    slow._write = lambda batch: release.wait(5)
    slow.start(queue_size=2)
    try:
        started = time.perf_counter()
        results = [slow.submit("system_app.LogRecord", {}) for _ in range(10)]
        assert time.perf_counter() - started < 0.1
        assert results.count(False) == slow.dropped >= 7
    finally:
        release.set()
        slow.stop()


def test_rows_arriving_one_by_one_are_written_together_after_the_writers_short_wait():
    batches = []
    batched = BackgroundWriter(linger_s=0.3)
    batched._write = lambda batch: batches.append(len(batch))
    batched.start(queue_size=100)
    try:
        for _ in range(5):
            assert batched.submit("system_app.RequestMetric", {})
            time.sleep(0.01)  # one request's row at a time, as under load
        assert batched.flush()
    finally:
        batched.stop()
    assert batches == [5]


def test_a_backlog_that_fills_a_batch_is_written_without_the_wait():
    release, lingered = threading.Event(), []
    real_sleep = time.sleep
    backlogged = BackgroundWriter(batch_size=3, linger_s=0.7)
    writes = []

    def write(batch):
        writes.append(len(batch))
        if len(writes) == 1:
            release.wait(5)  # while the first batch is written, a backlog builds up

    backlogged._write = write
    with mock.patch.object(time, "sleep", side_effect=lambda s: lingered.append(s) if s == 0.7 else real_sleep(s)):
        backlogged.start(queue_size=100)
        try:
            backlogged.submit("system_app.RequestMetric", {})
            while not writes:
                real_sleep(0.01)
            for _ in range(9):
                backlogged.submit("system_app.RequestMetric", {})
            release.set()
            assert backlogged.flush()
        finally:
            backlogged.stop()
    assert writes == [1, 3, 3, 3] and lingered == [0.7]


def test_without_a_running_writer_rows_are_not_kept():
    idle = BackgroundWriter()
    assert idle.submit("system_app.LogRecord", {}) is False
    assert idle.dropped == 0


@pytest.mark.parametrize("query", ["level=TRACE", "level=warn", "lines=0", "lines=1001", "lines=ten", "lines=1.5"])
def test_logs_refuse_a_bad_level_or_line_count(api_as, query):
    assert_error(api_as("admin").get(f"/system/logs?{query}"), 400, "ValidationError")


# What unauthenticated clients can make the server log at will ------------------------------------

@pytest.fixture
def client_throttle(db_log_handler):
    """The throttle from settings' LOGGING, with no window open from an earlier test."""
    throttle = next(f for f in db_log_handler.filters if isinstance(f, ClientTriggeredLogThrottle))
    throttle.windows.clear()
    return throttle


def test_five_hundred_requests_with_a_bad_host_leave_a_short_row_or_two_without_tracebacks(anon, client_throttle):
    host = "h" * 10000
    for _ in range(500):
        assert_error(anon.get("/models/", HTTP_HOST=host), 400, "ValidationError")
    rows = stored("django.security.DisallowedHost")
    assert 1 <= len(rows) <= 2  # one a minute: a second only if these requests took over a minute
    text = "\n".join(rows)
    assert host not in text and len(text) < 1000
    assert "Traceback" not in text and "/root/" not in text and 'File "' not in text and "/site-packages/" not in text


def record(name="django.security.DisallowedHost", message="Invalid HTTP_HOST header: %r.", args=("h" * 10000,),
           **extra) -> logging.LogRecord:
    try:
        raise ValueError("inside")
    except ValueError as exc:
        made = logging.LogRecord(name, logging.ERROR, __file__, 1, message, args, (type(exc), exc, exc.__traceback__))
    made.__dict__.update(extra)
    return made


def test_client_triggered_records_pass_once_a_minute_and_the_next_one_counts_those_left_out():
    now = [0.0]
    throttle = ClientTriggeredLogThrottle(clock=lambda: now[0])
    assert throttle.filter(record())
    assert [throttle.filter(record()) for _ in range(4)] == [False] * 4
    assert throttle.filter(record(name="django.security.csrf"))  # another kind has its own minute
    now[0] = 60
    passed = record()
    assert throttle.filter(passed)
    assert passed.getMessage().endswith("[4 more like this in the 60 s before, not logged]")


def test_their_text_is_cut_short_and_their_traceback_dropped():
    passed = record()
    assert ClientTriggeredLogThrottle().filter(passed)
    assert passed.getMessage().startswith("Invalid HTTP_HOST header: 'hhh") and "(10029 characters)" in passed.getMessage()
    assert len(passed.getMessage()) < 250 and passed.exc_info is None and passed.exc_text is None


def test_a_record_is_judged_once_whichever_handlers_see_it():
    throttle = ClientTriggeredLogThrottle()
    first, second = record(), record()
    assert throttle.filter(first) and throttle.filter(first)  # console, then database
    assert not throttle.filter(second) and not throttle.filter(second)


@pytest.mark.parametrize("other", [record(name="models_app.runtime"), record(name="django.request", status_code=500)])
def test_other_records_pass_untouched(other):
    throttle = ClientTriggeredLogThrottle()
    assert all(throttle.filter(other) for _ in range(3))
    assert other.exc_info is not None and len(other.getMessage()) > 10000

