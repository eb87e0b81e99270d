"""The loader for JSON from outside: depth measured before parsing, numbers that storage can hold."""

from __future__ import annotations

import json

import pytest

from beautyai_site.api.jsonsafe import MAX_DEPTH, MAX_INT_DIGITS, UntrustedJSONError, loads_untrusted


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "[" * 100_000, '{"a":' * 100_000,
                                  "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)])
def test_it_refuses_nesting_deeper_than_the_limit_without_recursing(text):
    with pytest.raises(UntrustedJSONError, match="nested more than 32 levels deep") as caught:
        loads_untrusted(text)
    assert caught.value.path == ""


@pytest.mark.parametrize("text", [
    "[" * MAX_DEPTH + "]" * MAX_DEPTH,
    json.dumps({"a": "[" * 1000, "b": "{" * 1000}),
    json.dumps({"a": '\\"' + "[" * 1000}),  # an escaped quote does not end the string
    json.dumps({"a": "é" + "[" * 100, "é": ["]" * 100]}, ensure_ascii=False),
])
def test_brackets_inside_strings_do_not_count(text):
    assert loads_untrusted(text) == json.loads(text)


def test_an_unterminated_string_is_not_json_whatever_follows_it():
    with pytest.raises(ValueError) as caught:
        loads_untrusted('["' + "[" * 100_000)
    assert not isinstance(caught.value, UntrustedJSONError)


@pytest.mark.parametrize("text,path,reason", [
    ('{"a": 1e400}', "a", "must be a finite number"),
    ('{"a": {"b": [1, -1e400]}}', "a.b[1]", "must be a finite number"),
    ('[{"x": NaN}]', "[0].x", "NaN is not a JSON number"),
    ('{"a": -Infinity}', "a", "-Infinity is not a JSON number"),
    ('{"n": ' + "1" * (MAX_INT_DIGITS + 1) + "}", "n", "integers may have at most 20 digits"),
    ('{"n": -' + "1" * 400 + ', "m": 1e400}', "n", "integers may have at most 20 digits"),
])
def test_it_names_the_path_of_the_first_number_storage_cannot_hold(text, path, reason):
    with pytest.raises(UntrustedJSONError) as caught:
        loads_untrusted(text)
    assert (caught.value.path, caught.value.reason) == (path, reason)
    assert str(caught.value) == f"{path}: {reason}"


def test_numbers_storage_can_hold_load_as_json_loads_them():
    text = '{"a": 1e308, "b": -1e-400, "c": 18446744073709551615, "d": -9223372036854775808, "e": 0.5}'
    assert loads_untrusted(text) == json.loads(text)
