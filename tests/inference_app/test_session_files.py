"""Session files: /inference/sessions/save|load, GET /inference/sessions, DELETE /inference/sessions/{name}."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from urllib.parse import quote

import pytest

from inference_app import session_files
from inference_app.models import ChatMessage, ChatSession
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db

QUESTION = "ما هي عاصمة فرنسا؟ أجب بكلمة واحدة."
ANSWER = "باريس هي عاصمة فرنسا، وهي مدينة جميلة جداً."
TRAVERSALS = ["../x", "..\\x", "/etc/passwd", "%2e%2e%2f", "x/../../y", "C:\\x", "C:x", "x\x00y", ".hidden",
              "a" * 300, "..", "x/y", " x", "x.", "%2e%2e%2fx"]
ALL = ("session_save", "session_load", "session_delete")


@pytest.fixture
def data_dir(settings, tmp_path) -> Path:
    settings.DATA_DIR = tmp_path / "data"
    settings.DATA_DIR.mkdir()
    return settings.DATA_DIR


@pytest.fixture
def files_user(make_user, client_for):
    user = make_user(*ALL)
    return user, client_for(user)


def folder_of(data_dir: Path, user) -> Path:
    return data_dir / "sessions" / str(user.pk)


def arabic_session(user) -> ChatSession:
    session = ChatSession.objects.create(owner=user, model_name="smollm2-135m-instruct", title="محادثة تجريبية")
    ChatMessage.objects.create(session=session, role="user", content=QUESTION)
    ChatMessage.objects.create(session=session, role="assistant", content=ANSWER, prompt_tokens=20,
                               completion_tokens=12, finish_reason="stop",
                               stats={"tokens_generated": 12, "tokens_per_second": 33.5, "finish_reason": "stop"})
    return session


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def save(client, **body):
    return client.post("/inference/sessions/save", body, format="json")


def load(client, name):
    return client.post("/inference/sessions/load", {"input_file": name}, format="json")


def delete(client, name, **query):
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return client.delete("/inference/sessions/" + quote(name, safe="") + suffix)


def test_an_arabic_session_round_trips_byte_for_byte(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    saved = assert_ok(save(client, session_id=str(session.id), output_file="محادثة 1"))
    path = folder_of(data_dir, user) / "محادثة 1.json"
    first = path.read_bytes()
    assert saved["file_path"] == "محادثة 1.json" and saved["session_id"] == str(session.id)
    assert saved["file_size_bytes"] == len(first) == path.stat().st_size
    assert QUESTION.encode() in first and ANSWER.encode() in first and b"\\u" not in first
    assert json.loads(first)["messages"][1]["content"] == ANSWER

    session_id = str(session.id)
    session.delete()
    loaded = assert_ok(load(client, "محادثة 1"))
    assert loaded["session_id"] == session_id and loaded["message_count"] == 2
    assert loaded["session_data"] == json.loads(first)
    stored = ChatSession.objects.get(id=session_id, owner=user)
    assert [(m.role, m.content) for m in stored.messages.all()] == [("user", QUESTION), ("assistant", ANSWER)]

    assert_ok(save(client, session_id=session_id, output_file="again"))
    assert (folder_of(data_dir, user) / "again.json").read_bytes() == first


def test_loading_replaces_the_messages_of_the_callers_existing_session(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    assert_ok(save(client, session_id=str(session.id), output_file="snapshot"))
    ChatMessage.objects.create(session=session, role="user", content="added after the save")
    body = assert_ok(load(client, "snapshot.json"))
    assert body["session_id"] == str(session.id) and body["message_count"] == 2
    assert session.messages.count() == 2 and ChatSession.objects.filter(owner=user).count() == 1


def test_the_default_file_name_comes_from_the_session_id(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    body = assert_ok(save(client, session_id=str(session.id)))
    assert body["file_path"] == f"session_{session.id}.json"
    assert (folder_of(data_dir, user) / body["file_path"]).is_file()


@pytest.mark.parametrize("name", TRAVERSALS)
def test_every_traversal_form_is_refused_and_nothing_changes(data_dir, files_user, name):
    user, client = files_user
    session = arabic_session(user)
    outside = data_dir / "x.json"
    outside.write_text('{"messages": []}')
    (data_dir / "sessions").mkdir()
    (data_dir / "sessions" / "x.json").write_text('{"messages": []}')
    before = tree(data_dir.parent)

    assert_error(save(client, session_id=str(session.id), output_file=name), 400, "ValidationError")
    assert_error(load(client, name), 400, "ValidationError")
    assert_error(delete(client, name), 400, "ValidationError")
    assert tree(data_dir.parent) == before


def test_the_name_check_is_one_function_for_every_field():
    for name in TRAVERSALS:
        for field in ("output_file", "input_file", "session_name"):
            with pytest.raises(Exception) as caught:
                session_files.file_name(name, field=field)
            assert field in str(caught.value)
    assert session_files.file_name("جلسة_1-a.b", field="x") == "جلسة_1-a.b.json"
    assert session_files.file_name("notes.json", field="x") == "notes.json"


def test_a_planted_symlink_is_refused(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    assert_ok(save(client, session_id=str(session.id), output_file="real"))
    secret = data_dir.parent / "secret.json"
    secret.write_text((folder_of(data_dir, user) / "real.json").read_text())
    link = folder_of(data_dir, user) / "evil.json"
    link.symlink_to(secret)

    assert_error(load(client, "evil"), 400, "ValidationError")
    assert_error(save(client, session_id=str(session.id), output_file="evil"), 400, "ValidationError")
    assert_error(delete(client, "evil"), 400, "ValidationError")
    assert link.is_symlink() and secret.read_text() == (folder_of(data_dir, user) / "real.json").read_text()
    listed = assert_ok(client.get("/inference/sessions"))["data"]["sessions"]
    assert [s["name"] for s in listed if s["source"] == "file"] == ["real.json"]


def test_a_symlinked_user_folder_is_refused_and_nothing_is_written_through_it(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    elsewhere = data_dir.parent / "elsewhere"
    elsewhere.mkdir()
    (data_dir / "sessions").mkdir()
    folder_of(data_dir, user).symlink_to(elsewhere)
    assert_error(save(client, session_id=str(session.id), output_file="x"), 500, "SystemError")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failure_during_write_leaves_the_old_file_intact(data_dir, files_user, monkeypatch, failing):
    user, client = files_user
    session = arabic_session(user)
    assert_ok(save(client, session_id=str(session.id), output_file="keep"))
    path = folder_of(data_dir, user) / "keep.json"
    old = path.read_bytes()
    ChatMessage.objects.create(session=session, role="user", content="a newer turn")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    error = assert_error(save(client, session_id=str(session.id), output_file="keep"), 500, "SystemError")
    monkeypatch.undo()
    assert error["error_details"] == {"reason": "ENOSPC"}
    assert path.read_bytes() == old
    assert sorted(p.name for p in folder_of(data_dir, user).iterdir()) == ["keep.json"]


def test_another_users_file_and_session_answer_404(data_dir, make_user, client_for):
    owner, stranger = make_user(*ALL), make_user(*ALL)
    mine, theirs = client_for(owner), client_for(stranger)
    session = arabic_session(owner)
    assert_ok(save(mine, session_id=str(session.id), output_file="private"))

    assert_error(load(theirs, "private"), 404, "NotFoundError")
    assert_error(delete(theirs, "private"), 404, "NotFoundError")
    assert_error(save(theirs, session_id=str(session.id), output_file="stolen"), 404, "NotFoundError")
    listed = assert_ok(theirs.get("/inference/sessions"))["data"]
    assert listed["total_count"] == 0 and listed["sessions"] == []
    assert (folder_of(data_dir, owner) / "private.json").is_file()


def test_a_file_naming_another_users_session_becomes_a_new_session(data_dir, make_user, client_for):
    owner, other = make_user(*ALL), make_user(*ALL)
    session = arabic_session(owner)
    document = session_files.session_document(session)
    body = assert_ok(save(client_for(other), session_data=document, output_file="copy"))
    loaded = assert_ok(load(client_for(other), "copy"))
    assert body["session_id"] == str(session.id) and loaded["session_id"] != str(session.id)
    assert ChatSession.objects.get(id=loaded["session_id"]).owner == other
    assert [m.content for m in session.messages.all()] == [QUESTION, ANSWER]


VALID = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"  \n",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]})
        .encode()[:30],
        b"[1, 2]",
        b'"text"',
        b'{"messages": [{"role": "robot", "content": "x"}]}',
        b'{"messages": [{"role": "user", "content": 5}]}',
        b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}',
        b'{"messages": [{"role": "user", "content": "x", "stats": {"a": {"b": 1}}}]}',
        b'{"messages": [{"role": "user", "content": "x", "stats": {"a": NaN}}]}',
        b'{"messages": "x"}',
        b'{"messages": [], "colour": 1}',
        b"[" * 200_000 + b"]" * 200_000,
        b"\xff\xfe{}",
    ],
)
def test_bad_files_are_refused_on_load(data_dir, files_user, content):
    user, client = files_user
    folder = folder_of(data_dir, user)
    folder.mkdir(parents=True)
    (folder / "bad.json").write_bytes(content)
    assert_error(load(client, "bad"), 400, "ValidationError")
    assert ChatSession.objects.filter(owner=user).count() == 0


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1" + "0" * 400])
def test_a_number_storage_cannot_hold_is_refused_on_load_naming_where_it_is(data_dir, files_user, number):
    user, client = files_user
    folder = folder_of(data_dir, user)
    folder.mkdir(parents=True)
    (folder / "bad.json").write_text('{"messages": [{"role": "user", "content": "x", "stats": {"n": %s}}]}' % number)
    error = assert_error(load(client, "bad"), 400, "ValidationError")
    assert error["error_message"].startswith("input_file: messages[0].stats.n: ")
    assert ChatSession.objects.filter(owner=user).count() == 0


def test_an_oversized_file_is_refused_on_load(data_dir, files_user, settings):
    user, client = files_user
    settings.SESSION_FILE_MAX_BYTES = 1000
    folder = folder_of(data_dir, user)
    folder.mkdir(parents=True)
    (folder / "big.json").write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}))
    error = assert_error(load(client, "big"), 400, "ValidationError")
    assert "1000 bytes" in error["error_message"]


def test_a_missing_file_answers_404(data_dir, files_user):
    assert_error(load(files_user[1], "nothing-here"), 404, "NotFoundError")
    assert_error(delete(files_user[1], "nothing-here"), 404, "NotFoundError")


def test_session_data_is_saved_after_schema_validation(data_dir, files_user):
    user, client = files_user
    bad = {"messages": [{"role": "robot", "content": "x"}]}
    error = assert_error(save(client, session_data=bad, output_file="bad"), 400, "ValidationError")
    assert "messages[0].role" in error["error_message"]
    assert not folder_of(data_dir, user).exists() or not list(folder_of(data_dir, user).iterdir())
    body = assert_ok(save(client, session_data={"title": "عنوان", **VALID}, output_file="given"))
    written = json.loads((folder_of(data_dir, user) / "given.json").read_text())
    assert written["title"] == "عنوان" and written["messages"][0]["content"] == "hi"
    assert written["session_id"] == body["session_id"]


def test_save_needs_a_session_id_or_session_data(data_dir, files_user):
    assert_error(save(files_user[1], output_file="x"), 400, "ValidationError")


def test_the_list_shows_database_sessions_then_files_paginated(data_dir, files_user):
    user, client = files_user
    sessions = [arabic_session(user) for _ in range(2)]
    for index, session in enumerate(sessions + [sessions[0]]):
        assert_ok(save(client, session_id=str(session.id), output_file=f"file{index}"))
    first = assert_ok(client.get("/inference/sessions?limit=2"))["data"]
    assert first["total_count"] == 5 and first["database_count"] == 2 and first["file_count"] == 3
    assert [s["source"] for s in first["sessions"]] == ["database", "database"]
    assert all(s["message_count"] == 2 for s in first["sessions"])
    rest = assert_ok(client.get("/inference/sessions?limit=10&offset=2"))["data"]["sessions"]
    assert sorted(s["name"] for s in rest) == ["file0.json", "file1.json", "file2.json"]
    for entry in rest:
        assert entry["size_bytes"] == (folder_of(data_dir, user) / entry["name"]).stat().st_size
        assert entry["message_count"] == 2 and entry["valid"] is True
    assert_error(client.get("/inference/sessions?limit=0"), 400, "ValidationError")


def test_delete_removes_the_file_and_with_the_flag_the_database_session(data_dir, files_user):
    user, client = files_user
    session = arabic_session(user)
    assert_ok(save(client, session_id=str(session.id), output_file="one"))
    assert_ok(save(client, session_id=str(session.id), output_file="two"))
    body = assert_ok(delete(client, "one"))["data"]
    assert body["file_deleted"] is True and body["database_session_deleted"] is False
    assert ChatSession.objects.filter(id=session.id).exists()
    session_id = str(session.id)
    body = assert_ok(delete(client, "two.json", delete_database_session="true"))["data"]
    assert body["database_session_deleted"] is True and body["session_id"] == session_id
    assert not ChatSession.objects.filter(id=session_id).exists()
    assert list(folder_of(data_dir, user).iterdir()) == []


@pytest.mark.parametrize(
    "permission,call",
    [
        ("session_save", lambda c, sid: save(c, session_id=sid, output_file="m")),
        ("session_load", lambda c, sid: load(c, "m")),
        ("session_load", lambda c, sid: c.get("/inference/sessions")),
        ("session_delete", lambda c, sid: delete(c, "m")),
    ],
)
def test_each_route_needs_authentication_and_its_permission(data_dir, anon, make_user, client_for, permission,
                                                            call):
    owner = make_user(*ALL)
    session = arabic_session(owner)
    assert_ok(save(client_for(owner), session_id=str(session.id), output_file="m"))
    assert_error(call(anon, str(session.id)), 401, "AuthenticationError")
    others = [p for p in ALL + ("chat",) if p != permission]
    assert_error(call(client_for(make_user(*others)), str(session.id)), 403, "PermissionDeniedError")
    # The owner's own client holds every session permission.
    assert_ok(call(client_for(owner), str(session.id)))
