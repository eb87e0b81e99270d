"""Where model files may come from. No Django here: the engines and runners use it too."""

from __future__ import annotations

import os
import re
from pathlib import Path

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def is_local_path(model_id: str) -> bool:
    """A hub id looks like ``org/name``; anything else that names a file system location is a local path."""
    return not _HUB_ID.match(model_id) or ".." in model_id


def confine(model_id: str, roots: list[Path]) -> Path:
    """The real path of a local ``model_id``, which must lie inside one of ``roots``.

    realpath resolves symlinks and ``..`` first, so neither can lead outside a root; a NUL byte or
    a relative path is refused outright. Raises ValueError with a message safe to show a user.
    """
    if "\x00" in model_id:
        raise ValueError("model_id contains a NUL byte")
    if not os.path.isabs(model_id):
        raise ValueError("a local model_id must be an absolute path")
    real = Path(os.path.realpath(model_id))
    for root in roots:
        root_real = Path(os.path.realpath(root))
        if real == root_real or root_real in real.parents:
            return real
    raise ValueError("model_id is outside the allowed model roots (BEAUTYAI_MODEL_ROOTS)")
