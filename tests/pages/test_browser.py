"""The pages in a real Chromium against the live server and the bundled model; each scenario leaves a screenshot.

Browser steps are nested functions handed to ``ui.run`` (they run on the browser thread); database
set-up and checks stay in the test body.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from inference_app.models import ChatMessage, ChatSession

from .conftest import screenshot, sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LAST_REPLY = "#messages .message.assistant:last-child"
XSS = "<img src=x onerror=alert(1)>"
DIRECTION = "element => getComputedStyle(element).direction"

# Samples the reply's text length once per animation frame until the reply is marked finished.
SAMPLE_FRAMES = """() => new Promise((resolve) => {
  const lengths = [];
  const tick = () => {
    const reply = document.querySelector("%s");
    lengths.push(reply.querySelector(".answer").textContent.length);
    if (reply.dataset.state) resolve({lengths, state: reply.dataset.state});
    else requestAnimationFrame(tick);
  };
  tick();
})""" % LAST_REPLY


def open_chat(page, user, path="/chat/"):
    sign_in(page, user, landing=path)
    expect(page.locator("#connection")).to_have_text("Connected")


def send(page, text, *, max_tokens, temperature=0):
    page.click(".options summary")
    page.fill("input[name=max_tokens]", str(max_tokens))
    page.fill("input[name=temperature]", str(temperature))
    page.fill("#message", text)
    page.click("#send")


def wait_for_reply(page) -> str:
    reply = page.locator(LAST_REPLY)
    expect(reply).to_have_attribute("data-state", re.compile(r"\w+"), timeout=120_000)
    return reply.get_attribute("data-state")


def test_a_user_signs_in_with_the_form_and_lands_on_the_chat_page(ui, make_user, chat_model):
    user = make_user("chat")

    def steps(page):
        page.goto("/chat/")
        expect(page).to_have_url(re.compile(r"/login/\?next=/chat/$"))
        page.fill("#id_username", user.username)
        page.fill("#id_password", "not the password")
        page.click(".signin button[type=submit]")
        expect(page.locator(".signin .error")).to_contain_text("did not match")
        screenshot(page, "01-sign-in-refused")
        sign_in(page, user)
        expect(page.locator(".topbar .who")).to_have_text(user.username)
        expect(page.locator("#model")).to_have_value(chat_model.name)
        expect(page.locator("#connection")).to_have_text("Connected")
        screenshot(page, "02-signed-in-chat")

    ui.run(steps)


def test_a_reply_grows_over_several_frames_before_it_completes(ui, make_user, chat_model):
    user = make_user("chat")

    def steps(page):
        open_chat(page, user)
        send(page, "Write a short poem about the sea.", max_tokens=120)
        result = page.evaluate(SAMPLE_FRAMES)
        expect(page.locator(f"{LAST_REPLY} .stats")).to_have_text(re.compile(r"^\d+ tokens · \d+\.\d tok/s · TTFT \d+ ms"))
        screenshot(page, "03-streamed-reply")
        return result

    result = ui.run(steps)
    while_streaming = result["lengths"][:-1]
    assert while_streaming == sorted(while_streaming), "the reply only grows"
    assert len({n for n in while_streaming if n > 0}) >= 3, result
    assert result["state"] in ("stop", "length")


def test_stop_cancels_the_reply_long_before_its_token_limit(ui, make_user, chat_model):
    user = make_user("chat")

    def steps(page):
        open_chat(page, user)
        send(page, "Write a very long story about a dragon.", max_tokens=400)
        page.wait_for_function(f"document.querySelector('{LAST_REPLY} .answer').textContent.length > 20")
        page.click("#stop")
        state = wait_for_reply(page)
        expect(page.locator("#send")).to_be_enabled()
        screenshot(page, "04-stopped-reply")
        return state, page.locator(f"{LAST_REPLY} .stats").text_content()

    state, stats = ui.run(steps)
    assert state == "cancelled" and "cancelled" in stats
    assert int(re.match(r"(\d+) tokens", stats).group(1)) < 200
    reply = ChatMessage.objects.get(session__owner=user, role="assistant")
    assert reply.finish_reason == "cancelled" and reply.completion_tokens < 200


def test_arabic_messages_and_replies_read_right_to_left(ui, make_user, chat_model):
    user = make_user("chat")

    def chat_in_arabic(page):
        open_chat(page, user)
        send(page, "ما هي عاصمة فرنسا؟ أجب بالعربية", max_tokens=40)
        wait_for_reply(page)
        screenshot(page, "05-arabic")
        answer = page.locator(f"{LAST_REPLY} .answer")
        return (page.locator("#messages .message.user .text").evaluate(DIRECTION), answer.get_attribute("dir"),
                answer.text_content(), answer.evaluate(DIRECTION))

    question, reply_dir, reply_text, reply_direction = ui.run(chat_in_arabic)
    assert question == "rtl"
    # dir="auto" follows the first strong character: whichever language the small model answers in,
    # the reply's direction matches it.
    assert reply_dir == "auto"
    first_strong = re.search(r"[A-Za-z\u0590-\u08ff]", reply_text)
    assert reply_direction == ("rtl" if first_strong and first_strong.group() >= "\u0590" else "ltr")

    # A stored Arabic reply, rendered by the same code when the chat is resumed, reads right to left.
    session = ChatSession.objects.get(owner=user)
    ChatMessage.objects.create(session=session, role="assistant", content="عاصمة فرنسا هي باريس.",
                               stats={"tokens_generated": 7, "tokens_per_second": 20.0, "time_to_first_token_ms": 30.0})

    def resume(page):
        page.goto(f"/chat/{session.id}/")
        screenshot(page, "06-arabic-resumed")
        return page.locator(f"{LAST_REPLY} .answer").evaluate(DIRECTION)

    assert ui.run(resume) == "rtl"


def test_html_in_a_message_is_shown_as_text_and_runs_nothing(ui, make_user, chat_model):
    user = make_user("chat")
    dialogs = []

    def steps(page):
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_chat(page, user)
        send(page, f"Repeat exactly: {XSS}", max_tokens=40)
        wait_for_reply(page)
        expect(page.locator("#messages .message.user .text")).to_have_text(f"Repeat exactly: {XSS}")
        expect(page.get_by_text(XSS).first).to_be_visible()
        assert page.locator("#messages img, #sessions img").count() == 0
        # Reloaded, the message comes back from the server (transcript and chat list), still as text.
        page.reload()
        expect(page.locator("#messages .message.user .text")).to_have_text(f"Repeat exactly: {XSS}")
        expect(page.locator("#sessions li a").first).to_contain_text(XSS)
        page.wait_for_timeout(300)  # time for an onerror handler to have fired, had an image been made
        screenshot(page, "07-html-as-text")
        return page.locator("img").count()

    assert ui.run(steps) == 0
    assert dialogs == []


def test_an_earlier_session_resumes_from_the_list_and_continues(ui, make_user, chat_model):
    user = make_user("chat")
    earlier = ChatSession.objects.create(owner=user, model=chat_model, model_name=chat_model.name,
                                         title="The lighthouse chat")
    ChatMessage.objects.create(session=earlier, role="user", content="Remember the word lighthouse.")
    ChatMessage.objects.create(session=earlier, role="assistant", content="I will remember: lighthouse.",
                               reasoning="They want one word kept.",
                               stats={"tokens_generated": 6, "tokens_per_second": 42.0, "time_to_first_token_ms": 18.0})
    ChatSession.objects.create(owner=user, model_name=chat_model.name, title="Another chat")

    def steps(page):
        open_chat(page, user)
        page.click("#sessions >> text=The lighthouse chat")
        expect(page).to_have_url(re.compile(f"/chat/{earlier.id}/$"))
        expect(page.locator("#messages .message.user .text")).to_have_text("Remember the word lighthouse.")
        expect(page.locator(f"{LAST_REPLY} .answer")).to_have_text("I will remember: lighthouse.")
        expect(page.locator(f"{LAST_REPLY} .stats")).to_have_text("6 tokens · 42.0 tok/s · TTFT 18 ms")
        # The reasoning sits apart from the answer, folded until asked for.
        reasoning = page.locator(f"{LAST_REPLY} details.reasoning")
        expect(reasoning).not_to_have_attribute("open", "")
        expect(reasoning.locator(".text")).to_be_hidden()
        reasoning.locator("summary").click()
        expect(reasoning.locator(".text")).to_have_text("They want one word kept.")
        expect(page.locator("#connection")).to_have_text("Connected")
        send(page, "Which word did I ask you to remember?", max_tokens=24)
        wait_for_reply(page)
        screenshot(page, "08-resumed-session")

    ui.run(steps)
    assert earlier.messages.count() == 4
    assert ChatSession.objects.filter(owner=user).count() == 2


def test_a_chat_exported_to_a_session_file_comes_back_by_import(ui, make_user, chat_model):
    user = make_user("chat", "session_save", "session_load")
    session = ChatSession.objects.create(owner=user, model=chat_model, model_name=chat_model.name, title="Keep me")
    ChatMessage.objects.create(session=session, role="user", content="Note: the tide turns at six.")
    ChatMessage.objects.create(session=session, role="assistant", content="Noted: six o'clock.")

    def export_then_delete(page):
        page.on("dialog", lambda dialog: dialog.accept())  # the delete confirmation
        open_chat(page, user, path=f"/chat/{session.id}/")
        page.click(".menu summary")
        page.fill("#export-name", "keep-me")
        page.click("#export button")
        expect(page.locator("#manage-status")).to_contain_text("Saved as keep-me.json")
        screenshot(page, "09-exported-session")
        page.click("#delete-session button")
        page.wait_for_url("**/chat/")

    ui.run(export_then_delete)
    assert not ChatSession.objects.filter(pk=session.pk).exists()

    def import_back(page):
        page.click("#files summary")
        page.locator("#file-list li", has_text="keep-me.json").get_by_role("button", name="Import").click()
        page.wait_for_url(f"**/chat/{session.id}/")
        expect(page.locator(f"{LAST_REPLY} .answer")).to_have_text("Noted: six o'clock.")
        screenshot(page, "10-imported-session")

    ui.run(import_back)
    assert ChatSession.objects.get(pk=session.pk).messages.count() == 2


def test_an_operator_unloads_and_loads_a_model_from_the_dashboard_and_reads_the_logs(ui, make_user, chat_model):
    operator = make_user("system_status", "model_read", "model_load", "admin")

    def steps(page):
        sign_in(page, operator, landing="/dashboard/")
        row = page.locator(f'tr[data-model="{chat_model.name}"]')
        status = row.locator('[data-field="status"]')
        expect(status).to_have_text("loaded")
        expect(row.locator('[data-field="memory"]')).to_have_text(re.compile(r"^\d+ MB$"))
        expect(row.locator('[data-field="expires"]')).not_to_have_text("–")
        row.locator('button[data-action="unload"]').click()
        expect(status).to_have_text("unloaded")
        expect(row.locator('[data-field="memory"]')).to_have_text("–")
        expect(page.locator("#action-status")).to_contain_text("unloaded")
        screenshot(page, "11-dashboard-unloaded")
        row.locator('button[data-action="load"]').click()
        expect(status).to_have_text("loaded", timeout=120_000)
        expect(page.locator("#action-status")).to_contain_text("loaded (")
        # The gauges and the chart fill in, and the page keeps refreshing without navigating.
        expect(page.locator('[data-gauge="cpu"] [data-value]')).to_have_text(re.compile(r"^\d+%$"))
        first = page.locator("#updated").text_content()
        expect(page.locator("#updated")).not_to_have_text(first, timeout=15_000)
        expect(page.locator("#throughput-chart polyline.line")).to_have_attribute("points", re.compile(r"\d"))
        expect(page.locator("#logs li").first).not_to_have_text(re.compile("Loading|unavailable"))
        assert page.url.endswith("/dashboard/")
        screenshot(page, "12-dashboard-loaded")

    ui.run(steps)


def test_a_viewer_sees_no_load_buttons_and_a_load_posted_from_the_page_is_refused(ui, viewer, chat_model):
    def steps(page):
        sign_in(page, viewer, landing="/dashboard/")
        row = page.locator(f'tr[data-model="{chat_model.name}"]')
        expect(row.locator('[data-field="status"]')).to_have_text("loaded")
        expect(row.locator("button[data-action=validate]")).to_be_visible()
        screenshot(page, "13-dashboard-viewer")
        buttons = page.locator("button[data-action=load], button[data-action=unload], button[data-action=default]")
        return buttons.count(), page.evaluate("""async (url) => {
            const token = document.querySelector('meta[name="csrf-token"]').content;
            const response = await fetch(url, {method: "POST", headers: {"X-CSRFToken": token}, credentials: "same-origin"});
            return {status: response.status, body: await response.json()};
        }""", f"/models/{chat_model.name}/load")

    buttons, answer = ui.run(steps)
    assert buttons == 0
    assert answer["status"] == 403
    assert answer["body"]["error_code"] == "PermissionDeniedError"


def test_the_chat_page_fits_a_phone_in_dark_mode(ui, make_user, chat_model):
    user = make_user("chat")
    ui.open(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True, has_touch=True)

    def steps(page):
        open_chat(page, user)
        send(page, "Say hello in one short sentence.", max_tokens=24)
        wait_for_reply(page)
        screenshot(page, "14-phone-dark")
        return (page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"),
                page.evaluate("getComputedStyle(document.body).backgroundColor"))

    fits, background = ui.run(steps)
    assert fits, "nothing scrolls sideways"
    red, green, blue = map(int, re.findall(r"\d+", background)[:3])
    assert red + green + blue < 150, background


# Markdown in replies ------------------------------------------------------------------------------

TIDES = """# Tide tables

The sea **rises** and *falls* twice a day; see [the almanac](https://example.com/tides).
Stars
***not a rule

- first item
- second item with `code`

1. one
2. two

> a quote
> over two lines

| port | high | low |
|------|-----:|-----|
| Brest | 06:10 | 12:25 |

```python
def tide(hour):
    return hour % 12
```

Done.
"""

# Streams `source` into a detached element chunk by chunk, rendering after each chunk as a frame would,
# and reports which elements each chunk replaced; then renders the whole text in one go to compare.
STREAM = """async ({source, size}) => {
  const {renderMarkdown, streamMarkdown} = await import("/static/beautyai/markdown.js");
  const streamed = document.createElement("div");
  const stream = streamMarkdown(streamed);
  let previous = [];
  const replaced = [];
  let fenceInProgress = false;
  for (let at = 0; at < source.length; at += size) {
    stream.append(source.slice(at, at + size));
    stream.flush();
    const children = [...streamed.children];
    let kept = 0;
    while (kept < previous.length && children[kept] === previous[kept]) kept += 1;
    replaced.push(previous.length - kept);
    for (const child of children) child.bornAt ??= at;
    previous = children;
    const received = source.slice(0, at + size);
    if (received.includes("return hour") && !received.includes("% 12\\n```")) {
      fenceInProgress ||= streamed.querySelector(".code-block pre code")?.textContent.includes("return hour") ?? false;
    }
  }
  stream.finish();
  const whole = document.createElement("div");
  renderMarkdown(whole, source);
  return {replaced, fenceInProgress, bornAt: [...streamed.children].map((child) => child.bornAt ?? null),
          same: streamed.innerHTML === whole.innerHTML, html: streamed.innerHTML, whole: whole.innerHTML};
}"""


def stored_reply(user, content, *, user_text="Tell me about the tides."):
    session = ChatSession.objects.create(owner=user, model_name="smollm2-135m-instruct", title="Tides")
    ChatMessage.objects.create(session=session, role="user", content=user_text)
    ChatMessage.objects.create(session=session, role="assistant", content=content, reasoning="Think of **tides**.",
                               stats={"tokens_generated": 9, "tokens_per_second": 30.0, "time_to_first_token_ms": 20.0})
    return session


def test_a_stored_reply_renders_markdown_and_the_users_message_stays_text(ui, make_user):
    user = make_user("chat")
    session = stored_reply(user, TIDES, user_text="Make it **bold** and <b>x</b> please")

    def steps(page):
        open_chat(page, user, path=f"/chat/{session.id}/")
        reply = page.locator(f"{LAST_REPLY} .answer")
        expect(reply.locator("h1")).to_have_text("Tide tables")
        expect(reply.locator("p strong")).to_have_text("rises")
        expect(reply.locator("li")).to_have_count(4)
        expect(reply.locator("blockquote")).to_contain_text("a quote")
        expect(reply.locator(".table-wrap table td")).to_have_text(["Brest", "06:10", "12:25"])
        expect(reply.locator("td.align-right")).to_have_text("06:10")
        expect(reply.locator("[style]")).to_have_count(0)
        expect(reply.locator(".code-block .code-lang")).to_have_text("python")
        expect(reply.locator(".code-block pre code")).to_have_text("def tide(hour):\n    return hour % 12\n")
        expect(reply.locator(".code-block button.copy")).to_have_text("Copy")
        expect(reply.locator("li code")).to_have_attribute("dir", "ltr")
        link = reply.locator("a")
        expect(link).to_have_attribute("href", "https://example.com/tides")
        expect(link).to_have_attribute("rel", "noopener noreferrer")
        expect(link).to_have_attribute("target", "_blank")
        # The reasoning goes through the same renderer.
        page.click(f"{LAST_REPLY} details.reasoning summary")
        expect(page.locator(f"{LAST_REPLY} .reasoning .text strong")).to_have_text("tides")
        mine = page.locator("#messages .message.user .text")
        expect(mine).to_have_text("Make it **bold** and <b>x</b> please")
        reply.locator(".code-block").scroll_into_view_if_needed()
        screenshot(page, "15-markdown-reply")
        return mine.locator("*").count()

    assert ui.run(steps) == 0


@pytest.mark.parametrize("size", [1, 7])
def test_a_streamed_reply_renders_only_its_last_blocks_again_and_ends_as_the_whole_text_would(ui, make_user, size):
    user = make_user("chat")
    references = "See [the almanac][tides] and [this][tides].\n\nMore.\n\n[tides]: https://example.com/tides\n"

    def steps(page):
        open_chat(page, user)
        return page.evaluate(STREAM, {"source": TIDES, "size": size}), \
            page.evaluate(STREAM, {"source": references, "size": size})

    tides, late_reference = ui.run(steps)
    assert tides["same"], (tides["html"], tides["whole"])
    # Each chunk re-renders the last block or two, never what came before them ...
    assert max(tides["replaced"]) <= 2, tides["replaced"]
    # ... so every block but the last is the very element made once the line after it was complete:
    # the heading's, once the paragraph's first line was in.
    born = tides["bornAt"]
    assert None not in born[:-1] and born[:-1] == sorted(born[:-1]), born
    assert born[0] <= TIDES.index("Stars") < born[1], born
    assert tides["fenceInProgress"], "an open code fence shows as a code block while it streams"
    # A reference defined at the end applies to the links above it, as in a render of the whole text.
    assert late_reference["same"], (late_reference["html"], late_reference["whole"])
    assert late_reference["html"].count('href="https://example.com/tides"') == 2


def test_a_code_block_reads_left_to_right_in_a_right_to_left_reply(ui, make_user):
    user = make_user("chat")
    # Opening with code: the reply's direction still follows its Arabic words, not the code or its header.
    session = stored_reply(user, "```js\nconst tide = 6;\n```\n\n`x = 1` هذا مثال على الشيفرة.\n")

    def steps(page):
        open_chat(page, user, path=f"/chat/{session.id}/")
        reply = page.locator(f"{LAST_REPLY} .answer")
        reply.evaluate("element => element.closest('.message').setAttribute('dir', 'rtl')")
        screenshot(page, "16-markdown-rtl")
        return (reply.evaluate(DIRECTION), reply.locator("pre").evaluate(DIRECTION),
                reply.locator("p code").evaluate(DIRECTION))

    assert ui.run(steps) == ("rtl", "ltr", "ltr")


def test_the_copy_button_puts_the_code_on_the_clipboard(ui, make_user):
    user = make_user("chat")
    session = stored_reply(user, TIDES)
    ui.open(permissions=["clipboard-read", "clipboard-write"])

    def steps(page):
        open_chat(page, user, path=f"/chat/{session.id}/")
        button = page.locator(f"{LAST_REPLY} .code-block button.copy")
        button.click()
        expect(button).to_have_text("Copied")
        expect(button).to_have_text("Copy")  # and back, ready for another copy
        return page.evaluate("navigator.clipboard.readText()")

    assert ui.run(steps) == "def tide(hour):\n    return hour % 12\n"
