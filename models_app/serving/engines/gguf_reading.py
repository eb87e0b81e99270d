"""Faster GGUF reading for transformers' GGUF loader (``from_pretrained(..., gguf_file=...)``).

transformers reads a GGUF with the ``gguf`` package twice (tokenizer, then weights) and spent ~28 s
loading the bundled 135M model here, almost none of it dequantizing (profiled on gguf 0.19 and
transformers 5.24):

- ``GGUFReader`` slices an ``np.memmap`` once per metadata value, and ``memmap.__getitem__`` and
  ``__array_finalize__`` run in Python: about 5 s per read for the 49,152-entry vocabulary and its
  merges. A plain ``ndarray`` view of the same mapping slices in C and shares the same pages.
- transformers asks ``gguf.get_tensor_name_map(arch, layers)`` once per module of the model (397
  times for SmolLM2), and each call builds a ``TensorNameMap`` of every known tensor name: ~8 s. The
  map is a pure function of its two arguments and is only read afterwards, so one per pair is kept.

transformers imports both names from ``gguf`` inside the function that uses them, so replacing the
module's attributes reaches it; nothing else about the files or the weights changes.
"""

from __future__ import annotations

import functools

_installed = False
memmap_reader = None  # gguf's own GGUFReader, kept for comparison once replaced


def install() -> None:
    """Installs both speed-ups into the ``gguf`` module; idempotent, and a no-op without ``gguf``."""
    global _installed, memmap_reader
    if _installed:
        return
    try:
        import gguf
        import numpy as np
    except ImportError:
        return

    class PlainArrayReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            # A view keeps the mapping alive through its base; only the Python-level subclass goes.
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    memmap_reader = gguf.GGUFReader
    gguf.GGUFReader = PlainArrayReader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=32)(gguf.get_tensor_name_map)
    _installed = True
