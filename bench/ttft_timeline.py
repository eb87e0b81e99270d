"""Where the first-token milliseconds go: a per-request timeline of chats (issue #20).

    .venv/bin/python -m bench.ttft_timeline [--chats N] [--tokens T] [--transports sse,websocket,v1]
        [--user admin|grantee] [--session] [--queries] [--what-if skip-count,skip-quota,defer-writes]

Starts the benchmark's server (``bench/server.py``: fresh data dir, SQLite, in-memory channel layer,
real daphne on its own port), but through ``--serve``, which wraps request-path functions of the web
process with ``perf_counter`` timers before handing over to ``beautyai_site.serve``. Nothing in the
project records these timings; they exist only in this process. ``perf_counter`` is
``CLOCK_MONOTONIC`` on Linux, one clock for every process of the host, so the client's send and
arrival times and the server's events lie on one time line.

Then it loads the bundled llama.cpp model, sends a few warm-up chats and ``--chats`` chats per
transport one at a time (a pause after each, so that the server's writes after ``done`` are over
before the next send), and prints per phase the median over the chats, and the engine's own time to
first token from the runner's stats. ``--user grantee`` chats as a user who holds ``model_read`` and
``chat`` on the model only (guardian object permissions) instead of the bootstrap superuser, whose
permission checks answer without a query; ``--session``: the SSE chats continue one session;
``--queries``: the SQL of each column's last chat; ``--what-if``: SSE columns in which bench-only
stand-ins remove one candidate change's cost (``_what_if``), alternating with the unchanged code.

Phases (ms; what they contain is in docs/performance.md):
  critical path: client send -> generation submitted -> first token read by the manager's reader
  thread -> first delta received by the client; then the pieces inside each.
"""

from __future__ import annotations

import argparse
import contextvars
import functools
import inspect
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path

# -- the server side: timers around request-path functions ------------------------------------------

_events: list[tuple] = []  # (perf_counter, label, extra); appended from any thread (list.append is atomic)
_hop = contextvars.ContextVar("ttft_hop", default=None)
_hop_ids = itertools.count()
_deferred: dict = {}  # request id -> (thread, its first-token event): the defer-writes stand-in's writes


def _rec(label: str, extra=None) -> None:
    _events.append((time.perf_counter(), label, extra))


def _span(owner, attr: str, label: str, sql: bool = False) -> None:
    """Replaces ``owner.attr`` with the same function recording ``label>`` on entry and ``label<`` on exit
    (``sql``: the entry keeps the start of the statement, the method's first argument)."""
    original = inspect.getattr_static(owner, attr)
    static = isinstance(original, staticmethod)
    function = original.__func__ if static else original
    if inspect.iscoroutinefunction(function):
        @functools.wraps(function)
        async def wrapper(*args, **kwargs):
            _rec(label + ">")
            try:
                return await function(*args, **kwargs)
            finally:
                _rec(label + "<")
    else:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            _rec(label + ">", str(args[1])[:100] if sql else None)
            try:
                return function(*args, **kwargs)
            finally:
                _rec(label + "<")
    setattr(owner, attr, staticmethod(wrapper) if static else wrapper)


def _instrument() -> None:
    """Timers on the web process's request path; called before daphne imports the application."""
    from asgiref import sync
    from django.db.backends import utils as db_utils
    from rest_framework.views import APIView

    import beautyai_site.asgi as asgi
    from accounts import permissions as account_permissions
    from inference_app import consumers, services as chat, views as chat_views
    from models_app import services as registry
    from models_app.serving import handle as serving_handle, manager as serving_manager

    for name, label in (("dispatch", "view"), ("perform_authentication", "auth"),
                        ("check_permissions", "route_permission"), ("check_throttles", "throttle"),
                        ("finalize_response", "finalize")):
        _span(APIView, name, label)
    _span(chat_views, "parse", "parse")
    for name, label in (("chat_open", "chat_open"), ("chat_prepare", "prepare"),
                        ("session_get_for_user", "session_lookup"), ("_pick_model", "pick_model"),
                        ("model_ready", "model_ready"), ("quota_check", "quota"), ("fit_context", "fit_context"),
                        ("chat_start", "chat_start"), ("_store_user_turn", "store_turn")):
        _span(chat, name, label)
    for name, label in (("generate", "submit"), ("count_tokens", "count_tokens"), ("check_queue", "check_queue")):
        _span(registry, name, label)
    # has_on is imported by name where it is used: every copy gets the timer.
    for module in (account_permissions, chat, registry):
        _span(module, "has_on", "has_on")
    _span(account_permissions, "has_somewhere", "has_somewhere")
    _span(serving_manager.EngineManager, "_call", "runner_call")
    _span(consumers.ChatConsumer, "_open", "ws_open")
    for name in ("execute", "executemany"):
        _span(db_utils.CursorWrapper, name, "db", sql=True)

    Handle = serving_handle.GenerationHandle
    started, push, aiter = Handle._started, Handle._push, Handle._aiter

    def timed_started(self):
        if self.queue_time_ms is None:
            _rec("runner_started")
        started(self)

    def timed_push(self, event):
        if event.kind == "delta" and self._tokens_seen == 0:
            _rec("reader_first_delta")
            for _thread, first_token in list(_deferred.values()):
                first_token.set()
        elif event.kind != "delta":
            _rec("reader_end", getattr(event.stats, "time_to_first_token_ms", None))
        return push(self, event)

    async def timed_aiter(self):
        _rec("loop_subscribed")
        first = True
        async for event in aiter(self):
            if first and event.kind == "delta":
                _rec("loop_first_delta")
                first = False
            yield event

    Handle._started, Handle._push, Handle._aiter = timed_started, timed_push, timed_aiter

    # Thread hops: sync_to_async (loop -> thread -> loop) and async_to_sync (thread -> loop -> thread).
    s2a_call, s2a_thread = sync.SyncToAsync.__call__, sync.SyncToAsync.thread_handler
    a2s_call, a2s_main = sync.AsyncToSync.__call__, sync.AsyncToSync.main_wrap

    async def timed_s2a_call(self, *args, **kwargs):
        hop = next(_hop_ids)
        token = _hop.set(hop)  # copied into the thread's context with the call
        _rec("s2a_call", hop)
        try:
            return await s2a_call(self, *args, **kwargs)
        finally:
            _rec("s2a_back", hop)
            _hop.reset(token)

    def timed_s2a_thread(self, *args, **kwargs):
        hop = _hop.get()
        _rec("s2a_in", hop)
        try:
            return s2a_thread(self, *args, **kwargs)
        finally:
            _rec("s2a_out", hop)

    def timed_a2s_call(self, *args, **kwargs):
        hop = next(_hop_ids)
        token = _hop.set(hop)
        _rec("a2s_call", hop)
        try:
            return a2s_call(self, *args, **kwargs)
        finally:
            _rec("a2s_back", hop)
            _hop.reset(token)

    async def timed_a2s_main(self, *args, **kwargs):
        hop = _hop.get()
        _rec("a2s_in", hop)
        try:
            return await a2s_main(self, *args, **kwargs)
        finally:
            _rec("a2s_out", hop)

    sync.SyncToAsync.__call__, sync.SyncToAsync.thread_handler = timed_s2a_call, timed_s2a_thread
    sync.AsyncToSync.__call__, sync.AsyncToSync.main_wrap = timed_a2s_call, timed_a2s_main

    application = asgi.application

    async def timed_application(scope, receive, send):
        if scope["type"] == "http":
            _rec("asgi_in")
        asked = dict(scope.get("headers") or []).get(b"x-ttft-what-if", b"").decode()
        _variant.set(frozenset(name for name in asked.split(",") if name in WHAT_IFS))

        async def timed_send(message):
            kind = message.get("type")
            if kind == "http.response.start":
                _rec("response_start")
            elif kind == "http.response.body" and message.get("body"):
                _rec("body", message["body"][:1000].decode(errors="replace"))
            elif kind == "websocket.send" and message.get("text"):
                _rec("body", message["text"][:1000])
            await send(message)

        async def timed_receive():
            message = await receive()
            if message.get("type") == "websocket.receive":
                _rec("asgi_in")
            return message

        await application(scope, timed_receive, timed_send)

    asgi.application = timed_application


WHAT_IFS = ("skip-count", "skip-quota", "defer-writes")
_variant = contextvars.ContextVar("ttft_variant", default=frozenset())


def _what_if() -> None:
    """Bench-only stand-ins for candidate changes, to measure what each would remove before making it.
    A request that sends ``X-TTFT-What-If: name,...`` gets them; the others run the project's code, so
    the sides alternate on one server.

    skip-count: no token count before the submit (as if the runner counted with the generation);
    skip-quota: no quota query (as if a caller without rules paid nothing for the check);
    defer-writes: the user's turn is stored by a thread once the first token arrived (the reply's own
    write waits for it), as if written after the first token.
    They are not the project's code (sessions and quotas are not what they would be), which is why
    they exist only here.
    """
    from inference_app import services as chat, streaming

    fit, quota, store, record = chat.fit_context, chat.quota_check, chat._store_user_turn, chat.chat_record
    pending = _deferred

    def fit_context(*, model_name, messages, params, tail=1):
        if "skip-count" in _variant.get():
            return messages, 0
        return fit(model_name=model_name, messages=messages, params=params, tail=tail)

    def quota_check(*, user, model):
        if "skip-quota" not in _variant.get():
            quota(user=user, model=model)

    def store_user_turn(plan):
        if "defer-writes" not in _variant.get():
            return store(plan)
        first_token = threading.Event()

        def later():
            first_token.wait(5)
            try:
                store(plan)
            finally:
                from django.db import close_old_connections

                close_old_connections()

        thread = threading.Thread(target=later, daemon=True)
        pending[plan.request_id] = (thread, first_token)
        thread.start()

    def chat_record(builder):
        thread, _first_token = pending.pop(builder.plan.request_id, (None, None))
        if thread is not None:
            thread.join()
        return record(builder)

    chat.fit_context, chat.quota_check, chat._store_user_turn = fit_context, quota_check, store_user_turn
    chat.chat_record = streaming.chat_record = chat_record


def _write_events(path: Path) -> None:
    """Moves the events to ``path`` every 50 ms, off the request path (one JSON line each)."""
    done = 0
    with open(path, "a", encoding="utf-8") as out:
        while True:
            time.sleep(0.05)
            upto = len(_events)
            for t, label, extra in _events[done:upto]:
                out.write(json.dumps([t, label, extra]) + "\n")
            out.flush()
            done = upto


def serve(events_path: str, daphne_args: list[str]) -> None:
    import django

    django.setup(set_prefix=False)
    _instrument()
    _what_if()
    threading.Thread(target=_write_events, args=(Path(events_path),), daemon=True, name="ttft-events").start()
    from beautyai_site.serve import main as serve_main

    serve_main(daphne_args)


# -- the client side ---------------------------------------------------------------------------------

GRANTEE_SETUP = """
from django.contrib.auth import get_user_model
from guardian.shortcuts import assign_perm
from accounts.permissions import full_name
from accounts.services import create_api_key
from models_app.models import ModelConfig
user = get_user_model().objects.create_user("ttft-grantee", password=None)
model = ModelConfig.objects.get(name={model!r})
for codename in ("model_read", "chat"):
    assign_perm(full_name(codename), user, model)
print("KEY", create_api_key(user=user, name="ttft")[1])
"""


def _first(events, label, after=float("-inf"), before=float("inf")):
    return next((t for t, name, _ in events if name == label and after <= t < before), None)


def _spans(events, label, after, before, match: str | None = None):
    """(start, end) of each ``label`` span that starts in [after, before) (``match``: whose entry's
    extra, a statement, holds that text)."""
    out, opened = [], []
    for t, name, extra in events:
        if name == label + ">" and after <= t < before:
            opened.append((t, match is None or match in (extra or "")))
        elif name == label + "<" and opened:
            start, wanted = opened.pop()
            if wanted:
                out.append((start, t))
    return out


def _total(spans) -> float:
    """Milliseconds covered by ``spans`` (nested spans counted once: the outermost)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if start >= end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total * 1000


def _ms(a, b):
    return None if a is None or b is None else (b - a) * 1000


def _hops(events, after, before) -> tuple[int, float]:
    """Thread hops begun in [after, before): how many, and their waits (to the other side and back)."""
    marks: dict = {}
    for t, name, hop in events:
        if name[:3] in ("s2a", "a2s") and hop is not None:
            marks.setdefault(hop, {})[name[4:]] = t
    count, waited = 0, 0.0
    for hop in marks.values():
        if not (after <= hop.get("call", float("inf")) < before):
            continue
        count += 1
        if "in" in hop:
            waited += hop["in"] - hop["call"]
        if "back" in hop and "out" in hop and hop["back"] < before:
            waited += hop["back"] - hop["out"]
    return count, waited * 1000


def _is_delta(transport: str, text: str) -> bool:
    """Whether a body the server sent (its first 1000 characters) carries reply text."""
    if transport == "sse":
        return text.startswith("event: delta")
    if transport == "websocket":
        return text.startswith('{"type": "delta"')
    try:  # /v1: "data: {chunk}"; the role chunk before the first token has empty content
        chunk = json.loads(text.removeprefix("data: "))
    except ValueError:
        return False
    return any((choice.get("delta") or {}).get("content") for choice in chunk.get("choices") or [])


def timeline(transport: str, result, events: list) -> dict:
    """The phases of one chat, in ms, from the client's result and the server's events."""
    sent = result.sent_at
    start_at = sent + result.start_at if result.start_at is not None else None
    first = sent + result.piece_times[0]
    window = [e for e in events if sent <= e[0] <= first + 0.002]
    asgi_in = _first(window, "asgi_in")
    submit = (_spans(window, "submit", sent, first) or [(None, None)])[0]
    reader = _first(window, "reader_first_delta")
    started = _first(window, "runner_started")
    subscribed = _first(window, "loop_subscribed")
    loop_delta = _first(window, "loop_first_delta")
    bodies = [(t, extra) for t, name, extra in window if name == "body"]
    delta_body = next((t for t, text in bodies if _is_delta(transport, text)), None)
    end = next((extra for t, name, extra in events if name == "reader_end" and t > first), None)
    engine_ttft = result.server_ttft_ms if result.server_ttft_ms is not None else end

    def span_ms(label):
        return _total(_spans(window, label, sent, first))

    db_before = _spans(window, "db", sent, submit[0] or first)
    db_after = _spans(window, "db", submit[1] or first, first)
    hops, hop_wait = _hops(window, sent, submit[0] or first)
    view = _spans(window, "view", sent, first) or _spans(window, "ws_open", sent, first)
    row = {
        "TTFT (client)": _ms(sent, first),
        "engine TTFT (runner stats)": engine_ttft,
        "added (TTFT - engine TTFT)": _ms(sent, first) - engine_ttft if engine_ttft is not None else None,
        "start event (client)": _ms(sent, start_at),
        # The same TTFT in three parts that add up to it (apart from the engine's own time).
        "1 send -> submit entered (platform, before)": _ms(sent, submit[0]),
        "2 submit -> first token read, minus engine TTFT": (_ms(submit[0], reader) - engine_ttft
                                                            if reader and engine_ttft is not None else None),
        "3 first token read -> client has it (after)": _ms(reader, first),
        # The critical path, in order.
        "A send -> app called (daphne)": _ms(sent, asgi_in),
        "B app -> view entered (middleware, hops)": _ms(asgi_in, view[0][0] if view else None),
        "C view -> submitted (platform work)": _ms(view[0][0] if view else None, submit[0]),
        "D submit (queue check, pipe send)": _ms(*submit),
        "E submit -> runner started (pipe, runner queue)": _ms(submit[0], started),
        "F runner started -> first token read": _ms(started, reader),
        "G first token read -> on event loop": _ms(max(reader, subscribed or reader) if reader else None, loop_delta),
        "  view not yet streaming when it came": max(0.0, _ms(reader, subscribed) or 0.0),
        "H event loop -> written (send)": _ms(loop_delta, delta_body),
        "I written -> client has it": _ms(delta_body, first),
        # Inside C (and after the submit, overlapping the engine).
        "auth": span_ms("auth"),
        "route permission": span_ms("route_permission"),
        "throttle": span_ms("throttle"),
        "parse": span_ms("parse"),
        "prepare (all)": span_ms("prepare"),
        "  session lookup": span_ms("session_lookup"),
        "  pick model": span_ms("pick_model"),
        "  model ready (all)": span_ms("model_ready"),
        "    quota check": span_ms("quota"),
        "  queue check": span_ms("check_queue"),
        "  history load (its query)": _total(_spans(window, "db", sent, submit[0] or first, match="chatmessage")),
        "  fit context (all)": span_ms("fit_context"),
        "    token count round trip": span_ms("runner_call"),
        "object permission checks (has_on)": span_ms("has_on"),
        "thread hops before submit": hops,
        "  their waits": hop_wait,
        "queries before submit": len(db_before),
        "  their time": _total(db_before),
        "after submit: store user turn": span_ms("store_turn"),
        "after submit: queries": len(db_after),
        "after submit: view return -> response start": _ms(view[0][1] if view and view[0][1] < first else None,
                                                            _first(window, "response_start")),
    }
    return row


def _print_queries(transport: str, result, events: list) -> None:
    sent, first = result.sent_at, result.sent_at + result.piece_times[0]
    print(f"{transport}: statements up to the first token (ms after the send; submitted at "
          f"{_ms(sent, _first(events, 'submit>', sent, first)):.2f})")
    for start, _end in _spans(events, "db", sent, first):
        statement = next(extra for t, name, extra in events if t == start and name == "db>")
        print(f"  {_ms(sent, start):7.2f} {_ms(start, _end):5.2f}  {statement}")


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _read_events(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [tuple(json.loads(line)) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=20, help="timed chats per transport (default 20)")
    parser.add_argument("--tokens", type=int, default=8, help="max_tokens per chat (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="chats per transport before timing (default 3)")
    parser.add_argument("--transports", default="sse,websocket,v1")
    parser.add_argument("--user", choices=("admin", "grantee"), default="admin")
    parser.add_argument("--session", action="store_true",
                        help="SSE chats continue one session (its history grows by a turn pair per chat)")
    parser.add_argument("--queries", action="store_true", help="list the statements of each transport's last chat")
    parser.add_argument("--what-if", default="", help="bench-only stand-ins for candidate changes, comma-separated "
                        f"({', '.join(WHAT_IFS)}; see _what_if): an SSE column each, alternating with the others")
    parser.add_argument("--json", help="also write the per-chat rows here")
    args = parser.parse_args(argv)

    import httpx

    from bench import clients
    from bench.server import LLAMA, BenchServer

    server = BenchServer()
    events_path = server.data_dir / "ttft-events.jsonl"
    server.serve = ("-m", "bench.ttft_timeline", "--serve", str(events_path))
    transports = [t for t in args.transports.split(",") if t]
    what_ifs = [name for name in args.what_if.split(",") if name]
    if set(what_ifs) - set(WHAT_IFS):
        raise SystemExit(f"--what-if: one of {', '.join(WHAT_IFS)}")
    # Each what-if (and, with several, all of them together) is an SSE column of its own.
    variants = [*what_ifs, ",".join(what_ifs)] if len(what_ifs) > 1 else what_ifs
    columns = transports + [f"sse+{variant}" for variant in variants]
    rows: dict[str, list[dict]] = {}
    try:
        server.start()
        server.load(LLAMA)
        key = server.api_key
        if args.user == "grantee":
            out = server._manage("shell", "-c", GRANTEE_SETUP.format(model=LLAMA))
            key = next(line.split()[1] for line in out.splitlines() if line.startswith("KEY "))
        headers = {"Authorization": f"Bearer {key}"}
        http = {variant: httpx.Client(base_url=server.url, headers={**headers, "X-TTFT-What-If": variant}, timeout=120)
                for variant in ["", *variants]}
        ws = clients.WSChat(server.url, key) if "websocket" in transports else None
        v1 = clients.openai_client(server.url, key) if "v1" in transports else None
        session_id = None
        if args.session:
            first = http[""].post("/inference/chat", json=clients.chat_body(LLAMA, args.tokens, stream=False))
            session_id = first.json()["session_id"]
        run = {"sse": lambda: clients.sse_stream(http[""], LLAMA, args.tokens, session_id=session_id),
               "websocket": lambda: ws.stream(LLAMA, args.tokens),
               "v1": lambda: clients.openai_stream(v1, LLAMA, args.tokens)}
        for variant in variants:
            run[f"sse+{variant}"] = functools.partial(clients.sse_stream, http[variant], LLAMA, args.tokens,
                                                      session_id=session_id)
        results: dict[str, list] = {column: [] for column in columns}
        for n in range(args.warmup + args.chats):
            for column in columns:  # alternating, so that drift hits every column alike
                result = run[column]()
                if not result.ok or not result.piece_times:
                    raise SystemExit(f"{column} chat failed: {result.error}")
                if n >= args.warmup:
                    results[column].append(result)
                time.sleep(0.3)  # the writes after done, and the event file, catch up
        time.sleep(0.3)
        events = _read_events(events_path)
        for column in columns:
            transport = column.split("+")[0]
            rows[column] = [timeline(transport, result, events) for result in results[column]]
            if args.queries:
                _print_queries(column, results[column][-1], events)
        if ws is not None:
            ws.close()
        for client in http.values():
            client.close()
    finally:
        server.stop()
    names = list(next(iter(rows.values()))[0])
    print(f"medians over {args.chats} chats per transport, {args.tokens} tokens, user {args.user}"
          f"{', one session' if args.session else ''} (ms; counts)")
    width = max(12, *(len(column) + 2 for column in columns))
    print(f"{'phase':<48}" + "".join(f"{column:>{width}}" for column in columns))
    for name in names:
        cells = []
        for column in columns:
            value = _median([row[name] for row in rows[column]])
            cells.append(f"{'-':>{width}}" if value is None else f"{value:>{width}.2f}")
        print(f"{name:<48}" + "".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
