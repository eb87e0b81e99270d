"""Model folders made for tests from the bundled model's files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

# Like Mistral's and Llama 2's templates: refuses two user turns in a row.
ALTERNATING_ONLY_TEMPLATE = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def folder_with_template(source: Path, target: Path, template: str) -> Path:
    """A copy of the safetensors folder ``source`` whose tokenizer uses ``template``.

    The weights are hard links (no copy of hundreds of MB); the tokenizer's config is a new file,
    so the source folder keeps its own template.
    """
    shutil.copytree(source, target, copy_function=os.link)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = template
    config_path.unlink()
    config_path.write_text(json.dumps(config))
    chat_template_file = target / "chat_template.jinja"
    if chat_template_file.exists():
        chat_template_file.unlink()
        chat_template_file.write_text(template)
    return target


def bert_gguf(folder: Path, target: Path) -> Path:
    """The sentence-transformers BERT folder ``folder`` (the bundled all-MiniLM-L6-v2) as an F32 GGUF
    that llama.cpp loads for embeddings, written the way llama.cpp's convert_hf_to_gguf.py writes BERT:
    WordPiece vocabulary in "phantom space" form, mean pooling, non-causal attention."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    writer = gguf.GGUFWriter(str(target), "bert")
    writer.add_name(folder.name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t if t in specials else t[2:] if t.startswith("##") else "\u2581" + t for t in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in vocab])
    for kind, token in (("bos", "[CLS]"), ("eos", "[SEP]"), ("unk", "[UNK]"), ("sep", "[SEP]"), ("pad", "[PAD]"),
                        ("mask", "[MASK]")):
        getattr(writer, f"add_{kind}_token_id")(vocab.index(token))
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name.startswith("pooler.") or name == "embeddings.position_ids":
            continue
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ValueError(f"no GGUF name for {name}")
        writer.add_tensor(mapped, tensor.astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
