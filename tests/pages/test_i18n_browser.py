"""Arabic and English in a real Chromium: what a browser asking for each language gets on every page,
right-to-left layout, the switcher's choice following the user, and no text left untranslated.

Screenshots of each page in both languages go to test-artifacts/pages/i18n-<language>-<page>.png.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from inference_app.models import ChatSession
from system_app.models import UserPreference

from .conftest import screenshot, sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LAST_REPLY = "#messages .message.assistant:last-child"

# Text the page shows in Latin letters that is not in a left-to-right island (bdi, dir="ltr", code, kbd)
# or in another language's own name (lang="en" on the switcher): each is a string nobody translated.
UNTRANSLATED = r"""(allowed) => {
  const latin = /[A-Za-z]/, arabic = /[\u0600-\u06FF]/;
  const islands = 'script, style, code, pre, kbd, bdi, svg, [dir="ltr"], [lang]:not(html)';
  const untranslated = (value) => value && latin.test(value) && !arabic.test(value) && !allowed.includes(value.trim());
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (untranslated(node.textContent) && !node.parentElement.closest(islands)) found.push(node.textContent.trim());
  }
  for (const element of document.body.querySelectorAll("[placeholder], [aria-label], [title]")) {
    if (element.closest(islands)) continue;
    for (const name of ["placeholder", "aria-label", "title"]) {
      if (untranslated(element.getAttribute(name))) found.push(`${name}="${element.getAttribute(name)}"`);
    }
  }
  return found;
}"""

FONT_LOADED = """async () => {
  await document.fonts.ready;
  return document.fonts.check('16px "Noto Sans Arabic Web"', "\u0639");
}"""


def html_language(page) -> tuple[str, str]:
    return tuple(page.evaluate("[document.documentElement.lang, document.documentElement.dir]"))


def x_of(page, selector: str) -> float:
    return page.locator(selector).first.bounding_box()["x"]


def watch_requests(page, base_url: str) -> list[str]:
    """Every URL the page asks for that is not on the live server (the font and all else are served by it)."""
    elsewhere = []
    page.on("request", lambda request: None if request.url.startswith(base_url) else elsewhere.append(request.url))
    return elsewhere


@pytest.mark.parametrize("language,locale", [("ar", "ar"), ("en", "en-US")])
def test_a_browser_gets_every_page_in_its_language_and_direction(ui, live_server_url, make_user, chat_model,
                                                                language, locale):
    user = make_user(superuser=True)
    ui.open(locale=locale)
    rtl = language == "ar"
    allowed = ["BeautyAI", "Axes", user.username]  # product names (Axes: django-axes' app in the admin)

    def steps(page):
        elsewhere = watch_requests(page, live_server_url)
        results = {}
        page.goto("/login/")
        results["login"] = html_language(page), page.evaluate(UNTRANSLATED, allowed)
        expect(page.locator("h1")).to_have_text("تسجيل الدخول" if rtl else "Sign in")
        screenshot(page, f"i18n-{language}-01-login")

        sign_in(page, user)
        expect(page.locator("#connection")).to_have_text("متصل" if rtl else "Connected")
        results["chat"] = html_language(page), page.evaluate(UNTRANSLATED, allowed)
        # Mirrored: the chat list on the reading side, the brand opposite the switcher, Send at the far end.
        results["sidebar_first"] = (x_of(page, ".sidebar") > x_of(page, ".conversation")) == rtl
        results["brand_first"] = (x_of(page, ".brand") > x_of(page, ".topbar-end")) == rtl
        results["send_last"] = (x_of(page, "#send") < x_of(page, "#connection")) == rtl
        results["model_ltr"] = page.locator("#model").evaluate("e => getComputedStyle(e).direction")
        results["font"] = page.evaluate(FONT_LOADED)
        screenshot(page, f"i18n-{language}-02-chat")

        page.goto("/dashboard/")
        expect(page.locator(f'tr[data-model="{chat_model.name}"] [data-field="status"]')).to_have_text(
            "يعمل" if rtl else "loaded")
        expect(page.locator("#updated")).not_to_have_text(re.compile("Loading|جارٍ التحميل"))
        results["dashboard"] = html_language(page), page.evaluate(UNTRANSLATED, allowed)
        results["gauge"] = page.locator(".ring svg").first.evaluate("e => getComputedStyle(e).transform")
        screenshot(page, f"i18n-{language}-03-dashboard")

        page.goto("/admin/")
        results["admin"] = html_language(page), page.evaluate(UNTRANSLATED, allowed)
        screenshot(page, f"i18n-{language}-04-admin")
        page.goto("/admin/models_app/modelconfig/")
        expect(page.locator("#site-name")).to_have_text("BeautyAI")
        screenshot(page, f"i18n-{language}-05-admin-models")
        results["elsewhere"] = elsewhere
        return results

    results = ui.run(steps)
    expected = ("ar", "rtl") if rtl else ("en", "ltr")
    for name in ("login", "chat", "dashboard", "admin"):
        direction, untranslated = results[name]
        assert direction == expected, name
        if rtl:
            assert untranslated == [], f"{name}: {untranslated}"
    assert results["sidebar_first"] and results["brand_first"] and results["send_last"], results
    assert results["model_ltr"] == "ltr"
    assert results["gauge"] == ("matrix(-1, 0, 0, 1, 0, 0)" if rtl else "none")
    assert results["font"] is True  # the English pages show Arabic too: the switcher's "العربيّة"
    assert results["elsewhere"] == []


def test_switching_to_english_follows_the_user_across_pages_sessions_and_browsers(ui, browser_thread,
                                                                                  live_server_url, make_user):
    user = make_user("chat", "system_status")

    def switch_to_english(page):
        sign_in(page, user)
        assert html_language(page) == ("ar", "rtl")
        page.click('.language button[value="en"]')
        page.wait_for_url("**/chat/")
        assert html_language(page) == ("en", "ltr")
        page.goto("/dashboard/")
        expect(page.locator("h1")).to_have_text("Operations")
        page.click(".signout button")
        page.wait_for_url("**/login/")
        return html_language(page)

    ui.open(locale="ar")
    assert ui.run(switch_to_english) == ("en", "ltr")  # signed out, the cookie still says English
    assert UserPreference.objects.get(user=user).language == "en"

    # Another browser that asks for Arabic: Arabic until the user signs in, then their choice.
    from .conftest import BrowserSession

    other = BrowserSession(browser_thread, live_server_url)
    other.open(locale="ar")
    try:
        def sign_in_elsewhere(page):
            page.goto("/login/")
            before = html_language(page)
            sign_in(page, user)
            after = html_language(page)
            screenshot(page, "i18n-en-06-chat-after-switch")
            page.click('.language button[value="ar"]')
            page.wait_for_url("**/chat/")
            expect(page.locator("#connection")).to_have_text("متصل")
            return before, after, html_language(page)

        assert other.run(sign_in_elsewhere) == (("ar", "rtl"), ("en", "ltr"), ("ar", "rtl"))
    finally:
        other.close()
    assert UserPreference.objects.get(user=user).language == "ar"


def test_an_arabic_chat_shows_arabic_stats_and_the_servers_title_for_a_long_message(ui, make_user, chat_model):
    user = make_user("chat")
    ui.open(locale="ar")
    message = "اكتب جملة قصيرة عن البحر.\n\nثم   اذكر اسم مدينة ساحلية واحدة في الجملة نفسها من فضلك رجاءً"

    def steps(page):
        sign_in(page, user)
        expect(page.locator("#connection")).to_have_text("متصل")
        page.click(".options summary")
        page.fill("input[name=max_tokens]", "24")
        page.fill("input[name=temperature]", "0")
        page.fill("#message", message)
        page.click("#send")
        reply = page.locator(LAST_REPLY)
        expect(reply).to_have_attribute("data-state", re.compile(r"\w+"), timeout=120_000)
        expect(reply.locator(".stats")).to_have_text(
            re.compile(r"^(\d+ (رمز|رموز|رمزًا)|رمز واحد|رمزان) · \d+\.\d رمز/ث · زمن أول رمز \d+ ملّي ثانية"))
        expect(page.locator("#messages .message.user .role")).to_have_text("أنت")
        screenshot(page, "i18n-ar-07-chat-reply")
        return page.locator("#sessions li a").first.text_content()

    listed = ui.run(steps)
    assert listed == ChatSession.objects.get(owner=user).title
    assert "\n" not in listed and listed.endswith("…") and len(listed) <= 60


def test_the_dashboards_empty_chart_says_what_it_waits_for_until_it_has_a_line(ui, make_user):
    user = make_user("system_status", "model_read")
    ui.open(locale="ar")

    def steps(page):
        sign_in(page, user, landing="/dashboard/")
        waiting = page.locator("#chart-waiting")
        expect(waiting).to_be_visible()
        expect(waiting).to_contain_text("بانتظار القياسات الأولى")
        screenshot(page, "i18n-ar-08-dashboard-waiting")
        expect(waiting).to_be_hidden(timeout=20_000)  # two samples, five seconds apart
        return page.locator("#throughput-chart polyline.line").get_attribute("points")

    assert re.search(r"\d", ui.run(steps))
