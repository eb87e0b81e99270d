"""ReusedQuery: SQL written once per thread, rows exactly as ``.values()`` gives them."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime

import pytest
from django.db import connections
from django.db.models.fields.json import KT
from django.db.models.sql.compiler import SQLCompiler

from beautyai_site.sql import ReusedQuery
from inference_app.models import ChatSession
from models_app.models import Alias, ModelConfig

pytestmark = pytest.mark.django_db


def by_engine(engine):
    return ModelConfig.objects.filter(engine=engine).order_by("name").values(
        "name", "is_default", "created_at", task=KT("parameters__task"))


@pytest.fixture
def entries(db):
    ModelConfig.objects.create(name="a", model_id="org/a", engine="transformers", is_default=True,
                               parameters={"task": "embed"})
    ModelConfig.objects.create(name="b", model_id="org/b", engine="transformers")
    ModelConfig.objects.create(name="c", model_id="org/c", engine="llama.cpp")


def test_it_answers_each_call_with_that_calls_values(entries):
    query = ReusedQuery(by_engine, engine=str)
    assert [r["name"] for r in query.rows(engine="transformers")] == ["a", "b"]
    assert [r["name"] for r in query.rows(engine="llama.cpp")] == ["c"]
    assert query.rows(engine="vllm") == []


def test_its_rows_are_what_values_gives_converters_included(entries):
    rows = ReusedQuery(by_engine, engine=str).rows(engine="transformers")
    assert rows == list(by_engine("transformers"))
    assert rows[0]["is_default"] is True and rows[0]["task"] == "embed"
    assert isinstance(rows[0]["created_at"], datetime) and rows[0]["created_at"].tzinfo is not None


def test_it_slices_as_the_queryset_would(entries):
    query = ReusedQuery(lambda: ModelConfig.objects.order_by("name").values("name"))
    assert query.rows(offset=1, limit=1) == list(ModelConfig.objects.order_by("name").values("name")[1:2])
    assert query.rows(offset=0, limit=100) == list(ModelConfig.objects.order_by("name").values("name")[0:100])
    assert query.rows(offset=5, limit=10) == []


def test_it_writes_the_sql_once_per_thread(entries, monkeypatch):
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))
    query = ReusedQuery(by_engine, engine=str)
    for engine in ("transformers", "llama.cpp", "transformers"):
        query.rows(engine=engine)
    assert len(written) == 1
    # Another thread writes its own: the converters belong to that thread's connection.
    def in_another_thread():
        try:
            query.rows(engine="llama.cpp")
        finally:
            connections.close_all()

    thread = threading.Thread(target=in_another_thread)
    thread.start()
    thread.join()
    assert len(written) == 2


def test_it_refuses_a_placeholder_the_query_does_not_use(entries):
    query = ReusedQuery(lambda engine: ModelConfig.objects.values("name"), engine=str)
    with pytest.raises(ValueError, match="engine"):
        query.rows(engine="transformers")


def test_it_refuses_a_sliced_queryset(entries):
    with pytest.raises(ValueError, match="slices"):
        ReusedQuery(lambda: ModelConfig.objects.values("name")[:2]).rows()


def aliases_of(target_id, name):
    # A foreign key and a string, each once; the ORM's own SQL for it names the target by id.
    return Alias.objects.filter(target=target_id).exclude(name=name).values("name", "target__name", "fallback_id")


@pytest.fixture
def aliases(entries):
    a, b, c = ModelConfig.objects.order_by("name")
    Alias.objects.create(name="first", target=a, fallback=c)
    Alias.objects.create(name="other", target=a)
    Alias.objects.create(name="second", target=b)
    return a, b, c


def test_an_int_placeholder_gives_the_rows_the_orm_gives(aliases):
    query = ReusedQuery(aliases_of, target_id=int, name=str)
    for entry in aliases:
        for name in ("first", "nothing"):
            assert query.rows(target_id=entry.pk, name=name) == list(aliases_of(entry.pk, name))
    assert [r["name"] for r in query.rows(target_id=aliases[0].pk, name="other")] == ["first"]
    assert query.rows(target_id=10**9, name="first") == []


def test_a_query_with_an_int_placeholder_is_written_once(aliases, monkeypatch):
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))
    query = ReusedQuery(aliases_of, target_id=int, name=str)
    found = [len(query.rows(target_id=entry.pk, name="other")) for entry in aliases]
    assert found == [1, 1, 0] and len(written) == 1


@pytest.mark.parametrize("values", [
    {"target_id": "1", "name": "first"},  # a key as text
    {"target_id": 1.0, "name": "first"},
    {"target_id": True, "name": "first"},  # an int to isinstance, never a key
    {"target_id": 1, "name": 1},
    {"target_id": 1, "name": None},
    {"target_id": 1},  # one missing
    {"target_id": 1, "name": "first", "engine": "x"},  # one it does not have
])
def test_a_value_of_another_type_is_refused(aliases, values):
    with pytest.raises(TypeError):
        ReusedQuery(aliases_of, target_id=int, name=str).rows(**values)


def test_a_placeholder_type_is_str_int_or_uuid():
    with pytest.raises(TypeError, match="str, int or uuid.UUID"):
        ReusedQuery(aliases_of, target_id=float, name=str)


def test_an_int_placeholder_compared_as_text_is_refused(entries):
    # A CharField turns the placeholder into "-2147483648": not the value asked for, so not found.
    query = ReusedQuery(lambda engine: ModelConfig.objects.filter(engine=engine).values("name"), engine=int)
    with pytest.raises(ValueError, match="engine"):
        query.rows(engine=1)


def sessions_of(id, owner_id):
    # A UUID key (32 hex digits as SQLite stores it, a uuid on PostgreSQL) and an int, with a join.
    return ChatSession.objects.filter(id=id, owner_id=owner_id).order_by().values("id", "title", "model__name")


@pytest.fixture
def sessions(entries, django_user_model):
    owner = django_user_model.objects.create(username="owner")
    model = ModelConfig.objects.get(name="a")
    return owner, [ChatSession.objects.create(owner=owner, model=model, model_name="a", title=f"t{n}")
                   for n in range(3)]


def test_a_uuid_placeholder_gives_the_rows_the_orm_gives(sessions, monkeypatch):
    owner, chats = sessions
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))
    query = ReusedQuery(sessions_of, id=uuid.UUID, owner_id=int)
    for chat in chats:
        assert query.rows(id=chat.id, owner_id=owner.pk) == [{"id": chat.id, "title": chat.title, "model__name": "a"}]
    assert query.rows(id=uuid.uuid4(), owner_id=owner.pk) == []
    assert query.rows(id=chats[0].id, owner_id=owner.pk + 1) == []
    assert len(written) == 1


@pytest.mark.parametrize("value", [lambda chat: str(chat.id), lambda chat: chat.id.hex, lambda chat: None])
def test_a_uuid_placeholder_takes_a_uuid_only(sessions, value):
    owner, chats = sessions
    with pytest.raises(TypeError, match="UUID"):
        ReusedQuery(sessions_of, id=uuid.UUID, owner_id=int).rows(id=value(chats[0]), owner_id=owner.pk)
