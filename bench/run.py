"""`make bench`: BeautyAI against the raw engines, in one run (issue 8).

    .venv/bin/python -m bench.run

Options (environment):
  BENCH_RUNS                  runs per figure, medians reported (default 5)
  BENCH_TOKENS                tokens per stream for llama.cpp (default 128)
  BENCH_TOKENS_TRANSFORMERS   tokens per stream for transformers (default 16: its CPU decode is 5-20x
                              slower than llama.cpp's on a busy 2-core machine, and the whole run should
                              stay near 25 minutes)
  BENCH_PARTS                 e.g. "1,2,3,4,5" (default all; 5, constrained decoding, needs no server)
  BENCH_ENGINES               e.g. "llama.cpp,transformers" (default both)
  BENCH_SOAK_SECONDS          mixed-traffic soak in part 4 (default 600)
  BENCH_LOAD_CYCLES           load/unload cycles in part 4 (default 20)
  BENCH_MGMT_SECONDS          seconds per management-API measurement (default 3)
  BENCH_TRANSFORMERS_THREADS  n_threads for the transformers entries, on both sides (default: half the logical
                              cores, as llama.cpp's own default; 0: torch's own, all physical cores)
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
from bench.server import BenchServer

ENGINES = ("llama.cpp", "transformers")


def _int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    value = int(raw)
    if value < minimum:
        raise SystemExit(f"{name} must be at least {minimum}")
    return value


def options_from_env() -> parts.Options:
    parts_raw = os.environ.get("BENCH_PARTS") or "1,2,3,4,5"
    engines_raw = os.environ.get("BENCH_ENGINES") or ",".join(ENGINES)
    selected = tuple(sorted({int(p) for p in parts_raw.replace(" ", "").split(",") if p}))
    if not selected or any(p not in (1, 2, 3, 4, 5) for p in selected):
        raise SystemExit("BENCH_PARTS: a comma-separated subset of 1,2,3,4,5")
    engines = tuple(e.strip() for e in engines_raw.split(",") if e.strip())
    if not engines or any(e not in ENGINES for e in engines):
        raise SystemExit(f"BENCH_ENGINES: a comma-separated subset of {','.join(ENGINES)}")
    return parts.Options(
        runs=_int("BENCH_RUNS", 5),
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
    )


def _terminate(signum, frame):
    # Turn SIGTERM into an exception so that the finally blocks stop the server and its runners.
    raise KeyboardInterrupt(f"signal {signum}")


def run(opts: parts.Options, out_dir: Path) -> tuple[dict, dict]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    results: dict = {
        "stamp": stamp,
        "options": {"runs": opts.runs, "tokens": opts.tokens, "tokens_transformers": opts.tokens_transformers,
                    "parts": list(opts.parts), "engines": list(opts.engines), "soak_seconds": opts.soak_seconds,
                    "levels": list(opts.levels), "mgmt_clients": opts.mgmt_clients,
                    "mgmt_seconds": opts.mgmt_seconds, "load_cycles": opts.load_cycles,
                    "transformers_threads": opts.transformers_threads},
        "prompt": clients.PROMPT,
        "machine": report.machine_info(),
        "loadavg_start": list(os.getloadavg()),
        "errors": [],
    }
    started = time.perf_counter()
    server = BenchServer()
    bench = parts.Bench(server=server, opts=opts)
    sampler = None
    bench.log(f"starting a private server (data dir {server.data_dir}); loadavg {results['loadavg_start']}")
    try:
        if set(opts.parts) - {5}:  # part 5 runs the engines alone, without the platform
            server.start()
            results["server"] = {"url": server.url, "pid": server.pid}
            sampler = parts.Sampler(bench)
            sampler.start()
        plan = []
        if 1 in opts.parts:
            plan += [(1, e, lambda e=e: parts.part_streaming(bench, e)) for e in opts.engines]
        if 2 in opts.parts:
            plan += [(2, e, lambda e=e: parts.part_concurrency(bench, e)) for e in opts.engines]
        if 3 in opts.parts:
            plan.append((3, None, lambda: parts.part_management(bench)))
        if 4 in opts.parts:
            plan.append((4, None, lambda: parts.part_load_memory(bench)))
        if 5 in opts.parts:
            plan += [(5, e, lambda e=e: parts.part_constrained(bench, e)) for e in opts.engines]
        for number, engine, fn in plan:
            key = f"part{number}"
            load_before = list(os.getloadavg())
            try:
                value = fn()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                bench.log(f"part {number} {engine or ''} failed: {exc!r}")
                results["errors"].append({"part": f"{number}{' ' + engine if engine else ''}",
                                          "error": f"{exc.__class__.__name__}: {exc}",
                                          "traceback": traceback.format_exc(),
                                          "server_log_tail": server.log_tail()})
                continue
            value["loadavg_before"], value["loadavg_after"] = load_before, list(os.getloadavg())
            if engine is None:
                results[key] = value
            else:
                results.setdefault(key, {})[engine] = value
        p1t = (results.get("part1") or {}).get("transformers")
        if p1t:
            results["part1_transformers_gguf_load"] = {"model": p1t["model"], "platform_s": p1t["platform_load_s"],
                                                       "direct_s": p1t["direct_load_s"]}
    except KeyboardInterrupt as exc:
        results["errors"].append({"part": "all", "error": f"interrupted ({exc})", "traceback": ""})
    except Exception as exc:
        results["errors"].append({"part": "setup", "error": f"{exc.__class__.__name__}: {exc}",
                                  "traceback": traceback.format_exc(), "server_log_tail": server.log_tail()})
    finally:
        try:
            if sampler is not None:
                sampler.stop()
                results["timeline"] = sampler.samples
        finally:
            bench.log("stopping the server")
            results["server_stop"] = server.stop()
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
