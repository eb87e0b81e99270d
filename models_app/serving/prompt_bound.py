"""An upper bound on a chat prompt's tokens that the web process computes without the tokenizer.

Before anything of a chat is stored, the web process must know whether the prompt and max_tokens
fit the model's context window. Counting exactly is a round trip to the runner (≈ 1.8 ms of a new
chat's first token, 5 ms with a 44-turn history, docs/performance.md). Most chats are far from the
window, and for them a bound answers as well:

- A message's content takes at most one token per UTF-8 byte, plus ``CONTENT_SLACK``. Byte-level
  BPE (GPT-2, Llama 3, Qwen, SmolLM) makes no token of less than one byte; SentencePiece with byte
  fallback (Llama 2, Mistral) at most one per byte, plus the leading-space marker it may add. Where
  an engine tokenizes the whole prompt at once, pre-tokenization at the content's two edges may
  split the template's text differently than next to an empty message: the slack is for that.
- The template's own tokens are measured when the model loads: the prompts of empty messages in a
  few shapes (with and without a system message first, one to six alternating turns) give the most any one
  message added (``per_message``) and the most left over (``base``), plus ``BASE_SLACK`` for what a
  template adds that the shapes do not show (the empty think block of ``enable_thinking: false``).

Only conversations of the measured shape are bounded: text turns, an optional system turn first, then
user and assistant alternating, ending with the user's. The count also tells a template's refusal
(two user turns in a row, a system turn it does not take) before anything is stored, and the
measurement showed that the template takes this shape. With tools, tool calls or tool results, or
any other order of turns, the caller counts exactly, as it does where the bound is too high for the
window. The bound errs high on purpose (text takes 3-5 bytes per token), so it decides only for
prompts well inside the window. Should a template defeat the measurement anyway, the engines' own check at
generation still holds: a prompt longer than the window is an error, and max_tokens shrinks to what
is left of it.
"""

from __future__ import annotations

from typing import Callable

CONTENT_SLACK = 2
BASE_SLACK = 16

_EXCHANGES = ("user", "assistant", "user", "assistant", "user", "assistant")


def _empty(roles) -> list[dict]:
    return [{"role": role, "content": ""} for role in roles]


def measure(count: Callable[[list[dict]], int]) -> dict | None:
    """``{"base", "per_message", "system"}`` from ``count`` (messages -> prompt tokens), or None when
    the template refuses the plain shapes (then every chat is counted exactly)."""

    def family(prefix: tuple[str, ...]) -> list[int] | None:
        counts = []
        for n in range(1, len(_EXCHANGES) + 1):
            try:
                counts.append(int(count(_empty(prefix + _EXCHANGES[:n]))))
            except Exception:  # noqa: BLE001 - a template that refuses a shape is measured without it
                return None
        return counts

    plain = family(())
    if plain is None:
        return None
    with_system = family(("system",))
    steps = [b - a for a, b in zip(plain, plain[1:])]
    shapes = [(c, n + 1) for n, c in enumerate(plain)]
    if with_system is not None:
        steps += [b - a for a, b in zip(with_system, with_system[1:])] + [with_system[0] - plain[0]]
        shapes += [(c, n + 2) for n, c in enumerate(with_system)]
    per_message = max(0, *steps)
    base = max(c - per_message * n for c, n in shapes)
    return {"base": max(0, base) + BASE_SLACK, "per_message": per_message, "system": with_system is not None}


def upper_bound(measured: dict | None, messages: list[dict], tools: list[dict] | None = None) -> int | None:
    """At least the tokens of ``messages``' prompt, or None where only counting can tell."""
    if not measured or tools:
        return None
    turns = messages[1:] if messages and messages[0].get("role") == "system" else messages
    if (len(turns) % 2 == 0 or (turns is not messages and not measured.get("system"))
            or any(m.get("role") != _EXCHANGES[i % 2] for i, m in enumerate(turns))):
        return None
    total = measured["base"]
    per_message = measured["per_message"] + CONTENT_SLACK
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or message.get("tool_calls"):
            return None
        total += per_message + len(content.encode("utf-8"))
    return total


def fits(measured: dict | None, messages: list[dict], tools: list[dict] | None, room: int) -> bool:
    """Whether the bound alone shows that the prompt takes at most ``room`` tokens."""
    bound = upper_bound(measured, messages, tools)
    return bound is not None and bound <= room

