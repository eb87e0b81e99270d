"""Assertions on the response envelope, shared by every test module."""

import re

ISO_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
INTERNALS = ("Traceback", 'File "', "/root/", "/home/", "/work/", "site-packages")


def assert_ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert body["success"] is True
    assert "data" in body
    assert ISO_Z.match(body["timestamp"]), body["timestamp"]
    assert isinstance(body["execution_time_ms"], float)
    return body


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert body["success"] is False
    assert body["data"] is None
    assert body["error_code"] == code, body
    assert isinstance(body["error_message"], str) and body["error_message"]
    assert "error_details" in body
    assert ISO_Z.match(body["timestamp"])
    assert isinstance(body["execution_time_ms"], (float, type(None)))
    text = response.content.decode()
    for marker in INTERNALS:
        assert marker not in text, f"{marker!r} leaked into an error body"
    return body
