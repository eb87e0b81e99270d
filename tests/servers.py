"""Real daphne servers for tests: started through ``beautyai_site.serve`` on 127.0.0.1, against the test database."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_database_url() -> str:
    """The URL of the database this test process uses, so a server process can share it."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    credentials = quote(db["USER"]) + (f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else "")
    return f"postgres://{credentials}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def start_server(log_path: Path, *, env: dict | None = None, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Starts daphne and waits until it answers; returns the process and its base URL."""
    port = free_port()
    # Offline unless the test set otherwise (the hub_server fixture points HF_ENDPOINT at a local hub).
    full_env = {"HF_HUB_OFFLINE": "1", **os.environ, "DATABASE_URL": test_database_url(),
                "DJANGO_SETTINGS_MODULE": "beautyai_site.settings_test", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "beautyai_site.serve", "-b", "127.0.0.1", "-p", str(port),
             "beautyai_site.asgi:application"],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return process, url
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                stop_server(process)
                raise RuntimeError(f"the server did not start; see {log_path}") from None
            time.sleep(0.1)


def stop_server(process: subprocess.Popen, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout``; True when the server stopped by itself."""
    process.terminate()
    try:
        process.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False


def read_events(response, stop_after=None, lines=None):
    """Parses ``event:``/``data:`` pairs; stops early after ``stop_after`` delta events if given.
    Pass one ``lines`` iterator to read a stream in several calls."""
    events, current = [], None
    for line in lines if lines is not None else response.iter_lines():
        if line.startswith("event: "):
            current = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((current, json.loads(line[len("data: "):])))
            if stop_after and sum(1 for kind, _ in events if kind == "delta") >= stop_after:
                break
    return events
