"""Registry entry rules that the API, the registry import and the admin form share."""

from __future__ import annotations

import json

import pytest

from models_app.admin import ModelConfigForm

pytestmark = pytest.mark.django_db


def admin_form(**changes) -> ModelConfigForm:
    data = {"name": "gamma", "model_id": "org/gamma", "architecture": "causal_lm", "engine": "transformers",
            "quantization": "none", "dtype": "auto", "max_new_tokens": 512, "description": "", "parameters": "{}",
            **changes}
    return ModelConfigForm(data=data)


def test_the_admin_form_accepts_a_valid_entry():
    assert admin_form().is_valid()


@pytest.mark.parametrize("parameters", [{"keep_alive_seconds": 1e300}, {"n_ctx": 10**12}, {"max_queue": 10**9}])
def test_the_admin_form_refuses_a_parameter_beyond_its_bound(parameters):
    form = admin_form(parameters=json.dumps(parameters))
    assert not form.is_valid()
    assert next(iter(parameters)) in str(form.errors)


@pytest.mark.parametrize("text,where", [
    ('{"x": {"y": [1, Infinity]}}', "x.y[1]"),
    ('{"keep_alive_seconds": NaN}', "keep_alive_seconds"),
])
def test_the_admin_form_refuses_a_non_finite_number_its_json_field_accepts(text, where):
    form = admin_form(parameters=text)
    assert not form.is_valid()
    assert f"{where}: " in str(form.errors["parameters"]) and "number" in str(form.errors["parameters"])


@pytest.mark.parametrize("name", ["default", "Default"])
def test_the_admin_form_refuses_a_name_that_is_a_route_segment(name):
    form = admin_form(name=name)
    assert not form.is_valid()
    assert "route segment" in str(form.errors["name"])


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_the_admin_form_refuses_deep_nesting_without_a_recursion_error(depth):
    form = admin_form(parameters='{"a":' * depth + "1" + "}" * depth)
    assert not form.is_valid()
    assert "nested more than" in str(form.errors["parameters"])
