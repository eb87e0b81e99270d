"""Request data through a DRF serializer, or a 400 naming the fields; shared by every app's views.

DRF gives every serializer instance a deep copy of its declared fields (``Serializer.get_fields``),
so that one instance may change its fields without touching another. Validating a request changes
no field, yet the copy was most of a chat's parse, on the first token's path: validating a
``/inference/chat`` body took 0.55 ms and a ``/v1/chat/completions`` one 0.77 ms, about 70 % of it
the copy; 0.12 and 0.16 ms with the reuse below (docs/performance.md). DRF's
maintainers leave reuse to projects (encode/django-rest-framework#3282), so ``parse`` keeps one
copied field tree per serializer class and thread and binds its top level to each new instance:

- A tree is only ever used by one validation at a time: it belongs to one thread, validation never
  yields to another coroutine, and a class already being validated in this thread (a validator
  that parses the same class again) gets a fresh copy.
- Nothing of a request stays in a tree: DRF's fields keep no state while validating (pinned by
  tests/beautyai_site/test_validation.py), the top level's ``parent`` is cleared afterwards, and a
  class whose fields have a default that could be changed by whoever receives it (a literal list or
  dict rather than ``list``/``dict``) is copied for each request as before, as is one that overrides
  ``get_fields`` or builds its fields in ``__init__``.
"""

from __future__ import annotations

import threading

from rest_framework import serializers
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.fields import empty
from rest_framework.utils.serializer_helpers import BindingDict

_SAFE_DEFAULTS = (type(None), bool, int, float, complex, str, bytes, tuple, frozenset)

_local = threading.local()
_reusable: dict[type, bool] = {}


def _subfields(field):
    if isinstance(field, serializers.Serializer):
        return list(field.fields.values())
    child = getattr(field, "child", None)  # ListSerializer, ListField, DictField
    return [child] if child is not None else []


def _defaults_are_safe(fields) -> bool:
    pending = list(fields)
    while pending:
        field = pending.pop()
        default = getattr(field, "default", empty)
        if default is not empty and not callable(default) and not isinstance(default, _SAFE_DEFAULTS):
            return False
        pending.extend(_subfields(field))
    return True


def _tree(serializer_class):
    """This thread's field tree of ``serializer_class``, or None where it must not be reused now."""
    if serializer_class.get_fields is not serializers.Serializer.get_fields:
        return None  # fields that depend on the instance (ModelSerializer, a context): copied each time
    trees = getattr(_local, "trees", None)
    if trees is None:
        trees = _local.trees = {}
        _local.busy = set()
    if serializer_class in _local.busy:
        return None
    fields = trees.get(serializer_class)
    if fields is None:
        fields = serializer_class().fields.fields  # bound once (names, sources); only ``parent`` changes
        if serializer_class not in _reusable:
            _reusable[serializer_class] = _defaults_are_safe(fields.values())
        trees[serializer_class] = fields
    return fields if _reusable[serializer_class] else None


def reuses_fields(serializer_class) -> bool:
    """Whether ``parse`` validates ``serializer_class`` with a reused field tree (for tests)."""
    return _tree(serializer_class) is not None


def parse(serializer_class, data):
    """The validated data of ``data``; a DRF ValidationError (answered as the envelope's 400) otherwise.

    Each call validates afresh: validated data is the caller's to fill in, so nothing is shared
    between requests (a cached copy of the defaults once was, and leaked one request's values into
    the next).
    """
    serializer = serializer_class(data=data)
    fields = None if "fields" in serializer.__dict__ else _tree(serializer_class)  # built in __init__: its own
    if fields is None:
        valid = serializer.is_valid()
    else:
        bound = BindingDict(serializer)
        bound.fields.update(fields)
        for field in fields.values():
            field.parent = serializer
        serializer.__dict__["fields"] = bound  # what the ``fields`` cached_property would have built
        _local.busy.add(serializer_class)
        try:
            valid = serializer.is_valid()
        finally:
            _local.busy.discard(serializer_class)
            for field in fields.values():
                field.parent = None
    if not valid:
        raise DRFValidationError(serializer.errors)
    return serializer.validated_data
