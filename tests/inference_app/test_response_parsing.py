"""Tool calls read with the tokenizer's own response_template (transformers' ResponseParser): the
mapping of its regions to the transport events, the fallbacks to the marker formats, and a forced
call through /v1 on the bundled transformers model whose tokenizer carries a template."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from inference_app import response_parsing
from inference_app.openai_api import Completion
from inference_app.response_parsing import TemplateCallParser, select
from inference_app.services import ReplyBuilder
from models_app.serving.engines.contract import GenerationStats
from models_app.serving.handle import Event

# The Hermes/Qwen format as transformers serve describes it for Qwen 2/3 (cli/serving/utils.py).
HERMES_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "reasoning_content": {"open": "<think>", "close": "</think>", "content": "text"},
        "tool_calls": {
            "open_pattern": r"\s*<tool_call>",
            "close": "</tool_call>",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"\s*(?:<\|im_end\|>|<\|endoftext\|>)", "content": "text"},
    },
}
SPEC = {"template": HERMES_TEMPLATE, "prefix": ""}
WEATHER = {"city": "Paris", "units": ["c", {"deep": "}]"}], "n": -1.5, "ok": True, "none": None}
CALL = f'<tool_call>\n{json.dumps({"name": "get_weather", "arguments": WEATHER})}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def run(text: str, spec=SPEC, *, step: int | None = None, limit=None) -> tuple[list[tuple], list[dict]]:
    parser = TemplateCallParser(spec, tools=TOOLS, limit=limit)
    step = step or len(text) or 1
    events = []
    for index in range(0, len(text), step):
        events += parser.feed(text[index:index + step])
    return events + parser.flush(), parser.calls


def joined(events: list[tuple], kind: str) -> str:
    return "".join(event[-1] for event in events if event[0] == kind)


def test_a_hermes_call_becomes_a_call_event_with_its_arguments_and_no_content():
    events, calls = run("Let me check." + "\n" + CALL)
    assert joined(events, "content") == "Let me check."
    assert calls == [{"index": 0, "name": "get_weather", "arguments": json.dumps(WEATHER)}]
    assert ("call", 0, "get_weather") in events and joined(events, "arguments") == json.dumps(WEATHER)
    assert "<tool_call>" not in joined(events, "content")


def test_feeding_one_character_at_a_time_gives_the_same_reply():
    reply = "<think>Weather needs a tool.</think>\n\nSure." + CALL + "\n" + CALL.replace("Paris", "Rome")
    whole, whole_calls = run(reply)
    single, single_calls = run(reply, step=1)
    assert whole_calls == single_calls and len(single_calls) == 2
    for kind in ("content", "reasoning", "arguments"):
        assert joined(whole, kind) == joined(single, kind)
    assert joined(single, "reasoning") == "Weather needs a tool." and joined(single, "content") == "Sure."
    assert [e for e in single if e[0] == "call"] == [("call", 0, "get_weather"), ("call", 1, "get_weather")]


def test_the_turn_prefix_starts_the_reply_inside_the_reasoning():
    events, _ = run("Thinking.</think>Hello", {"template": HERMES_TEMPLATE, "prefix": "<think>\n"})
    assert joined(events, "reasoning") == "Thinking." and joined(events, "content") == "Hello"


@pytest.mark.parametrize("bad", ['<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
                                 '<tool_call>{"arguments": {}}</tool_call>',
                                 '<tool_call>{"name": "no spaces allowed", "arguments": {}}</tool_call>',
                                 '<tool_call>{"name": "get_weather", "arguments": {"city": "Par'])
def test_a_malformed_call_is_given_back_as_content_never_an_error(bad):
    for step in (None, 1):
        events, calls = run("Hi " + bad, step=step)
        assert calls == [] and not [e for e in events if e[0] == "call"]
        # The region's text comes back; its delimiters matched patterns, so they stay out.
        assert joined(events, "content").startswith("Hi") and '"arguments"' in joined(events, "content")


def test_parallel_tool_calls_false_keeps_the_first_call_only():
    _, calls = run(CALL + CALL.replace("get_weather", "get_time"), limit=1)
    assert [call["name"] for call in calls] == ["get_weather"]


def test_a_template_transformers_refuses_falls_back_to_the_markers_and_is_logged_once(caplog):
    broken = {"template": {**HERMES_TEMPLATE, "start_anchor": None, "surprise": 1}, "prefix": ""}
    with caplog.at_level(logging.WARNING, logger="inference_app.response_parsing"):
        assert select(broken, tools=TOOLS, constraint=None, fmt="hermes") is None
        assert select(broken, tools=TOOLS, constraint=None, fmt="hermes") is None
    assert len([r for r in caplog.records if "transformers refuses it" in r.getMessage()]) == 1


def test_a_template_without_a_tool_calls_field_is_not_used_for_calls():
    fields = {k: v for k, v in HERMES_TEMPLATE["fields"].items() if k != "tool_calls"}
    assert select({"template": {**HERMES_TEMPLATE, "fields": fields}, "prefix": ""}, tools=TOOLS,
                  constraint=None, fmt="hermes") is None
    assert select(SPEC, tools=TOOLS, constraint=None, fmt="hermes") is SPEC
    assert select(None, tools=TOOLS, constraint=None, fmt="hermes") is None


def test_a_forced_call_uses_the_template_only_when_it_reads_the_marker_formats_affixes():
    constraint = {"schema": {"type": "object"}, "prefix": "<tool_call>\n", "suffix": "\n</tool_call>"}
    assert select(SPEC, tools=TOOLS, constraint=constraint, fmt="hermes") is SPEC
    # A llama3 constraint writes a bare object, which this template reads as content.
    assert select(SPEC, tools=TOOLS, constraint=constraint, fmt="llama3") is None


def test_a_tool_parser_parameter_wins_over_the_tokenizers_template(monkeypatch):
    from models_app import runtime

    class Manager:
        def response_template(self, name):
            return SPEC

    monkeypatch.setattr(runtime, "get_manager", lambda: Manager())
    assert runtime.response_template(SimpleNamespace(name="m", parameters={"tool_parser": "llama3"})) is None
    assert runtime.response_template(SimpleNamespace(name="m", parameters={})) is SPEC


def test_the_builder_streams_a_template_parsed_call_as_openai_chunks_ending_with_tool_calls():
    plan = SimpleNamespace(think_tags=True, request_id="r1", dropped_turns=0, session=SimpleNamespace(id="s1"),
                           model=SimpleNamespace(name="m"), tool_format="hermes", tool_limit=None,
                           response_template=SPEC, params=SimpleNamespace(tools=TOOLS))
    builder = ReplyBuilder(plan)
    assert builder.splitter is None  # the template reads the reasoning itself
    completion = Completion(builder, kind="chat")
    chunks = completion.chunks_for(*builder.start_event())
    reply = "<think>Tool time.</think>" + CALL
    events = []
    for char in reply:
        events += builder.on_event(Event(kind="delta", text=char))
    events += builder.on_event(Event(kind="done", stats=GenerationStats(5, 30, "stop", 1.0, 10.0, 600.0)))
    for event in events:
        chunks += completion.chunks_for(*event)
    done = events[-1][1]
    assert done["reasoning"] == "Tool time." and done["response"] == ""
    assert [call["function"] for call in done["tool_calls"]] == [{"name": "get_weather",
                                                                 "arguments": json.dumps(WEATHER)}]
    assert builder.finish_reason == "tool_calls" and chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    message = completion.body()["choices"][0]["message"]
    assert message["content"] is None and message["tool_calls"] == done["tool_calls"]


def test_importing_the_parser_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from inference_app.response_parsing import _parser_class; _parser_class(); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


# The bundled model, its tokenizer carrying the template ---------------------------------------------

@pytest.fixture(scope="module")
def template_dir(safetensors_dir, tmp_path_factory):
    import os
    import shutil

    target = tmp_path_factory.mktemp("respschema") / "smollm2-respschema"
    shutil.copytree(safetensors_dir, target, copy_function=os.link)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["response_template"] = HERMES_TEMPLATE
    config_path.unlink()  # a hard link to the source's file: write a new one
    config_path.write_text(json.dumps(config))
    return target


@pytest.mark.slow
def test_the_transformers_engine_reports_the_template_and_ignores_an_oversized_one(template_dir, caplog):
    from models_app.serving.engines.contract import LoadSpec
    from models_app.serving.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine()
    engine.load(LoadSpec(name="x", engine="transformers", model_id=str(template_dir), dtype="float32"))
    try:
        assert engine.response_template() == {"template": HERMES_TEMPLATE, "prefix": ""}
        engine._tokenizer.response_template = {**HERMES_TEMPLATE, "defaults": {"pad": "x" * 70_000}}
        with caplog.at_level(logging.WARNING):
            assert engine.response_template() is None
        assert any("ignored" in record.getMessage() for record in caplog.records)
    finally:
        engine.close()


@pytest.mark.slow
def test_a_forced_call_through_v1_is_parsed_by_the_tokenizers_template(template_dir, settings, api_as, monkeypatch):
    from models_app import runtime, services

    client = api_as("model_read", "chat")
    settings.MODEL_ROOTS = [template_dir.parent]
    model = services.registry_add(name="templated", config={"model_id": str(template_dir),
                                                            "engine": "transformers", "dtype": "float32"})
    runtime.load(model)
    parsed = []

    class Spy(TemplateCallParser):
        def flush(self):
            parsed.append(list(self.calls))
            return super().flush()

    monkeypatch.setattr(response_parsing, "TemplateCallParser", Spy)
    weather = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
               "required": ["city"], "additionalProperties": False}
    try:
        assert runtime.response_template(model) == {"template": HERMES_TEMPLATE, "prefix": ""}
        response = client.post("/v1/chat/completions", {
            "model": "templated", "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "max_tokens": 48, "temperature": 0,
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, format="json")
    finally:
        runtime.unload("templated")
    assert response.status_code == 200, response.content
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    assert parsed == [[{"index": 0, "name": "get_weather", "arguments": call["function"]["arguments"]}]]


def test_a_template_whose_transform_fails_on_a_bad_call_gives_the_rest_back_as_content():
    dotted = {**HERMES_TEMPLATE, "fields": {**HERMES_TEMPLATE["fields"], "tool_calls": {
        **HERMES_TEMPLATE["fields"]["tool_calls"],
        "transform": {"type": "function", "function": {"name": "{content.name}", "arguments": "{content.arguments}"}}}}}
    spec = {"template": dotted, "prefix": ""}
    _, calls = run(CALL, spec, step=1)
    assert [call["name"] for call in calls] == ["get_weather"]
    for step in (None, 1):
        events, calls = run('<tool_call>{"name": "get_weather"}</tool_call> then more', spec, step=step)
        assert calls == [] and joined(events, "content").endswith("then more")
