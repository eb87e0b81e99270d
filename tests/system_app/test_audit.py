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
