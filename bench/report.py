"""The outputs of one run: <stamp>.json (everything), <stamp>.md (summary), <stamp>.png (chart), latest.md."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bench.stats import fmt

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "llama_cpp_python", "Django", "daphne", "channels", "djangorestframework",
            "openai", "httpx", "websockets", "psutil", "matplotlib")


def machine_info() -> dict:
    import psutil

    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    info = {
        "cpu_model": cpu_model or platform.processor() or None,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1024 ** 3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
        "gpu": None,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                               timeout=30).returncode != 0
        info["git"] = {"commit": commit or None, "uncommitted_changes": dirty}
    except (OSError, subprocess.SubprocessError):
        info["git"] = None
    if not (info["git"] or {}).get("commit") and os.environ.get("BENCH_GIT_COMMIT"):
        # A copy of the tree without .git (the GPU machine): the commit comes from whoever copied it.
        info["git"] = {"commit": os.environ["BENCH_GIT_COMMIT"], "uncommitted_changes": None}
    return info


def _clean(value):
    """JSON without NaN/Infinity."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def all_checks(results: dict) -> list[dict]:
    """Every check of the run: part 3 on PostgreSQL after part 3 on SQLite, the Ray section's
    (BENCH_PLACEMENT=ray) after those of local placement."""
    checks = []
    sections = [(results, key) for key in ("part1", "part2", "part3")]
    sections += [(results.get("postgres") or {}, "part3")]
    sections += [(results, key) for key in ("part4", "part5", "part6")]
    sections += [(results.get("ray") or {}, key) for key in ("part1", "part2")]
    for section, key in sections:
        part = section.get(key)
        if isinstance(part, dict) and "checks" in part:
            checks += part["checks"]
        elif isinstance(part, dict):
            for sub in part.values():
                if isinstance(sub, dict):
                    checks += sub.get("checks", [])
    return checks


def _measured(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def _verdict(passed) -> str:
    return "n/a" if passed is None else ("pass" if passed else "**FAIL**")


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _parts_1_2(results: dict, level: str = "##", title: str = "") -> list[str]:
    """The tables of parts 1 and 2 from `results` (the run's, or its Ray section)."""
    lines: list[str] = []
    p1 = results.get("part1") or {}
    if p1:
        lines += [f"{level} Part 1{title} — streaming overhead (medians)", "",
                  "| engine | side | decode tok/s | ratio | TTFT ms | added TTFT ms | start event ms | TTFT outside "
                  "the engine ms | p99 ITL ms | added p99 ITL ms | end-to-end ms | tokens |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for engine, part in p1.items():
            if not isinstance(part, dict) or "summary" not in part:
                continue
            for side, s in part["summary"].items():
                comp = part["comparisons"].get(side, {})
                lines.append(
                    f"| {engine} | {side} | {fmt(s['decode_tps_median'], 1)} | {fmt(comp.get('tps_ratio'), 3)} | "
                    f"{fmt(s['ttft_ms_median'], 1)} | {fmt(comp.get('added_ttft_ms'), 1)} | "
                    f"{fmt(s.get('start_ms_median'), 1)} | {fmt(s.get('outside_engine_ttft_ms_median'), 1)} | "
                    f"{fmt(s['itl_p99_ms_median'], 1)} | {fmt(comp.get('added_itl_p99_ms'), 1)} | "
                    f"{fmt(s['total_ms_median'], 0)} | {','.join(map(str, s['tokens']))} |")
        lines += ["", "Start event: when the platform's `start` event (SSE, WebSocket) or first chunk (/v1) arrived — "
                  "authentication, session and context work done, request handed to the runner. TTFT outside the "
                  "engine: the client's TTFT minus the engine's own (runner stats; /v1 reports none). The runs measure "
                  "the sides one after another in rotating order. A side's own figures are medians over its runs; "
                  "ratio, added TTFT and added p99 ITL (the figures checked) are medians over the runs of each "
                  "run's pair, that side against the direct engine of the same run, so that a pair shares the "
                  "shared host's speed of that minute. direct: the engine alone in its "
                  "own process (bench.direct_worker: a fresh interpreter that imports only that engine, like a "
                  "runner), timed inside that process.", ""]

    p2 = results.get("part2") or {}
    if p2:
        lines += [f"{level} Part 2{title} — concurrency (SSE streams sent together; medians)", "",
                  "| engine | streams | aggregate tok/s | × 1 stream | per-stream decode tok/s | TTFT p50 ms "
                  "| TTFT p95 ms | errors |",
                  "|---|---|---|---|---|---|---|---|"]
        for engine, part in p2.items():
            if not isinstance(part, dict) or "summary" not in part:
                continue
            single = part["summary"]["1"]["aggregate_tps_median"]
            for side, s in part["summary"].items():
                rel = None if not single or s["aggregate_tps_median"] is None else s["aggregate_tps_median"] / single
                label = "1 (engine alone, no platform)" if side == "direct-1" else side
                lines.append(f"| {engine} ({part['model']}) | {label} | {fmt(s['aggregate_tps_median'], 1)} | "
                             f"{fmt(rel, 2)} | {fmt(s['per_stream_decode_tps_median'], 1)} | "
                             f"{fmt(s['ttft_ms_p50_median'], 0)} | {fmt(s['ttft_ms_p95_median'], 0)} | "
                             f"{s['errors_total']} |")
        for engine, part in p2.items():
            ov = part.get("overload") if isinstance(part, dict) else None
            if ov:
                lines += ["", f"Overload ({engine}, max_queue={ov['max_queue']}, slot and queue full): "
                          f"{len(ov['sequential'])} sequential chats answered "
                          f"{sorted({s['status'] for s in ov['sequential']})} in p50 "
                          f"{fmt(ov['sequential_ms_p50'], 1)} ms / max {fmt(ov['sequential_ms_max'], 1)} ms; a burst "
                          f"of {ov['burst_size']} answered {ov['burst_statuses']} in p50 {fmt(ov['burst_ms_p50'], 1)} "
                          f"ms / max {fmt(ov['burst_ms_max'], 1)} ms.", ""]
        lines.append("")
    return lines


def _ray_section(results: dict) -> list[str]:
    """BENCH_PLACEMENT=ray: the same parts 1-2 through runners that are Ray actors, next to local placement."""
    ray = results.get("ray")
    if not ray:
        return []
    cluster = ray.get("cluster") or {}
    la0, la1 = ray.get("loadavg_start"), ray.get("loadavg_end")
    lines = ["## Ray placement (BENCH_PLACEMENT=ray) — parts 1–2", "",
             f"The same parts against a second private server started with BEAUTYAI_PLACEMENT=ray: its runners are "
             f"named Ray actors on a one-node Ray {cluster.get('ray', '?')} cluster on 127.0.0.1 "
             f"({cluster.get('num_cpus', '?')} CPUs, object store {fmt((cluster.get('object_store_bytes') or 0) / 1e6, 0)} MB) "
             "started for the run and stopped after it; tokens reach the web process over the runner's "
             "authenticated socket (runner protocol), not as Ray objects. Same direct-engine baseline (its own "
             "process, alternating with the platform's sides) and the same targets (in the Targets table as "
             "part \"1 ray\" / \"2 ray\")."
             + (f" Load average (1 min) {la0[0]:.2f} when the Ray parts started, {la1[0]:.2f} when they ended."
                if la0 and la1 else ""), ""]
    local1, ray1 = results.get("part1") or {}, ray.get("part1") or {}
    rows = []
    for engine, part in ray1.items():
        if not isinstance(part, dict) or "comparisons" not in part:
            continue
        other = (local1.get(engine) or {}).get("comparisons") or {}
        for transport, comp in part["comparisons"].items():
            loc = other.get(transport) or {}
            rows.append(f"| {engine} | {transport} | {fmt(loc.get('tps_ratio'), 3)} | {fmt(comp.get('tps_ratio'), 3)} | "
                        f"{fmt(loc.get('added_ttft_ms'), 1)} | {fmt(comp.get('added_ttft_ms'), 1)} | "
                        f"{fmt(loc.get('added_itl_p99_ms'), 1)} | {fmt(comp.get('added_itl_p99_ms'), 1)} |")
    if rows:
        lines += ["| engine | transport | tok/s ÷ direct, local | tok/s ÷ direct, ray | added TTFT ms, local "
                  "| added TTFT ms, ray | added p99 ITL ms, local | added p99 ITL ms, ray |",
                  "|---|---|---|---|---|---|---|---|", *rows,
                  "", "Targets: ratio ≥ 0.98, added TTFT ≤ 5 ms, added p99 ITL ≤ 2 ms (medians of per-run pairs, as in "
                  "part 1). Each column is against its own direct baseline, measured alternately with it; n/a: not run with that placement.", ""]
    local2, ray2 = results.get("part2") or {}, ray.get("part2") or {}
    rows = []
    for engine, part in ray2.items():
        if not isinstance(part, dict) or "summary" not in part:
            continue
        other = (local2.get(engine) or {}).get("summary") or {}
        for side in [str(n) for n in part.get("levels", [])]:
            loc, here = other.get(side) or {}, part["summary"].get(side) or {}
            rows.append(f"| {engine} | {side} | {fmt(loc.get('aggregate_tps_median'), 1)} | "
                        f"{fmt(here.get('aggregate_tps_median'), 1)} | {loc.get('errors_total', 'n/a')} | "
                        f"{here.get('errors_total', 'n/a')} |")
    if rows:
        lines += ["| engine | streams | aggregate tok/s, local | aggregate tok/s, ray | errors, local | errors, ray |",
                  "|---|---|---|---|---|---|", *rows, ""]
    lines += _parts_1_2(ray, level="###", title=" on Ray")
    return lines


def _part3(p3: dict, database: str) -> list[str]:
    if not p3.get("summary"):
        return []
    lines = [f"## Part 3{' on PostgreSQL' if database == 'PostgreSQL' else ''} — management API, {database} "
             f"({p3['clients']} keep-alive clients, {p3['seconds_per_measurement']:.0f} s per measurement, medians)",
             "", "| condition | route | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for condition, by_path in p3["summary"].items():
        for path, s in by_path.items():
            lines.append(f"| {condition} | GET {path} | {fmt(s['requests_per_s_median'], 0)} | "
                         f"{fmt(s['p50_ms_median'], 1)} | {fmt(s['p99_ms_median'], 1)} | {s['errors']} |")
    st = p3.get("streams") or {}
    return lines + ["", f"During \"generating\": 4 SSE streams on llama.cpp (1 decoding, 3 queued); "
                    f"{st.get('streams_completed')} streams completed, {st.get('stream_errors')} errors.", ""]


def markdown(results: dict) -> str:
    m = results["machine"]
    o = results["options"]
    lines = [f"# BeautyAI benchmark — {results['stamp']}", ""]
    versions = m["versions"]
    lines += [
        f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['physical_cores']} physical), "
        f"{m['ram_gb']} GB RAM, {'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; {m['platform']}.  ",
        f"Python {m['python']}, torch {versions.get('torch')}, llama-cpp-python {versions.get('llama_cpp_python')}, "
        f"transformers {versions.get('transformers')}, Django {versions.get('Django')}, daphne {versions.get('daphne')}.  ",
    ]
    if m.get("git"):
        lines.append(f"Code: commit {str(m['git']['commit'])[:12]}"
                     f"{' with uncommitted changes' if m['git']['uncommitted_changes'] else ''}.  ")
    la0, la1 = results["loadavg_start"], results.get("loadavg_end")
    lines += [
        f"Load average (1/5/15 min) at start {la0[0]:.2f}/{la0[1]:.2f}/{la0[2]:.2f}"
        + (f", at end {la1[0]:.2f}/{la1[1]:.2f}/{la1[2]:.2f}" if la1 else "")
        + f" on {m['logical_cores']} cores"
        + (" — other work shared the CPUs during this run, so absolute speeds are lower and noisier than on an "
           "idle machine; ratios compare sides measured alternately under the same conditions."
           if max(la0[0], (la1 or la0)[0]) > 0.5 * (m["logical_cores"] or 1) else ".") + "  ",
        f"Settings: {o['runs']} runs per figure (medians), {o['tokens']} tokens for llama.cpp, "
        f"{o['tokens_transformers']} for transformers, greedy, prompt \"{results['prompt']}\"; parts "
        f"{', '.join(map(str, o['parts']))}; engines {', '.join(o['engines'])}; soak {o['soak_seconds']:.0f} s; "
        f"wall time {results.get('wall_s', 0) / 60:.1f} min"
        + (f"; part 1's TTFT per run and side is the median of its stream's first token and "
           f"{o['first_tokens']} two-token chats" if o.get("first_tokens") else "")
        + (f"; transformers entries run with n_threads={o['transformers_threads']}" if o.get("transformers_threads")
           else "")
        + (f"; placement {o['placement']} (parts 1–2 {'also ' if o['placement'] == 'both' else ''}through runners "
           "on a Ray cluster: see \"Ray placement\")" if o.get("placement") in ("ray", "both") else "") + ".",
        "",
    ]
    if "transformers" in o["engines"] and o["tokens_transformers"] != o["tokens"]:
        lines += [f"Transformers runs use {o['tokens_transformers']} tokens per stream instead of {o['tokens']} "
                  "(BENCH_TOKENS_TRANSFORMERS) to keep the run under ~25 minutes on this machine.", ""]

    checks = all_checks(results)
    lines += ["## Targets", "", "| part | engine | figure | target | measured | result |", "|---|---|---|---|---|---|"]
    for c in checks:
        measured = _measured(c["measured"]) + (f" ({c['note']})" if c.get("note") else "")
        part = f"{c['part']} ray" if c.get("placement") == "ray" else c["part"]
        part = f"{part} postgres" if c.get("database") == "postgresql" else part
        lines.append(f"| {part} | {c['engine'] or '—'} | {_cell(c['what'])} | {_cell(c['target'])} | "
                     f"{_cell(measured)} | {_verdict(c['passed'])} |")
    passed = sum(1 for c in checks if c["passed"] is True)
    failed = sum(1 for c in checks if c["passed"] is False)
    unknown = sum(1 for c in checks if c["passed"] is None)
    lines += ["", f"{passed} pass, {failed} fail, {unknown} not measured or informational.", ""]

    for error in results.get("errors", []):
        lines += [f"**Part {error['part']} did not finish:** `{_cell(error['error'])}`", ""]

    lines += _parts_1_2(results)
    lines += _ray_section(results)

    lines += _part3(results.get("part3") or {}, "SQLite")
    postgres = results.get("postgres") or {}
    if postgres.get("skipped"):
        lines += ["## Part 3 on PostgreSQL", "", f"Not run: {postgres['skipped']}.", ""]
    else:
        lines += _part3(postgres.get("part3") or {}, "PostgreSQL")

    p4 = results.get("part4") or {}
    if p4.get("load"):
        lines += ["## Part 4 — load and memory (medians)", "",
                  "| engine | model | engine's own load (warm process) s | engine load in a fresh process s "
                  "| through the platform s | runner-reported s | platform ÷ engine's own |",
                  "|---|---|---|---|---|---|---|"]
        for engine, lt in p4["load"].items():
            lines.append(f"| {engine} | {lt['model']} | {fmt(lt['direct_s_median'], 2)} | "
                         f"{fmt(lt.get('fresh_process_s_median'), 2)} | "
                         f"{fmt(lt['platform_s_median'], 2)} | {fmt(lt['runner_reported_s_median'], 2)} | "
                         f"{fmt(lt['ratio'], 2)} |")
        lines += ["", "The engine's own load is measured in a warm worker process (imports done, first round "
                  "discarded); a fresh process also pays interpreter start and imports (torch, transformers or "
                  "llama_cpp) — which a runner started for the load pays. With spare runners on (the "
                  "default), every load of an engine after its first one runs in a spare whose imports are "
                  "done; the platform's medians here are such loads (parts 1–2 loaded each engine first)."]
        lines += ["", "| engine | reported memory_usage_mb | runner RSS (psutil, outside) | max abs diff % |",
                  "|---|---|---|---|"]
        for engine, mem in p4["memory"].items():
            lines.append(f"| {engine} | {fmt(mem['reported_mb_median'], 1)} | {fmt(mem['outside_rss_mb_median'], 1)} | "
                         f"{fmt(mem['abs_diff_pct_max'], 2)} |")
        lines += ["", "memory_usage_mb is itself the runner pid's RSS (psutil) plus its GPU memory (NVML), read on "
                  "each request: this check confirms the pid and that the figure is fresh, not an estimate."]
        w = p4.get("web_rss")
        timeline = results.get("timeline") or []
        if w:
            first = timeline[0]["web_rss_mb"] if timeline else None
            lines += ["", f"Web process (daphne pid {w['pid']}) RSS: {fmt(first, 1)} MB just after start; baseline "
                      f"for the growth checks (part 4, after every route and transport was used once) "
                      f"{fmt(w['baseline_mb'], 1)} MB, after "
                      f"{len(w['cycle_rss_mb'])} load/unload cycles {fmt(w['after_cycles_mb'], 1)} MB, after the "
                      f"{w['soak']['seconds']:.0f} s soak {fmt(w['after_soak_mb'], 1)} MB "
                      f"({w['soak']['requests']} requests: {w['soak']['counts']}; {w['soak']['errors']} errors).", ""]
    p5 = results.get("part5") or {}
    if p5:
        lines += ["## Part 5 — constrained decoding on the raw engines (medians)", "",
                  "| engine | tokens | free tok/s | json_schema tok/s | constrained ÷ free | added per token µs "
                  "| first constrained request, added TTFT ms |", "|---|---|---|---|---|---|---|"]
        for engine, c in p5.items():
            lines.append(f"| {engine} | {c['tokens']} | {fmt(c['summary']['free']['decode_tps_median'], 1)} | "
                         f"{fmt(c['summary']['constrained']['decode_tps_median'], 1)} | {fmt(c['tps_ratio'], 3)} | "
                         f"{fmt(c['per_token_cost_us'], 0)} | {fmt(c['first_constrained_added_ttft_ms'], 1)} |")
        lines += ["", "Same prompt, same engine process, sides alternating; ratio and cost are medians of each "
                  "run's pair. The schema is an object with a title and a story string. llama.cpp: GBNF grammar "
                  "in its sampler; transformers: llguidance token masks. The last column is the first "
                  "constrained request's TTFT over the later ones' (compiling the schema, then cached).", ""]
    p6 = results.get("part6") or {}
    if p6.get("summary"):
        s6 = p6["summary"]
        lines += [f"## Part 6 — relay ceiling ({p6['streams']} SSE streams × {p6['tokens']} tokens from "
                  "bench.token_source; medians)", "",
                  "| aggregate tok/s | web CPU µs/token | tokens/s per web-process core | runner CPU µs/token "
                  "| token source CPU µs/token | benchmark clients CPU µs/token | TTFT p50 ms | errors |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {fmt(s6['aggregate_tps'], 0)} | {fmt(s6['web_cpu_us_per_token'], 1)} | "
                  f"{fmt(s6['tokens_per_web_core_s'], 0)} | {fmt(s6['runner_cpu_us_per_token'], 1)} | "
                  f"{fmt(s6['source_cpu_us_per_token'], 1)} | {fmt(s6.get('client_cpu_us_per_token'), 1)} | "
                  f"{fmt(s6['ttft_ms_p50'], 0)} | {s6['errors_total']} |",
                  "", "An `openai` entry pointed at bench.token_source, a bench-only OpenAI-compatible server "
                  "that streams one chunk per token as fast as its socket takes them, so the platform is the "
                  "only bottleneck. CPU is user + system time read with psutil just before the chats are sent "
                  "and just after the last one ends: the web process (daphne, all its threads, not its "
                  "children), the runner (the engine's HTTP client and the pipe), the source and the "
                  "benchmark's own process (its SSE clients), divided by the tokens of the chats that ended "
                  "complete; tokens/s per web-process core is that count over the web process's CPU seconds. "
                  "The aggregate is limited by the machine: all four share its cores. TTFT includes each "
                  "chat's setup while the others already stream.", ""]
    if results.get("part1_transformers_gguf_load"):
        g = results["part1_transformers_gguf_load"]
        lines += [f"Transformers on the GGUF (`{g['model']}`), measured once in part 1: platform load "
                  f"{fmt(g['platform_s'], 1)} s, the engine's own load {fmt(g['direct_s'], 1)} s.", ""]
    stop = results.get("server_stop")
    if stop:
        lines += [f"Server stop: {stop}", ""]
    lines += ["Raw numbers, per-run values and machine details: the JSON file of the same name.", ""]
    return "\n".join(lines)


def _legend_or_note(ax, loc="best") -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc=loc)
    else:
        ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", va="center", color="gray")


def chart(results: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib): no chart"

    fig, axes = plt.subplots(3, 2, figsize=(14, 14))
    fig.suptitle(f"BeautyAI benchmark {results['stamp']} — {results['machine']['cpu_model']}, "
                 f"{results['machine']['logical_cores']} cores, load avg at start "
                 f"{results['loadavg_start'][0]:.1f}", fontsize=11)
    p1 = {k: v for k, v in (results.get("part1") or {}).items() if isinstance(v, dict) and "comparisons" in v}
    transports = ["sse", "websocket", "v1"]
    colors = {"llama.cpp": "tab:blue", "transformers": "tab:orange"}

    ax = axes[0][0]
    width = 0.38
    for i, (engine, part) in enumerate(p1.items()):
        values = [part["comparisons"][t]["tps_ratio"] or 0 for t in transports]
        xs = [x + (i - 0.5) * width for x in range(len(transports))]
        bars = ax.bar(xs, values, width, label=f"{engine} ({part['tokens']} tok)", color=colors.get(engine))
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.axhline(0.98, color="red", linestyle="--", linewidth=1, label="target 0.98")
    ax.set_xticks(range(len(transports)), transports)
    ax.set_ylabel("decode tok/s ÷ direct engine")
    ax.set_title("1. Streaming: tokens/s ratio (higher is better)")
    top = max([1.0] + [part["comparisons"][t]["tps_ratio"] or 0 for part in p1.values() for t in transports])
    ax.set_ylim(0, top * 1.15)
    _legend_or_note(ax, loc="lower right")

    ax = axes[0][1]
    labels, ttft, itl = [], [], []
    for engine, part in p1.items():
        for t in transports:
            labels.append(f"{t}\n{engine}")
            ttft.append(part["comparisons"][t]["added_ttft_ms"] or 0)
            itl.append(part["comparisons"][t]["added_itl_p99_ms"] or 0)
    if labels:
        xs = range(len(labels))
        b1 = ax.bar([x - 0.2 for x in xs], ttft, 0.4, label="added TTFT (target ≤ 5)", color="tab:purple")
        b2 = ax.bar([x + 0.2 for x in xs], itl, 0.4, label="added p99 ITL (target ≤ 2)", color="tab:green")
        ax.bar_label(b1, fmt="%.1f", fontsize=7)
        ax.bar_label(b2, fmt="%.1f", fontsize=7)
        ax.axhline(5, color="tab:purple", linestyle="--", linewidth=1)
        ax.axhline(2, color="tab:green", linestyle="--", linewidth=1)
        ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_yscale("symlog", linthresh=20)
    ax.set_ylabel("ms over the direct engine (linear to ±20, log beyond)")
    ax.set_title("1. Streaming: added latency (lower is better)")
    _legend_or_note(ax)

    ax = axes[1][0]
    for engine, part in (results.get("part2") or {}).items():
        if not isinstance(part, dict) or "summary" not in part:
            continue
        levels = part["levels"]
        values = [part["summary"][str(n)]["aggregate_tps_median"] or 0 for n in levels]
        ax.plot(levels, values, marker="o", label=f"{engine} ({part['model']})", color=colors.get(engine))
        direct = part["summary"]["direct-1"]["aggregate_tps_median"]
        if direct:
            ax.axhline(direct, color=colors.get(engine), linestyle=":", linewidth=1,
                       label=f"{engine} engine alone, 1 stream")
        single = part["summary"]["1"]["aggregate_tps_median"] or 0
        factor = 0.95 if engine == "llama.cpp" else 1.5
        ax.scatter([max(levels)], [single * factor], marker="_", s=400, color="red")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title("2. Concurrency (red dash: target at the top level)")
    _legend_or_note(ax)

    ax = axes[1][1]
    p3 = results.get("part3") or {}
    if p3.get("summary"):
        paths = list(p3["summary"]["idle"])
        xs = range(len(paths))
        for i, condition in enumerate(("idle", "generating")):
            values = [p3["summary"][condition][p]["requests_per_s_median"] or 0 for p in paths]
            bars = ax.bar([x + (i - 0.5) * 0.38 for x in xs], values, 0.38, label=condition)
            ax.bar_label(bars, labels=[f"{v:.0f}/s\np99 {p3['summary'][condition][p]['p99_ms_median'] or 0:.0f}ms"
                                       for v, p in zip(values, paths)], fontsize=7)
        ax.set_xticks(list(xs), paths)
        ax.set_ylabel("requests/s")
    _legend_or_note(ax)
    ax.set_title(f"3. Management API, {p3.get('clients', 16)} clients")

    ax = axes[2][0]
    p4 = results.get("part4") or {}
    if p4.get("load"):
        engines = list(p4["load"])
        xs = range(len(engines))
        d = [p4["load"][e]["direct_s_median"] or 0 for e in engines]
        f = [p4["load"][e].get("fresh_process_s_median") or 0 for e in engines]
        p = [p4["load"][e]["platform_s_median"] or 0 for e in engines]
        lim = [1.2 * v + 2 for v in d]
        ax.bar_label(ax.bar([x - 0.27 for x in xs], d, 0.27, label="engine's own load (warm process)"), fmt="%.2f",
                     fontsize=8)
        ax.bar_label(ax.bar(list(xs), f, 0.27, label="engine in a fresh process"), fmt="%.2f", fontsize=8)
        ax.bar_label(ax.bar([x + 0.27 for x in xs], p, 0.27, label="through the platform"), fmt="%.2f", fontsize=8)
        ax.scatter([x + 0.27 for x in xs], lim, marker="_", s=600, color="red", label="target 1.2× own load + 2 s")
        ax.set_xticks(list(xs), [f"{e}\n{p4['load'][e]['model']}" for e in engines], fontsize=8)
        ax.set_xlim(-0.7, max(len(engines), 2) - 0.3)
        ax.set_ylabel("seconds")
    _legend_or_note(ax)
    ax.set_title("4. Load time")

    ax = axes[2][1]
    timeline = results.get("timeline") or []
    if timeline:
        ts = [s["t"] / 60 for s in timeline]
        runner = [sum(s["children_rss_mb"].values()) for s in timeline]
        right = ax.twinx()
        right.plot(ts, runner, color="tab:gray", linewidth=0.6, alpha=0.7)
        right.set_ylabel("runner processes RSS, sum (MB, gray)", color="tab:gray")
        ax.set_zorder(right.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.plot(ts, [s["web_rss_mb"] for s in timeline], label="web process (daphne) RSS", color="black")
        w = (p4 or {}).get("web_rss")
        if w and w.get("baseline_mb"):
            ax.axhline(w["baseline_mb"], color="tab:green", linestyle=":", linewidth=1, label="part 4 baseline")
            ax.axhline(w["baseline_mb"] + 50, color="red", linestyle="--", linewidth=1, label="baseline + 50 MB")
        ax.set_ylim(0, max(s["web_rss_mb"] for s in timeline) + 80)
        last = None
        for s in timeline:
            if s["part"] != last:
                ax.axvline(s["t"] / 60, color="lightgray", linewidth=0.6)
                ax.text(s["t"] / 60, 0, s["part"], rotation=90, fontsize=6,
                        va="bottom", color="dimgray")
                last = s["part"]
        ax.set_xlabel("minutes since start")
        ax.set_ylabel("web process RSS (MB)")
    _legend_or_note(ax, loc="upper left")
    ax.set_title("4. Memory over the run (vertical lines: part changes)")

    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None


def write_outputs(results: dict, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["stamp"]
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    png_path = out_dir / f"{stamp}.png"
    chart_problem = None
    try:
        chart_problem = chart(results, png_path)
    except Exception as exc:  # a chart bug must not lose the numbers
        chart_problem = f"chart failed: {exc.__class__.__name__}: {exc}"
    if chart_problem:
        results.setdefault("notes", []).append(chart_problem)
    text = markdown(results)
    if chart_problem:
        text += f"\nNote: {chart_problem}\n"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(results), indent=1, default=str))
    os.replace(tmp, json_path)
    md_path.write_text(text)
    shutil.copyfile(md_path, out_dir / "latest.md")
    return {"json": json_path, "md": md_path, "png": png_path if png_path.exists() else None,
            "latest": out_dir / "latest.md"}
