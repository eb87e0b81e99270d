"""A WebSocket client that stops reading loses its own socket on the real server; everyone else carries on.

The live server runs with BEAUTYAI_WS_SLOW_READER_SECONDS=2 (tests/conftest.py). Before anything
backs up in daphne, the server's kernel send buffer has to fill, and on loopback Linux grows it up
to tcp_wmem's maximum (4 MiB by default) even when the client reads nothing: at 30–70 tokens a
second of ~120-byte events that takes minutes. So the stalled client also pings, which daphne
answers at once with pongs of the same size, filling those buffers in a second or two. The chat
it started is what must stop when it is dropped.
"""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest
from django.conf import settings
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.sync.client import connect as ws_connect
from websockets.uri import parse_uri

from inference_app.models import ChatMessage

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "slow-reader-smollm2"
MAX_TOKENS = 1900  # at any plausible CPU speed, still generating when the drop comes a few seconds in
DROP_WITHIN_SECONDS = 10  # well before daphne's own unanswered-ping drop (20 s idle + 30 s timeout)


@pytest.fixture
def server(live_server_url, make_user, client_for, transactional_db):
    """The bundled model under its own name, with room for a long reply, loaded in the live server."""
    from models_app import services
    from models_app.bootstrap import bundled_entries

    config = dict(bundled_entries()["smollm2-135m-instruct"])
    config.update(max_new_tokens=MAX_TOKENS, parameters={**config["parameters"], "n_ctx": 2048})
    services.registry_add(name=MODEL, config=config)
    slow_user, other_user = make_user("chat", "model_load"), make_user("chat")
    slow_key, other_key = client_for(slow_user).raw_key, client_for(other_user).raw_key
    headers = {"Authorization": f"Bearer {slow_key}"}
    loaded = httpx.post(f"{live_server_url}/models/{MODEL}/load", json={}, headers=headers, timeout=120)
    assert loaded.status_code == 200, loaded.text
    yield live_server_url, slow_user, slow_key, other_key
    httpx.post(f"{live_server_url}/models/{MODEL}/unload", json={}, headers=headers, timeout=60)


def chat(request_id: str, message: str, max_tokens: int) -> str:
    return json.dumps({"type": "chat", "request_id": request_id, "message": message, "model_name": MODEL,
                       "generation_config": {"temperature": 0.0, "max_tokens": max_tokens}})


def open_raw_socket(url: str, key: str) -> tuple[socket.socket, ClientProtocol]:
    """A WebSocket over a plain socket with a small receive buffer, read only when the test says so."""
    address = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(30)  # the handshake, and the first token on a busy machine
    sock.connect((address.hostname, address.port))
    ws = ClientProtocol(parse_uri(f"ws://{address.netloc}/ws/chat/"))
    request = ws.connect()
    request.headers["Authorization"] = f"Bearer {key}"
    ws.send_request(request)
    sock.sendall(b"".join(ws.data_to_send()))
    while ws.state is State.CONNECTING:
        data = sock.recv(4096)
        assert data, "the server closed the socket during the handshake"
        ws.receive_data(data)
    assert ws.state is State.OPEN
    ws.events_received()  # the handshake's response; only frames from here on
    return sock, ws


def read_until_a_delta(sock: socket.socket, ws: ClientProtocol) -> None:
    while True:
        data = sock.recv(4096)
        assert data, "the server closed the socket before the reply started"
        ws.receive_data(data)
        for frame in ws.events_received():
            if frame.opcode is Opcode.TEXT and json.loads(frame.data)["type"] == "delta":
                return


def kernel_send_buffer_max() -> int:
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


def hung_up_within(sock: socket.socket, seconds: float) -> bool:
    """True once the server closes or resets the socket; unread data waiting in it does not count."""
    poll = select.poll()
    poll.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    return bool(poll.poll(seconds * 1000))


def test_a_client_that_stops_reading_is_dropped_and_its_generation_cancelled(server):
    url, slow_user, slow_key, other_key = server
    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    with ws_connect(ws_url, additional_headers={"Authorization": f"Bearer {other_key}"}) as bystander:
        assert json.loads(bystander.recv(timeout=10))["type"] == "ready"
        sock, ws = open_raw_socket(url, slow_key)
        stalled_address = "%s:%s" % sock.getsockname()
        ws.send_text(chat("long", "Write a very long story about a dragon.", MAX_TOKENS).encode())
        sock.sendall(b"".join(ws.data_to_send()))
        read_until_a_delta(sock, ws)  # from here on, nothing on this socket is ever read
        # Twice what the kernel may hold for the server, in 125-byte pings answered by equal pongs.
        for _ in range(2 * kernel_send_buffer_max() // 125):
            ws.send_ping(b"p" * 125)
        try:
            sock.sendall(b"".join(ws.data_to_send()))
        except OSError:
            pass  # the server stops reading once it is backed up, and drops us while this still blocks
        # Queued behind the stalled client's chat on the same model: it runs once that one is cancelled.
        bystander.send(chat("ok", "Name the capital city of France.", 16))

        assert hung_up_within(sock, DROP_WITHIN_SECONDS), "the server kept a client that reads nothing"
        sock.close()
        while (event := json.loads(bystander.recv(timeout=60)))["type"] not in ("done", "error"):
            pass
        assert event["type"] == "done" and event["request_id"] == "ok"

    deadline = time.monotonic() + 10
    while (reply := ChatMessage.objects.filter(session__owner=slow_user, role="assistant").first()) is None:
        assert time.monotonic() < deadline, "the stalled client's reply was never stored"
        time.sleep(0.1)
    assert reply.finish_reason == "cancelled" and 0 < reply.completion_tokens < MAX_TOKENS
    log = (settings.DATA_DIR / "live-server.log").read_text(errors="replace")
    warnings = [line for line in log.splitlines() if "beautyai_site.ws_protocol" in line]
    assert any(stalled_address in line for line in warnings)
    assert not any(slow_key in line for line in warnings)
