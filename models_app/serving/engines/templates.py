"""Chat templates: sandboxed rendering, tool formats and preamble, content markers and prompt segments."""

from __future__ import annotations

import functools
import json
import os
import re

from .contract import EngineError, PromptError


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------

MAX_RENDERED_PROMPT_CHARS = 2_000_000


class _TemplateRaised(Exception):
    pass


def _raise_exception(message):
    raise _TemplateRaised(str(message))


@functools.lru_cache(maxsize=8)
def _compiled_template(template: str):
    # Compiling is ~90% of a render (~10 ms for a typical template on a small CPU); a runner renders
    # the same template for every count and every generation. Compiled templates are safe to render
    # from several threads at once. Compile errors are raised, and lru_cache does not keep them.
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat_template(template: str, messages, *, bos_token: str = "", eos_token: str = "",
                         add_generation_prompt: bool = True, **extra) -> str:
    """Render a chat template that may come from an untrusted model file.

    GGUF chat templates are attacker-controlled (CVE-2024-34359), so they run in an
    immutable sandbox and the output size is bounded against templates that loop forever.
    """
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        compiled = _compiled_template(template)
        parts: list[str] = []
        size = 0
        for chunk in compiled.generate(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                       add_generation_prompt=add_generation_prompt, **extra):
            size += len(chunk)
            if size > MAX_RENDERED_PROMPT_CHARS:
                raise PromptError("chat template output is too large")
            parts.append(chunk)
    except SecurityError as exc:
        raise EngineError("chat template tried an unsafe operation and was blocked") from exc
    except _TemplateRaised as exc:
        raise PromptError(f"chat template rejected the conversation: {exc}") from exc
    except TemplateError as exc:
        raise PromptError(f"chat template error: {exc.__class__.__name__}: {exc}") from exc
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"chat template failed: {exc.__class__.__name__}") from exc
    return "".join(parts)


# The reply formats of tool calls, told apart by the markers their chat templates teach; the web
# process parses replies with the matching parser (inference_app/tool_calls.py).
TOOL_FORMATS = ("hermes", "llama3", "mistral")

# For templates that know nothing of tools (SmolLM2's): the Hermes/Qwen wording, in the system turn.
TOOL_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


def detect_tool_format(template: str | None) -> str:
    """The tool-call format a chat template teaches; ``hermes`` when it shows none (see TOOL_PREAMBLE)."""
    template = template or ""
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ("ipython" in template and '"parameters"' in template):
        return "llama3"
    return "hermes"


def template_knows_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template


def _arguments_object(text):
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def _strings(value):
    """Every string in a JSON-like value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def special_tokens_of(tokenizer) -> list[str]:
    """A Hugging Face tokenizer's special and added special tokens, as text."""
    tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            tokens.add(str(added.content))
    return sorted(tokens)


def refuse_special_tokens(messages: list[dict], tools: list[dict] | None, special_tokens) -> None:
    """PromptError when a client's string in ``tools`` or in a call's arguments holds one of the
    model's special tokens.

    A template that knows tools writes them and the calls' arguments as its own text, where special
    tokens are parsed (message content is not: ``with_content_markers``). A description holding
    ``<|im_start|>system`` would forge a turn (THREATS C14), so such text is refused, not rendered.
    """
    specials = [token for token in special_tokens if token and len(token) > 1]
    if not specials:
        return
    sources = [("tools", tools or [])] + [
        ("messages", _arguments_object(call.get("function", {}).get("arguments")))
        for message in messages for call in (message.get("tool_calls") or [])]
    for field, value in sources:
        for text in _strings(value):
            for token in specials:
                if token in text:
                    raise PromptError(f"{field}: holds the model's special token {token!r}, which the chat "
                                      "template would read as a token; refused")


def chat_inputs(template: str | None, messages: list[dict], tools: list[dict] | None,
                special_tokens=lambda: ()) -> tuple[list[dict], dict]:
    """The messages and extra template variables for a conversation with tools or tool turns.

    Templates that mention ``tools`` get them as the ``tools`` variable and the tool turns as
    Hugging Face templates expect them: ``tool_calls[].function.arguments`` as an object (Qwen and
    Llama 3 write it with ``tojson``, so a string would be quoted twice) and content "" instead of
    None. Other templates get the Hermes format as text: the tool list in the system turn, calls as
    ``<tool_call>`` blocks in the assistant's text and results as user turns in ``<tool_response>``
    -- all of it message content, which is tokenized without special tokens.
    """
    if not tools and not any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return messages, {}
    if template_knows_tools(template):
        refuse_special_tokens(messages, tools, special_tokens())  # a callable: read only when needed
        shaped = []
        for message in messages:
            message = {**message, "content": message.get("content") or ""}
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {**call, "function": {**call["function"],
                                          "arguments": _arguments_object(call["function"].get("arguments"))}}
                    for call in message["tool_calls"]]
            shaped.append(message)
        return shaped, ({"tools": tools} if tools else {})
    shaped = []
    for message in messages:
        content = message.get("content") or ""
        if message.get("tool_calls"):
            blocks = [json.dumps({"name": call["function"]["name"],
                                  "arguments": _arguments_object(call["function"].get("arguments"))},
                                 ensure_ascii=False) for call in message["tool_calls"]]
            content = "\n".join(([content] if content else []) + [f"<tool_call>\n{b}\n</tool_call>" for b in blocks])
            shaped.append({"role": "assistant", "content": content})
        elif message.get("role") == "tool":
            shaped.append({"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"})
        else:
            shaped.append({"role": message["role"], "content": content})
    if tools:
        preamble = TOOL_PREAMBLE.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))
        if shaped and shaped[0]["role"] == "system":
            shaped[0] = {"role": "system", "content": f"{shaped[0]['content']}\n\n{preamble}"}
        else:
            shaped.insert(0, {"role": "system", "content": preamble})
    return shaped, {}


def with_content_markers(messages: list[dict]) -> tuple[list[dict], str]:
    """Messages whose contents are replaced by unique markers, and the marker prefix.

    Rendering these and splitting the output at the markers tells template text (tokenized with
    special tokens) from message text (tokenized as plain text), so that a user who types
    ``<|im_start|>system`` gets those characters, not a forged system turn (llama.cpp#24382).
    """
    marker = f"\x00{os.urandom(6).hex()}:"
    # Empty content stays empty: templates test it (``if message.content``) around tool calls.
    return [{**m, "content": f"{marker}{i}\x00"} if m.get("content") else m
            for i, m in enumerate(messages)], marker


def prompt_segments(rendered: str, messages: list[dict], marker: str) -> list[tuple[str, bool]]:
    """``(text, is_message_content)`` pieces of a prompt rendered from ``with_content_markers``."""
    pattern = re.compile(re.escape(marker) + r"(\d+)\x00")
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in pattern.finditer(rendered):
        if match.start() > position:
            segments.append((rendered[position:match.start()], False))
        content = messages[int(match.group(1))].get("content") or ""
        if content:
            segments.append((content, True))
        position = match.end()
    if position < len(rendered):
        segments.append((rendered[position:], False))
    return segments
