"""Model aliases: one name space with models, resolved by every chat route, access checked on the target."""

from __future__ import annotations

import anthropic
import openai
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from beautyai_site.api import errors
from inference_app.models import ChatSession, UsageRecord
from models_app import services
from models_app.models import Alias, ModelConfig

MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "Name the capital city of France."}]


@pytest.mark.django_db
def test_an_alias_cannot_take_a_model_name_a_reserved_name_or_its_target_as_fallback(registry):
    alpha, beta = registry["alpha"], registry["beta"]
    for name in ("alpha", "default", "Default"):
        with pytest.raises(ValidationError) as caught:
            Alias(name=name, target=alpha).full_clean()
        assert "name" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        Alias(name="fast", target=alpha, fallback=alpha).full_clean()
    assert "fallback" in caught.value.message_dict
    Alias(name="fast", target=alpha, fallback=beta).full_clean()


@pytest.mark.django_db
def test_a_model_cannot_take_an_aliass_name(registry):
    Alias.objects.create(name="fast", target=registry["alpha"])
    with pytest.raises(errors.ConflictError):
        services.registry_add(name="fast", config={"model_id": "org/fast", "engine": "transformers"})
    with pytest.raises(ValidationError) as caught:
        ModelConfig(name="fast", model_id="org/fast", engine="transformers").full_clean()
    assert "name" in caught.value.message_dict


@pytest.mark.django_db
def test_resolving_a_name_gives_the_target_and_the_alias(registry):
    Alias.objects.create(name="fast", target=registry["beta"])
    assert services.resolve_model_name("fast") == ("beta", "fast")
    assert services.resolve_model_name("alpha") == ("alpha", None)
    assert services.resolve_model_name("nothing") == ("nothing", None)


@pytest.mark.django_db
def test_access_is_checked_on_the_target_and_errors_name_only_the_alias(registry, make_user, grant):
    Alias.objects.create(name="fast", target=registry["beta"])
    stranger = make_user()
    with pytest.raises(errors.ModelNotFoundError) as caught:
        services.model_resolve_for_user(user=stranger, name="fast", permission="chat")
    assert "fast" in caught.value.message and "beta" not in caught.value.message
    reader = make_user()
    grant(reader, "model_read", registry["beta"])
    with pytest.raises(errors.PermissionDeniedError):
        services.model_resolve_for_user(user=reader, name="fast", permission="chat")
    grant(reader, "chat", registry["beta"])
    reader = get_user_model().objects.get(pk=reader.pk)  # the next request's user: grants are read once per user object
    model, alias = services.model_resolve_for_user(user=reader, name="fast", permission="chat")
    assert (model.name, alias.name) == ("beta", "fast")


@pytest.mark.django_db
def test_v1_models_lists_the_aliases_of_readable_models_only(registry, bundled_model, make_user, grant, client_for):
    Alias.objects.create(name="fast", target=bundled_model)
    Alias.objects.create(name="hidden-alias", target=registry["alpha"])
    user = make_user()
    grant(user, "model_read", bundled_model)
    client = client_for(user)
    listed = [entry["id"] for entry in client.get("/v1/models").json()["data"]]
    assert listed == ["fast", MODEL]
    assert client.get("/v1/models/fast").json()["id"] == "fast"
    assert client.get("/v1/models/hidden-alias").status_code == 404


live = pytest.mark.django_db(transaction=True)


@live
def test_chat_routes_resolve_an_alias_and_usage_records_both_names(live_server_url, loaded_model, make_user,
                                                                   client_for):
    Alias.objects.create(name="tiny", target=loaded_model)
    user = make_user("chat", "model_load")  # the live server loads the model on demand
    client = client_for(user)
    oai = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=client.raw_key, max_retries=0, timeout=120)
    reply = oai.chat.completions.create(model="tiny", messages=FRANCE, temperature=0, max_tokens=8)
    assert reply.model == MODEL
    claude = anthropic.Anthropic(base_url=live_server_url, api_key=client.raw_key, max_retries=0, timeout=120)
    message = claude.messages.create(model="tiny", max_tokens=8, messages=FRANCE)
    rest = client.post("/inference/chat", {"model_name": "tiny", "message": FRANCE[0]["content"],
                                           "generation_config": {"max_tokens": 8}}, format="json")
    assert rest.status_code == 200, rest.content
    sessions = [reply.model_extra["session_id"], message.model_extra["session_id"], rest.json()["session_id"]]
    assert {ChatSession.objects.get(id=s).model_name for s in sessions} == {MODEL}
    records = UsageRecord.objects.filter(user=user)
    assert sorted(records.values_list("transport", flat=True)) == ["anthropic", "openai", "rest"]
    assert set(records.values_list("model_name", "requested_name")) == {(MODEL, "tiny")}
    client.post("/inference/chat", {"model_name": MODEL, "message": "Hi", "generation_config": {"max_tokens": 2}},
                format="json")
    assert UsageRecord.objects.get(user=user, requested_name="").model_name == MODEL


@pytest.mark.django_db
def test_the_fallback_serves_when_the_target_cannot_be_loaded(registry, loaded_model, make_user, client_for, grant):
    # alpha's files are not on this machine: loading it is refused, so the fallback answers.
    Alias.objects.create(name="smart", target=registry["alpha"], fallback=loaded_model)
    user = make_user("chat", "model_load")
    response = client_for(user).post("/inference/chat", {"model_name": "smart", "message": "Hi",
                                                         "generation_config": {"max_tokens": 2}}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["model_name"] == MODEL
    record = UsageRecord.objects.get(user=user)
    assert (record.model_name, record.requested_name) == (MODEL, "smart")


@pytest.mark.django_db
def test_without_chat_on_the_fallback_the_targets_own_error_stands(registry, loaded_model, make_user, client_for,
                                                                     grant):
    Alias.objects.create(name="smart", target=registry["alpha"], fallback=loaded_model)
    user = make_user()
    grant(user, "chat", registry["alpha"])
    response = client_for(user).post("/inference/chat", {"model_name": "smart", "message": "Hi"}, format="json")
    assert response.status_code == 409 and "not loaded" in response.json()["error_message"]
    assert not UsageRecord.objects.filter(user=user).exists()
