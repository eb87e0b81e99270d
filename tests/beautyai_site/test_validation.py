"""parse: a reused field tree per serializer class and thread, and results as if each were fresh."""

from __future__ import annotations

import threading

import pytest
from rest_framework import serializers
from rest_framework.exceptions import ValidationError as DRFValidationError

from beautyai_site.api import validation
from beautyai_site.api.fields import StrictCharField, StrictSerializer
from beautyai_site.api.validation import parse, reuses_fields
from inference_app.anthropic_serializers import MessagesRequestSerializer
from inference_app.serializers import ChatRequestSerializer
from inference_app.tool_serializers import ChatCompletionRequestSerializer

CHAT = {"message": "hello", "stream": True, "chat_history": [{"role": "user", "content": "hi"}],
        "generation_config": {"max_tokens": 8, "temperature": 0}}


class Turn(StrictSerializer):
    text = StrictCharField()
    tags = serializers.ListField(child=StrictCharField(), default=list)


class Conversation(StrictSerializer):
    title = StrictCharField(required=False, default="untitled")
    turns = Turn(many=True)
    options = serializers.DictField(required=False, default=dict)


class LiteralListDefault(StrictSerializer):
    tags = serializers.ListField(child=StrictCharField(), default=[])


class FieldsPerInstance(StrictSerializer):
    text = StrictCharField(required=False)

    def get_fields(self):
        return {"text": StrictCharField(required=False, max_length=3)}


class Reentrant(StrictSerializer):
    inner = serializers.DictField(required=False)
    text = StrictCharField()

    def validate(self, attrs):
        if "inner" in attrs:
            attrs["inner"] = parse(Reentrant, attrs["inner"])
        return attrs


def tree_state(serializer_class):
    """Every field of this thread's tree with its attributes, as identities, except the top level's ``parent``."""
    fields = validation._tree(serializer_class)
    pending, seen = [(f, True) for f in fields.values()], []
    while pending:
        field, top = pending.pop()
        seen.append((id(field), {k: id(v) for k, v in vars(field).items() if not (top and k == "parent")}))
        pending.extend((sub, False) for sub in validation._subfields(field))
    return seen


@pytest.mark.parametrize("serializer_class", [ChatRequestSerializer, ChatCompletionRequestSerializer,
                                              MessagesRequestSerializer])
def test_the_chat_request_serializers_are_validated_with_a_reused_tree(serializer_class):
    assert reuses_fields(serializer_class)


def test_a_second_request_gets_its_own_values_and_none_of_the_first():
    first = parse(Conversation, {"turns": [{"text": "a", "tags": ["x"]}]})
    first["turns"][0]["tags"].append("changed")
    first["options"]["changed"] = True
    second = parse(Conversation, {"turns": [{"text": "b"}]})
    assert second == {"title": "untitled", "turns": [{"text": "b", "tags": []}], "options": {}}
    assert parse(Conversation, {"title": "t", "turns": []})["title"] == "t"


def test_validating_changes_no_field_of_the_tree_and_keeps_no_parent():
    # The first use of each field sets what DRF computes lazily once (``_validators``).
    parse(Conversation, {"title": "s", "turns": [{"text": "a", "tags": ["x"]}], "options": {"j": 0}})
    before = tree_state(Conversation)
    parse(Conversation, {"title": "t", "turns": [{"text": "b", "tags": ["y"]}], "options": {"k": 1}})
    with pytest.raises(DRFValidationError):
        parse(Conversation, {"turns": [{"text": 5}]})
    assert tree_state(Conversation) == before
    assert all(field.parent is None for field in validation._tree(Conversation).values())


def test_errors_name_the_field_and_the_next_request_is_unaffected():
    with pytest.raises(DRFValidationError) as refused:
        parse(Conversation, {"turns": [{"text": 5}], "typo": 1})
    assert refused.value.detail == {"typo": ["unknown field"]}
    with pytest.raises(DRFValidationError) as refused:
        parse(Conversation, {"turns": [{"text": 5}]})
    assert refused.value.detail == {"turns": {0: {"text": ["must be a string"]}}}
    assert parse(Conversation, {"turns": [{"text": "ok"}]})["turns"] == [{"text": "ok", "tags": []}]


def test_each_thread_validates_with_its_own_tree():
    trees = {}

    def in_thread(name):
        trees[name] = validation._tree(Conversation)
        assert parse(Conversation, {"title": name, "turns": []})["title"] == name

    threads = [threading.Thread(target=in_thread, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert trees["a"] is not trees["b"]
    assert validation._tree(Conversation) is not trees["a"]


def test_a_class_validated_inside_its_own_validation_gets_a_fresh_copy():
    data = parse(Reentrant, {"text": "outer", "inner": {"text": "inner"}})
    assert data == {"text": "outer", "inner": {"text": "inner"}}
    assert all(field.parent is None for field in validation._tree(Reentrant).values())


def test_a_literal_mutable_default_is_copied_for_each_request():
    assert not reuses_fields(LiteralListDefault)
    parse(LiteralListDefault, {})["tags"].append("changed")
    assert parse(LiteralListDefault, {}) == {"tags": []}


def test_fields_that_depend_on_the_instance_are_not_reused():
    assert not reuses_fields(FieldsPerInstance)
    with pytest.raises(DRFValidationError):
        parse(FieldsPerInstance, {"text": "long"})
