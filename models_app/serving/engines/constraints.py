"""Constrained decoding: which constraints are accepted, and compiling them once per engine.

A constraint (GenerationParams.constraint) is ``{"schema": dict | None, "prefix": str, "suffix": str}``:
the reply must be exactly ``prefix + <JSON value matching schema> + suffix`` (any JSON object when
the schema is None), then end.

Two places check it. The web process calls ``normalize_constraint`` / ``check_schema`` before anything
is stored or submitted, so that a schema this module refuses is a 400 naming the keyword. The
runner calls them again (a runner trusts no caller) and then compiles with the engine's library
(``CompiledCache``): off the generating thread, under a time bound, cached by the canonical JSON.
A schema that passes the checks but that the library still refuses ends that request with an error;
the runner goes on serving.

The accepted keywords are the ones both llama.cpp's JSON-schema-to-GBNF converter and llguidance
enforce. Whatever either would silently ignore (``minimum``, ``uniqueItems``, ``oneOf`` …) is refused
rather than half-honoured, so that a reply always validates against the schema it was asked for.
No Django here: runners import this module.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import OrderedDict
from typing import Callable

from .contract import PromptError

MAX_SCHEMA_BYTES = 32 * 1024  # canonical JSON of the schema
MAX_SCHEMA_DEPTH = 24  # nested subschemas (properties, items, anyOf, $defs …)
MAX_REPEAT = 1000  # minItems, maxItems, minLength, maxLength: GBNF unrolls them into rules
MAX_AFFIX_CHARS = 256  # prefix and suffix
MAX_PATTERN_CHARS = 200
MAX_PATTERN_EXPANSION = 1000  # product of the counted repeats {m,n} in one pattern
COMPILE_TIMEOUT_S = 10.0
CACHE_SIZE = 64

TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")
FORMATS = ("date", "time", "date-time", "uuid")
# Annotations change nothing about what may be generated: accepted, then dropped before compiling.
ANNOTATIONS = frozenset({"title", "description", "examples", "default", "$comment", "$schema", "deprecated",
                         "readOnly", "writeOnly"})
KEYWORDS = frozenset({"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems",
                      "minLength", "maxLength", "pattern", "format", "enum", "const", "anyOf", "$ref", "$defs",
                      "definitions"})
_COUNTS = ("minItems", "maxItems", "minLength", "maxLength")
_HINTS = {"oneOf": "use anyOf", "allOf": "merge the subschemas into one", "prefixItems": "use items",
          "minimum": "", "maximum": "", "exclusiveMinimum": "", "exclusiveMaximum": "", "multipleOf": ""}
_REF = re.compile(r"^#/(\$defs|definitions)/([A-Za-z0-9_.-]{1,64})$")
_COUNT = re.compile(r"\{(\d+)(?:,(\d*))?\}")


class ConstraintError(PromptError):
    """The constraint cannot be honoured; ``field`` is where (a dotted path inside the request)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.detail = message
        super().__init__(f"{field}: {message}")


def normalize_constraint(constraint: dict, *, field: str = "constraint") -> dict:
    """The constraint with its schema normalized (see ``check_schema``); ConstraintError if refused."""
    if not isinstance(constraint, dict) or set(constraint) - {"schema", "prefix", "suffix"}:
        raise ConstraintError(field, "must be an object with schema, prefix and suffix")
    out = {}
    for key in ("prefix", "suffix"):
        value = constraint.get(key) or ""
        if not isinstance(value, str) or len(value) > MAX_AFFIX_CHARS:
            raise ConstraintError(f"{field}.{key}", f"must be a string of at most {MAX_AFFIX_CHARS} characters")
        out[key] = value
    schema = constraint.get("schema")
    out["schema"] = None if schema is None else check_schema(schema, field=f"{field}.schema")
    return out


def canonical_key(constraint: dict) -> str:
    return json.dumps(constraint, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def check_schema(schema, *, field: str) -> dict:
    """A normalized copy of ``schema``, or ConstraintError naming the first refused part.

    Normalized: annotations dropped; an object with ``properties`` and no ``additionalProperties``
    gets ``false`` (as in OpenAI's strict mode; llama.cpp's converter does so anyway, and fewer
    properties never break the schema); string keywords without a type get ``"type": "string"``.
    """
    if not isinstance(schema, dict):
        raise ConstraintError(field, "must be a JSON object")
    try:
        size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        raise ConstraintError(field, "is not plain JSON") from None
    if size > MAX_SCHEMA_BYTES:
        raise ConstraintError(field, f"is too large ({size} bytes; at most {MAX_SCHEMA_BYTES})")
    return _Checker(schema).node(schema, field, 0)


class _Checker:
    def __init__(self, root: dict):
        defs = {}
        for key in ("$defs", "definitions"):
            if isinstance(root.get(key), dict):
                defs.update({f"#/{key}/{name}": value for name, value in root[key].items()})
        self.defs = defs

    def node(self, schema, field: str, depth: int) -> dict:
        if not isinstance(schema, dict):
            raise ConstraintError(field, "a subschema must be a JSON object (true/false schemas are not supported)")
        if depth > MAX_SCHEMA_DEPTH:
            raise ConstraintError(field, f"is nested more than {MAX_SCHEMA_DEPTH} levels deep")
        for key in schema:
            if key in ANNOTATIONS or key in KEYWORDS:
                continue
            hint = _HINTS.get(key)
            raise ConstraintError(f"{field}.{key}", f"'{key}' is not supported" + (f" ({hint})" if hint else "")
                                  + "; supported keywords: " + ", ".join(sorted(KEYWORDS)))
        out = {k: v for k, v in schema.items() if k not in ANNOTATIONS}
        if ("$defs" in out or "definitions" in out) and depth:
            raise ConstraintError(field, "$defs and definitions are supported at the top of the schema only")
        # llama.cpp's converter honours one of these per subschema and drops what stands beside it.
        for alone in ("$ref", "anyOf"):
            if alone in out and set(out) - {alone, "$defs", "definitions"}:
                raise ConstraintError(f"{field}.{alone}", f"'{alone}' cannot be combined with other keywords")
        if "$ref" in out:
            ref = out["$ref"]
            if not isinstance(ref, str) or not _REF.match(ref) or ref not in self.defs:
                raise ConstraintError(f"{field}.$ref", "must point into this schema's $defs or definitions "
                                                       "(#/$defs/<name>)")
        self.type_(out, field)
        self.values(out, field)
        self.counts(out, field)
        self.strings(out, field)
        self.objects(out, field, depth)
        if "items" in out:
            out["items"] = self.node(out["items"], f"{field}.items", depth + 1)
        elif "minItems" in out or "maxItems" in out:
            out["items"] = {}  # llama.cpp's converter ignores minItems/maxItems without items
        if "anyOf" in out:
            options = out["anyOf"]
            if not isinstance(options, list) or not options:
                raise ConstraintError(f"{field}.anyOf", "must be a non-empty array of schemas")
            out["anyOf"] = [self.node(s, f"{field}.anyOf.{i}", depth + 1) for i, s in enumerate(options)]
        for key in ("$defs", "definitions"):
            if key in out:
                if not isinstance(out[key], dict):
                    raise ConstraintError(f"{field}.{key}", "must be an object of schemas")
                for name in out[key]:
                    if not _REF.match(f"#/{key}/{name}"):
                        raise ConstraintError(f"{field}.{key}.{name}", "names may use letters, digits, _ . - only")
                out[key] = {n: self.node(s, f"{field}.{key}.{n}", depth + 1) for n, s in out[key].items()}
        return out

    @staticmethod
    def type_(out: dict, field: str) -> None:
        kind = out.get("type")
        if kind is None:
            if any(k in out for k in ("pattern", "format", "minLength", "maxLength")):
                out["type"] = "string"
            return
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(k not in TYPES for k in kinds) or len(set(kinds)) != len(kinds):
            raise ConstraintError(f"{field}.type", "must be one of " + ", ".join(TYPES) + " or a list of them")
        if isinstance(kind, list):
            if set(out) - {"type", "enum", "const"}:
                raise ConstraintError(f"{field}.type", "a list of types cannot be combined with other keywords; "
                                                        "use anyOf with one schema per type")

    @staticmethod
    def values(out: dict, field: str) -> None:
        if "enum" in out and (not isinstance(out["enum"], list) or not out["enum"]):
            raise ConstraintError(f"{field}.enum", "must be a non-empty array")
        for key in ("enum", "const"):
            if key in out and "\\" in json.dumps(out[key], ensure_ascii=False):
                # llama.cpp's converter writes such values into its grammar without escaping the escapes.
                raise ConstraintError(f"{field}.{key}", "values that need escapes in JSON (quotes, backslashes, "
                                                        "control characters) are not supported")

    @staticmethod
    def counts(out: dict, field: str) -> None:
        for key in _COUNTS:
            value = out.get(key)
            if key in out and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPEAT):
                raise ConstraintError(f"{field}.{key}", f"must be an integer from 0 to {MAX_REPEAT}")
        for low, high in (("minItems", "maxItems"), ("minLength", "maxLength")):
            if low in out and high in out and out[low] > out[high]:
                raise ConstraintError(f"{field}.{low}", f"is greater than {high}")

    @staticmethod
    def strings(out: dict, field: str) -> None:
        chosen = [k for k in ("pattern", "format") if k in out] + (
            ["minLength/maxLength"] if "minLength" in out or "maxLength" in out else [])
        if len(chosen) > 1:
            raise ConstraintError(f"{field}.{chosen[0]}", f"cannot be combined with {chosen[1]}")
        if "format" in out and out["format"] not in FORMATS:
            raise ConstraintError(f"{field}.format", "supported formats: " + ", ".join(FORMATS))
        if "pattern" in out:
            refusal = _pattern_refusal(out["pattern"])
            if refusal:
                raise ConstraintError(f"{field}.pattern", refusal)

    def objects(self, out: dict, field: str, depth: int) -> None:
        props = out.get("properties")
        if "properties" in out:
            if not isinstance(props, dict):
                raise ConstraintError(f"{field}.properties", "must be an object of schemas")
            for name in props:
                if json.dumps(name, ensure_ascii=False)[1:-1] != name:
                    raise ConstraintError(f"{field}.properties", "property names that need escapes in JSON are "
                                                                 "not supported")
            out["properties"] = {n: self.node(s, f"{field}.properties.{n}", depth + 1) for n, s in props.items()}
            out.setdefault("additionalProperties", False)
        extra = out.get("additionalProperties")
        if isinstance(extra, dict):
            out["additionalProperties"] = self.node(extra, f"{field}.additionalProperties", depth + 1)
        elif "additionalProperties" in out and not isinstance(extra, bool):
            raise ConstraintError(f"{field}.additionalProperties", "must be true, false or a schema")
        if "required" in out:
            required = out["required"]
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required) \
                    or len(set(required)) != len(required):
                raise ConstraintError(f"{field}.required", "must be an array of distinct property names")
            missing = [r for r in required if r not in (props or {})]
            if missing:
                raise ConstraintError(f"{field}.required", f"names properties that properties does not define: "
                                                           f"{', '.join(missing[:5])}")


def _pattern_refusal(pattern) -> str | None:
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is longer than {MAX_PATTERN_CHARS} characters"
    if not (pattern.startswith("^") and pattern.endswith("$")) or pattern.endswith("\\$"):
        # JSON Schema patterns search; llama.cpp's converter only knows anchored ones.
        return "must be anchored: start with ^ and end with $"
    if "(?" in pattern or re.search(r"\\[1-9bBAZzk]", pattern):
        return "lookarounds, inline flags, backreferences and anchors inside the pattern are not supported"
    expansion = 1
    for match in _COUNT.finditer(pattern):
        expansion *= max(int(n) for n in match.groups() if n) or 1
        if expansion > MAX_PATTERN_EXPANSION:
            return f"its counted repeats {{m,n}} multiply to more than {MAX_PATTERN_EXPANSION}"
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"is not a valid regular expression: {exc}"
    return None


# ---------------------------------------------------------------------------
# Compiling (runner side)
# ---------------------------------------------------------------------------

class CompiledCache:
    """Compiled constraints by canonical JSON, least recently used dropped past ``size``.

    ``compile`` runs in a thread of its own under ``timeout_s``: a Python thread cannot be killed, but
    the checks above bound what one compile can cost, and the caller (the runner's generating worker)
    waits no longer than the bound. Refusals are cached too, so a schema that timed out is not
    compiled again by each retry.
    """

    def __init__(self, compile: Callable[[dict], object], *, size: int = CACHE_SIZE,
                 timeout_s: float = COMPILE_TIMEOUT_S):
        self._compile = compile
        self._size = size
        self._timeout_s = timeout_s
        self._entries: OrderedDict[str, tuple[bool, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, constraint: dict):
        constraint = normalize_constraint(constraint)
        key = canonical_key(constraint)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if entry is None:
            entry = self._bounded(constraint)
            with self._lock:
                self.misses += 1
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        ok, value = entry
        if not ok:
            raise ConstraintError("constraint", value)
        return value

    def _bounded(self, constraint: dict) -> tuple[bool, object]:
        result: list = []
        done = threading.Event()

        def run():
            try:
                result.append((True, self._compile(copy.deepcopy(constraint))))
            except ConstraintError as exc:
                result.append((False, exc.detail))
            except Exception as exc:
                result.append((False, f"the schema could not be compiled: {exc.__class__.__name__}: "
                                      f"{str(exc)[:300]}"))
            finally:
                done.set()

        threading.Thread(target=run, daemon=True, name="constraint-compile").start()
        if not done.wait(self._timeout_s):
            return False, f"the schema took longer than {self._timeout_s:g} s to compile"
        return result[0]


def json_value_closed(text: str, constraint: dict) -> bool:
    """Whether ``text`` is already a whole ``prefix + JSON + suffix``, so generation can end now.

    A bare number at the end with no suffix could still grow, so it never counts as closed here;
    the grammar then lets the model end it.
    """
    prefix, suffix = constraint.get("prefix") or "", constraint.get("suffix") or ""
    if not text.startswith(prefix) or not text.endswith(suffix) or len(text) < len(prefix) + len(suffix):
        return False
    body = text[len(prefix):len(text) - len(suffix)]
    if not suffix and (not body or body[-1] not in '}]"el'):
        return False
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


# llama.cpp -----------------------------------------------------------------------------------

def _gbnf_literal(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\r":
            out.append("\\r")
        elif char == "\t":
            out.append("\\t")
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


_JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'


def llama_gbnf(constraint: dict) -> str:
    """GBNF for prefix + JSON + suffix, from llama-cpp-python's own JSON-schema converter."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    schema = constraint["schema"] if constraint["schema"] is not None else {"type": "object"}
    schema = converter.resolve_refs(schema, "schema")
    # Named so that no rule of the schema is the root: the root wraps it between the literals.
    value = converter.visit(schema, "json")
    if "char" in converter._rules:
        # The converter shipped with llama-cpp-python lets raw control characters into strings, which
        # JSON forbids (llama.cpp's own converter has since excluded them the same way).
        converter._rules["char"] = _JSON_CHAR
    parts = [_gbnf_literal(constraint[k]) for k in ("prefix",) if constraint[k]] + [value] + \
            [_gbnf_literal(constraint[k]) for k in ("suffix",) if constraint[k]]
    return converter.format_grammar() + "\nroot ::= " + " ".join(parts) + "\n"


# transformers (llguidance) -------------------------------------------------------------------

def lark_grammar(constraint: dict) -> str:
    """llguidance's Lark: the prefix, the JSON schema (``%json``), the suffix, nothing else.

    Separators are fixed (``", "``, ``": "``) and no other whitespace is allowed, so a small model
    cannot wander into endless blank lines inside the value.
    """
    schema = dict(constraint["schema"]) if constraint["schema"] is not None else {"type": "object"}
    schema["x-guidance"] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    parts = [json.dumps(constraint[k]) for k in ("prefix",) if constraint[k]] + ["json_value"] + \
            [json.dumps(constraint[k]) for k in ("suffix",) if constraint[k]]
    return "start: " + " ".join(parts) + "\njson_value: %json " + json.dumps(schema) + "\n"
