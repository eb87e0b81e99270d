"""Closed-loop GET load: N clients, each with a keep-alive connection, for a fixed time.

Written on asyncio streams with a minimal HTTP/1.1 client instead of httpx: on a 2-core
machine the load generator shares the CPUs with the server, and a client that costs ten
times less per request keeps the comparison between routes about the server. Run it in its
own process (``hammer_in_process`` is picklable for a spawn pool) so that it does not share
a GIL with the streams the benchmark keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit


class _Conn:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def get(self, request: bytes) -> int:
        if self.writer is None:
            await self.open()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = None
        close = False
        chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await self.reader.readexactly(length)
        else:
            await self.reader.read()
            close = True
        if close:
            self.close()
        return status


async def hammer(url: str, path: str, headers: dict | None, clients: int, seconds: float,
                 warmup_seconds: float = 0.5) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}Accept: application/json\r\n\r\n".encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    start = time.perf_counter()
    measure_from = start + warmup_seconds
    stop_at = measure_from + seconds

    async def worker():
        conn = _Conn(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    status = await conn.get(request)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    conn.close()
                    if t0 >= measure_from:
                        errors.append(f"{exc.__class__.__name__}: {exc}")
                    continue
                t1 = time.perf_counter()
                # Only requests that started inside the window and ended by its end count, so
                # requests/s is completed requests over the window.
                if t0 >= measure_from and t1 <= stop_at:
                    latencies.append((t1 - t0) * 1000.0)
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(clients)))
    return {"path": path, "clients": clients, "seconds": seconds, "requests": len(latencies),
            "requests_per_s": len(latencies) / seconds, "latencies_ms": latencies,
            "statuses": {str(k): v for k, v in statuses.items()}, "errors": errors[:20],
            "error_count": len(errors)}


def hammer_in_process(url: str, path: str, headers: dict | None, clients: int, seconds: float,
                      warmup_seconds: float = 0.5) -> dict:
    return asyncio.run(hammer(url, path, headers, clients, seconds, warmup_seconds))
