"""SQLite whose connections outlive a request: closed connections wait in a small per-process pool.

Under ASGI, Django runs every request's sync code in a thread of its own and closes the request's
connection at the end, so each request paid for a new SQLite connection: opening the file,
registering Django's SQL functions and parsing the schema on the first query (about 1 ms here,
more than the query itself). Django's answer for ASGI is a connection pool, which it ships for
PostgreSQL only; this backend is that pool for SQLite. ``check_same_thread`` is already off in
Django's SQLite backend, so a connection may serve another thread once its first user is done.

A connection is pooled only outside any transaction (an open one is rolled back first) and with
foreign keys on (one whose checks were switched off is closed instead). The pool is keyed by the
identity (device, inode) of the file the connection was opened on and by the process, so a test
database recreated under the same name, or a forked child, never receives a connection to the old
file.
"""

from __future__ import annotations

import os
import threading

from django.db.backends.sqlite3 import base

# Enough for the request threads of one busy web process; more idle connections only hold memory.
MAX_IDLE = 8

_lock = threading.Lock()
_idle: dict[tuple, list] = {}


def _file_identity(name) -> tuple | None:
    try:
        stat = os.stat(name)
    except (OSError, TypeError, ValueError):
        return None
    return (os.getpid(), str(name), stat.st_dev, stat.st_ino)


def _take(key: tuple):
    with _lock:
        for other in [k for k in _idle if k[1] == key[1] and k != key]:
            # The file was replaced (a recreated test database): its connections point at the old one.
            for stale in _idle.pop(other):
                stale.close()
        idle = _idle.get(key)
        return idle.pop() if idle else None


def _give_back(key: tuple, raw) -> bool:
    with _lock:
        idle = _idle.setdefault(key, [])
        if len(idle) < MAX_IDLE:
            idle.append(raw)
            return True
    return False


def idle_count(name) -> int:
    """Idle connections pooled for the database file ``name`` in this process."""
    with _lock:
        return sum(len(idle) for key, idle in _idle.items() if key[1] == str(name))


def close_idle() -> None:
    with _lock:
        pools = list(_idle.values())
        _idle.clear()
    for idle in pools:
        for raw in idle:
            raw.close()


class DatabaseWrapper(base.DatabaseWrapper):
    # The pool key of the open connection (the file it was opened on), and whether its foreign keys
    # were switched off (schema changes do that) and not yet back on.
    _open_key: tuple | None = None
    _constraints_off = False

    def _pool_key(self) -> tuple | None:
        if self.is_in_memory_db():
            return None
        return _file_identity(self.settings_dict["NAME"])

    def get_new_connection(self, conn_params):
        key = self._open_key = self._pool_key()
        raw = _take(key) if key is not None else None
        if raw is None:
            raw = super().get_new_connection(conn_params)
            if key is None:
                # The file did not exist before this connection created it.
                self._open_key = self._pool_key()
        return raw

    def disable_constraint_checking(self):
        self._constraints_off = True
        return super().disable_constraint_checking()

    def enable_constraint_checking(self):
        super().enable_constraint_checking()
        self._constraints_off = False

    def _close(self):
        raw, key = self.connection, self._open_key
        self._open_key = None
        if raw is None or key is None or self._constraints_off:
            # Never pooled with foreign keys off: the next user would silently lose the checks.
            self._constraints_off = False
            return super()._close()
        try:
            if raw.in_transaction:
                raw.rollback()
        except Exception:
            return super()._close()
        if not _give_back(key, raw):
            return super()._close()
        return None
