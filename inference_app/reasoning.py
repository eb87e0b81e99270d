"""Splitting a reasoning model's stream into reasoning and answer, as it arrives.

Models such as Qwen3 and the DeepSeek-R1 distills wrap their reasoning in ``<think>…</think>``.
Some chat templates (the R1 distills') put the opening tag into the prompt, so the reply starts
inside the reasoning and only the closing tag appears. So for a model with ``think_tags`` a reply
is taken to start inside the reasoning, with or without an explicit opening tag; a reply that
never closes it was no reasoning at all, and ``finish`` says so.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


def template_uses_think_tags(chat_template: str | None) -> bool:
    return bool(chat_template) and CLOSE in chat_template


class ThinkSplitter:
    """Feed deltas; get ``(kind, text)`` pieces, kind ``reasoning`` or ``content``.

    A tag split across deltas is held back until it can be recognised, so no piece ever shows
    part of a tag, and the pieces concatenate to exactly what the model produced outside the tags.
    """

    def __init__(self):
        self.inside = True
        self.closed = False
        self.at_start = True
        self.after_close = False
        self.buffer = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.buffer += text
        if self.at_start:
            stripped = self.buffer.lstrip()
            if len(stripped) < len(OPEN) and OPEN.startswith(stripped):
                return []  # could still become an opening tag
            self.at_start = False
            if stripped.startswith(OPEN):
                self.buffer = stripped[len(OPEN):]
        if not self.inside:
            rest, self.buffer = self.buffer, ""
            if self.after_close:  # the blank lines between reasoning and answer belong to neither
                rest = rest.lstrip("\n")
                self.after_close = not rest
            return [("content", rest)] if rest else []
        index = self.buffer.find(CLOSE)
        if index >= 0:
            reasoning, rest = self.buffer[:index], self.buffer[index + len(CLOSE):]
            self.inside, self.closed, self.after_close, self.buffer = False, True, True, ""
            return ([("reasoning", reasoning)] if reasoning else []) + self.feed(rest)
        keep = _partial_suffix(self.buffer, CLOSE)
        emit, self.buffer = self.buffer[: len(self.buffer) - keep], self.buffer[len(self.buffer) - keep:]
        return [("reasoning", emit)] if emit else []

    def flush(self) -> list[tuple[str, str]]:
        rest, self.buffer = self.buffer, ""
        if not rest:
            return []
        return [("reasoning" if self.inside else "content", rest)]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def finish(reasoning: str, answer: str, splitter: ThinkSplitter | None) -> tuple[str, str]:
    """The stored (reasoning, answer): a reply that never closed its reasoning was all answer."""
    if splitter is not None and not splitter.closed:
        return "", reasoning + answer
    return reasoning, answer

