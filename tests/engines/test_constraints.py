"""Constrained decoding on the engines: the reply is exactly prefix + schema-valid JSON + suffix."""

from __future__ import annotations

import json
import threading
import time

import jsonschema
import pytest

from models_app.serving.engines.contract import GenerationParams, LoadSpec
from models_app.serving.engines.constraints import (
    MAX_SCHEMA_BYTES,
    CompiledCache,
    ConstraintError,
    check_schema,
    json_value_closed,
    normalize_constraint,
)

from .conftest import collect, llama_spec

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 40}, "country": {"type": "string", "maxLength": 40}},
    "required": ["city", "country"],
    "additionalProperties": False,
}
ASK_CITY = [{"role": "user", "content": "What is the capital of France? Answer in JSON with city and country."}]
TOOL_CALL = {"schema": CITY, "prefix": "<tool_call>\n", "suffix": "\n</tool_call>"}


def _constrained(constraint, max_tokens=64, **kwargs) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0, constraint=constraint, **kwargs)


def _assert_wrapped_json(text: str, constraint: dict) -> dict:
    prefix, suffix = constraint.get("prefix", ""), constraint.get("suffix", "")
    assert text.startswith(prefix) and text.endswith(suffix), repr(text)
    value = json.loads(text[len(prefix):len(text) - len(suffix)])
    jsonschema.validate(value, constraint["schema"] or {"type": "object"})
    return value


# Checks (web process and runner) -------------------------------------------------------------

@pytest.mark.parametrize("keyword", ["minimum", "oneOf", "uniqueItems", "patternProperties", "not"])
def test_an_unsupported_keyword_is_refused_by_name(keyword):
    with pytest.raises(ConstraintError) as caught:
        check_schema({"type": "object", "properties": {"n": {"type": "integer", keyword: 1}}}, field="schema")
    assert caught.value.field == f"schema.properties.n.{keyword}"
    assert f"'{keyword}' is not supported" in str(caught.value)


def test_a_schema_over_the_size_bound_is_refused_naming_its_size():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}
    with pytest.raises(ConstraintError, match=f"too large .*at most {MAX_SCHEMA_BYTES}"):
        check_schema(big, field="schema")


def test_a_deeply_nested_schema_is_refused():
    schema = {"type": "string"}
    for _ in range(40):
        schema = {"type": "array", "items": schema}
    with pytest.raises(ConstraintError, match="nested more than"):
        check_schema(schema, field="schema")


def test_refs_must_point_into_the_schemas_own_defs():
    with pytest.raises(ConstraintError) as caught:
        check_schema({"$ref": "https://example.com/schema.json"}, field="schema")
    assert caught.value.field == "schema.$ref"
    assert check_schema({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"}, field="schema")


def test_objects_with_properties_get_no_other_properties_unless_asked():
    normalized = check_schema({"type": "object", "properties": {"a": {"type": "string", "title": "A"}}},
                              field="schema")
    assert normalized == {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}


def test_required_names_must_be_defined_properties():
    with pytest.raises(ConstraintError, match="does not define: b"):
        check_schema({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}, field="schema")


def test_a_compile_that_outlasts_its_bound_is_an_error_and_is_not_tried_again():
    release = threading.Event()
    calls = []

    def slow(constraint):
        calls.append(constraint)
        release.wait(10)

    cache = CompiledCache(slow, timeout_s=0.2)
    try:
        started = time.monotonic()
        for _ in range(2):
            with pytest.raises(ConstraintError, match="longer than 0.2 s"):
                cache.get({"schema": None, "prefix": "", "suffix": ""})
        assert time.monotonic() - started < 2
        assert len(calls) == 1 and cache.hits == 1
    finally:
        release.set()


def test_the_cache_keeps_the_most_recently_used_entries():
    cache = CompiledCache(lambda c: object(), size=2)
    a, b, c = ({"schema": {"enum": [n]}} for n in "abc")
    first = cache.get(a)
    cache.get(b)
    assert cache.get(a) is first  # a is now the most recent; b goes when c arrives
    cache.get(c)
    assert cache.get(a) is first
    assert (cache.hits, cache.misses) == (2, 3)


def test_a_value_is_closed_once_the_suffix_follows_whole_json():
    constraint = normalize_constraint(TOOL_CALL)
    assert json_value_closed('<tool_call>\n{"a": "}"}\n</tool_call>', constraint)
    assert not json_value_closed('<tool_call>\n{"a": "\n</tool_call>', constraint)
    assert not json_value_closed("12", {"schema": None, "prefix": "", "suffix": ""})


# Engines ---------------------------------------------------------------------------------------

@pytest.fixture
def engine_spec(request, gguf_path):
    def build(case: str) -> LoadSpec:
        if case == "llama.cpp":
            return llama_spec(gguf_path, name=case)
        folder = request.getfixturevalue("safetensors_dir")
        batch = {"transformers-batched": 2}.get(case, 1)
        return LoadSpec(name=case, engine="transformers", model_id=str(folder),
                        parameters={"max_batch_size": batch})
    return build


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama.cpp", "transformers", "transformers-batched"])
def test_a_constrained_reply_is_the_prefix_then_schema_valid_json_then_the_suffix(manager, engine_spec, case):
    spec = engine_spec(case)
    manager.load(spec)

    text, _, final = collect(manager.generate(spec.name, ASK_CITY, _constrained(TOOL_CALL)))

    assert final.kind == "done", final.message
    value = _assert_wrapped_json(text, TOOL_CALL)
    assert set(value) == {"city", "country"}  # additionalProperties false: nothing else
    assert final.stats.finish_reason == "stop"
    # Free decoding of the same prompt is not JSON at all, so the grammar did the work.
    free, _, _ = collect(manager.generate(spec.name, ASK_CITY, GenerationParams(max_tokens=32, temperature=0)))
    assert not free.startswith("<tool_call>")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama.cpp", "transformers"])
def test_any_json_object_is_produced_when_the_schema_is_none(manager, engine_spec, case):
    spec = engine_spec(case)
    manager.load(spec)
    constraint = {"schema": None, "prefix": "", "suffix": ""}
    text, _, final = collect(manager.generate(spec.name, ASK_CITY, _constrained(constraint, max_tokens=96)))
    assert final.kind == "done", final.message
    assert final.stats.finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama.cpp", "transformers"])
def test_a_bad_schema_fails_only_its_own_request_and_the_runner_keeps_serving(manager, engine_spec, case):
    spec = engine_spec(case)
    info = manager.load(spec)
    # Bypasses the web process's checks, as a buggy caller would: the runner checks again.
    bad = {"schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3}}}}

    _, _, final = collect(manager.generate(spec.name, ASK_CITY, _constrained(bad)))

    assert final.kind == "error"
    assert "'minimum' is not supported" in final.message
    text, _, after = collect(manager.generate(spec.name, ASK_CITY, _constrained(TOOL_CALL)))
    assert after.kind == "done"
    _assert_wrapped_json(text, TOOL_CALL)
    assert manager.status(spec.name).pid == info.pid


@pytest.mark.slow
def test_llama_cpp_compiles_a_schema_once_and_reuses_it(gguf_path):
    from models_app.serving.engines.llama_cpp_engine import LlamaCppEngine

    engine = LlamaCppEngine()
    engine.load(llama_spec(gguf_path))
    try:
        for _ in range(2):
            items = list(engine.generate(ASK_CITY, _constrained(TOOL_CALL), lambda: False))
            _assert_wrapped_json("".join(items[:-1]), TOOL_CALL)
        assert (engine._grammars.misses, engine._grammars.hits) == (1, 1)
    finally:
        engine.close()


@pytest.mark.slow
def test_transformers_compiles_a_schema_once_and_reuses_it(safetensors_dir):
    from models_app.serving.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine()
    engine.load(LoadSpec(name="t", engine="transformers", model_id=str(safetensors_dir)))
    try:
        for _ in range(2):
            items = list(engine.generate(ASK_CITY, _constrained(TOOL_CALL), lambda: False))
            _assert_wrapped_json("".join(items[:-1]), TOOL_CALL)
        assert (engine._guides.misses, engine._guides.hits) == (1, 1)
    finally:
        engine.close()


# Engines that hand the constraint on ----------------------------------------------------------------

@pytest.mark.slow
def test_the_openai_engine_has_the_remote_server_constrain_a_json_object(manager, llama_server):
    spec = LoadSpec(name="remote", engine="openai", model_id="smollm2", parameters={"base_url": llama_server})
    manager.load(spec)
    constraint = {"schema": None, "prefix": "", "suffix": ""}
    text, _, final = collect(manager.generate(spec.name, ASK_CITY, _constrained(constraint, max_tokens=96)))
    assert final.kind == "done", final.message
    assert isinstance(json.loads(text), dict)


def test_the_openai_engine_sends_a_schema_as_a_strict_json_schema_response_format():
    from models_app.serving.engines.openai_engine import response_format

    assert response_format({"schema": CITY, "prefix": "", "suffix": ""}) == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": CITY, "strict": True}}
    assert response_format({"schema": None}) == {"type": "json_object"}
    with pytest.raises(ConstraintError, match="cannot constrain a reply to text around the JSON"):
        response_format(TOOL_CALL)


class _Params:
    def __init__(self, **fields):
        self.fields = fields


def test_vllm_gets_a_schema_as_structured_outputs_json_and_a_prefix_as_a_grammar():
    from types import SimpleNamespace

    from models_app.serving.engines.vllm_engine import structured_outputs

    # A stand-in for vllm.sampling_params (vLLM cannot be installed here): >= 0.10.2, then older.
    current = SimpleNamespace(StructuredOutputsParams=_Params)
    older = SimpleNamespace(GuidedDecodingParams=_Params)
    assert structured_outputs({"schema": CITY}, current)["structured_outputs"].fields == {"json": CITY}
    assert structured_outputs({"schema": None}, current)["structured_outputs"].fields == {"json_object": True}
    grammar = structured_outputs(TOOL_CALL, older)["guided_decoding"].fields["grammar"]
    assert grammar.startswith('start: "<tool_call>\\n" json_value "\\n</tool_call>"\njson_value: %json {')
