"""Session files: chat sessions exported to, and imported from, JSON files in the caller's own folder.

Files live only in ``DATA_DIR/sessions/<user id>/`` (THREATS C1, C5, C18):
  * every name a request gives, for save, load and delete alike, goes through ``file_name``;
  * every file operation is relative to a descriptor of the user's folder and uses O_NOFOLLOW, so
    neither a crafted name nor a symlink planted in the folder reaches anything outside it;
  * files are JSON only, read with a size limit and validated against one schema;
  * a save writes a temporary file, syncs it and renames it over the old one, so a failure leaves
    the previous file as it was.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import unicodedata
import uuid
from contextlib import contextmanager, suppress
from datetime import datetime, timezone as dt_timezone
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count

from beautyai_site.api import errors
from beautyai_site.api.envelope import iso
from beautyai_site.api.jsonsafe import UntrustedJSONError, loads_untrusted
from inference_app.models import ChatMessage, ChatSession
from inference_app.services import session_get_for_user
from inference_app.tool_serializers import SessionFileSerializer
from models_app.models import ModelConfig

FORMAT, VERSION = "beautyai.session", 1
SUFFIX = ".json"
NAME_MAX_CHARS = 100
TEMP_PREFIX = ".tmp-"
NAME_RULE = ("a file name: letters, digits, space, '.', '_', '-', at most 100 characters, "
             "not starting with '.', without '..'")


def max_file_bytes() -> int:
    return int(settings.SESSION_FILE_MAX_BYTES)


def _bad(field: str, message: str):
    return errors.ValidationError(f"{field}: {message}", details={"fields": {field: [message]}})


def _allowed(char: str, first: bool) -> bool:
    category = unicodedata.category(char)
    # Marks (Arabic vowel signs, Devanagari matras) belong to the letter before them.
    return category[0] == "L" or category == "Nd" or (not first and (category[0] == "M" or char in " ._-"))


def file_name(value, *, field: str) -> str:
    """The one check for every session file name (save, load, delete): a plain name, ``.json`` added.

    Refused: separators of any OS, ``..``, NUL, absolute and drive forms, percent-encoding, a
    leading dot (hidden and temporary files), surrounding spaces, more than 100 characters.
    """
    if not isinstance(value, str) or not value:
        raise _bad(field, f"must be {NAME_RULE}")
    name = unicodedata.normalize("NFC", value)
    if (len(name) > NAME_MAX_CHARS or name != name.strip() or ".." in name
            or not all(_allowed(char, index == 0) for index, char in enumerate(name))):
        raise _bad(field, f"must be {NAME_RULE}")
    if not name.endswith(SUFFIX):
        name += SUFFIX
    if ".." in name:  # "x." + ".json"
        raise _bad(field, f"must be {NAME_RULE}")
    return name


@contextmanager
def user_folder(user):
    """A descriptor of the caller's folder, created on first use; no component may be a symlink."""
    fd = os.open(Path(settings.DATA_DIR), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in ("sessions", str(user.pk)):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                with suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, flags, dir_fd=fd)
            except OSError:
                raise errors.SystemError("The session folder is not usable.") from None
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _lstat(folder: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _require_regular(info: os.stat_result, field: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise _bad(field, "not a regular file (symbolic links and other kinds are refused)")


def _read(folder: int, name: str, *, field: str) -> bytes:
    limit = max_file_bytes()
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    except FileNotFoundError:
        raise errors.NotFoundError(f"No session file named '{name}'.") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _bad(field, "a symbolic link; refused") from None
        raise errors.SystemError("The session file could not be read.") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _require_regular(info, field)
        if info.st_size > limit:
            raise _bad(field, f"the file is larger than {limit} bytes")
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise _bad(field, f"the file is larger than {limit} bytes")
    return raw


def _first_error(detail, path: str = "") -> str:
    """'messages[1].role: "robot" is not a valid choice.' from DRF's nested error structure."""
    if isinstance(detail, dict):
        for key, inner in detail.items():
            if inner:
                if key == "non_field_errors":
                    where = path
                elif isinstance(key, int):  # a list item's errors, keyed by its index
                    where = f"{path}[{key}]"
                else:
                    where = f"{path}.{key}" if path else key
                return _first_error(inner, where)
    elif isinstance(detail, list):
        for index, inner in enumerate(detail):
            if inner:
                return _first_error(inner, f"{path}[{index}]" if isinstance(inner, (dict, list)) else path)
    return f"{path}: {detail}" if path else str(detail)


def validated_document(data, *, field: str) -> dict:
    serializer = SessionFileSerializer(data=data)
    if not serializer.is_valid():
        raise errors.ValidationError(f"{field}: {_first_error(serializer.errors)}",
                                     details={"fields": {field: serializer.errors}})
    return dict(serializer.validated_data)


def parse_file(raw: bytes, *, field: str) -> dict:
    """Empty, truncated, non-UTF-8, non-JSON and wrong-shape files are all a 400."""
    if not raw.strip():
        raise _bad(field, "the file is empty")
    try:
        data = loads_untrusted(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise _bad(field, "the file is not UTF-8 text") from None
    except UntrustedJSONError as exc:
        raise _bad(field, str(exc)) from None
    except ValueError:
        raise _bad(field, "the file is not valid JSON (truncated or damaged)") from None
    return validated_document(data, field=field)



def _tool_fields(tool_calls: list, tool_call_id: str) -> dict:
    """A message's tool fields, written only when it has them (files without tools look as before)."""
    fields = {}
    if tool_calls:
        fields["tool_calls"] = [{"id": call["id"], "type": "function",
                                 "function": {"name": call["function"]["name"],
                                              "arguments": call["function"]["arguments"]}} for call in tool_calls]
    if tool_call_id:
        fields["tool_call_id"] = tool_call_id
    return fields


def session_document(session: ChatSession) -> dict:
    """The file form of a stored session. It holds no save time, so saving twice gives the same bytes."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "session_id": str(session.id),
        "model_name": session.model_name,
        "title": session.title,
        "created_at": iso(session.created_at),
        "messages": [
            {
                "role": message.role,
                "content": message.content,
                "reasoning": message.reasoning,
                "finish_reason": message.finish_reason,
                "prompt_tokens": message.prompt_tokens,
                "completion_tokens": message.completion_tokens,
                "stats": message.stats,
                "created_at": iso(message.created_at),
                **_tool_fields(message.tool_calls, message.tool_call_id),
            }
            for message in session.messages.all()
        ],
    }


def _document_from_data(document: dict, session_id) -> dict:
    """``session_data`` given to save, in the same form as an exported session."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "session_id": str(session_id or document.get("session_id") or uuid.uuid4()),
        "model_name": document["model_name"],
        "title": document["title"],
        "created_at": iso(document.get("created_at")),
        "messages": [
            {
                "role": message["role"],
                "content": message["content"],
                "reasoning": message["reasoning"],
                "finish_reason": message["finish_reason"],
                "prompt_tokens": message.get("prompt_tokens"),
                "completion_tokens": message.get("completion_tokens"),
                "stats": message["stats"],
                "created_at": iso(message.get("created_at")),
                **_tool_fields(message["tool_calls"], message["tool_call_id"]),
            }
            for message in document["messages"]
        ],
    }


def _write_atomically(folder: int, name: str, payload: bytes) -> int:
    temp = f"{TEMP_PREFIX}{secrets.token_hex(8)}{SUFFIX}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)  # the rename itself reaches the disk
    except OSError as exc:
        with suppress(OSError):
            os.unlink(temp, dir_fd=folder)
        raise errors.SystemError(
            "The session file could not be written; a previous file of that name is unchanged.",
            details={"reason": errno.errorcode.get(exc.errno or 0, "EIO")},
        ) from None
    return os.stat(name, dir_fd=folder, follow_symlinks=False).st_size


# Services ---------------------------------------------------------------------------------------

def session_file_save(*, user, session_id=None, session_data: dict | None = None,
                      output_file: str | None = None) -> dict:
    """Writes the stored session ``session_id``, or the given ``session_data``, to the caller's folder."""
    if session_data:
        document = _document_from_data(validated_document(session_data, field="session_data"), session_id)
    elif session_id is not None:
        document = session_document(session_get_for_user(user=user, session_id=session_id))
    else:
        raise _bad("session_id", "required unless session_data is given")
    name = file_name(output_file or f"session_{document['session_id']}", field="output_file")
    payload = (json.dumps(document, ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")
    if len(payload) > max_file_bytes():
        raise errors.PayloadTooLargeError(f"The session is larger than {max_file_bytes()} bytes and could not be "
                                          f"loaded again; not saved.")
    with user_folder(user) as folder:
        existing = _lstat(folder, name)
        if existing is not None:
            _require_regular(existing, "output_file")
        size = _write_atomically(folder, name, payload)
    return {"session_id": document["session_id"], "file_path": name, "file_size_bytes": size}


def _store(user, document: dict) -> ChatSession:
    """Creates the session, or replaces the messages of the caller's session with that id."""
    session_id = document.get("session_id")
    model = ModelConfig.objects.filter(name=document["model_name"]).first() if document["model_name"] else None
    fields = {"model": model, "model_name": document["model_name"], "title": document["title"]}
    session = ChatSession.objects.select_for_update().filter(id=session_id, owner=user).first() \
        if session_id else None
    if session is None:
        # Another user's session with this id stays untouched; the file then becomes a new session.
        try:
            with transaction.atomic():
                session = ChatSession.objects.create(id=session_id or uuid.uuid4(), owner=user, **fields)
        except IntegrityError:
            session = ChatSession.objects.create(owner=user, **fields)
    else:
        session.messages.all().delete()
        for key, value in fields.items():
            setattr(session, key, value)
        session.save()
    if document.get("created_at"):
        ChatSession.objects.filter(pk=session.pk).update(created_at=document["created_at"])
    messages = ChatMessage.objects.bulk_create(
        ChatMessage(session=session, role=m["role"], content=m["content"], reasoning=m["reasoning"],
                    finish_reason=m["finish_reason"], prompt_tokens=m.get("prompt_tokens"),
                    completion_tokens=m.get("completion_tokens"), stats=m["stats"],
                    tool_calls=m.get("tool_calls") or [], tool_call_id=m.get("tool_call_id") or "")
        for m in document["messages"]
    )
    # auto_now_add overwrote the times on insert; the file's times are put back.
    dated = []
    for message, source in zip(messages, document["messages"]):
        if source.get("created_at"):
            message.created_at = source["created_at"]
            dated.append(message)
    ChatMessage.objects.bulk_update(dated, ["created_at"])
    return ChatSession.objects.get(pk=session.pk)


def session_file_load(*, user, input_file: str) -> dict:
    name = file_name(input_file, field="input_file")
    with user_folder(user) as folder:
        raw = _read(folder, name, field="input_file")
    document = parse_file(raw, field="input_file")
    with transaction.atomic():
        session = _store(user, document)
    data = session_document(session)
    return {"session_data": data, "session_id": str(session.id), "message_count": len(data["messages"])}


def _file_entry(folder: int, entry: os.DirEntry) -> dict:
    info = entry.stat(follow_symlinks=False)
    try:
        document = parse_file(_read(folder, entry.name, field="file"), field="file")
    except errors.APIError:
        document = None
    return {
        "source": "file",
        "name": entry.name,
        "size_bytes": info.st_size,
        "modified_at": iso(_utc(info.st_mtime)),
        "valid": document is not None,
        "message_count": len(document["messages"]) if document else None,
        "session_id": str(document["session_id"]) if document and document.get("session_id") else None,
    }


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=dt_timezone.utc)


def session_list(*, user, limit: int, offset: int) -> dict:
    """The caller's database sessions (newest first), then their files (newest first), as one paginated list."""
    stored = ChatSession.objects.filter(owner=user).annotate(message_count=Count("messages")).order_by("-updated_at")
    stored_total = stored.count()
    page = [
        {"source": "database", "session_id": str(s.id), "title": s.title, "model_name": s.model_name,
         "message_count": s.message_count, "created_at": iso(s.created_at), "updated_at": iso(s.updated_at)}
        for s in (stored[offset: offset + limit] if offset < stored_total else [])
    ]
    with user_folder(user) as folder:
        with os.scandir(folder) as entries:
            files = sorted(
                (e for e in entries
                 if e.name.endswith(SUFFIX) and not e.name.startswith(".") and e.is_file(follow_symlinks=False)),
                key=lambda e: (-e.stat(follow_symlinks=False).st_mtime, e.name),
            )
        start = max(0, offset - stored_total)
        page += [_file_entry(folder, entry) for entry in files[start: start + limit - len(page)]]
    return {"sessions": page, "total_count": stored_total + len(files), "database_count": stored_total,
            "file_count": len(files), "limit": limit, "offset": offset}


def session_file_delete(*, user, session_name: str, delete_database_session: bool = False) -> dict:
    """Deletes the named file and, when asked, the caller's database session the file holds."""
    name = file_name(session_name, field="session_name")
    session_id = None
    with user_folder(user) as folder:
        info = _lstat(folder, name)
        if info is None:
            raise errors.NotFoundError(f"No session file named '{name}'.")
        _require_regular(info, "session_name")
        if delete_database_session:
            with suppress(errors.ValidationError):
                raw = _read(folder, name, field="session_name")
                session_id = parse_file(raw, field="session_name").get("session_id")
        try:
            os.unlink(name, dir_fd=folder)
        except FileNotFoundError:
            raise errors.NotFoundError(f"No session file named '{name}'.") from None
    deleted = bool(session_id) and ChatSession.objects.filter(id=session_id, owner=user).delete()[0] > 0
    return {"session_name": name, "file_deleted": True, "session_id": str(session_id) if session_id else None,
            "database_session_deleted": deleted}
