"""Limits cover every way a generation starts: one chat rate per user, quotas per generation, and a
client that leaves stops what it started (THREATS C19)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from django.core.cache import cache
from rest_framework.throttling import ScopedRateThrottle

from inference_app.models import BenchmarkRun, ChatMessage, QuotaRule, UsageRecord
from tests.conditions import wait_for
from tests.envelope import assert_error, assert_ok

MODEL = "smollm2-135m-instruct"
TINY = {"temperature": 0.0, "max_tokens": 2}

GENERATING_ROUTES = {
    "/inference/chat": {"message": "Hi", "generation_config": TINY},
    "/v1/chat/completions": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    "/v1/completions": {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
    "/inference/test": {"model_name": MODEL, "prompt": "Hi", "generation_config": TINY},
    "/inference/benchmark": {"model_name": MODEL, "benchmark_type": "latency",
                             "config": {"num_runs": 1, "max_tokens": 2}},
}


@pytest.fixture
def one_chat_a_minute(make_user, client_for, monkeypatch):
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"chat": "1/minute"})
    user = make_user("chat", "test", "benchmark")
    cache.delete(f"throttle_chat_{user.pk}")  # user ids restart with each test database; the cache may not
    return client_for(user)


@pytest.mark.django_db
@pytest.mark.parametrize("path", GENERATING_ROUTES)
def test_every_generating_route_counts_toward_the_chat_rate(one_chat_a_minute, loaded_model, path):
    assert one_chat_a_minute.post(path, GENERATING_ROUTES[path], format="json").status_code == 200
    response = one_chat_a_minute.post(path, GENERATING_ROUTES[path], format="json")
    assert response.status_code == 429 and int(response["Retry-After"]) > 0


@pytest.mark.django_db
def test_the_routes_share_one_budget_per_user(one_chat_a_minute, loaded_model):
    assert_ok(one_chat_a_minute.post("/inference/test", GENERATING_ROUTES["/inference/test"], format="json"))
    assert_error(one_chat_a_minute.post("/inference/chat", GENERATING_ROUTES["/inference/chat"], format="json"),
                 429, "RateLimitError")


@pytest.mark.django_db
def test_listing_benchmarks_does_not_count(one_chat_a_minute, loaded_model):
    for _ in range(3):
        assert_ok(one_chat_a_minute.get("/inference/benchmarks"))
    assert_ok(one_chat_a_minute.post("/inference/test", GENERATING_ROUTES["/inference/test"], format="json"))


@pytest.mark.django_db
def test_a_benchmark_cannot_spend_past_a_token_quota(make_user, client_for, loaded_model):
    user = make_user("benchmark")
    QuotaRule.objects.create(user=user, tokens_per_day=100)
    body = {"model_name": MODEL, "benchmark_type": "latency",
            "config": {"num_runs": 40, "max_tokens": 16, "prompt": "Write a story."}}
    runs = assert_ok(client_for(user).post("/inference/benchmark", body, format="json"))["results"]["latency"]
    spent = [record.prompt_tokens + record.completion_tokens for record in UsageRecord.objects.filter(user=user)]
    # Each run is checked before it starts: the quota is passed by at most the one run that crossed it.
    assert sum(spent) - max(spent) < 100
    refused = [run for run in runs if run["error"] and "Quota exceeded" in run["error"]]
    assert len(refused) == 40 - len(spent) and len(refused) > 30


# A client that leaves ------------------------------------------------------------------------------

def status_of(url, headers) -> dict:
    return httpx.get(f"{url}/models/{MODEL}/status", headers=headers, timeout=10).json()["data"]



def post_and_leave(url, headers, path: str, body: bytes):
    """Sends a POST on a raw socket, waits until its generation runs, then closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Authorization: {headers['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(request)
        wait_for(lambda: status_of(url, headers)["active_requests"] == 1, 60, "the generation never started")
    return time.monotonic()


@pytest.fixture
def server(live_server_url, make_user, client_for, transactional_db):
    from models_app import services
    from models_app.bootstrap import bundled_entries

    services.registry_add(name=MODEL, config=bundled_entries()[MODEL], set_as_default=True)
    user = make_user("chat", "model_load", "model_read", "benchmark")
    headers = {"Authorization": f"Bearer {client_for(user).raw_key}"}
    assert_ok(httpx.post(f"{live_server_url}/models/{MODEL}/load", headers=headers, timeout=120))
    return live_server_url, headers


# The promise is wall-clock ("within a second"): with the other worker busy on the same two cores
# the measurement took 1.50 s once. `make test` runs these alone, after the parallel run.
@pytest.mark.exclusive
@pytest.mark.django_db(transaction=True)
def test_a_non_streamed_chat_whose_client_leaves_is_cancelled_within_a_second(server):
    url, headers = server
    body = b'{"message": "Write a very long story about a dragon.", "generation_config": {"max_tokens": 500}}'
    left = post_and_leave(url, headers, "/inference/chat", body)
    wait_for(lambda: status_of(url, headers)["active_requests"] == 0, 10, "the generation kept running")
    assert time.monotonic() - left < 1.5
    reply = wait_for(lambda: ChatMessage.objects.filter(role="assistant").first(), 10, "the reply was not stored")
    assert reply.finish_reason == "cancelled" and reply.completion_tokens < 500


# The promise is wall-clock ("within a second"): with the other worker busy on the same two cores
# the measurement took 1.50 s once. `make test` runs these alone, after the parallel run.
@pytest.mark.exclusive
@pytest.mark.django_db(transaction=True)
def test_a_benchmark_whose_client_leaves_stops_within_a_second_and_starts_no_more_runs(server):
    url, headers = server
    body = (b'{"model_name": "smollm2-135m-instruct", "benchmark_type": "latency", '
            b'"config": {"num_runs": 20, "max_tokens": 300, "prompt": "Write a very long story."}}')
    left = post_and_leave(url, headers, "/inference/benchmark", body)
    wait_for(lambda: status_of(url, headers)["active_requests"] == 0, 10, "the benchmark kept generating")
    assert time.monotonic() - left < 1.5
    run = wait_for(lambda: BenchmarkRun.objects.first(), 10, "the benchmark did not end")
    errors = [result["error"] for result in run.results["latency"]]
    assert errors[0] is None and run.results["latency"][0]["finish_reason"] == "cancelled"
    assert errors[1:] == ["cancelled: client disconnected"] * 19
    assert UsageRecord.objects.count() == 1
