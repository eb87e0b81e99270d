"""The database goes away under a running server (PostgreSQL stopped with pg_ctlcluster, then started).

Requests in that moment answer ServiceUnavailableError 503 in the envelope; the server answers 200
again by itself once PostgreSQL is back. The server is a real daphne process on the test database,
so its persistent connections and request signals behave as in production (the test client's do not).
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db import connection

from accounts.models import APIKey
from accounts.services import create_api_key
from system_app.logging import writer
from system_app.models import LogRecord, ResourceSample
from system_app.sampler import Sampler
from tests.envelope import assert_error, assert_ok
from tests.servers import start_server, stop_server

ON_POSTGRES = settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
CLUSTERS = Path("/etc/postgresql")

pytestmark = [
    pytest.mark.skipif(not ON_POSTGRES, reason="stopping the database server needs PostgreSQL (DATABASE_URL); "
                                               "SQLite has no server to stop"),
    pytest.mark.skipif(ON_POSTGRES and not CLUSTERS.is_dir(), reason="needs a local cluster run by pg_ctlcluster"),
    pytest.mark.django_db(transaction=True),
    # Stopping PostgreSQL would fail the other worker's tests: `make test` runs these alone, afterwards.
    pytest.mark.exclusive,
]


def pg_ctl(action: str) -> None:
    version = sorted(os.listdir(CLUSTERS))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action],
                   check=True, timeout=60, capture_output=True)


def wait_until_postgres_answers(timeout: float = 30.0) -> None:
    db = settings.DATABASES["default"]
    deadline = time.monotonic() + timeout
    while subprocess.run(["pg_isready", "-q", "-h", db.get("HOST") or "127.0.0.1", "-p", str(db.get("PORT") or 5432)],
                         timeout=10).returncode != 0:
        assert time.monotonic() < deadline, "PostgreSQL did not come back"
        time.sleep(0.2)


@contextmanager
def database_down():
    """PostgreSQL stopped for the body of the block, and always running again after it."""
    pg_ctl("stop")
    try:
        yield
    finally:
        pg_ctl("start")
        wait_until_postgres_answers()
        # This test process's own connection died with the server; the next query (the test
        # database flush, at the latest) must open a new one.
        connection.close()


@pytest.fixture
def server(transactional_db, tmp_path):
    """daphne serving the project on the test database; its output is in tmp_path/daphne.log."""
    process, base = start_server(tmp_path / "daphne.log", timeout=30)
    try:
        yield base
    finally:
        stop_server(process, timeout=10)


def test_requests_during_an_outage_answer_503_and_the_server_recovers_by_itself(server, make_user):
    _, raw = create_api_key(user=make_user("system_status", "model_read"))
    api = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {raw}"}, timeout=20)
    assert_ok(api.get("/system/status"))
    assert_ok(api.get("/models/"))
    with database_down():
        assert_error(api.get("/system/status"), 503, "ServiceUnavailableError")
        assert_error(api.get("/models/"), 503, "ServiceUnavailableError")
        body = assert_error(api.get("/readyz"), 503, "ServiceUnavailableError")
        assert body["error_details"]["checks"]["database"] == "failed"
        assert_ok(api.get("/healthz"))  # liveness does not depend on the database
    assert_ok(api.get("/system/status"))
    assert_ok(api.get("/models/"))
    assert assert_ok(api.get("/readyz"))["data"]["status"] == "ready"


def test_a_session_request_that_fails_in_django_itself_answers_503_too(server, make_user):
    # The admin reads the session and the user outside DRF: the failure reaches Django's handler500.
    make_user(superuser=True, username="outage-admin")
    browser = httpx.Client(base_url=server, timeout=20)
    page = browser.get("/admin/login/")
    token = browser.cookies["csrftoken"]
    browser.post("/admin/login/", data={"username": "outage-admin", "password": "pw-for-tests-only",
                                        "csrfmiddlewaretoken": token}, headers={"Referer": f"{server}/admin/login/"})
    assert page.status_code == 200 and browser.get("/admin/").status_code == 200
    with database_down():
        assert_error(browser.get("/admin/"), 503, "ServiceUnavailableError")
    assert browser.get("/admin/").status_code == 200


def test_the_sampler_and_the_log_handler_drop_count_and_recover(db_log_handler):
    sampler = Sampler()
    log = logging.getLogger("tests.outage")
    sampler.start(interval_s=0.1, prune_interval_s=3600)
    try:
        log.warning("before the outage")
        assert writer.flush()
        with database_down():
            failures, dropped = sampler.failures, writer.dropped
            started = time.perf_counter()
            for number in range(5):
                log.warning("during the outage %d", number)
            assert time.perf_counter() - started < 0.5  # logging never waits for the database
            assert writer.flush(timeout=30)
            deadline = time.monotonic() + 10
            while sampler.failures < failures + 2:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert writer.dropped >= dropped + 5 and sampler.running
        samples = ResourceSample.objects.count()
        log.warning("after the outage")
        assert writer.flush(timeout=30)
        deadline = time.monotonic() + 10
        while ResourceSample.objects.count() <= samples:
            assert time.monotonic() < deadline, "the sampler did not store again"
            time.sleep(0.05)
    finally:
        sampler.stop()
    messages = list(LogRecord.objects.filter(source="tests.outage").values_list("message", flat=True))
    assert "before the outage" in messages and "after the outage" in messages
    assert not any(message.startswith("during the outage") for message in messages)
