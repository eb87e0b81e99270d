"""POST /inference/test: one generation checked against validation criteria."""

from __future__ import annotations

import time

import pytest
import regex

from inference_app.model_test import check_reply, script_share
from inference_app.tool_serializers import regex_cost_error
from inference_app.models import ChatSession, UsageRecord
from tests.envelope import assert_error, assert_ok

pytestmark = pytest.mark.django_db

PROMPT = "Name the capital city of France."
GREEDY = {"temperature": 0.0, "max_tokens": 24}
CATASTROPHIC = r"^(\S|\s|.)+\d$"  # exponential backtracking on any text that does not end in a digit
ARABIC = "باريس هي عاصمة فرنسا"


def run_test(client, criteria=None, **extra):
    body = {"model_name": "smollm2-135m-instruct", "prompt": PROMPT, "generation_config": GREEDY, **extra}
    if criteria is not None:
        body["validation_criteria"] = criteria
    return client.post("/inference/test", body, format="json")


def checks_of(body) -> dict:
    return {check["check"]: check for check in body["validation_result"]["checks"]}


def test_it_answers_the_typed_fields_and_every_matching_criterion_passes(api_as, loaded_model):
    criteria = {"min_length": 1, "max_length": 10_000, "contains": ["Paris"], "not_contains": ["Berlin"],
                "regex": r"\bParis\b", "expected_language": "en", "max_time_ms": 120_000}
    body = assert_ok(run_test(api_as("test"), criteria))
    assert body["data"] is None and body["model_name"] == loaded_model.name and body["prompt"] == PROMPT
    assert "Paris" in body["response"]
    stats = body["generation_stats"]
    assert stats["tokens_generated"] > 0 and stats["prompt_tokens"] > 0 and stats["end_to_end_ms"] > 0
    result = body["validation_result"]
    assert result["passed"] is True
    assert [c["check"] for c in result["checks"]] == list(criteria)
    assert all(c["passed"] and c["detail"] for c in result["checks"])
    record = UsageRecord.objects.get(transport="test")
    assert (record.prompt_tokens, record.completion_tokens) == (stats["prompt_tokens"], stats["tokens_generated"])
    assert ChatSession.objects.count() == 0  # a test is not a chat


def test_every_criterion_fails_when_the_reply_misses_it(api_as, loaded_model):
    client = api_as("test")
    criteria = {"min_length": 100_000, "contains": ["Berlin", "Paris"], "not_contains": ["Paris"],
                "regex": r"^Tokyo$", "expected_language": "ar", "max_time_ms": 0.001}
    body = assert_ok(run_test(client, criteria))
    result = body["validation_result"]
    assert result["passed"] is False
    checks = checks_of(body)
    assert set(checks) == set(criteria) and not any(c["passed"] for c in checks.values())
    too_long = assert_ok(run_test(client, {"max_length": 1}))["validation_result"]
    assert too_long["passed"] is False and "at most 1" in too_long["checks"][0]["detail"]
    assert "Berlin" in checks["contains"]["detail"] and "Paris" not in checks["contains"]["detail"]
    assert "Paris" in checks["not_contains"]["detail"]
    assert "not found" in checks["regex"]["detail"]


def test_no_criteria_means_passed_with_no_checks(api_as, loaded_model):
    assert assert_ok(run_test(api_as("test")))["validation_result"] == {"passed": True, "checks": []}


def test_a_catastrophic_regex_fails_its_check_in_bounded_time(api_as, loaded_model, settings):
    settings.TEST_REGEX_TIMEOUT_SECONDS = 0.5
    started = time.monotonic()
    body = assert_ok(run_test(api_as("test"), {"regex": CATASTROPHIC, "contains": ["Paris"]}))
    elapsed_ms = (time.monotonic() - started) * 1000
    checks = checks_of(body)
    assert checks["regex"]["passed"] is False and "timed out" in checks["regex"]["detail"]
    assert checks["contains"]["passed"] is True
    assert elapsed_ms - body["generation_stats"]["end_to_end_ms"] < 3000


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(x+x+)+y", CATASTROPHIC])
def test_classic_catastrophic_patterns_end_within_the_time_limit(settings, pattern):
    settings.TEST_REGEX_TIMEOUT_SECONDS = 0.5
    started = time.monotonic()
    check = check_reply("a" * 40 + "!", {"regex": pattern}, latency_ms=1.0)["checks"][0]
    assert time.monotonic() - started < 2.0
    assert check["passed"] is False


@pytest.mark.parametrize(
    "criteria,passed",
    [
        ({"min_length": 5}, True), ({"min_length": 6}, False),
        ({"max_length": 5}, True), ({"max_length": 4}, False),
        ({"contains": ["ar", "Pa"]}, True), ({"contains": ["pa"]}, False),
        ({"not_contains": ["Rome"]}, True), ({"not_contains": ["is"]}, False),
        ({"regex": r"^P\w+s$"}, True), ({"regex": r"\d"}, False),
        ({"expected_language": "en"}, True), ({"expected_language": "ar"}, False),
        ({"max_time_ms": 10.0}, True), ({"max_time_ms": 9.0}, False),
    ],
)
def test_each_criterion_passes_and_fails_on_a_known_reply(criteria, passed):
    result = check_reply("Paris", criteria, latency_ms=10.0)
    assert result["passed"] is passed and len(result["checks"]) == 1 and result["checks"][0]["detail"]


def test_the_language_check_uses_the_share_of_the_expected_script():
    assert script_share(ARABIC, ("ARABIC",)) == (1.0, len(ARABIC.replace(" ", "")))
    assert check_reply(ARABIC + " Paris", {"expected_language": "ar"}, latency_ms=1)["passed"] is True
    assert check_reply(ARABIC + " Paris", {"expected_language": "en"}, latency_ms=1)["passed"] is False
    assert check_reply("1234 !!", {"expected_language": "en"}, latency_ms=1)["passed"] is False  # no letters


@pytest.mark.parametrize(
    "criteria,field",
    [
        ({"colour": 1}, "colour"),
        ({"regex": "("}, "regex"),
        ({"regex": "a" * 501}, "regex"),
        ({"regex": 5}, "regex"),
        ({"min_length": -1}, "min_length"),
        ({"min_length": "3"}, "min_length"),
        ({"min_length": 5, "max_length": 2}, "min_length"),
        ({"contains": "Paris"}, "contains"),
        ({"contains": [""]}, "contains"),
        ({"expected_language": "xx"}, "expected_language"),
        ({"max_time_ms": 0}, "max_time_ms"),
        ("not an object", "validation_criteria"),
    ],
)
def test_unknown_or_bad_criteria_are_refused_naming_the_field(api_as, criteria, field):
    error = assert_error(run_test(api_as("test"), criteria), 400, "ValidationError")
    assert field in error["error_message"]
    assert UsageRecord.objects.count() == 0


# Each unrolls to 100,000 items or more in regex.compile (40 MB to a gigabyte, with the GIL held) or
# nests groups too deep; the later ones do so only if the cost check misread where a set, a comment
# or a group ends.
EXPENSIVE = [
    "a{4000000}", "(a{1000}){1000}", "((((a{10}){10}){10}){10}){10}", "(?:a|b{1000}){1000}",
    "(" * 21 + "a" + ")" * 21, "(a{100})(?i){1000}", "((?R){1000}a){1000}", "(a)(?(1)b{1000}|c){1000}",
    "(a{1000}[[:alpha:])(]){1000}", "(a{1000}[\\])(]){1000}", "(a{1000}[])(]){1000}", "(?#[)(a{1000}){1000}]",
    "(?x)#[\n(a{1000}){1000}]", "(?V1)(a{1000}[[])]]){1000}",
]


@pytest.mark.parametrize("pattern", EXPENSIVE)
def test_an_expensive_regex_is_refused_naming_the_field_and_never_compiled(api_as, monkeypatch, pattern):
    compiled = []
    original = regex.compile
    monkeypatch.setattr(regex, "compile", lambda *args, **kwargs: compiled.append(args[0]) or original(*args, **kwargs))
    error = assert_error(run_test(api_as("test"), {"regex": pattern}), 400, "ValidationError")
    assert error["error_message"].startswith("validation_criteria: regex: refused before compiling")
    assert "regex" in error["error_details"]["fields"]["validation_criteria"]
    assert pattern not in compiled
    assert UsageRecord.objects.count() == 0


@pytest.mark.parametrize("pattern", [
    r"\bParis\b", r"^\d{3}-\d{4}$", r"(\d{1,3}\.){3}\d{1,3}", r"[\w.+-]+@[\w-]+\.[a-z]{2,10}", r".{0,1000}",
    r"(?i)^(?:paris|lyon){1,5}$", r"\p{Arabic}+", r"[[:alpha:]]{2,50}", r"(?P<w>\w+)\s+(?P=w)", r"[]{}()]+",
    r"(?#a comment)x{1000}", r"(a{100}){100}", r"(?:[^\s]+\s){0,200}",
])
def test_ordinary_patterns_pass_the_cost_check(pattern):
    assert regex_cost_error(pattern) is None


def test_the_route_needs_authentication_and_the_test_permission(anon, api_as, make_user, client_for, grant,
                                                               loaded_model):
    assert_error(run_test(anon), 401, "AuthenticationError")
    assert_error(run_test(api_as("chat", "benchmark", "model_read")), 403, "PermissionDeniedError")
    assert_error(run_test(api_as("test"), model_name="no-such-model"), 404, "ModelNotFoundError")
    user = make_user()
    grant(user, "test", loaded_model)
    assert_ok(run_test(client_for(user)))
