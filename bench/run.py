"""`make bench`: BeautyAI against the raw engines, in one run (issue 8).

    .venv/bin/python -m bench.run

Options (environment):
  BENCH_RUNS                  runs per figure, medians reported (default 7, issue #20's "medians of ≥ 7")
  BENCH_TOKENS                tokens per stream for llama.cpp (default 128)
  BENCH_FIRST_TOKENS          two-token chats per side in each part-1 run, after its streams (default 4): a
                              run's TTFT is the median of its stream's first token and these
  BENCH_TOKENS_TRANSFORMERS   tokens per stream for transformers (default 16: its CPU decode is 5-20x
                              slower than llama.cpp's on a busy 2-core machine, and the whole run should
                              stay near 25 minutes)
  BENCH_PARTS                 e.g. "1,2,3,4,5,6" (default all; 5, constrained decoding, needs no server)
  BENCH_ENGINES               e.g. "llama.cpp,transformers" (default both)
  BENCH_SOAK_SECONDS          mixed-traffic soak in part 4 (default 600)
  BENCH_LOAD_CYCLES           load/unload cycles in part 4 (default 20)
  BENCH_MGMT_SECONDS          seconds per management-API measurement (default 3)
  BENCH_TRANSFORMERS_THREADS  n_threads for the transformers entries, on both sides (default: half the logical
                              cores, as llama.cpp's own default; 0: torch's own, all physical cores)
  BENCH_PLACEMENT             local (default), ray or both: with ray, parts 1-2 run (again, for both) against a
                              server whose runners are Ray actors (BEAUTYAI_PLACEMENT=ray) on a one-node Ray
                              cluster on 127.0.0.1 started for the run and stopped after it; same direct-engine
                              baseline and targets; reported in the "Ray placement" section. Other parts always
                              run with local placement.
  BENCH_RELAY_TOKENS          tokens per stream in part 6, the relay ceiling (default 2000; at most 32768)
  BENCH_POSTGRES_URL          a PostgreSQL server for part 3's second column (default
                              postgres://postgres@127.0.0.1:5432/postgres; "off": SQLite only): part 3 runs
                              again against a server on a database created there for the run and dropped
                              after it; reported in "Part 3 on PostgreSQL". Skipped, with a note, when no
                              PostgreSQL answers there.
  BENCH_RESULTS_DIR           where the outputs go (default bench/results)

Writes <stamp>.json, <stamp>.md, <stamp>.png and latest.md. Targets are reported, not asserted:
the exit status is 0 when the run completed (even with failed targets) and 1 when a part crashed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench import clients, parts, report
from bench.server import BenchServer, PostgresDatabase, RayHead

ENGINES = ("llama.cpp", "transformers")
PLACEMENTS = ("local", "ray", "both")
RAY_PARTS = (1, 2)  # the parts that have a Ray column
RELAY_TOKENS_MAX = 32768
POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    value = int(raw)
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}")
    return value


def options_from_env() -> parts.Options:
    parts_raw = os.environ.get("BENCH_PARTS") or "1,2,3,4,5,6"
    engines_raw = os.environ.get("BENCH_ENGINES") or ",".join(ENGINES)
    selected = tuple(sorted({int(p) for p in parts_raw.replace(" ", "").split(",") if p}))
    if not selected or any(p not in (1, 2, 3, 4, 5, 6) for p in selected):
        raise SystemExit("BENCH_PARTS: a comma-separated subset of 1,2,3,4,5,6")
    engines = tuple(e.strip() for e in engines_raw.split(",") if e.strip())
    if not engines or any(e not in ENGINES for e in engines):
        raise SystemExit(f"BENCH_ENGINES: a comma-separated subset of {','.join(ENGINES)}")
    placement = (os.environ.get("BENCH_PLACEMENT") or "local").strip()
    if placement not in PLACEMENTS:
        raise SystemExit(f"BENCH_PLACEMENT: one of {', '.join(PLACEMENTS)}")
    if placement == "ray" and not set(selected) & set(RAY_PARTS):
        raise SystemExit("BENCH_PLACEMENT=ray measures parts 1 and 2 only; BENCH_PARTS has neither")
    relay_tokens = _int("BENCH_RELAY_TOKENS", 2000)
    if relay_tokens > RELAY_TOKENS_MAX:
        raise SystemExit(f"BENCH_RELAY_TOKENS: at most {RELAY_TOKENS_MAX} (a registry entry's max_new_tokens)")
    return parts.Options(
        runs=_int("BENCH_RUNS", 7),
        first_tokens=_int("BENCH_FIRST_TOKENS", 4, minimum=0),
        tokens=_int("BENCH_TOKENS", 128, minimum=2),
        tokens_transformers=_int("BENCH_TOKENS_TRANSFORMERS", 16, minimum=2),
        parts=selected,
        engines=engines,
        soak_seconds=float(os.environ.get("BENCH_SOAK_SECONDS") or 600),
        load_cycles=_int("BENCH_LOAD_CYCLES", 20),
        mgmt_seconds=float(os.environ.get("BENCH_MGMT_SECONDS") or 3),
        # Half the cores, like llama.cpp's default: the benchmark's own clients and the web process need
        # the rest, and an engine spread over every core stalls whenever they run (its threads wait for
        # the slowest one), which would charge the client's CPU to the platform.
        transformers_threads=_int("BENCH_TRANSFORMERS_THREADS", max(1, (os.cpu_count() or 2) // 2), minimum=0) or None,
        placement=placement,
        relay_tokens=relay_tokens,
        postgres_url=None if (os.environ.get("BENCH_POSTGRES_URL") or "").strip().lower() == "off"
        else (os.environ.get("BENCH_POSTGRES_URL") or "").strip() or POSTGRES_URL,
    )


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so that the finally blocks stop the server and its runners.
    raise KeyboardInterrupt(f"signal {signum}")


def _plan(bench: parts.Bench, selected: tuple[int, ...]) -> list:
    opts = bench.opts
    plan = []
    if 1 in selected:
        plan += [(1, e, lambda e=e: parts.part_streaming(bench, e)) for e in opts.engines]
    if 2 in selected:
        plan += [(2, e, lambda e=e: parts.part_concurrency(bench, e)) for e in opts.engines]
    if 3 in selected:
        plan.append((3, None, lambda: parts.part_management(bench)))
    if 4 in selected:
        plan.append((4, None, lambda: parts.part_load_memory(bench)))
    if 5 in selected:
        plan += [(5, e, lambda e=e: parts.part_constrained(bench, e)) for e in opts.engines]
    if 6 in selected:
        plan.append((6, None, lambda: parts.part_relay(bench)))
    return plan


def _run_plan(bench: parts.Bench, selected: tuple[int, ...], into: dict, errors: list, label: str = "") -> None:
    """Runs the parts in `selected`, each result under into["part<n>"] (by engine where there is one);
    a part that fails is recorded in `errors` and the next one runs."""
    for number, engine, fn in _plan(bench, selected):
        key = f"part{number}"
        load_before = list(os.getloadavg())
        try:
            value = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            bench.log(f"{label}part {number} {engine or ''} failed: {exc!r}")
            errors.append({"part": f"{label}{number}{' ' + engine if engine else ''}",
                           "error": f"{exc.__class__.__name__}: {exc}", "traceback": traceback.format_exc(),
                           "server_log_tail": bench.server.log_tail()})
            continue
        value["loadavg_before"], value["loadavg_after"] = load_before, list(os.getloadavg())
        if engine is None:
            into[key] = value
        else:
            into.setdefault(key, {})[engine] = value


def _ray_checks(part: dict) -> None:
    """Marks a part's checks as the Ray column's: ids prefixed, placement named."""
    for check in part.get("checks", []):
        check["id"], check["placement"] = f"ray.{check['id']}", "ray"


def _on_a_second_server(bench: parts.Bench, results: dict, section: dict, name: str, *, setup, run, release) -> None:
    """A section of the run against a second private server (Ray placement, PostgreSQL): ``setup()``
    readies what the server needs and returns its extra environment, ``run()`` measures; a failure in
    either is recorded as "<name> setup" and the run goes on. The server stops, then ``release()``
    frees what ``setup`` made, whatever happens."""
    server = None
    try:
        server = bench.server = BenchServer(extra_env=setup())
        bench.log(f"{name}: starting a private server (data dir {server.data_dir})")
        server.start()
        section["server"] = {"url": server.url, "pid": server.pid}
        run()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        results["errors"].append({"part": f"{name} setup", "error": f"{exc.__class__.__name__}: {exc}",
                                  "traceback": traceback.format_exc(),
                                  "server_log_tail": server.log_tail() if server else ""})
    finally:
        try:
            if server is not None:
                bench.log(f"{name}: stopping the server")
                section["server_stop"] = server.stop()
        finally:
            release()
            section["loadavg_end"] = list(os.getloadavg())


def run_on_ray(opts: parts.Options, selected: tuple[int, ...], results: dict, started: float) -> None:
    """Parts 1-2 against a server whose runners are actors on a one-node Ray cluster (BEAUTYAI_PLACEMENT=ray);
    into results["ray"]. The cluster and the server stop whatever happens."""
    head = RayHead()
    section: dict = {"parts": list(selected), "loadavg_start": list(os.getloadavg())}
    results["ray"] = section
    bench = parts.Bench(server=None, opts=opts, started=started)  # its server once the cluster is up

    def setup() -> dict:
        bench.log("ray: starting a one-node Ray cluster on 127.0.0.1")
        head.start()
        section["cluster"] = head.describe()
        bench.log(f"ray: the server places its runners on {head.address}")
        return head.server_env()

    def run() -> None:
        _run_plan(bench, selected, section, results["errors"], label="ray ")
        for key in ("part1", "part2"):
            for engine_part in (section.get(key) or {}).values():
                _ray_checks(engine_part)

    def release() -> None:
        bench.log("ray: stopping the Ray cluster")
        head.stop()

    _on_a_second_server(bench, results, section, "ray", setup=setup, run=run, release=release)


def _postgres_checks(part: dict) -> None:
    """Marks part 3's checks as the PostgreSQL column's: ids prefixed, database named."""
    for check in part.get("checks", []):
        check["id"], check["database"] = f"postgres.{check['id']}", "postgresql"


def run_on_postgres(opts: parts.Options, results: dict, started: float) -> None:
    """Part 3 again, against a server whose database is a fresh one on BENCH_POSTGRES_URL's server; into
    results["postgres"]. The server stops and the database is dropped whatever happens."""
    database = PostgresDatabase(opts.postgres_url)
    section: dict = {"loadavg_start": list(os.getloadavg())}
    results["postgres"] = section
    bench = parts.Bench(server=None, opts=opts, started=started)
    if not database.reachable():
        section["skipped"] = "no PostgreSQL answered at BENCH_POSTGRES_URL (its host and port)"
        bench.log(f"postgres: skipped: {section['skipped']}")
        return

    def setup() -> dict:
        database.create()
        section["database"] = database.name
        bench.log(f"postgres: the server keeps its rows in database {database.name}")
        return database.server_env()

    def run() -> None:
        _run_plan(bench, (3,), section, results["errors"], label="postgres ")
        _postgres_checks(section.get("part3") or {})

    _on_a_second_server(bench, results, section, "postgres", setup=setup, run=run, release=database.drop)


def run(opts: parts.Options, out_dir: Path) -> tuple[dict, dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    local_parts = opts.parts if opts.placement != "ray" else tuple(p for p in opts.parts if p not in RAY_PARTS)
    ray_parts = tuple(p for p in opts.parts if p in RAY_PARTS) if opts.placement != "local" else ()
    results: dict = {
        "stamp": stamp,
        "options": {"runs": opts.runs, "tokens": opts.tokens, "tokens_transformers": opts.tokens_transformers,
                    "parts": list(opts.parts), "engines": list(opts.engines), "soak_seconds": opts.soak_seconds,
                    "levels": list(opts.levels), "mgmt_clients": opts.mgmt_clients,
                    "mgmt_seconds": opts.mgmt_seconds, "load_cycles": opts.load_cycles,
                    "transformers_threads": opts.transformers_threads, "placement": opts.placement,
                    "relay_tokens": opts.relay_tokens, "relay_streams": opts.relay_streams,
                    "postgres": opts.postgres_url is not None, "first_tokens": opts.first_tokens},
        "prompt": clients.PROMPT,
        "machine": report.machine_info(),
        "loadavg_start": list(os.getloadavg()),
        "errors": [],
    }
    started = time.perf_counter()
    server = BenchServer()
    bench = parts.Bench(server=server, opts=opts)
    sampler = None
    try:
        try:
            if set(local_parts) - {5}:  # part 5 runs the engines alone, without the platform
                bench.log(f"starting a private server (data dir {server.data_dir}); loadavg {results['loadavg_start']}")
                server.start()
                results["server"] = {"url": server.url, "pid": server.pid}
                sampler = parts.Sampler(bench)
                sampler.start()
            _run_plan(bench, local_parts, results, results["errors"])
            p1t = (results.get("part1") or {}).get("transformers")
            if p1t:
                results["part1_transformers_gguf_load"] = {"model": p1t["model"], "platform_s": p1t["platform_load_s"],
                                                           "direct_s": p1t["direct_load_s"]}
        finally:
            try:
                if sampler is not None:
                    sampler.stop()
                    results["timeline"] = sampler.samples
            finally:
                if server.process is not None:
                    bench.log("stopping the server")
                results["server_stop"] = server.stop()
        if 3 in local_parts and opts.postgres_url:
            run_on_postgres(opts, results, bench.started)
        if ray_parts:
            run_on_ray(opts, ray_parts, results, bench.started)
    except KeyboardInterrupt as exc:
        results["errors"].append({"part": "all", "error": f"interrupted ({exc})", "traceback": ""})
    except Exception as exc:
        results["errors"].append({"part": "setup", "error": f"{exc.__class__.__name__}: {exc}",
                                  "traceback": traceback.format_exc(), "server_log_tail": server.log_tail()})
    results["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - started
    paths = report.write_outputs(results, out_dir)
    return results, paths


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        # Options come from the environment; any argument (``--help`` included) prints them instead of
        # starting a run of half an hour.
        print(__doc__)
        return 0 if argv[0] in ("-h", "--help") else 2
    signal.signal(signal.SIGTERM, _terminate)
    opts = options_from_env()
    out_dir = Path(os.environ.get("BENCH_RESULTS_DIR") or Path(__file__).resolve().parent / "results")
    results, paths = run(opts, out_dir)
    print(paths["md"].read_text())
    print("\n".join(f"{k}: {v}" for k, v in paths.items() if v), file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
