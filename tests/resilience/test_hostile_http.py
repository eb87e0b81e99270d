"""Hostile HTTP against the real server: every bad body is refused in the envelope and nothing is stored."""

from __future__ import annotations

import json
import os
import select
import socket
import stat
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psutil
import pytest
from django.conf import settings

from models_app.models import ModelConfig

pytestmark = pytest.mark.django_db(transaction=True)

TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def server(live_server_url, make_user, client_for):
    key = client_for(make_user("model_write", "model_read", "chat")).raw_key
    return live_server_url, {"Authorization": f"Bearer {key}"}


def post(server, path, content, **headers):
    url, auth = server
    return httpx.post(f"{url}{path}", content=content, headers={**auth, "Content-Type": "application/json", **headers},
                      timeout=60)


def assert_envelope(response, status, code):
    assert response.status_code == status, response.text[:300]
    body = response.json()
    assert body["success"] is False and body["error_code"] == code and body["data"] is None


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true", b"{", b"\xff",
                                 b'{"model_name": "x", "model_config": {"model_id": "o/m", "engine": "transformers", "temperature": NaN}}',
                                 b'{"model_name": "x", "model_config": {"model_id": "o/m", "engine": "transformers", "temperature": Infinity}}',
                                 b'{"model_name": 5, "model_config": {"model_id": "o/m", "engine": "transformers"}}',
                                 b'{"model_name": "x", "model_config": {"model_id": "o/m", "engine": "transformers"}, "extra": 1}'])
@pytest.mark.parametrize("path", ["/models/", "/inference/chat"])
def test_bad_json_bodies_answer_400_and_store_nothing(server, raw, path):
    assert_envelope(post(server, path, raw), 400, "ValidationError")
    assert ModelConfig.objects.count() == 0


def test_a_hundred_levels_of_nesting_answer_400(server):
    nested = {"leaf": 1}
    for _ in range(100):
        nested = {"n": nested}
    body = {"model_name": "deep", "model_config": {"model_id": "o/m", "engine": "transformers", "parameters": nested}}
    assert_envelope(post(server, "/models/", json.dumps(body).encode()), 400, "ValidationError")
    assert not ModelConfig.objects.exists()


def test_ten_megabytes_with_content_length_answer_413(server):
    assert_envelope(post(server, "/models/", b"{" + b" " * TEN_MB + b"}"), 413, "PayloadTooLargeError")


def test_ten_megabytes_without_content_length_answer_413(server):
    def chunks():
        yield b'{"model_name": "big", "description": "'
        for _ in range(10):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    assert_envelope(post(server, "/models/", chunks()), 413, "PayloadTooLargeError")
    assert not ModelConfig.objects.exists()


def test_a_malformed_content_length_answers_400(server):
    import socket
    from urllib.parse import urlparse

    url, auth = server
    address = urlparse(url)
    request = (f"POST /models/ HTTP/1.1\r\nHost: {address.hostname}\r\nAuthorization: {auth['Authorization']}\r\n"
               "Content-Type: application/json\r\nContent-Length: notanumber\r\nConnection: close\r\n\r\n{}").encode()
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.split(b" ", 2)[1] == b"400"


def test_the_server_still_answers_after_all_that(server):
    url, auth = server
    assert httpx.get(f"{url}/models/", headers=auth, timeout=10).status_code == 200


def test_security_headers_are_sent(server):
    url, auth = server
    response = httpx.get(f"{url}/models/", headers=auth, timeout=10)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in response.headers  # only with BEAUTYAI_HTTPS behind TLS


def test_v1_routes_answer_unknown_paths_and_oversized_bodies_in_openai_shape(server):
    url, auth = server
    missing = httpx.get(f"{url}/v1/no-such-thing", headers=auth, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    big = post(server, "/v1/chat/completions", b"{" + b" " * TEN_MB + b"}")
    assert big.status_code == 413 and set(big.json()["error"]) == {"message", "type", "param", "code"}


# Refused while the body arrives (beautyai_site/http_protocol.py, installed by serve.py) ----------

def server_process(url) -> psutil.Process:
    port = str(urlparse(url).port)
    return next(child for child in psutil.Process().children()
                if "beautyai_site.serve" in child.cmdline() and port in child.cmdline())


def largest_temporary_file(process) -> int:
    """The size of the largest unlinked file the server holds open: Twisted's request bodies."""
    sizes = [0]
    for fd in os.listdir(f"/proc/{process.pid}/fd"):
        try:
            info = os.stat(f"/proc/{process.pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
            sizes.append(info.st_size)
    return max(sizes)


def open_raw(url, head: str) -> socket.socket:
    """An unauthenticated request: its request line and headers, no body yet."""
    address = urlparse(url)
    sock = socket.create_connection((address.hostname, address.port), timeout=10)
    sock.sendall(f"{head}Host: {address.netloc}\r\nContent-Type: application/json\r\n\r\n".encode())
    return sock


def read_response(sock) -> tuple[int, dict, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body or b"null")


def closed_by_server(sock, timeout=5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
    return False


@pytest.mark.parametrize("expect", ["", "Expect: 100-continue\r\n"], ids=["plain", "expecting 100-continue"])
def test_a_declared_two_gigabyte_body_is_answered_413_before_any_of_it_is_sent(live_server_url, expect):
    started = time.monotonic()
    with open_raw(live_server_url, f"POST /models/ HTTP/1.1\r\nContent-Length: {2**31}\r\n{expect}") as sock:
        status, headers, body = read_response(sock)
        assert time.monotonic() - started < 5
        assert status == 413 and headers["connection"] == "close"
        assert body["success"] is False and body["error_code"] == "PayloadTooLargeError" and body["data"] is None
        # What the client sends anyway is dropped, not stored.
        process = server_process(live_server_url)
        for _ in range(64):
            sock.sendall(b"x" * 65536)
            assert largest_temporary_file(process) <= settings.MAX_REQUEST_BODY_BYTES


def test_a_chunked_body_is_cut_off_at_the_limit_and_the_connection_closed(live_server_url):
    process = server_process(live_server_url)
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    with open_raw(live_server_url, "POST /models/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n") as sock:
        sent = 0
        while not select.select([sock], [], [], 0)[0]:
            assert sent < 50 * settings.MAX_REQUEST_BODY_BYTES, "no answer while the body kept coming"
            sock.sendall(chunk)
            sent += 65536
            assert largest_temporary_file(process) <= settings.MAX_REQUEST_BODY_BYTES
        status, headers, body = read_response(sock)
        assert status == 413 and headers["connection"] == "close" and body["error_code"] == "PayloadTooLargeError"
        sock.sendall(b"0\r\n\r\n")  # the end of the body: the server has nothing left to wait for
        assert closed_by_server(sock)


# Numbers and nesting that JSON can carry but nothing behind it can hold -------------------------

HUGE_INT = "1" + "0" * 400
BODY_ROUTES = [("POST", "/models/"), ("PUT", "/models/alpha"), ("POST", "/models/alpha/load"),
               ("POST", "/inference/chat"), ("POST", "/inference/test"), ("POST", "/inference/benchmark"),
               ("POST", "/inference/sessions/save"), ("POST", "/inference/sessions/load"),
               ("POST", "/v1/chat/completions"), ("POST", "/v1/completions")]


@pytest.fixture
def every_body_route(live_server_url, make_user, client_for):
    """A user who may call every route that reads a body, and an entry (never loaded) to call them on."""
    ModelConfig.objects.create(name="alpha", model_id="org/alpha", engine="transformers")
    user = make_user("model_write", "model_read", "model_load", "chat", "test", "benchmark", "session_save",
                     "session_load")
    return live_server_url, {"Authorization": f"Bearer {client_for(user).raw_key}"}


def send(server, method, path, content):
    url, auth = server
    return httpx.request(method, f"{url}{path}", content=content, timeout=60,
                         headers={**auth, "Content-Type": "application/json"})


def model_body(config_text: str) -> bytes:
    return ('{"model_name": "gamma", "model_config": {"model_id": "org/gamma", "engine": "transformers", '
            + config_text + "}}").encode()


@pytest.mark.parametrize("config_text,field", [
    ('"parameters": {"keep_alive_seconds": 1e400}', "model_config.parameters.keep_alive_seconds"),
    ('"temperature": -1e400', "model_config.temperature"),
    (f'"temperature": {HUGE_INT}', "model_config.temperature"),
    (f'"parameters": {{"n_ctx": {HUGE_INT}}}', "model_config.parameters.n_ctx"),
    ('"parameters": {"extra": {"list": [0, 1e400]}}', "model_config.parameters.extra.list[1]"),
])
def test_a_number_storage_cannot_hold_answers_400_naming_it_and_stores_nothing(server, config_text, field):
    response = post(server, "/models/", model_body(config_text))
    assert_envelope(response, 400, "ValidationError")
    assert response.json()["error_message"].startswith(f"{field}: ")
    assert field in response.json()["error_details"]["fields"]
    assert not ModelConfig.objects.exists()
    url, auth = server
    assert httpx.get(f"{url}/models/", headers=auth, timeout=10).status_code == 200


def test_a_non_finite_number_in_session_data_answers_400_naming_it(every_body_route):
    body = b'{"session_data": {"messages": [{"role": "user", "content": "hi", "stats": {"x": 1e400}}]}}'
    response = send(every_body_route, "POST", "/inference/sessions/save", body)
    assert_envelope(response, 400, "ValidationError")
    assert response.json()["error_message"].startswith("session_data.messages[0].stats.x: ")


@pytest.mark.parametrize("depth", [1000, 100_000])
@pytest.mark.parametrize("method,path", BODY_ROUTES)
def test_deep_nesting_answers_400_on_every_route_that_reads_a_body(every_body_route, method, path, depth):
    for body in ("[" * depth + "]" * depth, '{"a": ' * depth + "1" + "}" * depth):
        response = send(every_body_route, method, path, body.encode())
        assert response.status_code == 400, response.text[:300]
        if path.startswith("/v1/"):
            assert response.json()["error"]["type"] == "invalid_request_error"
        else:
            assert_envelope(response, 400, "ValidationError")
            assert "nested more than" in response.json()["error_message"]
    assert ModelConfig.objects.count() == 1


# Regular expressions that cost gigabytes and seconds to compile ----------------------------------

EXPENSIVE_REGEXES = ["a{4000000}", "(a{1000}){1000}", "((((a{10}){10}){10}){10}){10}", "(?:a|b{1000}){1000}",
                     "(" * 60 + "a" + ")" * 60, "(?x)#[\n(a{1000}){1000}]"]


def peak_rss_of_the_server() -> int:
    server = next(p for p in psutil.Process().children(recursive=True) if "beautyai_site.serve" in p.cmdline())
    status = Path(f"/proc/{server.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def test_expensive_regex_criteria_answer_400_and_the_server_stays_small_and_responsive(every_body_route):
    url, _ = every_body_route
    peak_before = peak_rss_of_the_server()
    answers = []

    def attack():
        for pattern in EXPENSIVE_REGEXES * 2:
            body = {"model_name": "alpha", "prompt": "hi", "validation_criteria": {"regex": pattern}}
            answers.append(send(every_body_route, "POST", "/inference/test", json.dumps(body).encode()))

    attacker = threading.Thread(target=attack)
    attacker.start()
    health_latencies = []
    while attacker.is_alive():
        started = time.monotonic()
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
        health_latencies.append(time.monotonic() - started)
    attacker.join()
    for response in answers:
        assert_envelope(response, 400, "ValidationError")
        assert "regex" in response.json()["error_details"]["fields"]["validation_criteria"]
    assert len(answers) == 2 * len(EXPENSIVE_REGEXES)
    assert max(health_latencies) < 1.0
    assert peak_rss_of_the_server() - peak_before < 50 * 2**20
