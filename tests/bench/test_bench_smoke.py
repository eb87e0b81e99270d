"""`make bench`'s building blocks, run for a few tokens so that CI proves the harness still works.

One private server (fresh data dir, SQLite, its own port) with the bundled llama.cpp model; part 1
runs once on every transport against the engine in this process; then one concurrent batch, one
short management-API burst, the memory reading and the report files. The speed figures themselves
are not checked here (that is what `make bench` is for), only that each is measured.
"""

from __future__ import annotations

import importlib.util
import json
import os

import psutil
import pytest
from django.conf import settings

from bench import clients, parts, report, stats
from bench.hammer import hammer_in_process
from bench.server import LLAMA, BenchServer
from bench.token_source import MODEL_ID as SOURCE_MODEL_ID
from bench.token_source import TokenSource

TOKENS = 4

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_stats_helpers():
    assert stats.median([3, 1, 2]) == 2
    assert stats.percentile([0, 10], 99) == pytest.approx(9.9)
    assert stats.percentile([], 50) is None
    assert stats.ratio(1, 0) is None and stats.diff(None, 1) is None
    assert parts.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_options_from_env(monkeypatch):
    from bench.run import options_from_env

    monkeypatch.setenv("BENCH_PARTS", "1,3")
    monkeypatch.setenv("BENCH_ENGINES", "llama.cpp")
    monkeypatch.setenv("BENCH_RUNS", "2")
    monkeypatch.setenv("BENCH_SOAK_SECONDS", "60")
    opts = options_from_env()
    assert (opts.parts, opts.engines, opts.runs, opts.soak_seconds, opts.tokens) == ((1, 3), ("llama.cpp",), 2, 60.0, 128)
    assert opts.transformers_threads == max(1, (os.cpu_count() or 2) // 2)  # half the cores, as llama.cpp
    monkeypatch.setenv("BENCH_TRANSFORMERS_THREADS", "0")
    assert options_from_env().transformers_threads is None  # torch's own choice
    monkeypatch.setenv("BENCH_ENGINES", "vllm")
    with pytest.raises(SystemExit):
        options_from_env()


def test_part_1_checks_the_median_of_each_runs_pair_not_the_ratio_of_two_medians():
    from types import SimpleNamespace as Run

    # The host slows down for the last three runs; each platform run is 1 % slower than its pair.
    direct_tps = [80, 80, 80, 80, 50, 50, 50]
    direct = [Run(ok=True, decode_tps=t, ttft_ms=20 + i, itl_p99_ms=15.0) for i, t in enumerate(direct_tps)]
    platform = [Run(ok=True, decode_tps=t * 0.99, ttft_ms=23 + i, itl_p99_ms=16.0) for i, t in enumerate(direct_tps)]
    platform[1] = Run(ok=False, decode_tps=None, ttft_ms=None, itl_p99_ms=None)  # a failed run makes no pair
    figures = parts.compare_to_direct(platform, direct)
    assert figures["tps_ratio"] == pytest.approx(0.99)
    assert figures["added_ttft_ms"] == pytest.approx(3.0) and figures["added_itl_p99_ms"] == pytest.approx(1.0)
    # The sides' medians compare different minutes: the platform's six good runs have their middle
    # between a fast and a slow minute (64.35), the direct engine's seven in a fast one (80): 0.80.
    good = [r.decode_tps for r in platform if r.ok]
    assert stats.ratio(stats.median(good), stats.median(r.decode_tps for r in direct)) != pytest.approx(0.99)


def test_part_1s_first_token_in_a_run_is_the_median_of_its_stream_and_its_probes():
    from types import SimpleNamespace as Run

    def first(ttft, ok=True):
        return Run(ok=ok, decode_tps=70.0, ttft_ms=ttft, itl_p99_ms=15.0)

    # One stream each; the platform's stream met a stall (40 ms), its probes did not.
    direct, platform = [first(18.0)], [first(40.0)]
    direct_probes = [[first(17.0), first(19.0), first(18.0), first(18.5)]]
    platform_probes = [[first(21.0), first(22.0), first(99.0, ok=False), first(21.5)]]
    assert parts.compare_to_direct(platform, direct)["added_ttft_ms"] == pytest.approx(22.0)
    figures = parts.compare_to_direct(platform, direct, platform_probes, direct_probes)
    # Platform: median of 40, 21, 22, 21.5 (the failed probe left out) = 21.75;
    # direct: median of 18, 17, 19, 18, 18.5 = 18.
    assert figures["added_ttft_ms"] == pytest.approx(3.75)
    assert figures["tps_ratio"] == pytest.approx(1.0)


def test_part_1_takes_4_first_token_probes_per_side_and_run_by_default(monkeypatch):
    from bench.run import options_from_env

    monkeypatch.delenv("BENCH_FIRST_TOKENS", raising=False)
    assert options_from_env().first_tokens == 4
    monkeypatch.setenv("BENCH_FIRST_TOKENS", "0")
    assert options_from_env().first_tokens == 0


def test_each_figure_is_a_median_of_at_least_7_runs_by_default(monkeypatch):
    from bench.run import options_from_env

    monkeypatch.delenv("BENCH_RUNS", raising=False)
    assert options_from_env().runs >= 7  # issue #20: "medians of ≥ 7"


def test_part_6_is_in_the_default_run_with_2000_tokens_per_stream(monkeypatch):
    from bench.run import options_from_env

    monkeypatch.delenv("BENCH_PARTS", raising=False)
    monkeypatch.delenv("BENCH_RELAY_TOKENS", raising=False)
    opts = options_from_env()
    assert opts.parts == (1, 2, 3, 4, 5, 6) and (opts.relay_tokens, opts.relay_streams) == (2000, 16)
    monkeypatch.setenv("BENCH_RELAY_TOKENS", "32769")  # more than a registry entry may generate
    with pytest.raises(SystemExit):
        options_from_env()


def test_placement_option_defaults_to_local_and_ray_needs_part_1_or_2(monkeypatch):
    from bench.run import options_from_env

    monkeypatch.delenv("BENCH_PLACEMENT", raising=False)
    monkeypatch.setenv("BENCH_PARTS", "1,5")
    assert options_from_env().placement == "local"  # `make bench` unchanged unless asked
    monkeypatch.setenv("BENCH_PLACEMENT", "both")
    assert options_from_env().placement == "both"
    monkeypatch.setenv("BENCH_PLACEMENT", "kubernetes")
    with pytest.raises(SystemExit):
        options_from_env()
    monkeypatch.setenv("BENCH_PLACEMENT", "ray")
    monkeypatch.setenv("BENCH_PARTS", "3")
    with pytest.raises(SystemExit):
        options_from_env()  # the Ray column has parts 1 and 2 only


def test_part_3_runs_on_postgresql_too_unless_turned_off(monkeypatch):
    from bench.run import POSTGRES_URL, options_from_env

    monkeypatch.delenv("BENCH_POSTGRES_URL", raising=False)
    assert options_from_env().postgres_url == POSTGRES_URL == "postgres://postgres@127.0.0.1:5432/postgres"
    monkeypatch.setenv("BENCH_POSTGRES_URL", "postgres://bench@10.0.0.5:5433/postgres")
    assert options_from_env().postgres_url == "postgres://bench@10.0.0.5:5433/postgres"
    monkeypatch.setenv("BENCH_POSTGRES_URL", "off")
    assert options_from_env().postgres_url is None


def test_part_3_on_postgresql_is_skipped_with_a_note_when_nothing_answers():
    from bench.run import run_on_postgres
    from tests.servers import free_port

    results = {"errors": []}
    opts = parts.Options(runs=1, parts=(3,), postgres_url=f"postgres://postgres@127.0.0.1:{free_port()}/postgres")
    run_on_postgres(opts, results, started=0.0)
    assert results["postgres"]["skipped"].startswith("no PostgreSQL answered") and results["errors"] == []
    assert "Not run: no PostgreSQL answered" in report.markdown(_doc_with(postgres=results["postgres"]))


def _fake_part3(models_per_s: float) -> dict:
    row = {"requests_per_s_median": 1000.0, "p50_ms_median": 10.0, "p99_ms_median": 20.0, "errors": 0}
    ratio = models_per_s / 1000.0
    return {"clients": 16, "seconds_per_measurement": 3, "runs": 1,
            "summary": {"idle": {"/healthz": row, "/models/": {**row, "requests_per_s_median": models_per_s}}},
            "streams": {"streams_completed": 4, "stream_errors": 0},
            "checks": [parts.check("3.models_vs_healthz", 3, None, "GET /models/ ÷ GET /healthz", "≥ 0.8", ratio,
                                   ratio >= 0.8)]}


def _doc_with(**sections) -> dict:
    return {"stamp": "doc", "options": {"runs": 1, "tokens": 128, "tokens_transformers": 16, "parts": [3],
                                        "engines": ["llama.cpp"], "soak_seconds": 1},
            "prompt": clients.PROMPT, "machine": report.machine_info(), "loadavg_start": [1.0, 1.0, 1.0],
            "loadavg_end": [1.0, 1.0, 1.0], "errors": [], **sections}


def test_report_puts_part_3_on_postgresql_in_rows_of_its_own():
    from bench.run import _postgres_checks

    on_postgres = _fake_part3(550.0)
    _postgres_checks(on_postgres)
    summary = report.markdown(_doc_with(part3=_fake_part3(850.0), postgres={"part3": on_postgres}))

    assert "| 3 | — | GET /models/ ÷ GET /healthz | ≥ 0.8 | 0.850 | pass |" in summary
    assert "| 3 postgres | — | GET /models/ ÷ GET /healthz | ≥ 0.8 | 0.550 | **FAIL** |" in summary
    assert "## Part 3 — management API, SQLite (16 keep-alive clients" in summary
    assert "## Part 3 on PostgreSQL — management API, PostgreSQL (16 keep-alive clients" in summary
    assert "| idle | GET /models/ | 550 |" in summary and "| idle | GET /models/ | 850 |" in summary


def _assert_a_short_burst_is_served(server, path, headers):
    # Only requests that start and end inside the window count. The first request of a fresh
    # server (cold imports, first queries) took over 0.3 s on CI while the other test worker
    # held the second core, and a window with no warm-up then counted nothing; the warm-up
    # absorbs it, so the assertion is about the generator, not about the machine's load.
    burst = hammer_in_process(server.url, path, headers, 2, 0.5, warmup_seconds=1.0)
    assert burst["requests"] > 0 and burst["error_count"] == 0 and set(burst["statuses"]) == {"200"}, burst


@pytest.mark.skipif(settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
                    reason="the suite runs on SQLite (DATABASE_URL); this needs a PostgreSQL server")
def test_a_bench_server_on_postgresql_keeps_its_rows_in_a_database_of_its_own_that_is_dropped_after(db):
    import psycopg

    from bench.server import PostgresDatabase
    from tests.servers import test_database_url

    server_url = test_database_url().rsplit("/", 1)[0] + "/postgres"
    database = PostgresDatabase(server_url).create()
    server = BenchServer(extra_env=database.server_env())
    try:
        server.start()
        _assert_a_short_burst_is_served(server, "/models/", server.auth_headers())
        with psycopg.connect(database.url) as bench_db:
            names = {row[0] for row in bench_db.execute("SELECT name FROM models_app_modelconfig")}
        assert LLAMA in names  # bootstrap wrote the registry there, not into a SQLite file
        assert not list(server.data_dir.glob("*.sqlite3"))
    finally:
        server.stop()
        database.drop()
    with psycopg.connect(server_url) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database.name]).fetchone() is None


def _fake_part1(tps_ratio: float) -> dict:
    side = {"decode_tps_median": 50.0, "ttft_ms_median": 30.0, "start_ms_median": 5.0,
            "outside_engine_ttft_ms_median": 4.0, "itl_p99_ms_median": 25.0, "total_ms_median": 2600.0,
            "tokens": [128]}
    comparison = {"tps_ratio": tps_ratio, "added_ttft_ms": 4.0, "added_itl_p99_ms": 1.0}
    return {"engine": "llama.cpp", "model": LLAMA, "tokens": 128,
            "summary": {s: side for s in ("direct", "sse", "websocket", "v1")},
            "comparisons": {t: comparison for t in ("sse", "websocket", "v1")},
            "checks": [parts.check("1.llama.cpp.sse.tps", 1, "llama.cpp", "decode tokens/s, sse ÷ direct", "≥ 0.95",
                                   tps_ratio, tps_ratio >= 0.95)]}


def _fake_part2(aggregate: float) -> dict:
    row = {"aggregate_tps_median": aggregate, "per_stream_decode_tps_median": 40.0, "ttft_ms_p50_median": 30.0,
           "ttft_ms_p95_median": 60.0, "errors_total": 0}
    return {"engine": "llama.cpp", "model": LLAMA, "levels": [1, 4, 16],
            "summary": {s: row for s in ("direct-1", "1", "4", "16")}, "checks": []}


def test_report_puts_the_ray_column_next_to_local_placement(tmp_path):
    from bench.run import _ray_checks

    ray_part1 = _fake_part1(0.812)
    _ray_checks(ray_part1)
    doc = {"stamp": "ray", "options": {"runs": 1, "tokens": 128, "tokens_transformers": 16, "parts": [1, 2],
                                       "engines": ["llama.cpp"], "soak_seconds": 1, "placement": "both"},
           "prompt": clients.PROMPT, "machine": report.machine_info(), "loadavg_start": [1.0, 1.0, 1.0],
           "loadavg_end": [1.0, 1.0, 1.0], "errors": [],
           "part1": {"llama.cpp": _fake_part1(0.987)}, "part2": {"llama.cpp": _fake_part2(45.0)},
           "ray": {"cluster": {"ray": "2.60.0", "num_cpus": 2, "object_store_bytes": 80_000_000},
                   "loadavg_start": [1.5, 1.0, 1.0], "loadavg_end": [1.7, 1.0, 1.0],
                   "part1": {"llama.cpp": ray_part1}, "part2": {"llama.cpp": _fake_part2(41.0)}}}
    summary = report.markdown(doc)

    assert "## Ray placement (BENCH_PLACEMENT=ray) — parts 1–2" in summary
    # One row per transport: local and ray ratios side by side, each against its own direct baseline.
    assert "| llama.cpp | sse | 0.987 | 0.812 | 4.0 | 4.0 | 1.0 | 1.0 |" in summary
    assert "| llama.cpp | 16 | 45.0 | 41.0 | 0 | 0 |" in summary
    assert "### Part 1 on Ray — streaming overhead" in summary and "### Part 2 on Ray — concurrency" in summary
    # The Ray column's checks are targets like the others, marked with their placement.
    assert "| 1 ray | llama.cpp | decode tokens/s, sse ÷ direct | ≥ 0.95 | 0.812 | **FAIL** |" in summary
    assert "| 1 | llama.cpp | decode tokens/s, sse ÷ direct | ≥ 0.95 | 0.987 | pass |" in summary
    assert "1 pass, 1 fail" in summary


def test_harness_end_to_end_for_a_few_tokens(tmp_path):
    opts = parts.Options(runs=1, tokens=TOKENS, tokens_transformers=TOKENS, parts=(1,), engines=("llama.cpp",),
                         soak_seconds=1, mgmt_seconds=0.3, relay_tokens=TOKENS, first_tokens=1)
    server = BenchServer()
    bench = parts.Bench(server=server, opts=opts)
    runner_pid = None
    try:
        server.start()
        daphne = server.pid

        # Part 1 for real: direct engine, SSE, WebSocket and /v1, each once after a warm-up.
        p1 = parts.part_streaming(bench, "llama.cpp")
        for side, rows in p1["raw"].items():
            assert len(rows) == 1 and rows[0]["ok"], (side, rows)
            row = rows[0]
            assert row["tokens_generated"] == TOKENS and row["finish_reason"] == "length", (side, row)
            assert row["ttft_ms"] is not None and row["ttft_ms"] > 0 and row["decode_tps"] > 0, (side, row)
        # One first-token probe per side after the run's streams, each a first token of its own.
        assert {side: [len(run) for run in runs] for side, runs in p1["first_token_probes_ms"].items()} == {
            "direct": [1], "sse": [1], "websocket": [1], "v1": [1]}
        assert all(run[0] is not None and run[0] > 0 for runs in p1["first_token_probes_ms"].values() for run in runs)
        assert {c["id"].rsplit(".", 2)[1] for c in p1["checks"]} == {"sse", "websocket", "v1"}
        assert all(c["measured"] is not None for c in p1["checks"])

        # Part 2's building block: streams sent together, aggregate over the wall time.
        results, wall = clients.run_concurrent_sse(server.url, server.api_key, LLAMA, TOKENS, 2)
        row = parts._concurrency_row(results, wall)
        assert row["errors"] == 0 and row["tokens"] == 2 * TOKENS and row["aggregate_tps"] > 0, row

        # Part 3's load generator, on the bare route and on an authenticated one.
        for path, headers in (("/healthz", None), ("/models/", server.auth_headers())):
            _assert_a_short_burst_is_served(server, path, headers)

        # Part 4's memory reading: the API's figure next to psutil's for the same runner.
        memory = parts.memory_check(bench, LLAMA)
        runner_pid = memory["pid"]
        assert memory["abs_diff_pct_max"] is not None and memory["reported_mb_median"] > 0

        # Part 6 on the same server: the web process's CPU per token relayed from the token source.
        relay = parts.part_relay(bench)
        (row,) = relay["raw"]
        assert row["errors"] == 0 and row["tokens_relayed"] == 16 * TOKENS, row
        assert row["cpu_s"]["web"] > 0 and row["web_cpu_us_per_token"] > 0 and row["tokens_per_web_core_s"] > 0
        assert all(row[f"{side}_cpu_us_per_token"] is not None for side in ("runner", "source", "client"))
        assert relay["pids"]["runner"] != server.pid
        assert not psutil.pid_exists(relay["pids"]["source"]) or \
            psutil.Process(relay["pids"]["source"]).status() == psutil.STATUS_ZOMBIE
        assert {c["id"] for c in relay["checks"]} == {"6.relay.web_cpu", "6.relay.per_core", "6.relay.errors"}

        results_doc = {
            "stamp": "smoke", "options": {"runs": 1, "tokens": TOKENS, "tokens_transformers": TOKENS, "parts": [1, 6],
                                          "engines": ["llama.cpp"], "soak_seconds": 1},
            "prompt": clients.PROMPT, "machine": report.machine_info(), "loadavg_start": list(os.getloadavg()),
            "loadavg_end": list(os.getloadavg()), "errors": [], "part1": {"llama.cpp": p1}, "part6": relay,
            "timeline": [{"t": 0.0, "part": "1", "web_rss_mb": 100.0, "children_rss_mb": {"1": 200.0},
                          "loadavg1": 1.0}],
        }
    finally:
        stop = server.stop()
    assert stop["daphne_exit"] == 0 and stop["killed_pids"] == [], stop
    assert not psutil.pid_exists(daphne)
    assert not psutil.pid_exists(p1["direct_worker_pid"])
    if runner_pid is not None:
        assert not psutil.pid_exists(runner_pid) or psutil.Process(runner_pid).status() == psutil.STATUS_ZOMBIE
    assert not server.data_dir.exists()

    paths = report.write_outputs(results_doc, tmp_path)
    written = json.loads(paths["json"].read_text())
    assert written["part1"]["llama.cpp"]["comparisons"]["sse"]["tps_ratio"] is not None
    summary = paths["md"].read_text()
    assert "## Targets" in summary and "decode tokens/s, websocket ÷ direct" in summary
    assert "## Part 6 — relay ceiling (16 SSE streams × 4 tokens" in summary
    assert "| 6 | openai | web-process CPU per relayed token at 16 SSE streams (µs) | ≤ 100 µs |" in summary
    assert (tmp_path / "latest.md").read_text() == summary
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in summary
    else:
        assert paths["png"] is not None and paths["png"].stat().st_size > 10_000


def test_part_5_measures_constrained_against_free_decoding_on_the_raw_engine(tmp_path):
    opts = parts.Options(runs=1, parts=(5,), engines=("llama.cpp",))
    server = BenchServer()  # never started: part 5 needs no server, only the harness's Bench
    try:
        result = parts.part_constrained(parts.Bench(server=server, opts=opts), "llama.cpp")
    finally:
        server.stop()

    for side, rows in result["raw"].items():
        assert len(rows) == 1 and rows[0]["ok"] and rows[0]["tokens_generated"] == result["tokens"], (side, rows)
    assert result["tps_ratio"] > 0 and result["per_token_cost_us"] is not None
    doc = {"stamp": "smoke5", "options": {"runs": 1, "tokens": TOKENS, "tokens_transformers": TOKENS, "parts": [5],
                                          "engines": ["llama.cpp"], "soak_seconds": 1},
           "prompt": clients.PROMPT, "machine": report.machine_info(), "loadavg_start": list(os.getloadavg()),
           "errors": [], "part5": {"llama.cpp": result}}
    summary = report.write_outputs(doc, tmp_path)["md"].read_text()
    assert "## Part 5 — constrained decoding" in summary and "constrained decoding: added time per token" in summary


def test_token_source_streams_max_tokens_chunks_that_the_openai_client_reads():
    import httpx
    import openai

    with TokenSource() as source:
        assert source.url.startswith("http://127.0.0.1:")
        models = httpx.get(f"{source.base_url}/models").json()
        assert [m["id"] for m in models["data"]] == [SOURCE_MODEL_ID]
        client = openai.OpenAI(base_url=source.base_url, api_key="unused", max_retries=0, timeout=10)
        stream = client.chat.completions.create(model=SOURCE_MODEL_ID, messages=clients.messages_for(),
                                                max_tokens=5, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(texts) == 5 and all(t.strip() for t in texts)
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
        assert chunks[-1].usage.completion_tokens == 5
        refused = httpx.post(f"{source.base_url}/chat/completions", json={"model": SOURCE_MODEL_ID, "messages": []})
        assert refused.status_code == 400  # it only streams
        client.close()
    assert source.proc.returncode == 0  # closing its stdin ended it: no kill needed


def test_openai_engine_relays_every_token_of_the_token_source():
    from models_app.serving.engines.contract import GenerationParams, GenerationStats, LoadSpec
    from models_app.serving.engines.openai_engine import OpenAIEngine

    engine = OpenAIEngine()
    with TokenSource() as source:
        engine.load(LoadSpec(name="relay", engine="openai", model_id=SOURCE_MODEL_ID,
                             parameters={"base_url": source.base_url}))
        try:
            items = list(engine.generate(clients.messages_for(), GenerationParams(max_tokens=300), lambda: False))
        finally:
            engine.close()
    *texts, final = items
    assert len(texts) == 300 and isinstance(final, GenerationStats)
    assert (final.tokens_generated, final.finish_reason) == (300, "length")

