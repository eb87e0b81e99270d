"""Every answer, success or error, uses the envelope; errors never leak internals."""

from __future__ import annotations

import json

import pytest
from django.test import override_settings

from models_app.models import ModelConfig
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db


def test_a_typed_response_carries_its_fields_at_the_top_with_null_data(api_as, registry):
    body = assert_ok(api_as("model_read").get("/models/"))
    assert body["data"] is None and "models" in body and "total_count" in body


def test_an_apiresponse_puts_its_payload_in_data(api_as, registry):
    body = assert_ok(api_as("model_read").get("/models/alpha"))
    assert body["data"]["model_name"] == "alpha"


def test_the_request_id_comes_back_as_a_header(api_as, registry):
    response = api_as("model_read").get("/models/", HTTP_X_REQUEST_ID="trace-12345678")
    assert response["X-Request-ID"] == "trace-12345678"
    assert len(api_as("model_read").get("/models/", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"]) == 32


def test_an_unknown_url_answers_404_in_the_envelope(api_as):
    assert_error(api_as("model_read").get("/no/such/route"), 404, "NotFoundError")


def test_an_unknown_url_answers_404_even_without_credentials(anon):
    assert_error(anon.get("/no/such/route"), 404, "NotFoundError")


def test_a_wrong_method_answers_405_in_the_envelope(api_as, registry):
    assert_error(api_as("model_read").patch("/models/alpha", {}, format="json"), 405, "MethodNotAllowedError")


@pytest.mark.parametrize("raw", [b"[1]", b'"x"', b"42", b"null", b"{broken", b'{"force_reload": NaN}', b"\xff\xfe"])
def test_a_malformed_or_non_object_body_answers_400_and_changes_nothing(api_as, registry, raw):
    before = ModelConfig.objects.count()
    response = api_as("model_write").generic("POST", "/models/", raw, content_type="application/json")
    assert_error(response, 400, "ValidationError")
    assert ModelConfig.objects.count() == before


def test_a_non_json_content_type_answers_400(api_as, registry):
    response = api_as("model_write").generic("POST", "/models/", b"a=b", content_type="application/x-www-form-urlencoded")
    assert_error(response, 400, "ValidationError")


@override_settings(MAX_REQUEST_BODY_BYTES=4096)
def test_an_oversized_body_answers_413_and_changes_nothing(api_as, registry):
    body = json.dumps({"model_name": "big", "model_config": {"model_id": "o/m", "engine": "transformers", "description": "x" * 10000}})
    response = api_as("model_write").generic("POST", "/models/", body, content_type="application/json")
    assert_error(response, 413, "PayloadTooLargeError")
    assert not ModelConfig.objects.filter(name="big").exists()


@override_settings(MAX_REQUEST_BODY_BYTES=4096)
def test_a_body_longer_than_its_declared_length_is_read_only_to_that_length(api_as, registry):
    before = ModelConfig.objects.count()
    response = api_as("model_write").generic(
        "POST", "/models/", b"{" + b" " * 9000 + b"}", content_type="application/json", CONTENT_LENGTH="10"
    )
    # Django trusts CONTENT_LENGTH for how much to read: the first 10 bytes are not valid JSON, and
    # the rest is never read (the real server refuses oversized bodies at the headers: test_http_protocol).
    assert_error(response, 400, "ValidationError")
    assert ModelConfig.objects.count() == before


def test_an_unexpected_exception_answers_500_without_internals(api_as, registry, monkeypatch, caplog):
    def explode(user):
        raise RuntimeError("boom at /root/secret/path.py")

    monkeypatch.setattr("models_app.services.models_readable_by", explode)
    body = assert_error(api_as("model_read").get("/models/"), 500, "SystemError")
    assert "boom" not in json.dumps(body)
    assert any("boom" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_non_finite_numbers_in_an_answer_become_null(api_as, registry, monkeypatch):
    monkeypatch.setattr("models_app.runtime.status", lambda name: {**__import__("models_app.runtime", fromlist=["x"]).unloaded_status(name), "memory_usage_mb": float("-inf")})
    body = assert_ok(api_as("model_read").get("/models/alpha"))
    assert body["data"]["memory_usage_mb"] is None
