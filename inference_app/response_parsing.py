"""Tool calls read with the tokenizer's own ``response_template`` (transformers' ResponseParser).

A tokenizer may ship a declarative description of its replies (tokenizer_config.json
``response_template``: regions such as ``content``, ``reasoning_content`` and ``tool_calls`` with
their delimiters). The transformers engine reports it at load with the text its chat template
pre-writes into the assistant turn (``prefix``: the parser must start in the state that text puts
it in). For a request with tools, ``TemplateCallParser`` then replaces the marker formats of
tool_calls.py and answers the same events, plus ``("reasoning", text)`` when the template has a
reasoning field.

The parser streams a tool call's region as raw text only and gives its value when the region
closes, so a call's name and its whole arguments text are sent together, at the close.
A region that does not parse into calls (bad JSON, no name) is given back as content, never an
error. transformers is imported on first use only (about 1.5 s in the web process, once; it does
not import torch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging

from inference_app.tool_calls import CONSTRAINT_AFFIXES, NAME

logger = logging.getLogger(__name__)

CALLS_FIELD = "tool_calls"
REASONING_FIELDS = ("reasoning_content", "thinking")  # transformers serve reads both names
_WS = " \t\r\n"
_PROBE = {"name": "probe_call", "arguments": {"probe": 1}}
_refused: set[str] = set()


def _parser_class():
    from transformers.utils.chat_parsing import ResponseParser

    return ResponseParser


def _lenient(template: dict) -> dict:
    """The template with no field required and JSON regions that never raise on bad JSON: a model's
    malformed output must end as content, and the parser would otherwise stop at the first error."""
    template = copy.deepcopy(template)
    for field in (template.get("fields") or {}).values():
        if isinstance(field, dict):
            field["optional"] = True
            if field.get("content") == "json" and isinstance(field.get("content_args", {}), dict):
                field["content_args"] = {**field.get("content_args", {}), "allow_non_json": True}
    return template


def _calls_of(value) -> list[tuple[str, str]] | None:
    """(name, arguments JSON text) of a closed tool_calls region's value; None when it is no call."""
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        function = item.get("function", item) if isinstance(item, dict) else None
        if not isinstance(function, dict):
            return None
        name, arguments = function.get("name"), function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(name, str) or not NAME.fullmatch(name) or not isinstance(arguments, dict):
            return None
        calls.append((name, json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def _refuse_once(template: dict, reason: str) -> None:
    key = hashlib.sha256(json.dumps(template, sort_keys=True, default=str).encode()).hexdigest()
    if key not in _refused:
        _refused.add(key)
        logger.warning("response_template not used for tool calls (%s); the template markers are", reason)


def select(spec: dict | None, *, tools: list[dict], constraint: dict | None, fmt: str) -> dict | None:
    """``spec`` (Engine.response_template) when it can parse this request's reply, else None.

    The template must construct, have a tool_calls field, and, for a forced call (``constraint``),
    read a call written with the marker format's affixes (the ones the constraint uses) as that call.
    """
    if not spec or not isinstance(spec.get("template"), dict):
        return None
    template, prefix = spec["template"], spec.get("prefix") or ""
    if CALLS_FIELD not in (template.get("fields") or {}):
        _refuse_once(template, "it has no tool_calls field")
        return None
    try:
        parser = _parser_class()(_lenient(template), prefix=prefix, tools=tools)
        if constraint is not None:
            before, after = CONSTRAINT_AFFIXES.get(fmt, CONSTRAINT_AFFIXES["hermes"])
            parser.feed(before + json.dumps(_PROBE) + after)
            message, _ = parser.finalize()
            if _calls_of(message.get(CALLS_FIELD)) != [(_PROBE["name"], json.dumps(_PROBE["arguments"]))]:
                _refuse_once(template, f"it does not read a forced call in the {fmt} format")
                return None
    except Exception as exc:  # whatever transformers refuses the template with
        _refuse_once(template, f"transformers refuses it: {exc.__class__.__name__}")
        return None
    return spec


def has_reasoning(spec: dict | None) -> bool:
    return bool(spec) and any(name in (spec["template"].get("fields") or {}) for name in REASONING_FIELDS)


class TemplateCallParser:
    """ToolCallParser's interface over a ResponseParser: feed deltas, get ``("content", text)``,
    ``("reasoning", text)``, ``("call", index, name)`` and ``("arguments", index, text)``; ``calls``
    holds the finished calls ``{"index", "name", "arguments"}``. ``limit`` caps the number of calls."""

    def __init__(self, spec: dict, *, tools: list[dict] | None = None, limit: int | None = None):
        self.parser = _parser_class()(_lenient(spec["template"]), prefix=spec.get("prefix") or "", tools=tools)
        self.limit = limit
        self.calls: list[dict] = []
        self.region: list[str] = []  # raw text of the open tool_calls region, given back if it is no call
        self.pending_space = ""
        self.shown = False

    def _content(self, out: list, text: str) -> None:
        # As in ToolCallParser, the blank text around calls is not content, so trailing blanks wait;
        # and as the template's text fields strip, the blank lines before the answer (after the
        # reasoning) are no content either.
        if not self.shown:
            text = text.lstrip(_WS)
        shown = text.rstrip(_WS)
        if shown:
            out.append(("content", self.pending_space + shown))
            self.pending_space, self.shown = "", True
        self.pending_space += text[len(shown):]

    def _map(self, out: list, events: list[dict]) -> None:
        for event in events:
            kind, field = event["type"], event.get("field")
            if field == CALLS_FIELD:
                if kind == "region_open":
                    self.region = []
                elif kind == "region_chunk":
                    self.region.append(event["text"])
                elif kind == "region_close":
                    self._close_calls(out, event.get("value"))
            elif kind == "region_chunk" and field == "content":
                self._content(out, event["text"])
            elif kind == "region_chunk" and field in REASONING_FIELDS:
                out.append(("reasoning", event["text"]))

    def _close_calls(self, out: list, value) -> None:
        calls, raw, self.region = _calls_of(value), "".join(self.region), []
        if calls is None:
            self._content(out, raw)
            return
        for name, arguments in calls:
            if self.limit is not None and len(self.calls) >= self.limit:
                return
            index = len(self.calls)
            self.calls.append({"index": index, "name": name, "arguments": arguments})
            out += [("call", index, name), ("arguments", index, arguments)]

    def _broken(self, out: list) -> None:
        """The parser raised (a transform or content parser of the template failed): what it had not
        placed yet, the open call region first, is content from here on."""
        parser, self.parser = self.parser, None
        rest = parser._buffer[parser._pos:] if isinstance(getattr(parser, "_buffer", None), str) else ""
        self._content(out, "".join(self.region) + rest)
        self.region = []

    def feed(self, text: str) -> list[tuple]:
        out: list[tuple] = []
        if self.parser is None:
            self._content(out, text)
            return out
        try:
            self._map(out, self.parser.feed(text))
        except Exception:
            self._broken(out)
        return out

    def flush(self) -> list[tuple]:
        out: list[tuple] = []
        if self.parser is not None:
            try:
                self._map(out, self.parser.finalize()[1])
            except Exception:
                self._broken(out)
            self.parser = None
        if self.region:  # a call region the reply never closed
            self._content(out, "".join(self.region))
            self.region = []
        if self.pending_space and not self.calls:
            out.append(("content", self.pending_space))
        self.pending_space = ""
        return out
