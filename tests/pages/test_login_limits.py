"""Brute-force protection on sign-in (django-axes): a limit per account and address, nothing else affected."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import Client

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def sign_in(client: Client, username: str, password: str, address: str = "10.0.0.1", **headers):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=address, **headers)


def fail_until_locked(client: Client, username: str):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, username, "wrong")


def test_the_sign_in_page_states_the_configured_limit_and_cool_off(client):
    minutes = round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)
    text = " ".join(client.get("/login/").content.decode().split())
    assert (f"{settings.AXES_FAILURE_LIMIT} failed sign-ins for one account from one address lock that account out "
            f"from that address for {minutes} minutes.") in text


def test_the_documented_limit_of_failed_sign_ins_locks_the_account_from_that_address(make_user):
    user = make_user()
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, user.username, "wrong").status_code == 200
    locked = sign_in(client, user.username, "wrong")
    assert locked.status_code == 429
    assert b"Too many failed sign-ins" in locked.content
    # Locked means the right password is refused too, and no session is created.
    assert sign_in(client, user.username, PASSWORD).status_code == 429
    assert client.get("/chat/").status_code == 302


def test_the_same_account_from_another_address_can_still_sign_in(make_user):
    user = make_user()
    fail_until_locked(Client(), user.username)
    assert sign_in(Client(), user.username, PASSWORD, address="10.0.0.2").status_code == 302


def test_another_account_from_the_locked_address_can_still_sign_in(make_user):
    locked, other = make_user(), make_user()
    fail_until_locked(Client(), locked.username)
    assert sign_in(Client(), other.username, PASSWORD).status_code == 302


def test_a_forged_forwarded_for_header_does_not_reset_the_count(make_user):
    user = make_user()
    client = Client()
    for number in range(settings.AXES_FAILURE_LIMIT):
        sign_in(client, user.username, "wrong", HTTP_X_FORWARDED_FOR=f"192.0.2.{number}")
    assert sign_in(client, user.username, PASSWORD, HTTP_X_FORWARDED_FOR="192.0.2.200").status_code == 429


def test_a_successful_sign_in_clears_earlier_failures(make_user):
    user = make_user()
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        sign_in(client, user.username, "wrong")
    assert sign_in(client, user.username, PASSWORD).status_code == 302
    client.post("/logout/")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert sign_in(client, user.username, "wrong").status_code == 200


def test_the_admin_sign_in_is_limited_too(make_user):
    user = make_user(superuser=True)
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/admin/login/", {"username": user.username, "password": "wrong"}, REMOTE_ADDR="10.0.0.1")
    response = client.post("/admin/login/", {"username": user.username, "password": PASSWORD}, REMOTE_ADDR="10.0.0.1")
    assert response.status_code == 429


def test_api_keys_and_open_browser_sessions_keep_working_for_a_locked_account(make_user, client_for):
    user = make_user("model_read")
    browser = Client()
    browser.force_login(user)
    fail_until_locked(Client(), user.username)
    assert client_for(user).get("/models/").status_code == 200
    assert browser.get("/models/").status_code == 200
    assert browser.get("/chat/").status_code == 200
