"""/v1/embeddings: the official openai client against the live server on the bundled all-MiniLM-L6-v2
(registered as embed-small), and the route's refusals in OpenAI's error shape."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest

from inference_app.models import ChatSession, UsageRecord
from models_app.bootstrap import BUNDLED_EMBEDDING, bundled_entries
from models_app.serving.engines.bundled import bundled_embedding_path

CHAT_MODEL = "smollm2-135m-instruct"
SENTENCE = "A man is playing a guitar on stage."
PARAPHRASE = "Someone is performing music on a guitar in front of an audience."
UNRELATED = "The quarterly tax report must be filed before the end of March."
live = pytest.mark.django_db(transaction=True)
in_process = pytest.mark.django_db


@pytest.fixture
def embed_small(db):
    from models_app import services

    return services.registry_add(name=BUNDLED_EMBEDDING, config=bundled_entries()[BUNDLED_EMBEDDING])


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_embedding_path() / "tokenizer.json"))
    # The file pads and truncates to 128 tokens, for sentence-transformers' batches; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@pytest.fixture
def oai(live_server_url, embed_small, bundled_model, make_user, client_for):
    """An openai client for a user who may read, chat with and load models; the server loads embed-small on demand."""
    user = make_user("model_read", "chat", "model_load")
    key = client_for(user).raw_key
    client = openai.OpenAI(base_url=f"{live_server_url}/v1", api_key=key, max_retries=0, timeout=180)
    client.user = user
    client.key = key
    return client


def vectors_of(response) -> list[list[float]]:
    assert response.object == "list" and response.model == BUNDLED_EMBEDDING
    assert [item.index for item in response.data] == list(range(len(response.data)))
    return [item.embedding for item in response.data]


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@live
def test_base64_the_clients_default_decodes_to_the_float_vectors(oai, live_server_url):
    as_base64 = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=[SENTENCE, UNRELATED]))
    as_float = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=[SENTENCE, UNRELATED],
                                                encoding_format="float"))
    assert [len(v) for v in as_base64] == [len(v) for v in as_float] == [384, 384]
    for a, b in zip(as_base64, as_float):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-6  # float32 against the JSON float
    raw = httpx.post(f"{live_server_url}/v1/embeddings", headers={"Authorization": f"Bearer {oai.key}"},
                     json={"model": BUNDLED_EMBEDDING, "input": SENTENCE, "encoding_format": "base64"}, timeout=60)
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(as_float[0], abs=1e-6)


@live
def test_embeddings_are_deterministic_unit_vectors_and_a_paraphrase_is_closer(oai):
    first = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=[SENTENCE, PARAPHRASE, UNRELATED],
                                             encoding_format="float"))
    again = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=SENTENCE, encoding_format="float"))
    assert max(abs(x - y) for x, y in zip(first[0], again[0])) < 1e-5
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-5 for v in first)
    sentence, paraphrase, unrelated = first
    assert cosine(sentence, paraphrase) > cosine(sentence, unrelated) + 0.3


@live
def test_token_arrays_embed_like_their_text(oai, tokenizer):
    ids = tokenizer.encode(SENTENCE, add_special_tokens=False).ids
    from_text = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=SENTENCE, encoding_format="float"))
    from_ids = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=ids, encoding_format="float"))
    from_lists = vectors_of(oai.embeddings.create(model=BUNDLED_EMBEDDING, input=[ids, ids], encoding_format="float"))
    assert len(from_lists) == 2
    for vector in (from_ids[0], *from_lists):
        assert max(abs(x - y) for x, y in zip(from_text[0], vector)) < 1e-5


@live
def test_usage_counts_the_models_tokens_and_is_recorded(oai, tokenizer):
    response = oai.embeddings.create(model=BUNDLED_EMBEDDING, input=[SENTENCE, UNRELATED])
    expected = sum(len(tokenizer.encode(text).ids) for text in (SENTENCE, UNRELATED))
    assert response.usage.prompt_tokens == response.usage.total_tokens == expected
    record = UsageRecord.objects.get(user=oai.user)
    assert (record.model_name, record.transport, record.prompt_tokens, record.completion_tokens) == (
        BUNDLED_EMBEDDING, "openai", expected, 0)


@live
def test_dimensions_shorten_and_renormalise_on_a_matryoshka_model(oai):
    from models_app import services

    config = bundled_entries()[BUNDLED_EMBEDDING]
    services.registry_add(name="embed-matryoshka",
                          config={**config, "parameters": {**config["parameters"], "matryoshka": True}})
    full = oai.embeddings.create(model="embed-matryoshka", input=SENTENCE, encoding_format="float").data[0].embedding
    short = oai.embeddings.create(model="embed-matryoshka", input=SENTENCE, dimensions=64).data[0].embedding
    norm = sum(x * x for x in full[:64]) ** 0.5
    assert len(short) == 64
    assert short == pytest.approx([x / norm for x in full[:64]], abs=1e-5)
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model="embed-matryoshka", input=SENTENCE, dimensions=385)
    assert caught.value.body["param"] == "dimensions"


@live
@pytest.mark.parametrize("bad_input", [[[30522]], [[1, 2**40]], "word " * 600])
def test_input_the_model_cannot_take_is_a_400_naming_input(oai, bad_input):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.embeddings.create(model=BUNDLED_EMBEDDING, input=bad_input)
    assert caught.value.body["param"] == "input"
    assert not UsageRecord.objects.exists()


WEATHER_TOOL = {"type": "function", "function": {"name": "weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@live
@pytest.mark.parametrize("extra", [{}, {"tools": [WEATHER_TOOL]}, {"tools": [WEATHER_TOOL], "tool_choice": "required"}],
                         ids=["plain", "with-tools", "forced-tool"])
def test_a_chat_to_the_embedding_model_is_a_400_naming_model_and_stores_nothing(oai, extra):
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=BUNDLED_EMBEDDING, messages=[{"role": "user", "content": "Hi"}], **extra)
    assert caught.value.body["param"] == "model" and "embedding model" in caught.value.body["message"]
    assert not ChatSession.objects.exists() and not UsageRecord.objects.exists()


# In-process: refusals that come before any model is loaded -----------------------------------------

@in_process
@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": SENTENCE}, "model"),
        ({"model": BUNDLED_EMBEDDING}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": ""}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": []}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": [[]]}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": ["fine", ""]}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": ["x"] * 257}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": [1, -2]}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": [[1], "x", 3]}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": [True]}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": {"text": "x"}}, "input"),
        ({"model": BUNDLED_EMBEDDING, "input": SENTENCE, "encoding_format": "int8"}, "encoding_format"),
        ({"model": BUNDLED_EMBEDDING, "input": SENTENCE, "dimensions": 0}, "dimensions"),
        ({"model": BUNDLED_EMBEDDING, "input": SENTENCE, "dimensions": 64}, "dimensions"),
        ({"model": BUNDLED_EMBEDDING, "input": SENTENCE, "truncate": True}, "truncate"),
        ({"model": CHAT_MODEL, "input": SENTENCE}, "model"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(api_as, embed_small, bundled_model, body, param):
    response = api_as("chat", "model_load").post("/v1/embeddings", body, format="json")
    assert response.status_code == 400, response.content
    assert error_of(response)["param"] == param
    assert not UsageRecord.objects.exists()


@in_process
def test_the_route_answers_401_without_a_key_403_without_chat_and_404_for_a_hidden_model(
        anon, api_as, make_user, client_for, grant, embed_small, bundled_model):
    body = {"model": BUNDLED_EMBEDDING, "input": SENTENCE}
    assert error_of(anon.post("/v1/embeddings", body, format="json"))["type"] == "authentication_error"
    forbidden = api_as("model_read").post("/v1/embeddings", body, format="json")
    assert forbidden.status_code == 403 and error_of(forbidden)["type"] == "permission_error"
    only_chat_model = make_user()
    grant(only_chat_model, "chat", bundled_model)
    hidden = client_for(only_chat_model).post("/v1/embeddings", body, format="json")
    assert hidden.status_code == 404 and error_of(hidden)["code"] == "model_not_found"


@in_process
@pytest.mark.parametrize("path,field", [("/inference/chat", "model_name"), ("/inference/test", "model_name")])
def test_rest_generations_on_the_embedding_model_are_400s_naming_the_model(api_as, embed_small, path, field):
    client = api_as("chat", "test", "model_load")
    body = {"model_name": BUNDLED_EMBEDDING, "message": "Hi"} if path.endswith("chat") else \
        {"model_name": BUNDLED_EMBEDDING, "prompt": "Hi"}
    response = client.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error_details"]["fields"] == {field: [f"'{BUNDLED_EMBEDDING}' is an embedding model; "
                                                                  "use /v1/embeddings"]}
    assert not ChatSession.objects.exists()


@in_process
def test_the_model_routes_show_each_models_task(api_as, embed_small, bundled_model):
    client = api_as("model_read")
    listed = {m["model_name"]: m["task"] for m in client.get("/models/").json()["models"]}
    assert listed == {BUNDLED_EMBEDDING: "embed", CHAT_MODEL: "generate"}
    assert client.get(f"/models/{BUNDLED_EMBEDDING}").json()["data"]["task"] == "embed"
    assert client.get(f"/models/{CHAT_MODEL}/status").json()["data"]["task"] == "generate"
