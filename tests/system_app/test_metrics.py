"""GET /metrics (Prometheus text) and the request metrics middleware."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from models_app import services
from models_app.bootstrap import BUNDLED_LLAMA_CPP
from system_app.metrics import record_generation
from system_app.models import RequestMetric
from tests.envelope import assert_error

MIDDLEWARE = "system_app.request_metrics.RequestMetricsMiddleware"
DOCUMENTED = {
    "beautyai_http_requests": "counter",
    "beautyai_http_request_duration_seconds": "histogram",
    "beautyai_generated_tokens": "counter",
    "beautyai_time_to_first_token_seconds": "histogram",
    "beautyai_model_active_requests": "gauge",
    "beautyai_model_queue_depth": "gauge",
    "beautyai_model_memory_bytes": "gauge",
    "beautyai_models_loaded": "gauge",
    "beautyai_background_rows_dropped": "counter",
}


@pytest.fixture
def with_request_metrics(settings):
    if MIDDLEWARE not in settings.MIDDLEWARE:
        settings.MIDDLEWARE = [settings.MIDDLEWARE[0], MIDDLEWARE, *settings.MIDDLEWARE[1:]]


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content[:300]
    assert response["Content-Type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.content.decode())}


def value(families: dict, family: str, sample: str, **labels) -> float:
    for item in families[family].samples:
        if item.name == sample and all(item.labels.get(k) == v for k, v in labels.items()):
            return item.value
    return 0.0


@pytest.mark.django_db
def test_metrics_parse_and_contain_every_documented_series(api_as):
    # Whatever an earlier test of this process left loaded (the suite runs modules in any order) goes first.
    services.models_stop_all()
    families = scrape(api_as("system_status"))
    assert {name: families[name].type for name in DOCUMENTED} == DOCUMENTED
    assert value(families, "beautyai_models_loaded", "beautyai_models_loaded") == 0


@pytest.mark.django_db
def test_requests_are_counted_by_route_pattern_and_status(api_as, registry, with_request_metrics):
    client = api_as("system_status", "model_read")
    before = scrape(client)
    client.get("/models/alpha")
    client.get("/models/nope")
    after = scrape(client)
    counted = "beautyai_http_requests_total"
    for status in ("200", "404"):
        labels = {"route": "/models/<str:model_name>", "method": "GET", "status": status}
        assert value(after, "beautyai_http_requests", counted, **labels) - value(
            before, "beautyai_http_requests", counted, **labels) == 1
    assert value(after, "beautyai_http_request_duration_seconds", "beautyai_http_request_duration_seconds_count",
                 route="/models/<str:model_name>", method="GET") >= 2


@pytest.mark.django_db
def test_an_unknown_method_is_counted_as_other_so_clients_cannot_add_labels(api_as, with_request_metrics):
    client = api_as("system_status")
    client.generic("BREW", "/healthz")
    families = scrape(client)
    labels = {"route": "/healthz", "method": "OTHER", "status": "405"}
    assert value(families, "beautyai_http_requests", "beautyai_http_requests_total", **labels) >= 1
    assert not any(item.labels.get("method") == "BREW" for item in families["beautyai_http_requests"].samples)


@pytest.mark.django_db
def test_generations_count_tokens_and_time_to_first_token_by_model(api_as):
    client = api_as("system_status", "model_read")
    before = scrape(client)
    record_generation("metrics-test-model", 42, 125.0)
    record_generation("metrics-test-model", 8, None)
    after = scrape(client)
    tokens = ("beautyai_generated_tokens", "beautyai_generated_tokens_total")
    assert value(after, *tokens, model="metrics-test-model") - value(before, *tokens, model="metrics-test-model") == 50
    ttft = ("beautyai_time_to_first_token_seconds", "beautyai_time_to_first_token_seconds_sum")
    assert value(after, *ttft, model="metrics-test-model") - value(before, *ttft, model="metrics-test-model") == 0.125


@pytest.mark.django_db
def test_a_loaded_model_appears_in_the_gauges(api_as, load_model):
    load_model()
    families = scrape(api_as("system_status", "model_read"))
    assert value(families, "beautyai_models_loaded", "beautyai_models_loaded") == 1
    assert value(families, "beautyai_model_active_requests", "beautyai_model_active_requests",
                 model=BUNDLED_LLAMA_CPP) == 0
    assert value(families, "beautyai_model_memory_bytes", "beautyai_model_memory_bytes",
                 model=BUNDLED_LLAMA_CPP) > 50 * 1024 * 1024


@pytest.mark.django_db
def test_a_key_without_global_model_read_scrapes_only_its_models_series(make_user, client_for, grant, registry):
    record_generation("alpha", 3, 10.0)
    record_generation("beta", 3, 10.0)
    user = make_user("system_status")
    grant(user, "model_read", registry["alpha"])
    families = scrape(client_for(user))
    labelled = {item.labels["model"] for family in families.values()
                for item in family.samples if "model" in item.labels}
    assert labelled == {"alpha"}
    assert value(families, "beautyai_generated_tokens", "beautyai_generated_tokens_total", model="alpha") >= 3


@pytest.mark.django_db
def test_an_allowlisted_scraper_without_a_key_sees_every_models_series(anon, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    record_generation("any-model", 3, 10.0)
    assert value(scrape(anon), "beautyai_generated_tokens", "beautyai_generated_tokens_total", model="any-model") >= 3


@pytest.mark.django_db
def test_metrics_need_a_key_with_system_status(anon, api_as):
    assert_error(anon.get("/metrics"), 401, "AuthenticationError")
    assert_error(api_as("model_read").get("/metrics"), 403, "PermissionDeniedError")


@pytest.mark.django_db
def test_an_allowlisted_address_scrapes_without_a_key(anon, settings):
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8", "127.0.0.1"]
    scrape(anon)
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert_error(anon.get("/metrics"), 401, "AuthenticationError")


@pytest.mark.django_db(transaction=True)
def test_each_api_request_becomes_a_row_with_its_route_pattern_status_duration_and_user(
        make_user, client_for, registry, with_request_metrics, background_writer):
    client = client_for(make_user("model_read", username="metered"))
    client.get("/models/alpha")
    client.get("/models/does-not-exist")
    client.get("/healthz")
    client.get("/no/such/route")
    assert background_writer.flush()
    rows = list(RequestMetric.objects.order_by("id").values_list("method", "route", "status_code", "username"))
    assert rows == [
        ("GET", "/models/<str:model_name>", 200, "metered"),
        ("GET", "/models/<str:model_name>", 404, "metered"),
        ("GET", "<unmatched>", 404, ""),
    ]
    assert all(row.duration_ms > 0 for row in RequestMetric.objects.all())
