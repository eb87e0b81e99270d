"""The model test route: one generation from a prompt, checked against validation criteria.

The regex criterion is untrusted input run against model output (THREATS C4): the serializer
limits its length and refuses, before compiling it, a pattern whose counted repeats would unroll
into a large program (``regex_cost_error``); compiling is not interruptible and holds the GIL, so
that check is its bound. It is matched by the ``regex`` package with a timeout and with the GIL
released, so a catastrophic pattern fails its check in bounded time without stalling the server.
Both run in the request's worker thread, never on the event loop.
"""

from __future__ import annotations

import time
import unicodedata

import regex
from django.conf import settings

from inference_app import services
from inference_app.tool_serializers import LANGUAGE_SCRIPTS
from models_app import services as registry

LANGUAGE_SHARE = 0.5
CHECK_ORDER = ("min_length", "max_length", "contains", "not_contains", "regex", "expected_language", "max_time_ms")


def regex_timeout_s() -> float:
    return float(settings.TEST_REGEX_TIMEOUT_SECONDS)


def script_of(char: str) -> str | None:
    """The script of a letter from its Unicode name ("ARABIC LETTER ALEF" → ARABIC); None for non-letters."""
    if not char.isalpha():
        return None
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else None


def script_share(text: str, scripts: tuple[str, ...]) -> tuple[float, int]:
    letters = [script for script in map(script_of, text) if script is not None]
    if not letters:
        return 0.0, 0
    return sum(script in scripts for script in letters) / len(letters), len(letters)


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"check": name, "passed": passed, "detail": detail}


def _regex_check(pattern: str, text: str) -> dict:
    timeout = regex_timeout_s()
    try:
        found = regex.search(pattern, text, timeout=timeout, concurrent=True)
    except TimeoutError:
        return _check("regex", False, f"timed out after {timeout:g} s: the pattern is too expensive for this text")
    return _check("regex", found is not None, "pattern found" if found else "pattern not found")


def check_reply(text: str, criteria: dict, *, latency_ms: float) -> dict:
    """``passed`` and one entry per criterion given, in a fixed order, each with its detail."""
    checks = []
    for name in CHECK_ORDER:
        if name not in criteria:
            continue
        value = criteria[name]
        if name == "min_length":
            checks.append(_check(name, len(text) >= value, f"{len(text)} characters, at least {value} required"))
        elif name == "max_length":
            checks.append(_check(name, len(text) <= value, f"{len(text)} characters, at most {value} allowed"))
        elif name == "contains":
            missing = [item for item in value if item not in text]
            checks.append(_check(name, not missing, f"missing: {missing}" if missing else "all present"))
        elif name == "not_contains":
            found = [item for item in value if item in text]
            checks.append(_check(name, not found, f"found: {found}" if found else "none present"))
        elif name == "regex":
            checks.append(_regex_check(value, text))
        elif name == "expected_language":
            scripts = LANGUAGE_SCRIPTS[value]
            share, letters = script_share(text, scripts)
            detail = (f"{share:.2f} of {letters} letters in {'/'.join(s.title() for s in scripts)} script, "
                      f"at least {LANGUAGE_SHARE} required")
            checks.append(_check(name, letters > 0 and share >= LANGUAGE_SHARE, detail))
        else:
            checks.append(_check(name, latency_ms <= value,
                                 f"end-to-end {latency_ms:.1f} ms, at most {value:g} ms allowed"))
    return {"passed": all(check["passed"] for check in checks), "checks": checks}


def model_test_run(*, user, model_name: str, prompt: str, generation_config: dict, criteria: dict,
                   api_key_id: int | None = None) -> dict:
    """Generates once (not stored as a chat session), records usage and checks the reply."""
    model = registry.model_get_for_user(user=user, name=model_name, permission="test")
    plan = services.prompt_plan(user=user, model=model, prompt=prompt, generation_config=generation_config,
                                transport="test", api_key_id=api_key_id)
    started = time.perf_counter()
    reply = services.chat_open(plan=plan).run_to_end()
    latency_ms = (time.perf_counter() - started) * 1000.0
    thinking, answer = reply.texts()
    stats = {**reply.stats, "end_to_end_ms": round(latency_ms, 3), "queue_time_ms": reply.queue_time_ms}
    return {
        "model_name": model.name,
        "prompt": prompt,
        "response": answer,
        "reasoning": thinking,
        "generation_stats": stats,
        "validation_result": check_reply(answer, criteria, latency_ms=latency_ms),
    }
