"""A reply written to attack the reader: Markdown and raw HTML that would run script, load content or
lead to script URLs, stored and streamed. It shows as text or inert Markdown, and nothing runs."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from inference_app.models import ChatMessage, ChatSession
from tests.pages.conftest import browser_thread, screenshot, sign_in, ui  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

HOSTILE = """Some code:

```js
window.__pwned = 1
```

- one
- two

| a | b |
|---|---|
| 1 | 2 |

[script link](javascript:window.__pwned=1)
[data link](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)
[shouting](  JaVaScRiPt:window.__pwned=1)
[entity](&#106;avascript:window.__pwned=1)
[vb](vbscript:msgbox)
<javascript:window.__pwned=1>
<img src=x onerror="window.__pwned=1;alert(1)">
<script>window.__pwned=1;alert(2)</script>
<svg onload="window.__pwned=1"></svg><iframe src="javascript:alert(3)"></iframe>
<a href="https://example.com" onclick="window.__pwned=1">raw anchor</a>
[safe link](https://example.com "a title")
![tracking pixel](https://example.com/pixel.png)
"""

SAFE_ATTRIBUTES = {"class", "dir", "href", "rel", "start", "target", "title", "type"}
SAFE_TAGS = {"a", "blockquote", "br", "button", "code", "del", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6",
             "hr", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"}

# Every element and attribute the renderer creates while the text arrives one character at a time,
# each prefix rendered as a frame would (a half-typed link or tag is a state of its own).
EVERY_PREFIX = """async (source) => {
  const {streamMarkdown} = await import("/static/beautyai/markdown.js");
  const target = document.createElement("div");
  document.getElementById("messages").append(target);
  const made = [];
  const observer = new MutationObserver(() => {});
  observer.observe(target, {childList: true, subtree: true});
  const collect = () => observer.takeRecords().forEach((record) => record.addedNodes.forEach((node) => {
    if (node.nodeType !== Node.ELEMENT_NODE) return;
    for (const element of [node, ...node.querySelectorAll("*")]) {
      made.push({tag: element.localName, attributes: [...element.attributes].map((a) => [a.name, a.value])});
    }
  }));
  const stream = streamMarkdown(target);
  for (const character of source) {
    stream.append(character);
    stream.flush();
    collect();
  }
  stream.finish();
  collect();
  return made;
}"""


def test_a_hostile_reply_renders_inert_whether_stored_or_streamed(ui, make_user):
    user = make_user("chat")
    session = ChatSession.objects.create(owner=user, model_name="smollm2-135m-instruct", title="Hostile")
    ChatMessage.objects.create(session=session, role="user", content="Show me everything.")
    ChatMessage.objects.create(session=session, role="assistant", content=HOSTILE, reasoning=HOSTILE)
    dialogs = []

    def steps(page):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        sign_in(page, user, landing=f"/chat/{session.id}/")
        page.click("#messages details.reasoning summary")
        reply = page.locator("#messages .message.assistant")
        answer = reply.locator(".answer")
        expect(answer.locator(".code-block .code-lang")).to_have_text("js")
        expect(answer.locator(".code-block button.copy")).to_have_text("Copy")
        expect(answer.locator("pre code")).to_have_text("window.__pwned = 1")
        expect(answer.locator("li")).to_have_count(2)
        expect(answer.locator("table td")).to_have_text(["1", "2"])
        # Raw HTML is shown as the characters it is made of.
        expect(answer).to_contain_text('<script>window.__pwned=1;alert(2)</script>')
        expect(answer).to_contain_text('<img src=x onerror="window.__pwned=1;alert(1)">')
        expect(answer).to_contain_text("[script link](javascript:window.__pwned=1)")
        screenshot(page, "hostile-markdown")
        links = reply.locator("a").evaluate_all(
            "links => links.map((a) => [a.getAttribute('href'), a.rel, a.target, a.textContent])")
        attributes = reply.locator(".markdown *").evaluate_all(
            "elements => elements.flatMap((element) => [...element.attributes].map((attribute) => attribute.name))")
        dangerous = reply.locator("img, script, svg, iframe, object, embed, style, form, input").count()
        streamed = page.evaluate(EVERY_PREFIX, HOSTILE)
        return links, set(attributes), dangerous, streamed, page.evaluate("typeof window.__pwned")

    links, attributes, dangerous, streamed, pwned = ui.run(steps)
    assert dangerous == 0
    assert attributes <= SAFE_ATTRIBUTES, attributes
    # The only links are https ones (the markdown link, the bare addresses inside the escaped anchor and
    # the image turned link), in both the answer and the reasoning; each opens apart from the chat.
    assert links and all(re.match(r"https://example\.com", href) for href, *_ in links), links
    assert {(rel, target) for _, rel, target, _ in links} == {("noopener noreferrer", "_blank")}
    assert sum(text == "safe link" for *_, text in links) == 2
    assert sum(text == "tracking pixel" for *_, text in links) == 2

    for element in streamed:
        assert element["tag"] in SAFE_TAGS, element
        for name, value in element["attributes"]:
            assert name in SAFE_ATTRIBUTES, element
            if name == "href":  # a bare address is a link from its first few characters on
                assert value.startswith("https://"), element

    # No element that could run or load anything was ever made, so nothing ran.
    assert pwned == "undefined" and dialogs == []
