"""Faster GGUF reading: for our own metadata checks, and for transformers' GGUF loader
(``from_pretrained(..., gguf_file=...)``).

transformers reads a GGUF with the ``gguf`` package twice (tokenizer, then weights) and spent ~22 s
loading the bundled 135M model here, almost none of it dequantizing (profiled on gguf 0.19 and
transformers 5.24):

- ``GGUFReader`` slices an ``np.memmap`` once per metadata value, and ``memmap.__getitem__`` and
  ``__array_finalize__`` run in Python: seconds per read for the 49,152-entry vocabulary and its
  merges. A plain ``ndarray`` view of the same mapping slices in C and shares the same pages.
  ``model_files.inspect_gguf`` (every GGUF load and memory estimate) reads through it too.
- transformers asks ``gguf.get_tensor_name_map(arch, layers)`` once per module of the model (397
  times for SmolLM2), and each call builds a ``TensorNameMap`` of every known tensor name: ~8 s. The
  map is a pure function of its two arguments and is only read afterwards, so one per pair is kept.

transformers imports both names from ``gguf`` inside the function that uses them, so replacing the
module's attributes (``install``) reaches it; nothing else about the files or the weights changes.
"""

from __future__ import annotations

import functools
import math
import mmap
import struct
from dataclasses import dataclass


@functools.cache
def plain_array_reader():
    """``gguf.GGUFReader`` reading from a plain ``ndarray`` view of its memory map."""
    import gguf
    import numpy as np

    class PlainArrayReader(gguf.GGUFReader):
        @property
        def data(self):
            return self._plain_data

        @data.setter
        def data(self, value):
            # A view keeps the mapping alive through its base; only the Python-level subclass goes.
            self._plain_data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainArrayReader


def install() -> None:
    """Installs both speed-ups into the ``gguf`` module; idempotent, and a no-op without ``gguf``."""
    try:
        import gguf
    except ImportError:
        return
    reader = plain_array_reader()  # built on gguf's own reader, the first time it is asked for
    if gguf.GGUFReader is reader:
        return
    gguf.GGUFReader = reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=32)(gguf.get_tensor_name_map)


# A GGUF's header, without the arrays ------------------------------------------------------------
#
# ``inspect_gguf`` runs on every GGUF load and memory estimate (in the web process and again in the
# runner) and needs a handful of scalar fields and the tensor table. gguf's reader builds a numpy
# view of every one of the vocabulary's strings and merges first: about 1 s for the bundled model's
# 49,152 tokens even from a plain array, several seconds for a 151k-token Qwen vocabulary. This reads
# the same layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) and steps over arrays.
# The file is untrusted: every length is checked against the file before it is used.

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_DIMS = 4  # GGML_MAX_DIMS
# Far above any real file (tens of fields, at most tens of thousands of tensors, vocabularies of a few
# hundred thousand entries) and low enough that a hostile header cannot keep the loops going for minutes.
_MAX_FIELDS, _MAX_TENSORS, _MAX_ARRAY_ITEMS = 1 << 16, 1 << 20, 1 << 24


class _Cursor:
    def __init__(self, buffer):
        self.buffer, self.offset, self.size = buffer, 0, len(buffer)

    def take(self, n: int) -> int:
        start = self.offset
        if n < 0 or start + n > self.size:
            raise ValueError("the header runs past the end of the file")
        self.offset = start + n
        return start

    def unpack(self, fmt: str, size: int):
        return struct.unpack_from(fmt, self.buffer, self.take(size))[0]

    def string(self) -> str:
        length = self.unpack("<Q", 8)
        start = self.take(length)
        return bytes(self.buffer[start:start + length]).decode("utf-8")

    def skip_string(self) -> None:
        self.take(self.unpack("<Q", 8))

    def value(self, kind: int):
        """The value of type ``kind``; None for an array, which is stepped over."""
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I", 4), self.unpack("<Q", 8)
            if count > _MAX_ARRAY_ITEMS:
                raise ValueError(f"an array of {count} items")
            if item == _STRING:
                for _ in range(count):
                    self.skip_string()
            elif item in _SCALAR_FORMATS:
                self.take(count * struct.calcsize(_SCALAR_FORMATS[item]))
            else:  # nested arrays appear in no file llama.cpp writes
                raise ValueError(f"unsupported array item type {item}")
            return None
        fmt = _SCALAR_FORMATS.get(kind)
        if fmt is None:
            raise ValueError(f"unknown value type {kind}")
        return self.unpack(fmt, struct.calcsize(fmt))


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # GGMLQuantizationType's name
    n_elements: int
    n_bytes: int
    data_offset: int  # from the start of the file


@dataclass(frozen=True)
class GGUFHeader:
    fields: dict  # every scalar and string field; arrays are left out
    tensors: list[TensorInfo]


def read_header(path) -> GGUFHeader:
    """The scalar fields and the tensor table of the GGUF at ``path``; ValueError when it is malformed."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        cursor = _Cursor(mapped)
        magic = cursor.take(4)
        if bytes(mapped[magic:magic + 4]) != b"GGUF":
            raise ValueError("no GGUF magic")
        version = cursor.unpack("<I", 4)
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        tensor_count, field_count = cursor.unpack("<Q", 8), cursor.unpack("<Q", 8)
        if field_count > _MAX_FIELDS or tensor_count > _MAX_TENSORS:
            raise ValueError(f"{field_count} fields and {tensor_count} tensors")
        fields = {}
        for _ in range(field_count):
            key = cursor.string()
            value = cursor.value(cursor.unpack("<I", 4))
            if value is not None:
                fields[key] = value
        table = []
        for _ in range(tensor_count):
            name = cursor.string()
            n_dims = cursor.unpack("<I", 4)
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions")
            n_elements = math.prod(cursor.unpack("<Q", 8) for _ in range(n_dims))
            kind, offset = GGMLQuantizationType(cursor.unpack("<I", 4)), cursor.unpack("<Q", 8)
            block, size = GGML_QUANT_SIZES[kind]
            table.append((name, kind.name, n_elements, n_elements * size // block, offset))
        alignment = fields.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError("invalid alignment")
        data_start = -(-cursor.offset // alignment) * alignment
    if len({name for name, *_ in table}) != len(table):
        raise ValueError("duplicated tensor name")
    tensors = [TensorInfo(name, kind, n, size, data_start + offset) for name, kind, n, size, offset in table]
    return GGUFHeader(fields=fields, tensors=tensors)
