"""The parts of `make bench` (issue 8; part 5: issue 18; part 6: issue 20). Each returns a JSON-ready dict of raw numbers and checks.

Every check is ``{"id", "part", "engine", "what", "target", "measured", "passed"}`` where
``passed`` is None when the figure could not be measured. Targets are reported, never asserted.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

from bench import clients, stats
from bench.server import HF, HF_BATCHED, LLAMA, BenchServer
from bench.token_source import MODEL_ID as SOURCE_MODEL_ID
from bench.token_source import TokenSource

MIB = 1024 * 1024


@dataclass
class Options:
    runs: int = 5
    tokens: int = 128
    tokens_transformers: int = 16
    parts: tuple[int, ...] = (1, 2, 3, 4)
    engines: tuple[str, ...] = ("llama.cpp", "transformers")
    soak_seconds: float = 600.0
    levels: tuple[int, ...] = (1, 4, 16)
    mgmt_clients: int = 16
    mgmt_seconds: float = 3.0
    load_cycles: int = 20
    overload_samples: int = 10
    transformers_threads: int | None = None  # n_threads for the transformers entries (both sides); None: default
    placement: str = "local"  # BENCH_PLACEMENT: local, ray (parts 1-2 on a Ray cluster) or both
    relay_tokens: int = 2000  # BENCH_RELAY_TOKENS: tokens per stream in part 6
    relay_streams: int = 16
    postgres_url: str | None = None  # BENCH_POSTGRES_URL: part 3 again on a fresh database there; None: SQLite only
    first_tokens: int = 0  # BENCH_FIRST_TOKENS: short chats per side in each part-1 run, for its TTFT figure

    def tokens_for(self, engine: str) -> int:
        return self.tokens if engine == "llama.cpp" else self.tokens_transformers


@dataclass
class Bench:
    server: BenchServer
    opts: Options
    started: float = field(default_factory=time.perf_counter)
    label: str = "start"

    def log(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=self.server.auth_headers(), timeout=900)


def check(cid: str, part: int, engine: str | None, what: str, target: str, measured, passed, note: str = "") -> dict:
    return {"id": cid, "part": part, "engine": engine, "what": what, "target": target, "measured": measured,
            "passed": passed, "note": note}


def _le(value, limit):
    return None if value is None else bool(value <= limit)


def _ge(value, limit):
    return None if value is None else bool(value >= limit)


def rotated(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def rss_mb(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / MIB
    except psutil.Error:
        return None


class Sampler(threading.Thread):
    """Every `interval` s: the web process's RSS and each of its children's, with the running part's label."""

    def __init__(self, bench: Bench, interval: float = 1.0):
        super().__init__(daemon=True, name="bench-sampler")
        self.bench, self.interval = bench, interval
        self.samples: list[dict] = []
        self._halt = threading.Event()

    def run(self):
        import psutil

        while not self._halt.wait(self.interval):
            try:
                web = psutil.Process(self.bench.server.pid)
                children = {}
                for child in web.children(recursive=True):
                    try:
                        children[str(child.pid)] = round(child.memory_info().rss / MIB, 1)
                    except psutil.Error:
                        pass
                child_cpu = 0.0
                for child in web.children(recursive=True):
                    try:
                        t = child.cpu_times()
                        child_cpu += t.user + t.system
                    except psutil.Error:
                        pass
                web_cpu = web.cpu_times()
                self.samples.append({"t": round(time.perf_counter() - self.bench.started, 2),
                                     "part": self.bench.label,
                                     # cumulative CPU seconds (children: those alive now), for diagnosis
                                     "web_cpu_s": round(web_cpu.user + web_cpu.system, 2),
                                     "children_cpu_s": round(child_cpu, 2),
                                     "bench_cpu_s": round(sum(os.times()[:2]), 2),
                                     "web_rss_mb": round(web.memory_info().rss / MIB, 1),
                                     "children_rss_mb": children, "loadavg1": os.getloadavg()[0]})
            except psutil.Error:
                pass

    def stop(self):
        self._halt.set()
        self.join(5)


def platform_config(server: BenchServer, name: str) -> dict:
    detail = server.model_config(name)
    return detail.get("model_config") or detail


def ensure_loaded(server: BenchServer, name: str) -> None:
    if server.status(name)["status"] != "loaded":
        server.load(name)


def ensure_batched_entry(bench: Bench) -> None:
    server = bench.server
    if not server.call("GET", f"/models/{HF_BATCHED}", expect=(200, 404)).get("success"):
        bench.log("converting the bundled GGUF to a safetensors folder for the batched transformers entry")
        started = time.perf_counter()
        server.add_batched_transformers()
        bench.log(f"  converted in {time.perf_counter() - started:.1f}s")
    apply_engine_options(bench, HF_BATCHED)


def apply_engine_options(bench: Bench, model: str) -> None:
    """BENCH_TRANSFORMERS_THREADS goes into the registry entry, so the runner and the direct worker
    (whose spec is built from the same entry) use the same thread count."""
    if bench.opts.transformers_threads and model in (HF, HF_BATCHED):
        bench.server.set_parameters(model, n_threads=bench.opts.transformers_threads)


def _side_summary(results: list[clients.StreamResult]) -> dict:
    good = [r for r in results if r.ok]
    return {
        "runs": len(results),
        "errors": [r.error for r in results if not r.ok],
        "decode_tps_median": stats.median(r.decode_tps for r in good),
        "ttft_ms_median": stats.median(r.ttft_ms for r in good),
        # Where the platform's TTFT goes: until its "start" event (auth, session, context, submit), and
        # the client's TTFT minus the engine's own (everything outside the engine).
        "start_ms_median": stats.median(None if r.start_at is None else r.start_at * 1000.0 for r in good),
        "outside_engine_ttft_ms_median": stats.median(
            stats.diff(r.ttft_ms, r.server_ttft_ms) for r in good if r.server_ttft_ms),
        "itl_p50_ms_median": stats.median(r.itl_p50_ms for r in good),
        "itl_p99_ms_median": stats.median(r.itl_p99_ms for r in good),
        "total_ms_median": stats.median(r.total_ms for r in good),
        "tokens": sorted({r.tokens for r in good}),
        "finish_reasons": sorted({str(r.finish_reason) for r in good}),
        "server_ttft_ms_median": stats.median(r.server_ttft_ms for r in good),
        "queue_time_ms_median": stats.median(r.queue_time_ms for r in good),
    }


# =============================================================================================
# Part 1: streaming overhead
# =============================================================================================

PART1_MODELS = {"llama.cpp": LLAMA, "transformers": HF}
TRANSPORTS = ("sse", "websocket", "v1")
# The first-token probes: chats of two tokens, each after the same pause on every side (the platform's
# writes after a reply's end are over by then, as they are before each of part 1's long streams).
PROBE_TOKENS = 2
PROBE_PAUSE_S = 0.05


def part_streaming(bench: Bench, engine_name: str) -> dict:
    server, opts = bench.server, bench.opts
    model = PART1_MODELS[engine_name]
    tokens = opts.tokens_for(engine_name)
    bench.label = f"1-{engine_name}"
    bench.log(f"part 1 ({engine_name}): loading {model} in the platform and in a direct worker")
    apply_engine_options(bench, model)
    platform_load_s, body = server.load(model)
    spec = clients.load_spec_from_config(model, platform_config(server, model))
    worker = clients.DirectWorker()
    try:
        direct_load_s = worker.load(spec)
    except Exception:
        worker.stop()
        raise
    http = bench.http()
    ws = clients.WSChat(server.url, server.api_key)
    oc = clients.openai_client(server.url, server.api_key)
    # Each side's chat of n tokens: the long streams and the first-token probes.
    sides = {
        "direct": lambda n: worker.stream(n),
        "sse": lambda n: clients.sse_stream(http, model, n),
        "websocket": lambda n: ws.stream(model, n),
        "v1": lambda n: clients.openai_stream(oc, model, n),
    }
    results: dict[str, list] = {side: [] for side in sides}
    # A stream gives one first token per run and side; the probes give opts.first_tokens more, so that
    # the TTFT figure is not the median of 7 single samples of a figure that varies by tens of ms.
    probes: dict[str, list] = {side: [] for side in sides}
    order_log = []
    try:
        bench.log(f"  warm-up ({tokens} tokens per stream)")
        for fn in sides.values():
            fn(tokens)
        for run in range(opts.runs):
            order = rotated(list(sides), run)
            order_log.append(order)
            for side in order:
                results[side].append(sides[side](tokens))
            for side in sides:
                probes[side].append([])
            for k in range(opts.first_tokens):
                for side in rotated(list(sides), run + k):
                    time.sleep(PROBE_PAUSE_S)
                    probes[side][-1].append(sides[side](PROBE_TOKENS))
            last = {s: results[s][-1] for s in sides}
            bench.log(f"  run {run + 1}/{opts.runs}: " + ", ".join(
                f"{s} {stats.fmt(r.decode_tps, 1)} tok/s ttft {stats.fmt(r.ttft_ms, 1)} ms"
                + ("" if r.ok else f" ERROR {r.error}") for s, r in last.items()))
    finally:
        ws.close()
        http.close()
        oc.close()
        worker.stop()

    summary = {side: _side_summary(rs) for side, rs in results.items()}
    direct = summary["direct"]
    comparisons = {}
    checks = []
    for transport in TRANSPORTS:
        s = summary[transport]
        comp = {**compare_to_direct(results[transport], results["direct"], probes[transport], probes["direct"]),
                "tps_ratio_of_medians": stats.ratio(s["decode_tps_median"], direct["decode_tps_median"]),
                "added_ttft_ms_of_medians": stats.diff(s["ttft_ms_median"], direct["ttft_ms_median"]),
                "added_itl_p99_ms_of_medians": stats.diff(s["itl_p99_ms_median"], direct["itl_p99_ms_median"]),
                "token_counts_equal": s["tokens"] == direct["tokens"] == [tokens]}
        comparisons[transport] = comp
        note = "" if comp["token_counts_equal"] else (
            f"token counts differ: platform {s['tokens']}, direct {direct['tokens']} (rates are per token)")
        if s["errors"]:
            note = (note + "; " if note else "") + f"{len(s['errors'])} failed run(s): {s['errors'][0]}"
        failed_probes = [r.error for run in probes[transport] for r in run if not r.ok]
        if failed_probes:
            note = ((note + "; " if note else "")
                    + f"{len(failed_probes)} failed first-token probe(s): {failed_probes[0]}")
        checks += [
            check(f"1.{engine_name}.{transport}.tps", 1, engine_name, f"decode tokens/s, {transport} ÷ direct",
                  "≥ 0.98", comp["tps_ratio"], _ge(comp["tps_ratio"], 0.98), note),
            check(f"1.{engine_name}.{transport}.ttft", 1, engine_name, f"added TTFT, {transport} − direct (ms)",
                  "≤ 5 ms", comp["added_ttft_ms"], _le(comp["added_ttft_ms"], 5.0)),
            check(f"1.{engine_name}.{transport}.itl", 1, engine_name,
                  f"added p99 inter-token latency, {transport} − direct (ms)", "≤ 2 ms",
                  comp["added_itl_p99_ms"], _le(comp["added_itl_p99_ms"], 2.0)),
        ]
    # Frees the CPU and memory for the parts that follow; part 4 loads what it needs again.
    if engine_name != "llama.cpp":
        server.unload(model)
    return {
        "engine": engine_name, "model": model, "tokens": tokens, "prompt": clients.PROMPT, "runs": opts.runs,
        "order": order_log, "first_tokens_per_run": 1 + opts.first_tokens,
        "platform_load_s": platform_load_s, "platform_load_response": body,
        "direct_load_s": direct_load_s, "direct_worker_pid": worker.pid,
        "direct_side": "the engine alone in its own process (bench.direct_worker), timed inside that process",
        "summary": summary, "comparisons": comparisons,
        "raw": {side: [r.row() for r in rs] for side, rs in results.items()},
        "first_token_probes_ms": {side: [[r.ttft_ms if r.ok else None for r in run] for run in runs]
                                  for side, runs in probes.items()},
        "checks": checks,
    }


# =============================================================================================
# Part 2: concurrency and overload
# =============================================================================================

PART2_MODELS = {"llama.cpp": LLAMA, "transformers": HF_BATCHED}


def compare_to_direct(platform: list, direct: list, platform_probes: list | None = None,
                      direct_probes: list | None = None) -> dict:
    """The figures part 1 checks: medians over the runs of each run's pair, the platform side against
    the direct engine measured next to it in the same run (lists in run order; the probes, one list
    of first-token probes per run).

    The shared host's speed drifts by tens of percent from one minute to the next (direct decode
    62-83 tok/s within one part 1), and a ratio of two medians compares figures from different
    minutes; a pair shares its minute. A run that failed on either side makes no pair. Each side's
    TTFT in a run is the median of its stream's first token and its probes' (failed ones left out).
    """
    runs = len(platform)
    platform_probes, direct_probes = platform_probes or [[]] * runs, direct_probes or [[]] * runs
    pairs = [(p, d, pp, dp) for p, d, pp, dp in zip(platform, direct, platform_probes, direct_probes)
             if p.ok and d.ok]

    def first_token(stream, run_probes):
        return stats.median([stream.ttft_ms, *(r.ttft_ms for r in run_probes if r.ok)])

    return {"tps_ratio": stats.median(stats.ratio(p.decode_tps, d.decode_tps) for p, d, _, _ in pairs),
            "added_ttft_ms": stats.median(stats.diff(first_token(p, pp), first_token(d, dp))
                                          for p, d, pp, dp in pairs),
            "added_itl_p99_ms": stats.median(stats.diff(p.itl_p99_ms, d.itl_p99_ms) for p, d, _, _ in pairs)}


def _concurrency_row(results: list[clients.StreamResult], wall_s: float) -> dict:
    good = [r for r in results if r.ok and r.finish_reason in ("length", "stop")]
    tokens = sum(r.tokens for r in good)
    return {
        "streams": len(results), "wall_s": wall_s, "tokens": tokens,
        "aggregate_tps": tokens / wall_s if wall_s > 0 else None,
        "ttft_ms_p50": stats.percentile((r.ttft_ms for r in good), 50),
        "ttft_ms_p95": stats.percentile((r.ttft_ms for r in good), 95),
        "per_stream_decode_tps_median": stats.median(r.decode_tps for r in good),
        "queue_time_ms_max": max((r.queue_time_ms or 0.0 for r in good), default=None),
        "errors": len(results) - len(good),
        "error_messages": sorted({str(r.error or r.finish_reason) for r in results if r not in good})[:5],
    }


def part_concurrency(bench: Bench, engine_name: str) -> dict:
    server, opts = bench.server, bench.opts
    model = PART2_MODELS[engine_name]
    tokens = opts.tokens_for(engine_name)
    bench.label = f"2-{engine_name}"
    if model == HF_BATCHED:
        ensure_batched_entry(bench)
    server.set_parameters(model, max_queue=max(64, max(opts.levels) * 2))
    bench.log(f"part 2 ({engine_name}): {model}, {tokens} tokens per stream, levels {opts.levels}")
    ensure_loaded(server, model)
    spec = clients.load_spec_from_config(model, platform_config(server, model))
    worker = clients.DirectWorker()
    url, key = server.url, server.api_key
    sides = ["direct-1"] + [str(n) for n in opts.levels]
    rows: dict[str, list[dict]] = {side: [] for side in sides}
    try:
        worker.load(spec)
        clients.run_concurrent_sse(url, key, model, tokens, 1)  # warm-up
        worker.stream(tokens)
        for run in range(opts.runs):
            for side in rotated(sides, run):
                if side == "direct-1":
                    r = worker.stream(tokens)
                    rows[side].append(_concurrency_row([r], r.done_at or 0.0))
                else:
                    results, wall = clients.run_concurrent_sse(url, key, model, tokens, int(side))
                    rows[side].append(_concurrency_row(results, wall))
            bench.log(f"  run {run + 1}/{opts.runs}: " + ", ".join(
                f"{side}: {stats.fmt(rows[side][-1]['aggregate_tps'], 1)} tok/s"
                + (f" ({rows[side][-1]['errors']} errors)" if rows[side][-1]["errors"] else "") for side in sides))
    finally:
        worker.stop()

    summary = {}
    for side, rs in rows.items():
        summary[side] = {
            "aggregate_tps_median": stats.median(r["aggregate_tps"] for r in rs),
            "ttft_ms_p50_median": stats.median(r["ttft_ms_p50"] for r in rs),
            "ttft_ms_p95_median": stats.median(r["ttft_ms_p95"] for r in rs),
            "per_stream_decode_tps_median": stats.median(r["per_stream_decode_tps_median"] for r in rs),
            "errors_total": sum(r["errors"] for r in rs),
        }
    single = summary["1"]["aggregate_tps_median"]
    top = str(max(opts.levels))
    scale = stats.ratio(summary[top]["aggregate_tps_median"], single)
    target = 0.95 if engine_name == "llama.cpp" else 1.5
    errors_total = sum(summary[str(n)]["errors_total"] for n in opts.levels)
    checks = [
        check(f"2.{engine_name}.scale", 2, engine_name,
              f"aggregate tokens/s at {top} streams ÷ 1 stream" + (" (batching)" if engine_name != "llama.cpp" else ""),
              f"≥ {target}", scale, _ge(scale, target)),
        check(f"2.{engine_name}.errors", 2, engine_name, f"errors over {opts.runs} runs of {list(opts.levels)} streams",
              "0", errors_total, errors_total == 0),
    ]
    result = {"engine": engine_name, "model": model, "tokens": tokens, "runs": opts.runs, "levels": list(opts.levels),
              "summary": summary, "raw": rows,
              "platform_single_vs_direct": stats.ratio(single, summary["direct-1"]["aggregate_tps_median"]),
              "checks": checks}
    if engine_name == "llama.cpp":
        result["overload"] = overload(bench, model)
        result["checks"].append(check(
            "2.overload.429", 2, engine_name, "time to 429 beyond the queue limit, max of sequential samples (ms)",
            "≤ 50 ms (every one a 429)", result["overload"]["sequential_ms_max"],
            None if result["overload"]["sequential_ms_max"] is None else
            bool(result["overload"]["sequential_ms_max"] <= 50 and result["overload"]["sequential_all_429"]),
            note=f"p50 {stats.fmt(result['overload']['sequential_ms_p50'], 1)} ms; burst of "
                 f"{result['overload']['burst_size']}: p50 {stats.fmt(result['overload']['burst_ms_p50'], 1)} ms, "
                 f"max {stats.fmt(result['overload']['burst_ms_max'], 1)} ms, statuses "
                 f"{result['overload']['burst_statuses']}"))
    else:
        server.unload(model)
    return result


class BackgroundStreams:
    """`n` threads, each streaming SSE chats back to back until stopped."""

    def __init__(self, bench: Bench, model: str, n: int, tokens: int):
        self.bench, self.model, self.n, self.tokens = bench, model, n, tokens
        self.stop_event = threading.Event()
        self.results: list[clients.StreamResult] = []
        self.threads = [threading.Thread(target=self._run, daemon=True, name=f"bench-stream-{i}") for i in range(n)]

    def _run(self):
        with self.bench.http() as http:
            while not self.stop_event.is_set():
                self.results.append(clients.sse_stream(http, self.model, self.tokens))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def wait_in_flight(self, timeout: float = 60) -> dict:
        """Waits until the runner holds all `n` (running or queued)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.bench.server.status(self.model)
            if state["active_requests"] + state["queue_depth"] >= self.n or time.monotonic() > deadline:
                return state
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.threads:
            t.join(900)


def overload(bench: Bench, model: str) -> dict:
    """Fills llama.cpp's single slot and a queue of 2, then measures how fast extra chats get 429."""
    server, opts = bench.server, bench.opts
    max_queue = 2
    bench.log(f"  overload: max_queue={max_queue}, {max_queue + 1} long streams in flight")
    server.set_parameters(model, max_queue=max_queue)
    sequential, burst = [], []
    try:
        with BackgroundStreams(bench, model, max_queue + 1, tokens=512) as background:
            state = background.wait_in_flight()
            with bench.http() as http:
                for _ in range(opts.overload_samples):
                    t0 = time.perf_counter()
                    response = http.post("/inference/chat", json=clients.chat_body(model, 8))
                    sequential.append({"status": response.status_code, "ms": (time.perf_counter() - t0) * 1000.0,
                                       "error_code": _error_code(response)})

            def one():
                with bench.http() as client:
                    t0 = time.perf_counter()
                    response = client.post("/inference/chat", json=clients.chat_body(model, 8))
                    burst.append({"status": response.status_code, "ms": (time.perf_counter() - t0) * 1000.0,
                                  "error_code": _error_code(response)})

            threads = [threading.Thread(target=one) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            # The long streams are cut short by closing their connections (the server cancels them).
            background.stop_event.set()
            server.unload(model)
    finally:
        server.set_parameters(model, max_queue=64)
        ensure_loaded(server, model)
    seq_ms = [s["ms"] for s in sequential if s["status"] == 429]
    burst_ms = [s["ms"] for s in burst if s["status"] == 429]
    statuses: dict[str, int] = {}
    for s in burst:
        statuses[str(s["status"])] = statuses.get(str(s["status"]), 0) + 1
    return {"max_queue": max_queue, "in_flight_state": state, "sequential": sequential, "burst": burst,
            "sequential_all_429": all(s["status"] == 429 for s in sequential),
            "sequential_ms_p50": stats.percentile(seq_ms, 50), "sequential_ms_max": max(seq_ms, default=None),
            "burst_size": len(burst), "burst_statuses": statuses,
            "burst_ms_p50": stats.percentile(burst_ms, 50), "burst_ms_max": max(burst_ms, default=None)}


def _error_code(response) -> str | None:
    try:
        return response.json().get("error_code")
    except Exception:
        return None


# =============================================================================================
# Part 3: management API
# =============================================================================================

MGMT_PATHS = ("/healthz", "/models/", "/system/status")


def part_management(bench: Bench) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from bench.hammer import hammer_in_process

    server, opts = bench.server, bench.opts
    bench.label = "3"
    ensure_loaded(server, LLAMA)
    server.set_parameters(LLAMA, max_queue=64)
    bench.log(f"part 3: {opts.mgmt_clients} clients, {opts.mgmt_seconds:.0f}s per measurement, "
              f"idle and with 4 streams generating")
    raw: dict[str, dict[str, list]] = {"idle": {p: [] for p in MGMT_PATHS}, "generating": {p: [] for p in MGMT_PATHS}}
    streams_info = {}
    # The load generator runs in its own process (spawned, so it shares nothing with this one).
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        def measure(path: str) -> dict:
            headers = None if path == "/healthz" else server.auth_headers()
            return pool.submit(hammer_in_process, server.url, path, headers, opts.mgmt_clients,
                               opts.mgmt_seconds).result()

        for condition in ("idle", "generating"):
            background = BackgroundStreams(bench, LLAMA, 4, bench.opts.tokens) if condition == "generating" else None
            if background is not None:
                background.__enter__()
                streams_info["state_at_start"] = background.wait_in_flight()
            try:
                for path in MGMT_PATHS:  # warm-up
                    pool.submit(hammer_in_process, server.url, path,
                                None if path == "/healthz" else server.auth_headers(), 4, 0.5, 0.0).result()
                for run in range(opts.runs):
                    for path in rotated(list(MGMT_PATHS), run):
                        raw[condition][path].append(measure(path))
                    bench.log(f"  {condition} run {run + 1}/{opts.runs}: " + ", ".join(
                        f"{p} {raw[condition][p][-1]['requests_per_s']:.0f}/s" for p in MGMT_PATHS))
            finally:
                if background is not None:
                    background.__exit__(None, None, None)
                    streams_info["streams_completed"] = len(background.results)
                    streams_info["stream_errors"] = sum(1 for r in background.results if not r.ok)
                    streams_info["stream_decode_tps_median"] = stats.median(
                        r.decode_tps for r in background.results if r.ok)

    summary: dict = {}
    for condition, by_path in raw.items():
        summary[condition] = {}
        for path, runs in by_path.items():
            non_200 = sum(v for k, v in (s for r in runs for s in r["statuses"].items()) if k != "200")
            summary[condition][path] = {
                "requests_per_s_median": stats.median(r["requests_per_s"] for r in runs),
                "p50_ms_median": stats.median(stats.percentile(r["latencies_ms"], 50) for r in runs),
                "p99_ms_median": stats.median(stats.percentile(r["latencies_ms"], 99) for r in runs),
                "errors": sum(r["error_count"] for r in runs) + non_200,
            }
    checks = []
    idle = summary["idle"]
    ratio = stats.ratio(idle["/models/"]["requests_per_s_median"], idle["/healthz"]["requests_per_s_median"])
    checks.append(check("3.models_vs_healthz", 3, None, "GET /models/ (authenticated) ÷ GET /healthz requests/s, idle",
                        "≥ 0.8", ratio, _ge(ratio, 0.8)))
    status_ratio = stats.ratio(idle["/system/status"]["requests_per_s_median"], idle["/healthz"]["requests_per_s_median"])
    checks.append(check("3.status_vs_healthz", 3, None, "GET /system/status ÷ GET /healthz requests/s, idle (info)",
                        "(no target)", status_ratio, None))
    for path in MGMT_PATHS:
        growth = stats.ratio(summary["generating"][path]["p99_ms_median"], idle[path]["p99_ms_median"])
        checks.append(check(f"3.p99.{path}", 3, None, f"p99 latency of GET {path} with 4 streams ÷ idle",
                            "≤ 2", growth, _le(growth, 2.0)))
    errors = sum(summary[c][p]["errors"] for c in summary for p in summary[c])
    checks.append(check("3.errors", 3, None, "failed or non-200 management requests", "0", errors, errors == 0))
    for condition in raw:
        for path in raw[condition]:
            for r in raw[condition][path]:
                r["latency_summary_ms"] = stats.summary(r.pop("latencies_ms"))
    return {"clients": opts.mgmt_clients, "seconds_per_measurement": opts.mgmt_seconds, "runs": opts.runs,
            "summary": summary, "streams": streams_info, "raw": raw, "checks": checks}


# =============================================================================================
# Part 4: load time, memory, web-process growth
# =============================================================================================

PART4_MODELS = {"llama.cpp": LLAMA, "transformers": HF_BATCHED}
CYCLE_MODEL = "bench-llama-cycle"


def part_load_memory(bench: Bench) -> dict:
    server, opts = bench.server, bench.opts
    out: dict = {"load": {}, "memory": {}, "checks": []}
    for engine_name in opts.engines:
        model = PART4_MODELS[engine_name]
        bench.label = f"4-load-{engine_name}"
        if model == HF_BATCHED:
            ensure_batched_entry(bench)
        out["load"][engine_name] = load_times(bench, model)
        lt = out["load"][engine_name]
        limit = None if lt["direct_s_median"] is None else 1.2 * lt["direct_s_median"] + 2.0
        out["checks"].append(check(
            f"4.{engine_name}.load", 4, engine_name, f"load time through the platform (s), {model}",
            f"≤ 1.2 × engine's own + 2 s = {stats.fmt(limit, 2)} s", lt["platform_s_median"],
            None if limit is None else _le(lt["platform_s_median"], limit),
            note=f"engine's own {stats.fmt(lt['direct_s_median'], 2)} s; engine in a fresh process "
                 f"{stats.fmt(lt['fresh_process_s_median'], 2)} s; runner-reported "
                 f"{stats.fmt(lt['runner_reported_s_median'], 2)} s"))
        bench.label = f"4-memory-{engine_name}"
        out["memory"][engine_name] = memory_check(bench, model)
        mem = out["memory"][engine_name]
        out["checks"].append(check(
            f"4.{engine_name}.memory", 4, engine_name, "reported memory_usage_mb vs runner RSS from outside (|Δ| %)",
            "≤ 5 %", mem["abs_diff_pct_max"], _le(mem["abs_diff_pct_max"], 5.0),
            note=f"reported {stats.fmt(mem['reported_mb_median'], 1)} MB, psutil "
                 f"{stats.fmt(mem['outside_rss_mb_median'], 1)} MB (pid {mem['pid']})"))
        server.unload(model)
    bench.label = "4-cycles"
    out["web_rss"] = web_growth(bench)
    w = out["web_rss"]
    out["checks"].append(check("4.rss.cycles", 4, None, f"web-process RSS growth after {opts.load_cycles} "
                               "load/unload cycles (MB)", "< 50 MB", w["growth_after_cycles_mb"],
                               None if w["growth_after_cycles_mb"] is None else w["growth_after_cycles_mb"] < 50,
                               note=f"baseline {stats.fmt(w['baseline_mb'], 1)} MB"))
    out["checks"].append(check("4.rss.soak", 4, None, f"web-process RSS growth after a {opts.soak_seconds:.0f} s "
                               "mixed soak (MB, from the same baseline)", "< 50 MB", w["growth_after_soak_mb"],
                               None if w["growth_after_soak_mb"] is None else w["growth_after_soak_mb"] < 50,
                               note=f"soak: {w['soak']['requests']} requests, {w['soak']['errors']} errors"))
    out["checks"].append(check("4.soak.errors", 4, None, "errors during the soak", "0", w["soak"]["errors"],
                               w["soak"]["errors"] == 0,
                               note="; ".join(w["soak"]["error_samples"][:3])))
    return out


def load_times(bench: Bench, model: str) -> dict:
    server, opts = bench.server, bench.opts
    bench.log(f"part 4: load time of {model}, platform vs direct, {opts.runs} runs each, alternating")
    server.unload(model)
    spec = clients.load_spec_from_config(model, platform_config(server, model))
    direct, fresh, platform, reported, order = [], [], [], [], []
    worker = clients.DirectWorker()  # the engine's own load, repeated in one warm process
    try:
        _load_rounds(bench, model, spec, worker, direct, fresh, platform, reported, order)
    finally:
        worker.stop()
    return {"model": model, "direct_s": direct, "fresh_process_s": fresh, "platform_s": platform,
            "runner_reported_s": reported, "order": order[1:], "direct_s_median": stats.median(direct),
            "fresh_process_s_median": stats.median(fresh), "platform_s_median": stats.median(platform),
            "runner_reported_s_median": stats.median(reported),
            "ratio": stats.ratio(stats.median(platform), stats.median(direct))}


def _load_rounds(bench, model, spec, worker, direct, fresh, platform, reported, order) -> None:
    server, opts = bench.server, bench.opts
    for run in range(opts.runs + 1):  # the first round warms the page cache and imports; not counted
        sides = rotated(["direct", "platform", "fresh"], run)
        order.append(sides)
        for side in sides:
            if side == "direct":
                seconds = worker.load(spec)
                worker.close_engine()
                if run:
                    direct.append(seconds)
            elif side == "fresh":
                seconds = clients.fresh_process_load(spec)
                if run:
                    fresh.append(seconds)
            else:
                seconds, body = server.load(model)
                server.unload(model)
                if run:
                    platform.append(seconds)
                    reported.append(body.get("load_time_seconds"))
        if run:
            bench.log(f"  run {run}/{opts.runs}: direct {direct[-1]:.2f}s, fresh process {fresh[-1]:.2f}s, "
                      f"platform {platform[-1]:.2f}s")


def memory_check(bench: Bench, model: str) -> dict:
    """memory_usage_mb from the API next to psutil's RSS of the same pid, read just before and after."""
    server, opts = bench.server, bench.opts
    ensure_loaded(server, model)
    with bench.http() as http:
        clients.sse_stream(http, model, 16)  # a generation, so the KV cache and buffers exist
    samples = []
    for _ in range(opts.runs):
        pid = server.status(model)["pid"]
        before = rss_mb(pid)
        state = server.status(model)
        after = rss_mb(pid)
        outside = (before + after) / 2 if before is not None and after is not None else None
        reported = state["memory_usage_mb"]
        samples.append({"pid": state["pid"], "reported_mb": reported, "outside_before_mb": before,
                        "outside_after_mb": after,
                        "diff_pct": None if not outside else (reported - outside) / outside * 100.0})
        time.sleep(0.2)
    diffs = [abs(s["diff_pct"]) for s in samples if s["diff_pct"] is not None]
    return {"model": model, "pid": samples[-1]["pid"], "samples": samples,
            "reported_mb_median": stats.median(s["reported_mb"] for s in samples),
            "outside_rss_mb_median": stats.median(s["outside_before_mb"] for s in samples),
            "abs_diff_pct_max": max(diffs, default=None)}


def _settle_rss(pid: int, seconds: float = 3.0) -> float | None:
    time.sleep(seconds)
    return rss_mb(pid)


def web_growth(bench: Bench) -> dict:
    server, opts = bench.server, bench.opts
    pid = server.pid
    bench.log("part 4: web-process RSS — warm-up, then load/unload cycles, then the soak")
    # Warm the web process first (every route and transport once), so the baseline is not a cold start.
    ensure_loaded(server, LLAMA)
    with bench.http() as http:
        clients.sse_stream(http, LLAMA, 8)
        for path in MGMT_PATHS:
            http.get(path)
    ws = clients.WSChat(server.url, server.api_key)
    ws.stream(LLAMA, 8)
    ws.close()
    oc = clients.openai_client(server.url, server.api_key)
    clients.openai_stream(oc, LLAMA, 8)
    oc.close()
    server.unload(LLAMA)
    baseline = _settle_rss(pid)
    cycle_rss = []
    cycle_times = []
    for i in range(opts.load_cycles):
        seconds, _ = server.load(LLAMA)
        server.unload(LLAMA)
        cycle_times.append(seconds)
        cycle_rss.append(rss_mb(pid))
    after_cycles = _settle_rss(pid)
    bench.log(f"  web RSS baseline {stats.fmt(baseline, 1)} MB, after {opts.load_cycles} cycles "
              f"{stats.fmt(after_cycles, 1)} MB")
    bench.label = "4-soak"
    soak = run_soak(bench, opts.soak_seconds)
    after_soak = _settle_rss(pid)
    bench.log(f"  after the soak {stats.fmt(after_soak, 1)} MB")
    return {"pid": pid, "baseline_mb": baseline, "after_cycles_mb": after_cycles, "after_soak_mb": after_soak,
            "growth_after_cycles_mb": stats.diff(after_cycles, baseline),
            "growth_after_soak_mb": stats.diff(after_soak, baseline),
            "cycle_rss_mb": cycle_rss, "cycle_load_s": cycle_times, "soak": soak}


def run_soak(bench: Bench, seconds: float) -> dict:
    """Mixed traffic for `seconds`: chats on three transports, management reads, and a second model
    loaded and unloaded over and over; the web process's RSS is sampled every 2 s."""
    server = bench.server
    ensure_loaded(server, LLAMA)
    server.set_parameters(LLAMA, max_queue=64)
    if server.call("GET", f"/models/{CYCLE_MODEL}", expect=(200, 404)).get("success") is not True:
        config = platform_config(server, LLAMA)
        server.add_model(CYCLE_MODEL, {k: config[k] for k in ("model_id", "engine", "quantization", "max_new_tokens")}
                         | {"parameters": {"n_ctx": 512}})
    bench.log(f"  soak: {seconds:.0f}s of mixed traffic")
    stop_at = time.monotonic() + seconds
    counts: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()
    rss_series = []

    def note(kind: str, ok: bool, message: str | None = None):
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            if not ok:
                errors.append(f"{kind}: {message}")

    def chat_worker(offset: int):
        http = bench.http()
        ws = clients.WSChat(server.url, server.api_key)
        oc = clients.openai_client(server.url, server.api_key)
        i = offset
        try:
            while time.monotonic() < stop_at:
                kind = ("sse", "websocket", "v1")[i % 3]
                i += 1
                if kind == "sse":
                    r = clients.sse_stream(http, LLAMA, 32)
                elif kind == "websocket":
                    r = ws.stream(LLAMA, 32)
                else:
                    r = clients.openai_stream(oc, LLAMA, 32)
                note(kind, r.ok, r.error)
        finally:
            ws.close()
            http.close()
            oc.close()

    def mgmt_worker():
        with bench.http() as http:
            paths = ["/models/", "/system/status", f"/models/{LLAMA}/status", "/healthz", "/v1/models",
                     "/system/memory"]
            i = 0
            while time.monotonic() < stop_at:
                path = paths[i % len(paths)]
                i += 1
                try:
                    response = http.get(path)
                    note("get", response.status_code == 200, f"{path} {response.status_code}")
                except httpx.HTTPError as exc:
                    note("get", False, f"{path} {exc}")
                time.sleep(0.02)

    def load_worker():
        with bench.http() as http:
            while time.monotonic() < stop_at:
                for action in ("load", "unload"):
                    try:
                        response = http.post(f"/models/{CYCLE_MODEL}/{action}", json={})
                        note(action, response.status_code == 200, f"{action} {response.status_code}")
                    except httpx.HTTPError as exc:
                        note(action, False, str(exc))
                time.sleep(1.0)

    threads = [threading.Thread(target=chat_worker, args=(n,), daemon=True) for n in range(2)]
    threads += [threading.Thread(target=mgmt_worker, daemon=True), threading.Thread(target=load_worker, daemon=True)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while time.monotonic() < stop_at:
        rss_series.append({"t": round(time.monotonic() - started, 1), "web_rss_mb": rss_mb(server.pid)})
        time.sleep(2.0)
    for t in threads:
        t.join(300)
    server.unload(CYCLE_MODEL)
    return {"seconds": seconds, "requests": sum(counts.values()), "counts": counts, "errors": len(errors),
            "error_samples": errors[:10], "rss_series": rss_series}


# =============================================================================================
# Part 5: constrained decoding on the raw engines
# =============================================================================================

# A schema whose one string keeps the model writing, so that both sides decode about as many tokens.
STORY_CONSTRAINT = {"schema": {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                                                "story": {"type": "string", "minLength": 400}},
                               "required": ["title", "story"], "additionalProperties": False},
                    "prefix": "", "suffix": ""}


def part5_spec(engine_name: str, opts: Options):
    """The bundled model on ``engine_name``, as bootstrap registers it, without a server."""
    from models_app.serving.engines.contract import LoadSpec
    from models_app.serving.engines.bundled import bundled_gguf_path

    gguf = bundled_gguf_path()
    if engine_name == "llama.cpp":
        return LoadSpec(name=LLAMA, engine="llama.cpp", model_id=str(gguf), quantization="Q4_1",
                        parameters={"n_ctx": 2048})
    parameters = {"gguf_file": gguf.name}
    if opts.transformers_threads:
        parameters["n_threads"] = opts.transformers_threads
    return LoadSpec(name=HF, engine="transformers", model_id=str(gguf.parent), quantization="Q4_1",
                    parameters=parameters)


# Fewer tokens than part 1: the part should take about a minute, and every run pairs both sides.
PART5_TOKENS = {"llama.cpp": 64, "transformers": 24}


def part_constrained(bench: Bench, engine_name: str) -> dict:
    """Decode tokens/s with a json_schema constraint against free decoding, same prompt, same engine
    process (bench.direct_worker), sides alternating run by run. Figures are medians over the runs of
    each run's pair (constrained against the free run next to it), which cancels most of the drift of
    a shared machine: the cost per token is the difference of the two sides' time per token."""
    opts = bench.opts
    tokens = PART5_TOKENS[engine_name]
    bench.label = f"5-{engine_name}"
    spec = part5_spec(engine_name, opts)
    bench.log(f"part 5 ({engine_name}): constrained against free decoding, {tokens} tokens, direct worker")
    worker = clients.DirectWorker()
    sides = {"free": lambda: worker.stream(tokens),
             "constrained": lambda: worker.stream(tokens, constraint=STORY_CONSTRAINT)}
    results: dict[str, list] = {side: [] for side in sides}
    try:
        load_s = worker.load(spec)
        sides["free"]()  # warm-up
        cold = sides["constrained"]()  # compiles the schema; later runs find it in the cache
        for run in range(opts.runs):
            for side in rotated(list(sides), run):
                results[side].append(sides[side]())
            bench.log(f"  run {run + 1}/{opts.runs}: " + ", ".join(
                f"{s} {stats.fmt(results[s][-1].decode_tps, 1)} tok/s ({results[s][-1].tokens} tokens)"
                + ("" if results[s][-1].ok else f" ERROR {results[s][-1].error}") for s in sides))
    finally:
        worker.stop()
    summary = {side: _side_summary(rs) for side, rs in results.items()}
    pairs = [(f.decode_tps, c.decode_tps) for f, c in zip(results["free"], results["constrained"])
             if f.ok and c.ok and f.decode_tps and c.decode_tps]
    cost_us = stats.median(1e6 / c - 1e6 / f for f, c in pairs)
    ratio = stats.median(c / f for f, c in pairs)
    compile_ms = stats.diff(cold.ttft_ms, summary["constrained"]["ttft_ms_median"])
    errors = summary["free"]["errors"] + summary["constrained"]["errors"]
    note = f"{len(errors)} failed run(s): {errors[0]}" if errors else ""
    checks = [
        check(f"5.{engine_name}.cost", 5, engine_name, "constrained decoding: added time per token (µs)",
              "reported", cost_us, None, note),
        check(f"5.{engine_name}.ratio", 5, engine_name, "decode tokens/s, constrained ÷ free", "reported",
              ratio, None),
    ]
    return {"engine": engine_name, "model": spec.name, "tokens": tokens, "runs": opts.runs,
            "constraint": STORY_CONSTRAINT, "load_s": load_s, "summary": summary,
            "per_token_cost_us": cost_us, "tps_ratio": ratio, "first_constrained_added_ttft_ms": compile_ms,
            "raw": {side: [r.row() for r in rs] for side, rs in results.items()}, "checks": checks}


# =============================================================================================
# Part 6: relay ceiling
# =============================================================================================

RELAY_MODEL = "bench-relay"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process (its threads included, its children not)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _relay_row(results: list[clients.StreamResult], wall_s: float, cpu: dict[str, float | None],
               tokens: int) -> dict:
    good = [r for r in results if r.ok and r.finish_reason == "length" and r.tokens == tokens]
    relayed = sum(r.tokens for r in good)

    def per_token_us(seconds):
        return None if seconds is None or not relayed else seconds / relayed * 1e6

    return {
        "streams": len(results), "wall_s": wall_s, "tokens_relayed": relayed,
        "pieces_received": sum(len(r.piece_times) for r in good),
        "aggregate_tps": relayed / wall_s if wall_s > 0 else None,
        "cpu_s": cpu,
        "web_cpu_us_per_token": per_token_us(cpu["web"]),
        "tokens_per_web_core_s": None if not cpu["web"] else relayed / cpu["web"],
        "runner_cpu_us_per_token": per_token_us(cpu["runner"]),
        "source_cpu_us_per_token": per_token_us(cpu["source"]),
        "client_cpu_us_per_token": per_token_us(cpu["client"]),
        "ttft_ms_p50": stats.percentile((r.ttft_ms for r in good), 50),
        "errors": len(results) - len(good),
        "error_messages": sorted({str(r.error or f"{r.finish_reason}, {r.tokens} tokens")
                                  for r in results if r not in good})[:5],
    }


def part_relay(bench: Bench) -> dict:
    """The web process's CPU per relayed token when the engine is never the bottleneck: an ``openai``
    entry pointed at bench.token_source (a child process that streams a chunk per token as fast as the
    socket takes it), ``relay_streams`` SSE chats at once. CPU is read with psutil from the web process
    (daphne's pid, all its threads, not its children), the runner, the source and this process (the
    clients) just before the chats are sent and just after the last one ends, so each run's figure includes the chats' setup and
    recording, spread over their tokens."""
    server, opts = bench.server, bench.opts
    tokens, streams = opts.relay_tokens, opts.relay_streams
    bench.label = "6-relay"
    bench.log(f"part 6: relay ceiling, {streams} SSE streams x {tokens} tokens from bench.token_source")
    rows = []
    with TokenSource() as source:
        server.add_model(RELAY_MODEL, {"model_id": SOURCE_MODEL_ID, "engine": "openai", "max_new_tokens": tokens,
                                       "parameters": {"base_url": source.base_url, "n_ctx": tokens + 1024,
                                                      "max_queue": 2 * streams}})
        server.load(RELAY_MODEL)
        # The benchmark's own process too: its SSE clients share the cores with the rest and limit the aggregate.
        pids = {"web": server.pid, "runner": server.status(RELAY_MODEL)["pid"], "source": source.pid,
                "client": os.getpid()}
        # Warm-up: the runner's connections to the source, the web process's first chats.
        clients.run_concurrent_sse(server.url, server.api_key, RELAY_MODEL, min(tokens, 64), streams)
        for run in range(opts.runs):
            before = {k: cpu_seconds(pid) for k, pid in pids.items()}
            results, wall = clients.run_concurrent_sse(server.url, server.api_key, RELAY_MODEL, tokens, streams)
            after = {k: cpu_seconds(pid) for k, pid in pids.items()}
            rows.append(_relay_row(results, wall, {k: stats.diff(after[k], before[k]) for k in pids}, tokens))
            r = rows[-1]
            bench.log(f"  run {run + 1}/{opts.runs}: {stats.fmt(r['aggregate_tps'], 0)} tok/s relayed, web "
                      f"{stats.fmt(r['web_cpu_us_per_token'], 1)} µs/token, runner "
                      f"{stats.fmt(r['runner_cpu_us_per_token'], 1)} µs/token"
                      + (f" ({r['errors']} errors: {r['error_messages']})" if r["errors"] else ""))
        server.unload(RELAY_MODEL)
    summary = {key: stats.median(r[key] for r in rows)
               for key in ("aggregate_tps", "web_cpu_us_per_token", "tokens_per_web_core_s",
                           "runner_cpu_us_per_token", "source_cpu_us_per_token", "client_cpu_us_per_token",
                           "ttft_ms_p50")}
    summary["errors_total"] = sum(r["errors"] for r in rows)
    web_us = summary["web_cpu_us_per_token"]
    checks = [
        check("6.relay.web_cpu", 6, "openai", f"web-process CPU per relayed token at {streams} SSE streams (µs)",
              "≤ 100 µs", web_us, _le(web_us, 100.0),
              note=f"{stats.fmt(summary['tokens_per_web_core_s'], 0)} tokens/s per web-process core"),
        check("6.relay.per_core", 6, "openai", "tokens/s relayed per web-process core", "reported",
              summary["tokens_per_web_core_s"], None,
              note=f"aggregate {stats.fmt(summary['aggregate_tps'], 0)} tokens/s; runner "
                   f"{stats.fmt(summary['runner_cpu_us_per_token'], 1)} µs/token"),
        check("6.relay.errors", 6, "openai", f"errors over {opts.runs} runs of {streams} streams", "0",
              summary["errors_total"], summary["errors_total"] == 0),
    ]
    return {"model": RELAY_MODEL, "streams": streams, "tokens": tokens, "runs": opts.runs, "pids": pids,
            "summary": summary, "raw": rows, "checks": checks}
