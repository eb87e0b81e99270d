"""Embeddings through real runners: the bundled all-MiniLM-L6-v2 on transformers (its safetensors folder)
and on llama.cpp (the same weights written as a GGUF by tests/model_files.py)."""

from __future__ import annotations

import pytest

from models_app.serving.engines.contract import EngineError, GenerationParams, LoadSpec, PromptError
from models_app.serving.engines.bundled import bundled_embedding_path
from models_app.serving.manager import EngineManager
from tests.engines.conftest import FRANCE, llama_spec
from tests.model_files import bert_gguf

pytestmark = pytest.mark.slow

ENGINES = ["minilm-hf", "minilm-gguf"]
SENTENCE = "A man is playing a guitar on stage."
PARAPHRASE = "Someone is performing music on a guitar in front of an audience."
UNRELATED = "The quarterly tax report must be filed before the end of March."


@pytest.fixture(scope="module")
def embedders(tmp_path_factory):
    """One manager holding the model on both engines; these tests only read, so they share it."""
    folder = bundled_embedding_path()
    gguf = bert_gguf(folder, tmp_path_factory.mktemp("bert") / "all-minilm-l6-v2-f32.gguf")
    manager = EngineManager(memory_budget_mb=16_000, max_loaded_models=4, default_keep_alive_s=600,
                            load_timeout_s=240, shutdown_timeout_s=10)
    manager.load(LoadSpec(name="minilm-hf", engine="transformers", model_id=str(folder), dtype="float32",
                          parameters={"task": "embed"}))
    manager.load(LoadSpec(name="minilm-gguf", engine="llama.cpp", model_id=str(gguf), quantization="F32",
                          parameters={"task": "embed"}))
    yield manager
    manager.shutdown()


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_embedding_path() / "tokenizer.json"))
    # The file pads and truncates to 128 tokens, for sentence-transformers' batches; counting needs neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def cosine(a, b) -> float:
    return sum(x * y for x, y in zip(a, b))  # the vectors are unit length


def close(a, b, tolerance=1e-4) -> bool:
    return len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < tolerance


@pytest.mark.parametrize("name", ENGINES)
def test_each_input_gets_one_unit_vector_of_the_models_width(embedders, name):
    vectors, _ = embedders.embed(name, [SENTENCE, PARAPHRASE, UNRELATED])
    assert len(vectors) == 3
    assert all(len(vector) == 384 for vector in vectors)
    assert all(abs(sum(x * x for x in vector) - 1.0) < 1e-5 for vector in vectors)


@pytest.mark.parametrize("name", ENGINES)
def test_a_text_embeds_the_same_every_time_alone_or_among_others(embedders, name):
    alone, _ = embedders.embed(name, [SENTENCE])
    again, _ = embedders.embed(name, [SENTENCE])
    among, _ = embedders.embed(name, [UNRELATED, SENTENCE, "short"])
    assert alone == again
    assert close(alone[0], among[1])


@pytest.mark.parametrize("name", ENGINES)
def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedders, name):
    sentence, paraphrase, unrelated = embedders.embed(name, [SENTENCE, PARAPHRASE, UNRELATED])[0]
    assert cosine(sentence, paraphrase) > cosine(sentence, unrelated) + 0.3


def test_both_engines_give_the_same_vector_for_a_text(embedders):
    from_transformers = embedders.embed("minilm-hf", [SENTENCE, UNRELATED])[0]
    from_llama_cpp = embedders.embed("minilm-gguf", [SENTENCE, UNRELATED])[0]
    for a, b in zip(from_transformers, from_llama_cpp):
        assert cosine(a, b) > 0.999


@pytest.mark.parametrize("name", ENGINES)
def test_prompt_tokens_are_the_models_own_tokens_with_its_special_tokens(embedders, tokenizer, name):
    _, tokens = embedders.embed(name, [SENTENCE, UNRELATED])
    expected = sum(len(tokenizer.encode(text).ids) for text in (SENTENCE, UNRELATED))  # [CLS] … [SEP] each
    assert tokens == expected


@pytest.mark.parametrize("name", ENGINES)
def test_a_token_list_embeds_exactly_like_its_text(embedders, tokenizer, name):
    ids = tokenizer.encode(SENTENCE, add_special_tokens=False).ids
    from_text, text_tokens = embedders.embed(name, [SENTENCE])
    from_ids, id_tokens = embedders.embed(name, [ids])
    assert close(from_text[0], from_ids[0], 1e-6)
    assert id_tokens == text_tokens == len(ids) + 2


@pytest.mark.parametrize("name", ENGINES)
def test_special_token_text_typed_by_a_user_stays_text(embedders, tokenizer, name):
    typed = "[CLS] [SEP] hello"
    _, tokens = embedders.embed(name, [typed])
    assert tokens == len(tokenizer.encode("[ CLS ] [ SEP ] hello").ids)


@pytest.mark.parametrize("name", ENGINES)
def test_an_input_longer_than_the_context_is_refused_not_truncated(embedders, name):
    with pytest.raises(PromptError, match=r"input\[1\] is \d+ tokens; this model takes at most 512"):
        embedders.embed(name, ["fine", "word " * 600])


@pytest.mark.parametrize("name", ENGINES)
@pytest.mark.parametrize("ids", [[30522], [5, -1], [2**40]])
def test_a_token_id_outside_the_vocabulary_is_refused(embedders, name, ids):
    with pytest.raises(PromptError, match=r"input\[0\]: token ids must be integers from 0 to 30521"):
        embedders.embed(name, [ids])


@pytest.mark.parametrize("name", ENGINES)
def test_an_embedding_model_refuses_to_generate(embedders, name):
    events = list(embedders.generate(name, FRANCE, GenerationParams(max_tokens=4, temperature=0)))
    assert events[-1].kind == "error" and "embedding model" in events[-1].message
    with pytest.raises(PromptError, match="embedding model"):
        embedders.count_tokens(name, FRANCE)
    assert embedders.embed(name, ["still serving"])[0]


def test_a_chat_model_refuses_to_embed(embedders, gguf_path):
    embedders.load(llama_spec(gguf_path, name="smol-chat"))
    try:
        with pytest.raises(EngineError, match="not loaded for embeddings"):
            embedders.embed("smol-chat", [SENTENCE])
    finally:
        embedders.unload("smol-chat")
