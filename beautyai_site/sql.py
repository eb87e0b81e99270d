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
from collections.abc import Callable

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import QuerySet


class ReusedQuery:
    """``build(**placeholders)`` returns the ``.values()`` queryset; each placeholder is a string
    that stands for the value of the same name in ``rows(...)`` (so only string values can change)."""

    def __init__(self, build: Callable[..., QuerySet], *names: str):
        self._build = build
        self._names = names
        self._local = threading.local()

    def rows(self, *, offset: int | None = None, limit: int | None = None, using: str = DEFAULT_DB_ALIAS,
             **values: str) -> list[dict]:
        """The rows for ``values``; with ``limit``, those that ``[offset:offset + limit]`` would give."""
        sql, params, columns, converters = self._compiled(using)
        params = [values[p.name] if isinstance(p, _Placeholder) else p for p in params]
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

    def _compiled(self, using: str):
        cache = self._local.__dict__.setdefault("by_alias", {})
        compiled = cache.get(using)
        if compiled is None:
            compiled = cache[using] = self._compile(using)
        return compiled

    def _compile(self, using: str):
        placeholders = {name: _Placeholder(name) for name in self._names}
        queryset = self._build(**placeholders).using(using)
        query = queryset.query
        if query.low_mark or query.high_mark is not None:
            raise ValueError("ReusedQuery slices with rows(offset=, limit=), not in the queryset")
        compiler = query.get_compiler(using)
        sql, params = compiler.as_sql()
        # The placeholders come back as plain strings (a CharField keeps a str subclass's value but not
        # its class), so they are found by value; each must be there exactly once.
        params = [_by_value(placeholders, p) for p in params]
        for placeholder in placeholders.values():
            if sum(1 for p in params if p is placeholder) != 1:
                raise ValueError(f"placeholder {placeholder.name!r} is not exactly one parameter of the query")
        # The column names as ValuesIterable gives them, in the compiler's select order.
        columns = list(query.selected) if query.selected else [*query.extra_select, *query.values_select,
                                                                 *query.annotation_select]
        expressions = [column for column, _sql, _alias in compiler.select[:compiler.col_count]]
        converters = [(index, functions, expression)
                      for index, (functions, expression) in compiler.get_converters(expressions).items()]
        return sql, params, columns, converters


class _Placeholder(str):
    """A string unlike any real value, named after what it stands for."""

    def __new__(cls, name: str):
        placeholder = super().__new__(cls, f"\x00{name}\x00")
        placeholder.name = name
        return placeholder


def _by_value(placeholders: dict[str, _Placeholder], param):
    if isinstance(param, str):
        for placeholder in placeholders.values():
            if param == placeholder:
                return placeholder
    return param


def field_names(model) -> list[str]:
    """A model's concrete columns, as ``.values()`` names them: what ``instance`` builds an object from."""
    return [field.attname for field in model._meta.concrete_fields]


def instance(model, row: dict, *, using: str = DEFAULT_DB_ALIAS):
    """The object the ORM would have built from ``row`` (a ``ReusedQuery`` row holding ``field_names(model)``)."""
    names = field_names(model)
    return model.from_db(using, names, [row[name] for name in names])
