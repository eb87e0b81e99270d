"""transformers' GGUF loader reads through gguf_reading's faster reader and name maps, and reads the same."""

from __future__ import annotations

import gguf
import numpy as np

from models_app.serving.engines import gguf_reading
from models_app.serving.engines.bundled import bundled_gguf_path


def test_the_reader_slices_a_plain_array_and_reads_every_field_and_tensor_as_gguf_own_reader_does():
    gguf_reading.install()
    path = bundled_gguf_path()
    fast, own = gguf.GGUFReader(path), gguf_reading.memmap_reader(path)
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
    assert gguf_reading.memmap_reader is not reader and not issubclass(gguf_reading.memmap_reader, reader)
