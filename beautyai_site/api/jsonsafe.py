"""The one loader for JSON from outside: request bodies, WebSocket messages, session and registry files.

Python's json recurses once per nesting level (100,000 ``[`` raise RecursionError), reads ``1e400``
as infinity and builds integers of any length; none of these can be stored, compared or turned into
a duration. The depth is measured on the raw text before parsing, so json.loads never recurses
deeply; numbers are checked as they are parsed, and the error names the JSON path of the first bad
one (``model_config.parameters.keep_alive_seconds``). No Django imports: the engines may use it.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate

MAX_DEPTH = 32
# int64 and uint64 fit; a longer integer fits no database column and no setting of ours.
MAX_INT_DIGITS = 20

_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_ONLY_BRACKETS = {code: None for code in range(128) if chr(code) not in '[]{}"'}
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class UntrustedJSONError(ValueError):
    """``path`` is where the bad value sits ("" when the document as a whole is refused)."""

    def __init__(self, reason: str, *, path: str = ""):
        self.reason, self.path = reason, path
        super().__init__(f"{path}: {reason}" if path else reason)


class _Refused:
    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _depth(text: str) -> int:
    """How deep json.loads would recurse on ``text``, from its brackets outside strings."""
    brackets = _STRINGS.sub("", text).translate(_ONLY_BRACKETS)
    # Anything left besides brackets (a quote that opens no complete string, a character outside
    # ASCII) is where json.loads stops with an error, no deeper than the brackets before it.
    stop = _NOT_A_BRACKET.search(brackets)
    if stop is not None:
        brackets = brackets[:stop.start()]
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def first_path(value, test) -> tuple[str, object] | None:
    """(path, item) of the first item of a JSON value, in document order, for which ``test`` is true."""
    stack = [(value, "")]
    while stack:
        item, path = stack.pop()
        if test(item):
            return path, item
        if isinstance(item, dict):
            stack.extend((child, f"{path}.{key}" if path else key) for key, child in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in reversed(list(enumerate(item))))
    return None


def loads_untrusted(text: str):
    """json.loads for text from outside. Raises UntrustedJSONError for what it refuses and
    ValueError for text that is not JSON at all."""
    if _depth(text) > MAX_DEPTH:
        raise UntrustedJSONError(f"nested more than {MAX_DEPTH} levels deep")
    refused = False

    def refuse(reason: str) -> _Refused:
        nonlocal refused
        refused = True
        return _Refused(reason)

    def parse_float(literal: str):
        value = float(literal)
        return value if math.isfinite(value) else refuse("must be a finite number")

    def parse_int(literal: str):
        if len(literal.lstrip("-")) > MAX_INT_DIGITS:
            return refuse(f"integers may have at most {MAX_INT_DIGITS} digits")
        return int(literal)

    value = json.loads(text, parse_float=parse_float, parse_int=parse_int,
                       parse_constant=lambda name: refuse(f"{name} is not a JSON number"))
    if refused and (found := first_path(value, lambda item: isinstance(item, _Refused))) is not None:
        raise UntrustedJSONError(found[1].reason, path=found[0])
    return value
