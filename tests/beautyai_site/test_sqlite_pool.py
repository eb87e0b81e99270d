"""The SQLite backend's connection pool, on real SQLite files of its own (whatever the suite's database is)."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest
from django.db.utils import ConnectionHandler

from beautyai_site.sqlite_pool import base as pool


def wrapper_for(path):
    """A fresh Django connection to ``path`` through the pooled backend, as a request thread gets one."""
    return ConnectionHandler({"default": {"ENGINE": "beautyai_site.sqlite_pool", "NAME": str(path)}})["default"]


def scalar(conn, sql):
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def raw_of(conn):
    conn.ensure_connection()
    return conn.connection


@pytest.fixture(autouse=True)
def own_databases(django_db_blocker):
    # These connections are to the tests' own files, not the suite's database pytest-django guards.
    with django_db_blocker.unblock():
        yield


@pytest.fixture
def db_file(tmp_path):
    path = tmp_path / "pool.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE item (name TEXT)")
    yield path
    pool.close_idle()


def in_thread(fn):
    result = {}
    thread = threading.Thread(target=lambda: result.update(value=fn()))
    thread.start()
    thread.join()
    return result["value"]


def test_a_closed_connection_is_reused_by_the_next_request_thread(db_file):
    first = wrapper_for(db_file)
    raw = raw_of(first)
    first.close()
    assert pool.idle_count(db_file) == 1

    def next_request():
        conn = wrapper_for(db_file)
        count = scalar(conn, "SELECT count(*) FROM item")
        reused = conn.connection is raw
        conn.close()
        return reused, count

    assert in_thread(next_request) == (True, 0)
    assert pool.idle_count(db_file) == 1


def test_an_open_transaction_is_rolled_back_before_the_connection_is_pooled(db_file):
    conn = wrapper_for(db_file)
    conn.set_autocommit(False)
    with conn.cursor() as cursor:
        cursor.execute("INSERT INTO item VALUES ('uncommitted')")
    conn.close()

    again = wrapper_for(db_file)
    raw = raw_of(again)
    assert not raw.in_transaction
    assert scalar(again, "SELECT count(*) FROM item") == 0
    again.close()


def test_the_connection_that_created_the_database_file_is_pooled_too(tmp_path):
    path = tmp_path / "new.sqlite3"
    conn = wrapper_for(path)
    raw = raw_of(conn)
    conn.close()
    assert pool.idle_count(path) == 1
    again = wrapper_for(path)
    assert raw_of(again) is raw
    again.close()
    pool.close_idle()


@pytest.mark.parametrize("switched_back_on", [False, True])
def test_a_connection_is_pooled_only_with_its_foreign_keys_on(db_file, switched_back_on):
    conn = wrapper_for(db_file)
    raw = raw_of(conn)
    conn.disable_constraint_checking()
    if switched_back_on:
        conn.enable_constraint_checking()
    conn.close()
    assert pool.idle_count(db_file) == int(switched_back_on)

    again = wrapper_for(db_file)
    assert (raw_of(again) is raw) == switched_back_on
    assert scalar(again, "PRAGMA foreign_keys") == 1
    again.close()


def test_a_database_file_replaced_under_the_same_name_never_gets_the_old_files_connections(db_file):
    old = wrapper_for(db_file)
    old_raw = raw_of(old)
    old.close()
    assert pool.idle_count(db_file) == 1

    os.remove(db_file)
    with sqlite3.connect(db_file) as setup:
        setup.execute("CREATE TABLE other (x INTEGER)")

    new = wrapper_for(db_file)
    assert raw_of(new) is not old_raw
    with new.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        assert [row[0] for row in cursor.fetchall()] == ["other"]
    new.close()
    # The stale connection was closed, not kept: only the new file's connection waits.
    assert pool.idle_count(db_file) == 1
    with pytest.raises(sqlite3.ProgrammingError):
        old_raw.execute("SELECT 1")


def test_the_pool_keeps_at_most_max_idle_connections(db_file):
    conns = [wrapper_for(db_file) for _ in range(pool.MAX_IDLE + 3)]
    raws = [raw_of(conn) for conn in conns]
    for conn in conns:
        conn.close()
    assert pool.idle_count(db_file) == pool.MAX_IDLE
    closed = []
    for raw in raws:
        try:
            raw.execute("SELECT 1")
        except sqlite3.ProgrammingError:
            closed.append(raw)
    assert len(closed) == 3


def test_an_in_memory_database_is_never_pooled():
    conn = wrapper_for(":memory:")
    conn.ensure_connection()
    assert conn._pool_key() is None
    conn.close()
    assert pool.idle_count(":memory:") == 0
