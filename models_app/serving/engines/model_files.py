"""Model files: locating, confining and resolving paths, GGUF inspection and matching, scrubbing paths
out of messages."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from .contract import EngineLoadError, LoadSpec


# ---------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SAFE_FILENAME = re.compile(r"^[\w.+-]+(/[\w.+-]+)*$")


def is_local_model_id(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~"))


def _check_filename(name: str) -> str:
    if not _SAFE_FILENAME.match(name) or ".." in name.split("/"):
        raise EngineLoadError("model file name is not allowed")
    return name


def locate_model(spec: LoadSpec) -> Path:
    """Where the model lives on this host, without any download.

    Local ids become real paths (symlinks resolved); hub ids are looked up in the
    Hugging Face cache only. A `filename`/`gguf_file` parameter picks one file in a repo.
    """
    model_id = spec.model_id.strip()
    if not model_id:
        raise EngineLoadError("model id is empty")
    filename = spec.parameters.get("filename") or spec.parameters.get("gguf_file")
    if filename:
        _check_filename(filename)
    if is_local_model_id(model_id):
        return Path(os.path.realpath(os.path.expanduser(model_id)))
    if not _HUB_ID.match(model_id):
        raise EngineLoadError("model id is neither a local path nor a Hugging Face repo id")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        # A single GGUF file is enough for llama.cpp; everything else needs the whole snapshot.
        revision = spec.parameters.get("revision") or None
        if filename and spec.engine == "llama.cpp":
            return Path(os.path.realpath(hf_hub_download(model_id, filename, revision=revision, local_files_only=True)))
        return Path(os.path.realpath(snapshot_download(model_id, revision=revision, local_files_only=True)))
    except Exception as exc:
        raise EngineLoadError(
            f"model {model_id} is not in the local Hugging Face cache (downloads are disabled)") from exc


def gguf_matching(names: list[str], quantization: str) -> list[str]:
    """The GGUF file names of a repo or folder that a quantisation picks (``qwen3-8b-q4_k_m.gguf`` for
    Q4_K_M; split files such as ``-00001-of-00002`` come together). Quantisation "none" picks the
    only GGUF there is; a quantisation no file names picks nothing (never another quantisation)."""
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
    wanted = quantization.lower()
    if wanted == "none":
        return ggufs if len(ggufs) == 1 else []
    return [n for n in ggufs if wanted in n.rsplit("/", 1)[-1].lower()]


def is_hub_id(model_id: str) -> bool:
    return bool(_HUB_ID.match(model_id))


def confine(path, allowed_roots: list[Path]) -> Path:
    """The real path of ``path``, which must lie inside one of ``allowed_roots``.

    Containment is checked on the fully resolved path, so `..` segments and symlinks that
    point out of a root are refused alike.
    """
    if "\x00" in str(path):
        raise EngineLoadError("model path contains a NUL byte")
    real = os.path.realpath(os.path.expanduser(str(path)))
    roots = [os.path.realpath(root) for root in allowed_roots]
    if not any(os.path.commonpath([real, root]) == root for root in roots):
        raise EngineLoadError("model path is outside the allowed model roots")
    return Path(real)


def resolve_model_path(spec: LoadSpec, allowed_roots: list[Path]) -> Path:
    """Return the model's real path, refusing local paths outside the allowed roots.

    Hub ids resolve inside the HF cache only.
    """
    path = locate_model(spec)
    if is_local_model_id(spec.model_id.strip()):
        confine(path, allowed_roots)
        filename = spec.parameters.get("filename") or spec.parameters.get("gguf_file")
        if filename and path.is_dir():
            confine(path / filename, allowed_roots)
    return path


def gguf_file_for(spec: LoadSpec, path: Path) -> Path | None:
    """The GGUF file ``spec`` reads at ``path`` (its located model), or None when it reads none.

    llama.cpp reads nothing but GGUF, so any file given to it is one whatever its name, and the
    header check decides: a suffix cannot smuggle a file past inspect_gguf or the memory estimate.
    The other engines take a single file as GGUF by its suffix (and refuse other files at load).
    """
    name = spec.parameters.get("gguf_file") or spec.parameters.get("filename")
    if path.is_dir():
        if name:
            return path / name
        if spec.engine == "llama.cpp":
            # A downloaded GGUF repo holds the file its quantisation names (the first part, if split).
            matching = gguf_matching([p.name for p in path.iterdir()], spec.quantization)
            return path / matching[0] if matching else None
        return None
    if spec.engine == "llama.cpp" or path.suffix.lower() == ".gguf":
        return path
    return None


GGUF_MAGIC = b"GGUF"


def inspect_gguf(path) -> dict:
    """Validate a GGUF file and read the metadata we need, without trusting it.

    Non-regular files are refused before opening them (a FIFO would block, /dev/zero never
    ends), the magic is checked before the parser sees the file, and the tensor data must
    fit inside the file, so truncated downloads are caught here rather than in llama.cpp.
    """
    name = Path(path).name
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise EngineLoadError(f"not a valid GGUF file: {name} does not exist") from None
    except OSError as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise EngineLoadError(f"not a valid GGUF file: {name} is {kind}")
    if st.st_size == 0:
        raise EngineLoadError(f"not a valid GGUF file: {name} is empty")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise EngineLoadError(f"not a valid GGUF file: {name} is not a regular file")
            magic = os.read(fd, 4)
        finally:
            os.close(fd)
    except OSError as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} cannot be read ({exc.strerror})") from None
    if magic != GGUF_MAGIC:
        raise EngineLoadError(f"not a valid GGUF file: {name} has no GGUF header")

    try:
        from gguf import LlamaFileType

        from .gguf_reading import read_header
        header = read_header(path)
    except Exception as exc:
        raise EngineLoadError(f"not a valid GGUF file: {name} is corrupt or truncated "
                              f"({exc.__class__.__name__})") from None
    data_end = max((t.data_offset + t.n_bytes for t in header.tensors), default=0)
    if not header.tensors or data_end > st.st_size:
        raise EngineLoadError(f"not a valid GGUF file: {name} is truncated")

    value = header.fields.get
    architecture = value("general.architecture")
    file_type = value("general.file_type")
    if file_type is not None:
        try:
            file_type = LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_")
        except ValueError:
            file_type = str(file_type)
    else:
        types = [t.type_name for t in header.tensors]
        file_type = max(set(types), key=types.count)
    context_length = value(f"{architecture}.context_length") if architecture else None
    pooling_type = value(f"{architecture}.pooling_type") if architecture else None
    template = value("tokenizer.chat_template")
    return {
        "file_type": file_type,
        "architecture": architecture,
        "context_length": int(context_length) if context_length is not None else None,
        "pooling_type": int(pooling_type) if isinstance(pooling_type, int) else None,
        "chat_template": template if isinstance(template, str) and template else None,
        "parameter_count": sum(t.n_elements for t in header.tensors),
    }


_ABS_PATH = re.compile(r"(?<![\w.])(/[^\s'\"():,]+)")


def scrub_paths(text: str) -> str:
    """Replace absolute paths in a message by their last component."""
    return _ABS_PATH.sub(lambda m: os.path.basename(m.group(1).rstrip("/")) or "/", text)
