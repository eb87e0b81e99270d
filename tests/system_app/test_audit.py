"""Audit events: mutating calls and every 401/403, with who, where and what — never bodies or keys."""

from __future__ import annotations

import pytest

from system_app.models import AuditEvent

pytestmark = pytest.mark.django_db


def test_a_mutating_call_is_audited_with_user_key_route_and_target(make_user, client_for, registry):
    user = make_user("model_write")
    client = client_for(user)
    client.post("/models/default/beta", HTTP_X_REQUEST_ID="audit-req-0001")
    event = AuditEvent.objects.get()
    assert (event.user, event.method, event.route, event.target, event.status_code) == (
        user, "POST", "/models/default/<str:model_name>", "beta", 200)
    assert event.api_key.prefix == client.raw_key.split("_")[1]
    assert event.request_id == "audit-req-0001" and event.client_ip == "127.0.0.1"
    assert event.action == "model-set-default"


def test_a_403_is_audited_with_its_error_code(api_as, registry):
    api_as("model_read").post("/models/default/beta")
    event = AuditEvent.objects.get()
    assert (event.status_code, event.error_code) == (403, "PermissionDeniedError")


def test_a_401_read_is_audited_too(anon, registry):
    anon.get("/models/")
    event = AuditEvent.objects.get()
    assert (event.status_code, event.error_code, event.user) == (401, "AuthenticationError", None)


def test_successful_reads_are_not_audited(api_as, registry):
    api_as("model_read").get("/models/")
    assert not AuditEvent.objects.exists()


def test_the_audit_never_holds_the_key_or_the_body(make_user, client_for, registry):
    client = client_for(make_user("model_write"))
    client.post("/models/", {"model_name": "secretive", "model_config": {"model_id": "o/m", "engine": "transformers",
                "description": "TOP-SECRET-TEXT"}}, format="json")
    row = str(list(AuditEvent.objects.values()))
    assert "TOP-SECRET-TEXT" not in row and client.raw_key not in row


def test_admin_changes_are_audited(make_user, client):
    client.force_login(make_user(superuser=True))
    client.post("/admin/auth/group/add/", {"name": "testers"})
    event = AuditEvent.objects.filter(route__startswith="/admin/").get()
    assert event.method == "POST" and event.status_code == 302


def _streamed_post(user, request_id):
    from django.http import StreamingHttpResponse
    from django.test import RequestFactory

    from system_app.middleware import AuditMiddleware

    request = RequestFactory().post("/inference/chat")
    request.user, request.request_id = user, request_id
    middleware = AuditMiddleware(lambda request: StreamingHttpResponse(iter([b"event: start\n\n"])))
    return middleware(request)


def _audited(request_id, seconds=5.0):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if AuditEvent.objects.filter(request_id=request_id).exists():
            break
        time.sleep(0.02)
    return AuditEvent.objects.filter(request_id=request_id).count()


@pytest.mark.django_db(transaction=True)
def test_a_stream_is_audited_once_when_it_closes(make_user):
    import gc

    response = _streamed_post(make_user(), "stream-closed")
    assert not AuditEvent.objects.exists()  # nothing written before the first byte
    b"".join(response)
    response.close()
    assert AuditEvent.objects.filter(request_id="stream-closed").count() == 1
    del response
    gc.collect()
    assert _audited("stream-closed", seconds=0.5) == 1


@pytest.mark.django_db(transaction=True)
def test_a_stream_dropped_before_its_first_byte_is_still_audited(make_user):
    import gc

    # What Django does when the client leaves before the response starts: it never closes it.
    response = _streamed_post(make_user(), "stream-dropped")
    assert not AuditEvent.objects.exists()
    del response
    gc.collect()
    assert _audited("stream-dropped") == 1
