"""Registry selectors: the reads by name every chat makes give what the ORM gives, with SQL written once."""

from __future__ import annotations

import pytest
from django.db.models.sql.compiler import SQLCompiler

from beautyai_site.api import errors
from models_app import services
from models_app.models import Alias, ModelConfig


def _fields(obj) -> dict:
    return {field.attname: getattr(obj, field.attname) for field in type(obj)._meta.concrete_fields}


@pytest.mark.django_db
def test_a_model_an_alias_and_the_default_come_back_as_the_orm_builds_them(registry, make_user):
    admin = make_user(superuser=True)
    ModelConfig.objects.filter(name="beta").update(parameters={"n_ctx": 2048, "filename": "b.gguf"}, top_p=0.9)
    beta = ModelConfig.objects.get(name="beta")
    Alias.objects.create(name="fast", target=beta, fallback=registry["alpha"], description="quick")

    model = services.model_get_for_user(user=admin, name="beta")
    assert _fields(model) == _fields(beta) and not model._state.adding and model._state.db == "default"
    target, alias = services.model_resolve_for_user(user=admin, name="fast", permission="chat")
    assert _fields(target) == _fields(beta) and alias.target is target
    assert _fields(alias) == _fields(Alias.objects.get(name="fast")) and alias.fallback == registry["alpha"]
    assert services.model_resolve_for_user(user=admin, name="alpha", permission="chat") == (registry["alpha"], None)
    assert _fields(services.default_model()) == _fields(registry["alpha"])
    ModelConfig.objects.update(is_default=False)
    assert services.default_model() is None


@pytest.mark.django_db
def test_names_are_matched_exactly_and_a_missing_one_names_what_was_asked(registry, make_user):
    admin = make_user(superuser=True)
    Alias.objects.create(name="fast", target=registry["beta"])
    for name in ("Beta", "beta ", "FAST", "nothing"):
        with pytest.raises(errors.ModelNotFoundError, match=f"'{name}'"):
            services.model_resolve_for_user(user=admin, name=name, permission="chat")


@pytest.mark.django_db
def test_the_reads_by_name_write_their_sql_only_the_first_time(registry, make_user, monkeypatch):
    admin = make_user(superuser=True)
    Alias.objects.create(name="fast", target=registry["beta"])
    services.model_resolve_for_user(user=admin, name="fast", permission="chat")
    services.default_model()
    written = []
    as_sql = SQLCompiler.as_sql
    monkeypatch.setattr(SQLCompiler, "as_sql", lambda self, *a, **k: written.append(1) or as_sql(self, *a, **k))

    assert services.model_resolve_for_user(user=admin, name="alpha", permission="chat")[0].name == "alpha"
    assert services.model_resolve_for_user(user=admin, name="fast", permission="chat")[1].name == "fast"
    assert services.model_get_for_user(user=admin, name="beta").name == "beta"
    assert services.default_model().name == "alpha"
    assert written == []
