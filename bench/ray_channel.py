"""How tokens should travel from a runner actor to a web process under BEAUTYAI_PLACEMENT=ray (issue #17).

    .venv/bin/python -m bench.ray_channel

Starts a one-node Ray cluster on 127.0.0.1 inside this process and one actor that is a fake token
source (no engine: it emits small text deltas on a schedule). The driver (this process, in the place
of the web process) receives the same generation over three channels:

* ``ray``    — a Ray streaming generator (``num_returns="streaming"``): one Ray object per delta, the
               driver iterates the ObjectRefGenerator and ``ray.get``s each ref;
* ``socket`` — what models_app/serving/ray_placement.py does: the actor listens on an authenticated
               ``multiprocessing.connection`` socket whose address it hands out through Ray, the driver
               connects once, sends a protocol.py ``Generate`` and reads ``Delta`` messages until ``Done``;
* ``socket_nodelay`` — the same with ``TCP_NODELAY`` set on both ends of the connection. A delta is a
               small write; with Nagle's algorithm on (what ``multiprocessing.connection`` leaves), a
               write made while an earlier one is unacknowledged waits for the ACK, which the receiver
               may delay by up to 40 ms (Linux's delayed-ACK minimum).

Three schedules: ``flat`` (the actor emits as fast as it can: the most a channel relays), ``paced``
(one delta every ``BENCH_CHANNEL_INTERVAL_MS``, about a fast GPU engine's rate, so the latency is the
channel's own and not a queue behind a faster producer) and ``batched`` (16 deltas back to back every
20 ms: a batching engine's step for 16 streams, whose deltas leave together). Per run: tokens/s
relayed (deltas − 1 over the span between the first and the last arrival), the added latency per
delta (arrival − emission,
both ``time.time()`` on this one host; median and p99 over the run's deltas) and the TTFT (request
sent to first delta received; the socket is already connected, as a web process's is). The sides
alternate run by run; every figure is the median of the runs.

Options (environment):
  BENCH_RUNS                    runs per figure (default 5)
  BENCH_CHANNEL_TOKENS          deltas per flat-out run (default 2000)
  BENCH_CHANNEL_PACED_TOKENS    deltas per paced run (default 200)
  BENCH_CHANNEL_INTERVAL_MS     the paced schedule (default 5 ms: 200 deltas/s)
  BENCH_RESULTS_DIR             where ray_channel-<stamp>.json goes (nothing is written when unset)

Prints a Markdown table. A bench-only script: nothing in the project imports it.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from multiprocessing.connection import Client, Listener
from pathlib import Path

from bench import stats

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NAMES = {"ray": "Ray streaming generator", "socket": "socket, runner protocol (as ray_placement)",
         "socket_nodelay": "socket, runner protocol, TCP_NODELAY"}
TEXT = " word"  # one small text delta, about a token's worth
SIDES = ("ray", "socket", "socket_nodelay")


class TokenSource:
    """The actor: a stand-in for a runner whose engine produces ``n`` deltas, ``interval_s`` apart
    (0: as fast as it can). It records when it emitted each delta; the driver asks afterwards."""

    def __init__(self):
        from models_app.serving import protocol as p

        self._p = p
        self._authkey = secrets.token_bytes(32)
        # One listener as ray_placement's runner actor has it, one that turns Nagle's algorithm off.
        self._listeners = {nodelay: Listener(("127.0.0.1", 0), authkey=self._authkey) for nodelay in (False, True)}
        self._emitted: dict[str, list[float]] = {}
        for nodelay, listener in self._listeners.items():
            threading.Thread(target=self._accept, args=(listener, nodelay), daemon=True).start()

    def endpoint(self, nodelay: bool) -> dict:
        return {"address": self._listeners[nodelay].address, "authkey": self._authkey}

    def emitted(self, generation_id: str) -> list[float]:
        return self._emitted.pop(generation_id)

    @staticmethod
    def _schedule(n: int, interval_s: float, burst: int):
        """`burst` deltas back to back every `interval_s` (0: all as fast as possible)."""
        start = time.perf_counter()
        for i in range(n):
            if interval_s and i % burst == 0:
                delay = start + (i // burst) * interval_s - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield i

    # (a) one Ray object per delta
    def stream(self, generation_id: str, n: int, interval_s: float, burst: int):
        p = self._p
        times = []
        for _ in self._schedule(n, interval_s, burst):
            times.append(time.time())
            yield p.encode(p.Delta(id=generation_id, text=TEXT))
        self._emitted[generation_id] = times

    # (b) the runner protocol over the actor's own socket
    def _accept(self, listener, nodelay: bool) -> None:
        while True:
            try:
                conn = listener.accept()
            except OSError:
                return
            if nodelay:
                set_nodelay(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        p = self._p
        while True:
            try:
                request = p.decode(conn.recv())
            except (EOFError, OSError):
                return
            times = []
            for _ in self._schedule(request.params["n"], request.params["interval_s"], request.params["burst"]):
                times.append(time.time())
                conn.send(p.encode(p.Delta(id=request.id, text=TEXT)))
            self._emitted[request.id] = times  # before Done: the driver asks for them once it sees Done
            conn.send(p.encode(p.Done(id=request.id, stats={})))


def set_nodelay(conn) -> None:
    """TCP_NODELAY on a multiprocessing connection's socket (through a duplicate of its descriptor: the
    option belongs to the socket, not to the descriptor)."""
    import socket

    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.close()


def _run_result(sent: float, emitted: list[float], received: list[float]) -> dict:
    latency_ms = [(r - e) * 1000.0 for e, r in zip(emitted, received)]
    span = received[-1] - received[0] if len(received) > 1 else 0.0
    return {"deltas": len(received), "emitted": len(emitted),
            "tokens_per_s": (len(received) - 1) / span if span > 0 else None,
            "ttft_ms": (received[0] - sent) * 1000.0 if received else None,
            "added_ms_p50": stats.percentile(latency_ms, 50), "added_ms_p99": stats.percentile(latency_ms, 99),
            "added_ms_max": max(latency_ms, default=None), "total_ms": (received[-1] - sent) * 1000.0}


def via_ray(ray, actor, n: int, interval_s: float, burst: int) -> dict:
    from models_app.serving import protocol as p

    generation_id = uuid.uuid4().hex
    received = []
    sent = time.time()
    for ref in actor.stream.options(num_returns="streaming").remote(generation_id, n, interval_s, burst):
        p.decode(ray.get(ref))
        received.append(time.time())
    return _run_result(sent, ray.get(actor.emitted.remote(generation_id)), received)


def via_socket(ray, actor, conn, n: int, interval_s: float, burst: int) -> dict:
    from models_app.serving import protocol as p

    generation_id = uuid.uuid4().hex
    received = []
    sent = time.time()
    conn.send(p.encode(p.Generate(id=generation_id, messages=[], params={"n": n, "interval_s": interval_s,
                                                                                    "burst": burst})))
    while True:
        message = p.decode(conn.recv())
        if isinstance(message, p.Done):
            break
        received.append(time.time())
    return _run_result(sent, ray.get(actor.emitted.remote(generation_id)), received)


def _summary(rows: list[dict]) -> dict:
    return {key: stats.median(r[key] for r in rows)
            for key in ("tokens_per_s", "ttft_ms", "added_ms_p50", "added_ms_p99", "added_ms_max", "total_ms")}


def measure(runs: int = 5, flat_tokens: int = 2000, paced_tokens: int = 200, interval_ms: float = 5.0,
            log=lambda message: print(message, file=sys.stderr, flush=True)) -> dict:
    # Ray reads this when it starts a node: every process binds 127.0.0.1 only.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    # name: (deltas, seconds between bursts, deltas per burst)
    schedules = {"flat": (flat_tokens, 0.0, 1), "paced": (paced_tokens, interval_ms / 1000.0, 1),
                 "batched": (16 * 20, 0.020, 16)}
    result = {"stamp": datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"), "ray": ray.__version__,
              "runs": runs, "text": TEXT, "loadavg_start": list(os.getloadavg()), "cpus": os.cpu_count(),
              "schedules": {k: {"deltas": n, "interval_ms": s * 1000.0, "burst": b}
                            for k, (n, s, b) in schedules.items()},
              "raw": {}, "summary": {}}
    # "local": a cluster of its own, even when another one on this host wrote /tmp/ray/ray_current_cluster.
    ray.init(address="local", include_dashboard=False, num_cpus=2, object_store_memory=80 * 1000 * 1000,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}})
    try:
        actor = ray.remote(TokenSource).options(max_concurrency=4, num_cpus=0).remote()
        conns = {}
        for nodelay in (False, True):
            endpoint = ray.get(actor.endpoint.remote(nodelay))
            started = time.perf_counter()
            conns[nodelay] = Client(tuple(endpoint["address"]), authkey=endpoint["authkey"])
            result["socket_connect_ms"] = (time.perf_counter() - started) * 1000.0
            if nodelay:
                set_nodelay(conns[nodelay])
        sides = {"ray": lambda *schedule: via_ray(ray, actor, *schedule),
                 "socket": lambda *schedule: via_socket(ray, actor, conns[False], *schedule),
                 "socket_nodelay": lambda *schedule: via_socket(ray, actor, conns[True], *schedule)}
        try:
            for schedule, (n, interval_s, burst) in schedules.items():
                for fn in sides.values():  # warm-up: worker imports, first object, first pickles
                    fn(min(n, 48), interval_s, burst)
                rows = {side: [] for side in sides}
                for run in range(runs):
                    order = list(SIDES[run % len(SIDES):] + SIDES[:run % len(SIDES)])
                    for side in order:
                        rows[side].append(sides[side](n, interval_s, burst))
                    log(f"[ray_channel] {schedule} run {run + 1}/{runs}: " + ", ".join(
                        f"{side} {stats.fmt(rows[side][-1]['tokens_per_s'], 0)} tok/s, added p50 "
                        f"{stats.fmt(rows[side][-1]['added_ms_p50'], 3)} ms" for side in SIDES))
                result["raw"][schedule] = rows
                result["summary"][schedule] = {side: _summary(rs) for side, rs in rows.items()}
        finally:
            for conn in conns.values():
                conn.close()
            ray.kill(actor)
    finally:
        ray.shutdown()
    result["loadavg_end"] = list(os.getloadavg())
    return result


def markdown(result: dict) -> str:
    lines = [f"Ray {result['ray']}, one node on 127.0.0.1 ({result['cpus']} cores), {result['runs']} runs per figure "
             f"(medians), sides alternating; load average {result['loadavg_start'][0]:.2f} at start, "
             f"{result.get('loadavg_end', [0])[0]:.2f} at end.", "",
             "| schedule | channel | tokens/s relayed | added latency p50 ms | added latency p99 ms | TTFT ms |",
             "|---|---|---|---|---|---|"]
    for schedule, by_side in result["summary"].items():
        conf = result["schedules"][schedule]
        if not conf["interval_ms"]:
            label = f"flat out, {conf['deltas']} deltas"
        elif conf["burst"] == 1:
            label = f"paced, {conf['deltas']} deltas, one every {conf['interval_ms']:g} ms"
        else:
            label = f"batched, {conf['deltas']} deltas, {conf['burst']} every {conf['interval_ms']:g} ms"
        for side in SIDES:
            s = by_side[side]
            name = NAMES[side]
            lines.append(f"| {label} | {name} | {stats.fmt(s['tokens_per_s'], 0)} | {stats.fmt(s['added_ms_p50'], 3)} | "
                         f"{stats.fmt(s['added_ms_p99'], 3)} | {stats.fmt(s['ttft_ms'], 2)} |")
    lines += ["", f"Socket connect (once per web process and runner): {stats.fmt(result.get('socket_connect_ms'), 2)} ms."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(__doc__)
        return 0 if argv[0] in ("-h", "--help") else 2
    result = measure(runs=int(os.environ.get("BENCH_RUNS") or 5),
                     flat_tokens=int(os.environ.get("BENCH_CHANNEL_TOKENS") or 2000),
                     paced_tokens=int(os.environ.get("BENCH_CHANNEL_PACED_TOKENS") or 200),
                     interval_ms=float(os.environ.get("BENCH_CHANNEL_INTERVAL_MS") or 5.0))
    text = markdown(result)
    print(text)
    out_dir = os.environ.get("BENCH_RESULTS_DIR")
    if out_dir:
        path = Path(out_dir) / f"ray_channel-{result['stamp']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        print(path, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
