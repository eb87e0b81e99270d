"""Usage records for every transport, quota rules (429 with Retry-After), and GET /inference/usage."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import httpx
import openai
import pytest
from django.contrib.auth.models import Group
from django.utils import timezone as django_timezone

from accounts.models import APIKey
from beautyai_site.api import errors
from inference_app.models import QuotaRule, UsageRecord
from inference_app.usage import any_rule_applies, quota_check, rules_for, usage_record
from tests.envelope import assert_error, assert_ok

MODEL = "smollm2-135m-instruct"
GREEDY = {"temperature": 0.0, "max_tokens": 16}
FRANCE = "Name the capital city of France."


def model_test(client):
    return client.post("/inference/test", {"model_name": MODEL, "prompt": FRANCE, "generation_config": GREEDY},
                       format="json")


def chat(client):
    return client.post("/inference/chat", {"message": FRANCE, "generation_config": GREEDY}, format="json")


def wait_for(query, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not query.exists():
        assert time.monotonic() < deadline, "no usage record appeared"
        time.sleep(0.1)
    return query.get()


# Every transport records usage ---------------------------------------------------------------------

@pytest.mark.django_db
def test_a_rest_chat_records_its_real_token_counts_and_api_key(make_user, client_for, loaded_model):
    user = make_user("chat")
    client = client_for(user)
    stats = assert_ok(chat(client))["generation_stats"]
    record = UsageRecord.objects.get(user=user)
    assert record.transport == "rest" and record.model_name == MODEL
    assert record.api_key_id == APIKey.objects.find(client.raw_key).pk
    assert (record.prompt_tokens, record.completion_tokens) == (stats["prompt_tokens"], stats["tokens_generated"])
    assert record.duration_ms == pytest.approx(stats["inference_time_ms"])


@pytest.mark.django_db(transaction=True)
def test_an_sse_chat_records_usage(live_server_url, bundled_model, make_user, client_for):
    user = make_user("chat", "model_load")
    headers = {"Authorization": f"Bearer {client_for(user).raw_key}"}
    body = {"message": FRANCE, "stream": True, "generation_config": GREEDY}
    with httpx.stream("POST", f"{live_server_url}/inference/chat", json=body, headers=headers, timeout=120) as stream:
        done = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: ")][-1]
    record = wait_for(UsageRecord.objects.filter(user=user))
    assert record.transport == "sse"
    assert record.completion_tokens == done["generation_stats"]["tokens_generated"] > 0


@pytest.mark.django_db(transaction=True)
def test_a_websocket_chat_records_usage(loaded_model, make_user, client_for):
    from channels.testing import WebsocketCommunicator

    from beautyai_site.asgi import application

    user = make_user("chat")
    key = client_for(user).raw_key

    async def talk():
        ws = WebsocketCommunicator(application, "/ws/chat/", headers=[(b"authorization", f"Bearer {key}".encode())])
        assert (await ws.connect())[0]
        assert (await ws.receive_json_from(timeout=10))["type"] == "ready"
        await ws.send_json_to({"type": "chat", "request_id": "u1", "message": FRANCE, "generation_config": GREEDY})
        while (event := await ws.receive_json_from(timeout=60))["type"] not in ("done", "error"):
            pass
        await ws.disconnect()
        return event

    done = asyncio.run(talk())
    record = wait_for(UsageRecord.objects.filter(user=user))
    assert record.transport == "websocket"
    assert record.completion_tokens == done["generation_stats"]["tokens_generated"] > 0


# Quotas ---------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_a_per_minute_rule_answers_429_with_the_rule_and_retry_after(make_user, client_for, loaded_model):
    user = make_user("test")
    client = client_for(user)
    rule = QuotaRule.objects.create(user=user, requests_per_minute=1)
    assert_ok(model_test(client))
    response = model_test(client)
    error = assert_error(response, 429, "RateLimitError")
    details = error["error_details"]
    assert details["rule_id"] == rule.pk and details["limit"] == "requests_per_minute"
    assert details["limit_value"] == 1 and details["used"] == 1
    assert 1 <= int(response["Retry-After"]) <= 60 and details["retry_after_seconds"] == int(response["Retry-After"])
    reset = datetime.fromisoformat(details["reset_at"])
    assert django_timezone.now() < reset <= django_timezone.now() + timedelta(seconds=61)
    assert UsageRecord.objects.filter(user=user).count() == 1  # the refused request generated nothing


@pytest.mark.django_db
def test_a_tokens_per_day_rule_counts_real_tokens(make_user, client_for, loaded_model):
    user = make_user("test")
    client = client_for(user)
    first = assert_ok(model_test(client))["generation_stats"]
    spent = first["prompt_tokens"] + first["tokens_generated"]
    QuotaRule.objects.create(user=user, tokens_per_day=spent + 1)
    second = assert_ok(model_test(client))["generation_stats"]
    response = model_test(client)
    details = assert_error(response, 429, "RateLimitError")["error_details"]
    assert details["limit"] == "tokens_per_day"
    assert details["used"] == spent + second["prompt_tokens"] + second["tokens_generated"]
    midnight = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    assert datetime.fromisoformat(details["reset_at"]) == midnight
    assert abs(int(response["Retry-After"]) - (midnight - datetime.now(timezone.utc)).total_seconds()) < 5


@pytest.mark.django_db
def test_quota_checks_cover_the_benchmark_route(make_user, client_for, loaded_model):
    user = make_user("benchmark")
    QuotaRule.objects.create(user=user, requests_per_minute=0)
    response = client_for(user).post("/inference/benchmark", {"model_name": MODEL, "benchmark_type": "latency",
                                                              "config": {"num_runs": 1, "max_tokens": 4}},
                                     format="json")
    assert_error(response, 429, "RateLimitError")
    assert response["Retry-After"] == "60"


@pytest.mark.django_db(transaction=True)
def test_chat_routes_check_quotas_too(live_server_url, loaded_model, make_user, client_for):
    user = make_user("chat", "model_load")
    client = client_for(user)
    QuotaRule.objects.create(user=user, requests_per_minute=1)
    assert_ok(chat(client))
    response = chat(client)
    assert_error(response, 429, "RateLimitError")
    assert int(response["Retry-After"]) >= 1
    oai = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=client.raw_key, max_retries=0, timeout=60)
    with pytest.raises(openai.RateLimitError) as caught:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": FRANCE}], max_tokens=4)
    assert caught.value.body["type"] == "rate_limit_error"
    assert int(caught.value.response.headers["Retry-After"]) >= 1


def records(user, model_name=MODEL, count=1, tokens=(10, 5), ago=timedelta(0)):
    for _ in range(count):
        record = usage_record(user=user, model_name=model_name, transport="rest", prompt_tokens=tokens[0],
                              completion_tokens=tokens[1], duration_ms=100.0)
        UsageRecord.objects.filter(pk=record.pk).update(created_at=django_timezone.now() - ago)


@pytest.mark.django_db
def test_requests_older_than_a_minute_no_longer_count(make_user, registry):
    user = make_user()
    QuotaRule.objects.create(user=user, requests_per_minute=2)
    records(user, count=2, ago=timedelta(seconds=61))
    quota_check(user=user, model=registry["alpha"])
    records(user, count=2)
    with pytest.raises(errors.RateLimitError):
        quota_check(user=user, model=registry["alpha"])


@pytest.mark.django_db
def test_a_group_rule_limits_each_member_and_a_model_rule_only_its_model(make_user, registry):
    group = Group.objects.create(name="trial")
    first, second = make_user(), make_user()
    group.user_set.add(first, second)
    QuotaRule.objects.create(group=group, model=registry["alpha"], tokens_per_day=30)
    records(first, model_name="alpha", count=2)
    with pytest.raises(errors.RateLimitError) as caught:
        quota_check(user=first, model=registry["alpha"])
    assert caught.value.details["scope"] == "group" and caught.value.details["group"] == "trial"
    quota_check(user=first, model=registry["beta"])
    quota_check(user=second, model=registry["alpha"])


@pytest.mark.django_db
def test_disabled_rules_and_yesterdays_tokens_do_not_count(make_user, registry):
    user = make_user()
    QuotaRule.objects.create(user=user, requests_per_minute=1, enabled=False)
    QuotaRule.objects.create(user=user, tokens_per_day=10)
    records(user, model_name="alpha", ago=timedelta(days=1, hours=1))
    records(user, model_name="alpha", tokens=(5, 4))
    quota_check(user=user, model=registry["alpha"])


@pytest.mark.django_db
def test_the_quick_rule_check_finds_a_rule_exactly_when_the_rules_query_does(make_user, registry):
    group, other_group = Group.objects.create(name="trial"), Group.objects.create(name="other")
    member, own, outsider, nobody = make_user(), make_user(), make_user(), make_user()
    group.user_set.add(member)
    other_group.user_set.add(outsider)
    QuotaRule.objects.create(group=group, model=registry["alpha"], tokens_per_day=30)
    QuotaRule.objects.create(user=own, requests_per_minute=5)
    QuotaRule.objects.create(user=nobody, requests_per_minute=1, enabled=False)
    QuotaRule.objects.create(group=other_group, model=registry["beta"], tokens_per_day=1)
    cases = {(user.username, name): any_rule_applies(user=user, model=registry[name])
             for user in (member, own, outsider, nobody) for name in ("alpha", "beta")}
    assert cases == {(user.username, name): bool(rules_for(user=user, model=registry[name]))
                     for user in (member, own, outsider, nobody) for name in ("alpha", "beta")}
    assert sorted(key for key, found in cases.items() if found) == sorted(
        [(member.username, "alpha"), (own.username, "alpha"), (own.username, "beta"), (outsider.username, "beta")])


def test_a_rule_needs_exactly_one_of_user_and_group_and_a_limit():
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        QuotaRule(requests_per_minute=1).clean()
    with pytest.raises(ValidationError):
        QuotaRule(user_id=1).clean()


# GET /inference/usage ------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_usage_route_gives_only_the_callers_usage_by_day_and_model(make_user, client_for, anon):
    me, other = make_user(), make_user()
    records(me, model_name="alpha", count=2)
    records(me, model_name="beta", tokens=(1, 1))
    records(me, model_name="alpha", ago=timedelta(days=1))
    records(other, model_name="alpha", count=5)
    data = assert_ok(client_for(me).get("/inference/usage"))["data"]
    today = datetime.now(timezone.utc).date()
    rows = {(row["day"], row["model_name"]): row for row in data["usage"]}
    assert set(rows) == {(today.isoformat(), "alpha"), (today.isoformat(), "beta"),
                         ((today - timedelta(days=1)).isoformat(), "alpha")}
    alpha = rows[(today.isoformat(), "alpha")]
    assert (alpha["requests"], alpha["prompt_tokens"], alpha["completion_tokens"], alpha["total_tokens"]) == \
        (2, 20, 10, 30)
    assert data["totals"] == {"requests": 4, "prompt_tokens": 31, "completion_tokens": 16, "total_tokens": 47}
    assert len(assert_ok(client_for(me).get("/inference/usage?days=1"))["data"]["usage"]) == 2
    assert_error(client_for(me).get("/inference/usage?days=0"), 400, "ValidationError")
    assert_error(client_for(me).get("/inference/usage?user=2"), 400, "ValidationError")
    assert_error(anon.get("/inference/usage"), 401, "AuthenticationError")


# Admin ------------------------------------------------------------------------------------------------

@pytest.mark.django_db
def test_the_admin_lists_quota_rules_usage_benchmarks_and_sessions(make_user, client, registry):
    client.force_login(make_user(superuser=True))
    for name in ("quotarule", "usagerecord", "benchmarkrun", "chatsession", "chatmessage"):
        assert client.get(f"/admin/inference_app/{name}/").status_code == 200, name
    assert client.get("/admin/inference_app/quotarule/add/").status_code == 200
    refused = client.post("/admin/inference_app/quotarule/add/", {"enabled": "on"})
    assert refused.status_code == 200 and not QuotaRule.objects.exists()
    user = make_user()
    created = client.post("/admin/inference_app/quotarule/add/",
                          {"user": user.pk, "model": registry["alpha"].pk, "requests_per_minute": 5, "enabled": "on"})
    assert created.status_code == 302 and QuotaRule.objects.get().user == user
