"""Finding tool calls in a model's reply as it streams, in the format its chat template taught it.

Formats (``tool_call_format`` of the model, see models_app/selectors.py):

- ``hermes`` (Qwen, Hermes, and the preamble used for templates without tools):
  ``<tool_call>{"name": "fn", "arguments": {...}}</tool_call>``, anywhere in the reply, one call per tag.
- ``llama3``: the reply is ``{"name": "fn", "parameters": {...}}`` (``arguments`` accepted too),
  optionally after ``<|python_tag|>``, several calls separated by ``;``.
- ``mistral``: ``[TOOL_CALLS][{"name": "fn", "arguments": {...}}, ...]``; the marker is a special
  token that decoding may drop, so a reply that starts with ``[`` is read the same way.

The parser never shows markup as content. A call's name is reported as soon as it is complete,
its arguments as the raw JSON text arrives, piece by piece; the pieces of one call concatenate
to its final ``arguments``. Text that looked like a call and turns out not to be one (bad JSON,
a missing name, the reply ending mid-call) is given back as content, so a malformed call is
never an error. A call already partly streamed when that happens is left out of ``calls``.
"""

from __future__ import annotations

import json
import re

FORMATS = ("hermes", "llama3", "mistral")
# The exact text a constrained reply of each format starts and ends with around the call object.
CONSTRAINT_AFFIXES = {"hermes": ("<tool_call>\n", "\n</tool_call>"), "llama3": ("", ""), "mistral": ("[", "]")}
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_MARK = "[TOOL_CALLS]"
_WS = " \t\r\n"
_ARGUMENT_KEYS = ("arguments", "parameters")
_LITERAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


class _Incomplete(Exception):
    pass


class _Invalid(Exception):
    pass


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _string_end(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        char = text[j]
        if char == "\\":
            j += 2
            continue
        if char == '"':
            return j + 1
        if char < " ":
            raise _Invalid
        j += 1
    raise _Incomplete


def _value_end(text: str, i: int) -> int:
    """The index after the JSON value starting at ``i``."""
    if i >= len(text):
        raise _Incomplete
    char = text[i]
    if char == '"':
        return _string_end(text, i)
    if char in "{[":
        depth, j = 0, i
        while j < len(text):
            char = text[j]
            if char == '"':
                j = _string_end(text, j)
                continue
            if char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    try:
                        json.loads(text[i:j + 1])
                    except ValueError:
                        raise _Invalid from None
                    return j + 1
            j += 1
        raise _Incomplete
    match = _LITERAL.match(text, i)
    if match is None or match.end() == len(text):
        rest = text[i:]
        if any(word.startswith(rest) for word in ("true", "false", "null")) or re.fullmatch(r"-?[0-9.eE+-]*", rest):
            raise _Incomplete
        raise _Invalid
    return match.end()


def _scan_call(text: str, i: int) -> dict:
    """What is known so far of the call object opening at ``text[i] == '{'``; raises _Invalid."""
    out = {"start": i, "name": None, "args_start": None, "args_end": None, "end": None}
    state, key, j = "first", None, i + 1
    while True:
        j = _skip_ws(text, j)
        if j >= len(text):
            return out
        char = text[j]
        if state in ("first", "key"):
            if char != '"':
                raise _Invalid
            try:
                key_end = _string_end(text, j)
            except _Incomplete:
                return out
            key, j, state = json.loads(text[j:key_end]), key_end, "colon"
        elif state == "colon":
            if char != ":":
                raise _Invalid
            j, state = j + 1, "value"
        elif state == "value":
            if key in _ARGUMENT_KEYS:
                if char != "{" or out["args_start"] is not None:
                    raise _Invalid
                out["args_start"] = j
            try:
                end = _value_end(text, j)
            except _Incomplete:
                return out
            if key in _ARGUMENT_KEYS:
                out["args_end"] = end
            elif key == "name":
                name = json.loads(text[j:end])
                if not isinstance(name, str) or not NAME.fullmatch(name):
                    raise _Invalid
                out["name"] = name
            j, state = end, "separator"
        else:
            if char == ",":
                j, state = j + 1, "key"
            elif char == "}" and out["name"] is not None and out["args_end"] is not None:
                out["end"] = j + 1
                return out
            else:
                raise _Invalid


def _scan_region(fmt: str, text: str) -> tuple[list[dict], str, int]:
    """Call objects of one region (the text after its opener): (objects, status, index).

    status is ``open`` (more may come), ``closed`` (index: just after the closer) or ``invalid``.
    """
    objects: list[dict] = []
    j = _skip_ws(text, 0)
    if fmt == "mistral":
        if j >= len(text):
            return objects, "open", 0
        if text[j] != "[":
            return objects, "invalid", 0
        j = _skip_ws(text, j + 1)
    while True:
        if j >= len(text):
            return objects, "open", 0
        if text[j] != "{":
            return objects, "invalid", 0
        try:
            call = _scan_call(text, j)
        except _Invalid:
            return objects, "invalid", 0
        objects.append(call)
        if call["end"] is None:
            return objects, "open", 0
        j = _skip_ws(text, call["end"])
        rest = text[j:]
        if fmt == "hermes":
            if rest.startswith(HERMES_CLOSE):
                return objects, "closed", j + len(HERMES_CLOSE)
            return objects, ("open" if HERMES_CLOSE.startswith(rest) else "invalid"), 0
        separator = ";" if fmt == "llama3" else ","
        if not rest:
            return objects, "open", 0
        if fmt == "mistral" and rest[0] == "]":
            return objects, "closed", j + 1
        if rest[0] != separator:
            return objects, "invalid", 0
        j = _skip_ws(text, j + 1)


def _partial_suffix(text: str, tag: str) -> int:
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ToolCallParser:
    """Feed content deltas; get events ``("content", text)``, ``("call", index, name)`` and
    ``("arguments", index, piece)``. ``calls`` holds the finished calls ``{"index", "name", "arguments"}``.

    ``limit`` caps the number of calls (``parallel_tool_calls: false`` is 1): objects past it are dropped.
    """

    def __init__(self, fmt: str = "hermes", *, limit: int | None = None):
        self.fmt = fmt if fmt in FORMATS else "hermes"
        self.limit = limit
        self.calls: list[dict] = []
        self.mode = "text"
        self.at_start = True
        self.buffer = ""
        self.opener = ""
        self.region = ""
        self.streamed: list[list] = []  # per object of the open region: [index or None, argument chars sent]
        self.next_index = 0
        self.pending_space = ""

    # Content ------------------------------------------------------------------------------------

    def _content(self, out: list, text: str) -> None:
        # Trailing blank text is held until more content follows: the line breaks around calls are not content.
        shown = text.rstrip(_WS)
        if shown:
            out.append(("content", self.pending_space + shown))
            self.pending_space = ""
        self.pending_space += text[len(shown):]

    def _enter_call(self, out: list, opener: str, region: str) -> None:
        self.mode, self.opener, self.region, self.streamed, self.buffer = "call", opener, region, [], ""
        self._advance_call(out)

    def _advance_text(self, out: list) -> None:
        if self.at_start and self.fmt in ("llama3", "mistral"):
            stripped = self.buffer.lstrip(_WS)
            marker = PYTHON_TAG if self.fmt == "llama3" else MISTRAL_MARK
            if not stripped or (len(stripped) < len(marker) and marker.startswith(stripped)):
                return  # could still become a call
            self.at_start = False
            if stripped.startswith(marker):
                return self._enter_call(out, self.buffer[:len(self.buffer) - len(stripped)] + marker,
                                        stripped[len(marker):])
            if stripped[0] == ("{" if self.fmt == "llama3" else "["):
                return self._enter_call(out, self.buffer[:len(self.buffer) - len(stripped)], stripped)
        self.at_start = False
        if self.fmt == "llama3":  # calls only open a reply
            self._content(out, self.buffer)
            self.buffer = ""
            return
        opener = HERMES_OPEN if self.fmt == "hermes" else MISTRAL_MARK
        index = self.buffer.find(opener)
        if index >= 0:
            self._content(out, self.buffer[:index])
            return self._enter_call(out, opener, self.buffer[index + len(opener):])
        keep = _partial_suffix(self.buffer, opener)
        self._content(out, self.buffer[:len(self.buffer) - keep])
        self.buffer = self.buffer[len(self.buffer) - keep:]

    # Calls --------------------------------------------------------------------------------------

    def _stream_objects(self, out: list, objects: list[dict]) -> None:
        for number, call in enumerate(objects):
            if number == len(self.streamed):
                self.streamed.append([None, 0])
            state = self.streamed[number]
            if state[0] is None and call["name"] is not None:
                if self.limit is not None and self.next_index >= self.limit:
                    state[0] = -1  # past the limit: never shown
                else:
                    state[0] = self.next_index
                    self.next_index += 1
                    out.append(("call", state[0], call["name"]))
            if state[0] is not None and state[0] >= 0 and call["args_start"] is not None:
                text = self.region[call["args_start"]:call["args_end"] or len(self.region)]
                if len(text) > state[1]:
                    out.append(("arguments", state[0], text[state[1]:]))
                    state[1] = len(text)

    def _finish_region(self, out: list, objects: list[dict], tail_start: int | None) -> None:
        """Keeps the complete calls; text from ``tail_start`` on (None: nothing) goes back to content."""
        complete = [(call, state) for call, state in zip(objects, self.streamed) if call["end"] is not None]
        for call, state in complete:
            if state[0] is not None and state[0] >= 0:
                self.calls.append({"index": state[0], "name": call["name"],
                                   "arguments": self.region[call["args_start"]:call["args_end"]]})
        if tail_start is not None:
            if complete:
                self._content(out, self.region[complete[-1][0]["end"]:])
            else:
                self._content(out, self.opener + self.region)
        self.mode, self.region, self.opener, self.streamed = "text", "", "", []

    def _advance_call(self, out: list) -> None:
        objects, status, index = _scan_region(self.fmt, self.region)
        self._stream_objects(out, objects)
        if status == "closed":
            rest = self.region[index:]
            self._finish_region(out, objects, None)
            self.buffer = rest
            self._advance_text(out)
        elif status == "invalid":
            self._finish_region(out, objects, 0)

    # Interface ----------------------------------------------------------------------------------

    def feed(self, text: str) -> list[tuple]:
        out: list[tuple] = []
        if self.mode == "text":
            self.buffer += text
            self._advance_text(out)
        else:
            self.region += text
            self._advance_call(out)
        return out

    def flush(self) -> list[tuple]:
        """The end of the reply: an unfinished call is kept only if its object is complete."""
        out: list[tuple] = []
        if self.mode == "call":
            objects, _, _ = _scan_region(self.fmt, self.region)
            self._stream_objects(out, objects)
            self._finish_region(out, objects, 0 if any(call["end"] is None for call in objects) or not objects else None)
        else:
            self._content(out, self.buffer)
            self.buffer = ""
        if self.pending_space and not self.calls:
            out.append(("content", self.pending_space))
        self.pending_space = ""
        return out


def parse_complete(text: str, fmt: str = "hermes", *, limit: int | None = None) -> tuple[str, list[dict]]:
    """(content, calls) of a whole reply."""
    parser = ToolCallParser(fmt, limit=limit)
    events = parser.feed(text) + parser.flush()
    return "".join(event[1] for event in events if event[0] == "content"), parser.calls


class DefinitionClash(ValueError):
    pass


def _call_schema(tool: dict, definitions: dict) -> dict:
    function = tool["function"]
    parameters = dict(function.get("parameters") or {"type": "object"})
    # "$ref": "#/$defs/x" points at the root of the schema it is in; nested under "arguments" that
    # root is the call's schema, so the definitions move up there.
    for key in ("$defs", "definitions"):
        for name, definition in (parameters.pop(key, None) or {}).items():
            if definitions.setdefault(key, {}).setdefault(name, definition) != definition:
                raise DefinitionClash(f"two tools define {key}/{name} differently")
    return {"type": "object",
            "properties": {"name": {"const": function["name"]}, "arguments": parameters},
            "required": ["name", "arguments"], "additionalProperties": False}


def constraint_for(tools: list[dict], choice, fmt: str) -> dict:
    """GenerationParams.constraint forcing one call: of the named function, or of any tool for "required"."""
    chosen = [tool for tool in tools if choice == "required" or tool["function"]["name"] == choice["name"]]
    definitions: dict = {}
    schemas = [_call_schema(tool, definitions) for tool in chosen]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    if definitions:
        schema = {**schema, **definitions} if len(schemas) == 1 else {"$ref": "#/$defs/call", **definitions}
        if len(schemas) > 1:
            schema.setdefault("$defs", {})["call"] = {"anyOf": schemas}
    prefix, suffix = CONSTRAINT_AFFIXES.get(fmt, CONSTRAINT_AFFIXES["hermes"])
    return {"schema": schema, "prefix": prefix, "suffix": suffix}
