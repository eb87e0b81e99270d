"""schemathesis against the live server: no 5xx, answers match the schema, no route without a key."""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings

pytestmark = pytest.mark.django_db(transaction=True)

RAW_SCHEMA = SchemaGenerator().get_schema(request=None, public=True)
# Routes that take minutes or stop the server's models are exercised by their own tests; here they
# would turn a bounded fuzz run into an unbounded one.
SLOW = {("POST", "/system/restart"), ("POST", "/inference/benchmark")}
PUBLIC = {"/healthz", "/readyz"}
schema = schemathesis.openapi.from_dict(RAW_SCHEMA)


@pytest.fixture
def fuzz_target(live_server_url, make_user, client_for):
    from models_app import services
    from models_app.bootstrap import bundled_entries

    config = dict(bundled_entries()["smollm2-135m-instruct"])
    config["max_new_tokens"] = 8  # every generated example stays short
    services.registry_add(name="smollm2-135m-instruct", config=config, set_as_default=True)
    return live_server_url, {"Authorization": f"Bearer {client_for(make_user(superuser=True)).raw_key}"}


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_route_answers_without_5xx_and_as_documented(case, fuzz_target):
    if (case.method.upper(), case.path) in SLOW:
        return
    url, headers = fuzz_target
    response = case.call(base_url=url, headers=headers, timeout=60)
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    if "text/event-stream" not in response.headers.get("content-type", ""):
        case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])


def test_every_route_refuses_a_missing_key(live_server_url):
    refused = {}
    for path, operations in RAW_SCHEMA["paths"].items():
        if path in PUBLIC:
            continue
        concrete = path.replace("{model_name}", "smollm2-135m-instruct").replace("{request_id}", "abc")
        concrete = concrete.replace("{session_name}", "x.json").replace("{", "").replace("}", "")
        for method in operations:
            if method in ("get", "post", "put", "delete", "patch"):
                answer = httpx.request(method.upper(), f"{live_server_url}{concrete}", json={}, timeout=30)
                refused[f"{method.upper()} {path}"] = answer.status_code
    assert refused and all(status == 401 for status in refused.values()), {k: v for k, v in refused.items() if v != 401}
