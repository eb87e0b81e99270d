"""POST /inference/benchmark and GET /inference/benchmarks."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from accounts.models import APIKey
from inference_app.benchmark import percentile
from inference_app.models import BenchmarkRun, ChatMessage, ChatSession, UsageRecord
from tests.conditions import wait_for
from tests.envelope import assert_error, assert_ok

MODEL = "smollm2-135m-instruct"
SMALL = {"num_runs": 3, "max_tokens": 12, "prompt": "Write a short paragraph about the sea."}


def bench(client, benchmark_type="latency", **config):
    return client.post("/inference/benchmark", {"model_name": MODEL, "benchmark_type": benchmark_type,
                                                "config": {**SMALL, **config}}, format="json")


def assert_consistent(runs: list[dict], summary: dict) -> None:
    assert summary["completed"] == len(runs) and summary["failed"] == 0
    for run in runs:
        assert run["error"] is None and run["output_tokens"] > 0 and run["prompt_tokens"] > 0
        assert 0 < run["ttft_ms"] <= run["e2e_latency_ms"]
        # One delta per generated token; the engine counts the reply's tokens the same way.
        assert run["output_tokens"] == run["streamed_deltas"]
        if run["output_tokens"] > 1:
            expected = (run["e2e_latency_ms"] - run["ttft_ms"]) / (run["output_tokens"] - 1)
            assert run["tpot_ms"] == pytest.approx(expected, abs=0.01)
    assert summary["total_output_tokens"] == sum(run["output_tokens"] for run in runs)
    assert summary["total_input_tokens"] == sum(run["prompt_tokens"] for run in runs)
    assert summary["output_throughput"] == pytest.approx(summary["total_output_tokens"] / summary["duration_s"],
                                                         rel=0.01)
    for metric in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"):
        stats = summary[metric]
        assert stats["min"] <= stats["p50"] <= stats["p95"] <= stats["p99"] <= stats["max"]
    assert summary["ttft_ms"]["max"] <= summary["e2el_ms"]["max"]
    assert summary["ttft_ms"]["mean"] <= summary["e2el_ms"]["mean"]


@pytest.mark.django_db
def test_a_latency_benchmark_is_stored_with_consistent_metrics(api_as, loaded_model):
    client = api_as("benchmark")
    body = assert_ok(bench(client))
    assert body["data"] is None and body["model_name"] == MODEL and body["benchmark_type"] == "latency"
    runs, summary = body["results"]["latency"], body["summary"]["latency"]
    assert len(runs) == 3 and summary["concurrency"] == 1
    assert_consistent(runs, summary)

    row = BenchmarkRun.objects.get(pk=body["benchmark_id"])
    assert row.model == loaded_model and row.config["num_runs"] == 3 and row.config["max_tokens"] == 12
    assert row.results == body["results"] and row.summary == body["summary"]
    records = UsageRecord.objects.filter(transport="benchmark", user=row.user)
    assert records.count() == 3
    assert sum(r.completion_tokens for r in records) == summary["total_output_tokens"]


@pytest.mark.django_db
def test_a_comprehensive_benchmark_runs_both_phases_and_reports_memory(api_as, loaded_model):
    body = assert_ok(bench(api_as("benchmark"), "comprehensive", num_runs=2, concurrency=2, max_tokens=8))
    assert set(body["results"]) == {"latency", "throughput"}
    for phase in ("latency", "throughput"):
        assert_consistent(body["results"][phase], body["summary"][phase])
    throughput = body["summary"]["throughput"]
    assert throughput["concurrency"] == 2 and throughput["request_throughput"] > 0
    memory = body["summary"]["memory"]
    assert memory["before_mb"] > 0 and memory["after_mb"] > 0
    assert memory["delta_mb"] == pytest.approx(memory["after_mb"] - memory["before_mb"], abs=0.01)


@pytest.mark.django_db
def test_a_throughput_benchmark_measures_aggregate_rates(api_as, loaded_model):
    body = assert_ok(bench(api_as("benchmark"), "throughput", num_runs=4, concurrency=4, max_tokens=8))
    summary = body["summary"]["throughput"]
    assert_consistent(body["results"]["throughput"], summary)
    assert summary["request_throughput"] == pytest.approx(4 / summary["duration_s"], rel=0.01)


@pytest.mark.django_db
def test_a_throughput_benchmark_records_each_runs_usage_with_its_key_and_stores_no_chat(make_user, client_for,
                                                                                       loaded_model):
    user = make_user("benchmark")
    client = client_for(user)
    body = assert_ok(bench(client, "throughput", num_runs=3, concurrency=3, max_tokens=4))
    # Recorded from the request's thread: a pool thread's write would not see this test's transaction.
    records = UsageRecord.objects.filter(user=user)
    assert {(r.transport, r.api_key_id) for r in records} == {("benchmark", APIKey.objects.find(client.raw_key).pk)}
    assert sorted((r.prompt_tokens, r.completion_tokens) for r in records) == sorted(
        (run["prompt_tokens"], run["output_tokens"]) for run in body["results"]["throughput"])
    assert not ChatSession.objects.exists() and not ChatMessage.objects.exists()  # a benchmark is not a chat


def test_percentiles_interpolate_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == pytest.approx(8.8)
    assert percentile([5.0], 99) == 5.0


@pytest.mark.django_db
@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"num_runs": 101}, "num_runs"),
        ({"num_runs": 0}, "num_runs"),
        ({"concurrency": 65}, "concurrency"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 100_000}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"prompt": "   "}, "prompt"),
        ({"colour": 1}, "colour"),
    ],
)
def test_the_bounds_are_enforced_naming_the_field(api_as, overrides, field):
    error = assert_error(bench(api_as("benchmark"), **overrides), 400, "ValidationError")
    assert field in error["error_message"]


@pytest.mark.django_db
def test_max_tokens_above_the_models_cap_is_refused(api_as, bundled_model):
    bundled_model.max_new_tokens = 16
    bundled_model.save()
    error = assert_error(bench(api_as("benchmark"), max_tokens=17), 400, "ValidationError")
    assert "max_tokens" in error["error_message"] and "16" in error["error_message"]
    assert not BenchmarkRun.objects.exists()


@pytest.mark.django_db
def test_a_bad_benchmark_type_is_refused(api_as):
    response = api_as("benchmark").post("/inference/benchmark", {"model_name": MODEL, "benchmark_type": "speed"},
                                        format="json")
    assert "benchmark_type" in assert_error(response, 400, "ValidationError")["error_message"]


@pytest.mark.django_db
def test_the_list_shows_only_the_callers_own_runs(api_as, make_user, client_for, loaded_model):
    mine, theirs = make_user("benchmark"), make_user("benchmark")
    assert_ok(bench(client_for(mine), num_runs=1, max_tokens=4))
    assert_ok(bench(client_for(theirs), num_runs=1, max_tokens=4))
    listed = assert_ok(client_for(mine).get("/inference/benchmarks"))["data"]
    assert listed["total_count"] == 1
    assert listed["benchmarks"][0]["benchmark_id"] == BenchmarkRun.objects.get(user=mine).pk
    assert_error(client_for(mine).get("/inference/benchmarks?limit=1000"), 400, "ValidationError")


@pytest.mark.django_db
def test_both_routes_need_authentication_and_the_benchmark_permission(anon, api_as, make_user, client_for, grant,
                                                                     loaded_model):
    for call in (lambda c: bench(c, num_runs=1, max_tokens=4), lambda c: c.get("/inference/benchmarks")):
        assert_error(call(anon), 401, "AuthenticationError")
        assert_error(call(api_as("chat", "test", "model_read")), 403, "PermissionDeniedError")
        user = make_user()
        grant(user, "benchmark", loaded_model)
        assert_ok(call(client_for(user)))


@pytest.mark.django_db(transaction=True)
def test_the_server_answers_other_requests_while_a_benchmark_runs(live_server_url, bundled_model, make_user,
                                                                 client_for):
    headers = {"Authorization": f"Bearer {client_for(make_user('benchmark', 'model_load', 'model_read')).raw_key}"}
    httpx.post(f"{live_server_url}/models/{MODEL}/load", headers=headers, timeout=120).raise_for_status()
    outcome = {}

    def run():
        body = {"model_name": MODEL, "benchmark_type": "latency", "config": {**SMALL, "num_runs": 6, "max_tokens": 32}}
        outcome["response"] = httpx.post(f"{live_server_url}/inference/benchmark", json=body, headers=headers,
                                         timeout=180)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: httpx.get(f"{live_server_url}/models/{MODEL}/status", headers=headers,
                               timeout=10).json()["data"]["active_requests"] > 0,
             timeout=60, message="the benchmark never started generating")
    answered_during = 0
    while worker.is_alive():
        started = time.monotonic()
        response = httpx.get(f"{live_server_url}/models/", headers=headers, timeout=10)
        assert response.status_code == 200 and time.monotonic() - started < 5.0
        answered_during += worker.is_alive()  # answered before the benchmark ended, not after it
        time.sleep(0.2)
    worker.join()
    assert outcome["response"].status_code == 200, outcome["response"].text[:300]
    assert answered_during >= 2
    assert BenchmarkRun.objects.count() == 1
