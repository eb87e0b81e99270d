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
