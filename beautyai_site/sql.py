"""Reads whose SQL is written once, for the few queries every authenticated request makes.

Django writes a query's SQL anew each time it runs it. For the short reads of a request (the API-key
lookup, a page of the registry) writing the SQL cost several times what the database took to answer
(bench/README.md, "GET /models/"). A ``ReusedQuery`` writes it once per request thread and database,
from a ``.values()`` queryset built with a placeholder for each value that changes between calls,
and on each call only puts the call's values in the placeholders' places. The rows come back as
``.values()`` would give them: one dict per row, through Django's converters for each column.

Once per thread, not per process: the converters are methods of the thread's database connection.
Request threads are kept between requests (beautyai_site/request_threads.py), so that is once.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet


class ReusedQuery:
    """``build(**placeholders)`` returns the ``.values()`` queryset. Each keyword names a value that
    changes between calls and its type, ``str``, ``int`` or ``uuid.UUID`` (``ReusedQuery(build,
    user_id=int)``): ``build`` gets a placeholder of that type in its place, ``rows(...)`` the value
    of the same name."""

    def __init__(self, build: Callable[..., QuerySet], /, **types: type):
        for name, kind in types.items():
            if kind not in _SENTINELS:
                raise TypeError(f"placeholder {name!r}: the type is str, int or uuid.UUID, not {kind!r}")
            if name in _ROWS_ARGUMENTS:
                raise ValueError(f"placeholder {name!r} would hide rows()' own argument")
        self._build = build
        self._types = types
        self._local = threading.local()

    def rows(self, *, offset: int | None = None, limit: int | None = None, using: str = DEFAULT_DB_ALIAS,
             **values: str | int | uuid.UUID) -> list[dict]:
        """The rows for ``values``; with ``limit``, those that ``[offset:offset + limit]`` would give."""
        self._check(values)
        sql, params, slots, columns, converters = self._compiled(using)
        params = list(params)
        for index, name, prepare in slots:
            params[index] = prepare(values[name])
        connection = connections[using]
        if limit is not None:
            # What the compiler appends for a sliced queryset; the bounds are integers, never user text.
            sql = f"{sql} {connection.ops.limit_offset_sql(offset or 0, (offset or 0) + limit)}"
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        out = []
        for row in rows:
            row = list(row)
            for index, functions, expression in converters:
                for convert in functions:
                    row[index] = convert(row[index], expression, connection)
            out.append(dict(zip(columns, row)))
        return out

    def _check(self, values: dict) -> None:
        if values.keys() != self._types.keys():
            raise TypeError(f"rows() takes the placeholders {sorted(self._types)}, got {sorted(values)}")
        for name, value in values.items():
            kind = self._types[name]
            # bool is an int to isinstance, but True as a row id is a mistake, not an id.
            if not isinstance(value, kind) or isinstance(value, bool):
                raise TypeError(f"placeholder {name!r} takes a {kind.__name__}, not {type(value).__name__}")

    def _compiled(self, using: str):
        cache = self._local.__dict__.setdefault("by_alias", {})
        compiled = cache.get(using)
        if compiled is None:
            compiled = cache[using] = self._compile(using)
        return compiled

    def _compile(self, using: str):
        placeholders = {name: _SENTINELS[kind](name, index)
                        for index, (name, kind) in enumerate(self._types.items())}
        queryset = self._build(**placeholders).using(using)
        query = queryset.query
        if query.low_mark or query.high_mark is not None:
            raise ValueError("ReusedQuery slices with rows(offset=, limit=), not in the queryset")
        compiler = query.get_compiler(using)
        sql, params = compiler.as_sql()
        # The field a placeholder is compared with may convert it (to_python, int()), which keeps a
        # value but not an object's identity, so placeholders are found by type and value; each must be
        # there exactly once, which also catches a literal that happens to equal one, and a placeholder
        # a text column turned into text. A UUID stays one where the database has a uuid type and
        # becomes its 32 hex digits where it has not (SQLite); each call's value is converted alike.
        slots = []
        for name, placeholder in placeholders.items():
            found = [(index, prepare) for index, param in enumerate(params)
                     for prepare in _FORMS[self._types[name]] if _is(param, prepare(placeholder))]
            if len(found) != 1:
                raise ValueError(f"placeholder {name!r} is not exactly one parameter of the query")
            slots.append((found[0][0], name, found[0][1]))
        # The column names as ValuesIterable gives them, in the compiler's select order.
        columns = list(query.selected) if query.selected else [*query.extra_select, *query.values_select,
                                                                 *query.annotation_select]
        expressions = [column for column, _sql, _alias in compiler.select[:compiler.col_count]]
        converters = [(index, functions, expression)
                      for index, (functions, expression) in compiler.get_converters(expressions).items()]
        return sql, tuple(params), tuple(slots), columns, converters


def _str_placeholder(name: str, index: int) -> str:
    # No name, address or hub id holds a NUL.
    return f"\x00{name}\x00"


def _int_placeholder(name: str, index: int) -> int:
    # The smallest 32-bit integers, one per placeholder: negative, so no key a sequence hands out, and
    # inside the range of integer and key columns (IntegerField, AutoField and the big ones), because
    # Django turns a comparison with a value outside a column's range into "no rows" while writing the
    # SQL (IntegerFieldOverflow): the parameter would be gone, and _compile refuses the query.
    return -2**31 + index


def _uuid_placeholder(name: str, index: int) -> uuid.UUID:
    # Version and variant bits all zero: no uuid4 (a session's id) is one of these.
    return uuid.UUID(int=0xBEA0_0000 + index)


def _is(param, placeholder) -> bool:
    return type(param) is type(placeholder) and param == placeholder


def _same(value):
    return value


def _hex(value: uuid.UUID) -> str:
    return value.hex


_SENTINELS: dict[type, Callable[[str, int], str | int | uuid.UUID]] = {
    str: _str_placeholder, int: _int_placeholder, uuid.UUID: _uuid_placeholder}
# How a value of each type may appear among a query's parameters.
_FORMS: dict[type, tuple[Callable, ...]] = {str: (_same,), int: (_same,), uuid.UUID: (_same, _hex)}
_ROWS_ARGUMENTS = frozenset({"offset", "limit", "using"})


def field_names(model) -> list[str]:
    """A model's concrete columns, as ``.values()`` names them: what ``instance`` builds an object from."""
    return [field.attname for field in model._meta.concrete_fields]


def instance(model, row: dict, *, using: str = DEFAULT_DB_ALIAS):
    """The object the ORM would have built from ``row`` (a ``ReusedQuery`` row holding ``field_names(model)``)."""
    names = field_names(model)
    return model.from_db(using, names, [row[name] for name in names])
