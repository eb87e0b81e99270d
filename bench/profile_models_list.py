"""In-process cost of authenticated ``GET /models/`` against ``GET /healthz`` (issues #15, #20).

    .venv/bin/python -m bench.profile_models_list [--requests N] [--rounds R] [--top K]

The data is what part 3 of ``make bench`` meets: migrate, ``bootstrap`` (the seed registry, the
bundled entries, the superuser ``admin``), and a fresh API key of that user sent as
``Authorization: Bearer``. No Redis, as on the benchmark's server, so the key is read from the
database on every request (accounts/key_cache.py). SQLite in a fresh data dir, or the database
that ``DATABASE_URL`` names (migrated and bootstrapped there; the key is deleted at the end).
Unlike part 3, no model is loaded: every entry reports ``unloaded``.

Timings go through the real ASGI application (``beautyai_site.asgi``, what daphne calls), one
request at a time, with the routes alternating in rounds; each figure is the median over the rounds
of the mean time per request. The profile and the query list come from Django's test client (the
same middleware, views and renderer, but in this thread, where cProfile and the query log see it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time


def _environment() -> str | None:
    """Like bench/server.py: no Redis, offline, the project's settings; a fresh data dir unless
    BEAUTYAI_DATA_DIR is set. Returns the temporary dir to remove afterwards, if one was made."""
    for name in ("REDIS_URL", "DJANGO_DEBUG", "BEAUTYAI_MODEL_ROOTS"):
        os.environ.pop(name, None)
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                       "DJANGO_SETTINGS_MODULE": "beautyai_site.settings"})
    if os.environ.get("BEAUTYAI_DATA_DIR"):
        return None
    made = tempfile.mkdtemp(prefix="beautyai-profile-")
    os.environ["BEAUTYAI_DATA_DIR"] = made
    return made


def _prepare():
    """Migrates and bootstraps; returns the key row and its clear text."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    from accounts.services import create_api_key
    from models_app.bootstrap import ADMIN_USERNAME, bootstrap

    call_command("migrate", verbosity=0, interactive=False)
    bootstrap()
    return create_api_key(user=get_user_model().objects.get(username=ADMIN_USERNAME), name="profile_models_list")


class ASGIClient:
    """Sends one GET at a time into an ASGI application, as daphne would, and returns status and body."""

    def __init__(self, application, headers: dict[str, str]):
        self.application = application
        self.headers = [(b"host", b"127.0.0.1")] + [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def get(self, path: str) -> tuple[int, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": self.headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
        sent = []
        requested = False
        never = asyncio.get_running_loop().create_future()

        async def receive():
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            # Django listens for a disconnect while the view runs; the client stays until it is done.
            return await never

        async def send(message):
            sent.append(message)

        await self.application(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def _timed(client: ASGIClient, path: str, n: int) -> float:
    """Mean ms per request of ``n`` sequential GETs of ``path``."""
    started = time.perf_counter()
    for _ in range(n):
        status, body = await client.get(path)
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}: {body[:500]!r}")
    return (time.perf_counter() - started) * 1000 / n


async def measure(client: ASGIClient, paths: tuple[str, ...], requests: int, rounds: int) -> dict[str, float]:
    for path in paths:  # warm-up: imports, URL resolver, connections, request threads
        await _timed(client, path, max(20, requests // 10))
    means: dict[str, list[float]] = {path: [] for path in paths}
    for run in range(rounds):
        order = paths if run % 2 == 0 else paths[::-1]
        for path in order:
            means[path].append(await _timed(client, path, requests))
    return {path: statistics.median(values) for path, values in means.items()}


def profile(raw_key: str, requests: int, top: int) -> None:
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST="127.0.0.1", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    for _ in range(20):
        client.get("/models/")
    with CaptureQueriesContext(connection) as captured:
        response = client.get("/models/")
    assert response.status_code == 200, response.content[:500]
    print(f"\nqueries of one GET /models/ ({len(captured.captured_queries)}):")
    for query in captured.captured_queries:
        print(f"  {query['sql'][:160]}")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        client.get("/models/")
    profiler.disable()
    print(f"\ncProfile of {requests} GET /models/ through the test client, by cumulative time:")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("cumulative").print_stats(top)
    print("by own time:")
    pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per route and round (default 300)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, routes alternating (default 5)")
    parser.add_argument("--top", type=int, default=40, help="profile lines to print (default 40)")
    args = parser.parse_args(argv)
    made = _environment()
    try:
        from beautyai_site.asgi import application  # sets Django up
        from django.db import connection

        key, raw = _prepare()
        try:
            client = ASGIClient(application, {"Authorization": f"Bearer {raw}"})
            result = asyncio.run(measure(client, ("/healthz", "/models/"), args.requests, args.rounds))
            status, body = asyncio.run(client.get("/models/"))
            listed = json.loads(body)
            print(f"database: {connection.vendor}; models listed: {len(listed['models'])} of {listed['total_count']}; "
                  f"{args.rounds} rounds of {args.requests} requests per route (median of round means)")
            for path, ms in result.items():
                print(f"  GET {path:<9} {ms:6.3f} ms per request")
            print(f"  /models/ ÷ /healthz time: {result['/models/'] / result['/healthz']:.2f}"
                  f"  (requests/s ratio {result['/healthz'] / result['/models/']:.3f})")
            profile(raw, args.requests, args.top)
        finally:
            key.delete()
            from system_app.logging import writer

            writer.stop()  # its request-metric rows, before their database goes away
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
