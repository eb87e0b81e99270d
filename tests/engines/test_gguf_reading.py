"""GGUF files read through gguf_reading (transformers' loader, and our own header checks) read as gguf reads them."""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest

from models_app.serving.engines import gguf_reading
from models_app.serving.engines.bundled import bundled_gguf_path


def test_the_reader_slices_a_plain_array_and_reads_every_field_and_tensor_as_gguf_own_reader_does():
    gguf_reading.install()
    path = bundled_gguf_path()
    fast, own = gguf.GGUFReader(path), gguf_reading.plain_array_reader().__bases__[0](path)
    assert isinstance(own.data, np.memmap) and not isinstance(fast.data, np.memmap)
    assert list(fast.fields) == list(own.fields)
    tokens = fast.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == 49152
    assert [bytes(tokens.parts[i]) for i in tokens.data] == [bytes(own.fields["tokenizer.ggml.tokens"].parts[i])
                                                            for i in own.fields["tokenizer.ggml.tokens"].data]
    assert [(t.name, t.tensor_type, t.data_offset) for t in fast.tensors] == \
           [(t.name, t.tensor_type, t.data_offset) for t in own.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(fast.tensors, own.tensors))


def test_a_tensor_name_map_is_built_once_per_architecture_and_layer_count():
    gguf_reading.install()
    first = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
    assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is first
    assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not first
    assert first.get_name("model.layers.29.self_attn.q_proj") == "blk.29.attn_q"


def test_installing_twice_keeps_one_layer_of_each():
    gguf_reading.install()
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf_reading.install()
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (reader, name_map)
    assert reader is gguf_reading.plain_array_reader() and reader.__bases__[0].__name__ == "GGUFReader"


def _own_header(path):
    """What gguf's own reader makes of ``path``: its scalar and string fields and its tensor table."""
    own = gguf_reading.plain_array_reader()(str(path), "r")
    fields = {key: field.contents() for key, field in own.fields.items()
              if not key.startswith("GGUF.") and field.types[0] != gguf.GGUFValueType.ARRAY}
    tensors = [(t.name, t.tensor_type.name, int(t.n_elements), int(t.n_bytes), int(t.data_offset)) for t in own.tensors]
    return fields, tensors


def test_the_header_reader_gives_the_fields_and_tensor_table_gguf_own_reader_gives():
    path = bundled_gguf_path()
    header = gguf_reading.read_header(path)
    fields, tensors = _own_header(path)
    assert header.fields == pytest.approx(fields) and "tokenizer.ggml.tokens" not in header.fields
    assert [(t.name, t.type_name, t.n_elements, t.n_bytes, t.data_offset) for t in header.tensors] == tensors
    assert header.fields["general.architecture"] == "llama" and len(tensors) == 272


def _with_first_field_length(path, length: int, tmp_path):
    """The bundled GGUF with its first key's length (after magic, version and the two counts) replaced."""
    data = bytearray(path.read_bytes()[:64 * 1024])
    struct.pack_into("<Q", data, 24, length)
    target = tmp_path / "hostile.gguf"
    target.write_bytes(bytes(data))
    return target


@pytest.mark.parametrize("length", [2**63, 10**9])
def test_a_length_past_the_end_of_the_file_is_refused_before_anything_is_read(tmp_path, length):
    with pytest.raises(ValueError, match="past the end"):
        gguf_reading.read_header(_with_first_field_length(bundled_gguf_path(), length, tmp_path))


def test_a_header_cut_short_is_refused(tmp_path):
    data = bundled_gguf_path().read_bytes()
    for size in (3, 20, 1024, 600 * 1024):
        path = tmp_path / f"cut-{size}.gguf"
        path.write_bytes(data[:size])
        with pytest.raises(ValueError):
            gguf_reading.read_header(path)


@pytest.mark.parametrize("offset, count", [(8, 2**40), (16, 2**40)])  # the tensor count, the field count
def test_counts_no_real_file_has_are_refused_before_any_loop_runs(tmp_path, offset, count):
    data = bytearray(bundled_gguf_path().read_bytes()[:64 * 1024])
    struct.pack_into("<Q", data, offset, count)
    path = tmp_path / "many.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fields and"):
        gguf_reading.read_header(path)


def test_an_array_longer_than_any_vocabulary_is_refused_before_it_is_stepped_over(tmp_path):
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"a" + struct.pack("<IIQ", 9, 8, 2**30)
    path = tmp_path / "array.gguf"
    path.write_bytes(header + b"\0" * 1024)
    with pytest.raises(ValueError, match="an array of 1073741824 items"):
        gguf_reading.read_header(path)
