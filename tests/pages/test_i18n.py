"""English and Arabic through Django's test client: which language a request gets, the switcher, the
admin in Arabic, the JSON API staying English, and the catalogues matching the code (docs/i18n.md)."""

from __future__ import annotations

import gettext
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from inference_app.services import session_title
from models_app.models import ModelConfig, ModelDownload
from system_app.models import UserPreference

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
LOCALE = ROOT / "locale" / "ar" / "LC_MESSAGES"
ARABIC = "ar"
RTL_HTML = '<html lang="ar" dir="rtl">'
LTR_HTML = '<html lang="en" dir="ltr">'


def arabic_client(user=None, **headers) -> Client:
    client = Client(HTTP_ACCEPT_LANGUAGE="ar,en;q=0.5", **headers)
    if user is not None:
        client.force_login(user)
    return client


def text(response) -> str:
    return " ".join(response.content.decode().split())


# Which language a page gets ------------------------------------------------------------------------

def test_a_browser_asking_for_arabic_gets_the_sign_in_page_in_arabic_right_to_left():
    response = arabic_client().get("/login/")
    assert response.status_code == 200
    assert response["Content-Language"] == ARABIC
    body = text(response)
    assert RTL_HTML in body
    assert "<h1>تسجيل الدخول</h1>" in body
    assert "يُقفل الحساب من ذلك العنوان لمدة 15 دقيقة." in body


def test_a_browser_asking_for_nothing_in_particular_gets_english():
    response = Client().get("/login/")
    assert response["Content-Language"] == "en"
    assert LTR_HTML in text(response) and "<h1>Sign in</h1>" in text(response)


@pytest.mark.parametrize("path,marker", [("/chat/", "<h1>محادثة جديدة</h1>"), ("/dashboard/", "<h1>العمليات</h1>"),
                                         ("/admin/", "<h1>الإدارة</h1>")])
def test_every_page_follows_accept_language(make_user, path, marker):
    user = make_user(superuser=True)
    body = text(arabic_client(user).get(path))
    assert RTL_HTML in body
    assert marker in body


def test_the_chat_page_is_arabic_with_model_names_kept_left_to_right(make_user, registry):
    body = text(arabic_client(make_user("chat")).get("/chat/"))
    assert "<h1>محادثة جديدة</h1>" in body
    assert '<select id="model" name="model" dir="ltr">' in body
    assert "اختصارات لوحة المفاتيح" in body and '<kbd dir="ltr">Shift+Enter</kbd>' in body


def test_the_dashboard_says_what_its_empty_chart_waits_for(make_user, registry):
    body = text(arabic_client(make_user("system_status", "model_read")).get("/dashboard/"))
    assert "بانتظار القياسات الأولى: تُضاف نقطة كل 5 ثوانٍ ما دامت هذه الصفحة مفتوحة." in body
    assert "<bdi>alpha</bdi>" in body
    signed_in = Client()
    signed_in.force_login(make_user("system_status", "model_read"))
    assert "Waiting for the first samples: a point is added every 5 seconds" in text(signed_in.get("/dashboard/"))


def test_relative_times_in_the_chat_list_are_arabic(make_user, registry):
    from inference_app.models import ChatSession

    user = make_user("chat")
    ChatSession.objects.create(owner=user, model_name="alpha", title="عن البحر")
    body = text(arabic_client(user).get("/chat/"))
    assert re.search(r'<time datetime="[^"]+">منذ 0 دقيقة</time>', body), body[body.find("sessions"):][:600]


def test_the_javascript_catalogue_is_served_in_the_pages_language():
    arabic = arabic_client().get("/i18n/js/").content.decode()
    assert "\\u0645\\u062a\\u0635\\u0644" in arabic or "متصل" in arabic  # "Connected"
    assert "pluralidx" in arabic and "n==0 ? 0" in arabic.replace("\\u003D", "=").replace("\\u003F", "?")
    assert "متصل" not in Client().get("/i18n/js/").content.decode()


def test_the_lockout_page_is_arabic(make_user, settings):
    user = make_user()
    client = arabic_client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        response = client.post("/login/", {"username": user.username, "password": "wrong"})
    assert response.status_code == 429
    body = text(response)
    assert RTL_HTML in body and "<h1>تسجيل الدخول مقفل</h1>" in body
    assert "حاول مجددًا بعد 15 دقيقة من آخر محاولة." in body


# The switcher and the saved preference -------------------------------------------------------------

def test_switching_sets_the_cookie_saves_the_choice_and_returns_to_the_page(make_user):
    user = make_user("chat")
    client = arabic_client(user)
    response = client.post("/i18n/setlang/", {"language": "en", "next": "/chat/"})
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert response.cookies["django_language"].value == "en"
    assert UserPreference.objects.get(user=user).language == "en"
    assert LTR_HTML in text(client.get("/chat/"))


def test_a_saved_choice_beats_the_cookie_and_accept_language_in_a_new_session(make_user):
    user = make_user("chat")
    UserPreference.objects.create(user=user, language="en")
    client = arabic_client()
    client.cookies["django_language"] = "ar"
    assert RTL_HTML in text(client.get("/login/"))  # not signed in yet: the cookie decides
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302
    assert LTR_HTML in text(client.get("/chat/"))
    assert LTR_HTML in text(client.get("/dashboard/"))  # the 403 page too


def test_switching_while_signed_out_sets_only_the_cookie(make_user):
    response = Client().post("/i18n/setlang/", {"language": "ar", "next": "/login/"})
    assert response.status_code == 302 and response.cookies["django_language"].value == "ar"
    assert not UserPreference.objects.exists()


@pytest.mark.parametrize("language", ["fr", "", "ar" * 40])
def test_the_switcher_refuses_a_language_it_does_not_offer_and_changes_nothing(make_user, language):
    user = make_user("chat")
    client = arabic_client(user)
    response = client.post("/i18n/setlang/", {"language": language, "next": "/chat/"})
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and body["error_code"] == "ValidationError"
    assert "language" in body["error_details"]
    assert "django_language" not in response.cookies
    assert not UserPreference.objects.exists()


def test_the_switcher_never_redirects_off_the_site(make_user):
    response = Client().post("/i18n/setlang/", {"language": "en", "next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == "/"


def test_the_switcher_needs_the_csrf_token(make_user):
    user = make_user("chat")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.post("/i18n/setlang/", {"language": "ar"}).status_code == 403
    assert not UserPreference.objects.exists()


# The JSON API stays English ------------------------------------------------------------------------

def test_the_json_api_answers_in_english_whatever_accept_language(api_as):
    client = api_as("system_status")
    response = client.get("/system/performance?window_minutes=soon", HTTP_ACCEPT_LANGUAGE="ar")
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "ValidationError"
    assert re.fullmatch(r"[ -~]+", body["error_message"]), body["error_message"]
    assert "Accept-Language" not in response.get("Vary", "")
    assert response.get("Content-Language") is None


def test_a_signed_in_users_arabic_choice_does_not_reach_the_json_api(make_user):
    user = make_user("system_status")
    UserPreference.objects.create(user=user, language="ar")
    client = arabic_client(user)
    body = client.get("/system/performance?window_minutes=soon").json()
    assert re.fullmatch(r"[ -~]+", body["error_message"]), body["error_message"]


# The admin in Arabic -------------------------------------------------------------------------------

def staff_client(make_user, *codenames, superuser=False) -> Client:
    user = make_user(*codenames, superuser=superuser)
    user.is_staff = True
    user.save()
    return arabic_client(user)


def test_the_admin_is_branded_and_in_arabic(make_user, registry):
    client = staff_client(make_user, superuser=True)
    index = text(client.get("/admin/"))
    assert RTL_HTML in index
    assert '<div id="site-name"><a href="/admin/" dir="ltr">BeautyAI</a></div>' in index
    assert "<title>الإدارة | BeautyAI</title>" in index
    for label in ("سجل النماذج", "النماذج", "تنزيلات النماذج", "مفاتيح API", "سجل التدقيق", "قواعد الحصص"):
        assert label in index, label
    assert 'name="language" value="en" lang="en">English</button>' in index

    changelist = text(client.get("/admin/models_app/modelconfig/"))
    for label in ("تشغيل النماذج المحددة (تحميلها إلى الذاكرة)", "إيقاف النماذج المحددة (تفريغها من الذاكرة)",
                  "تنزيل النماذج المحددة من Hugging Face", "معرّف النموذج", "الملفات", "غير موجودة"):
        assert label in changelist, label


def test_admin_action_messages_are_arabic(make_user, registry):
    running = ModelDownload.objects.create(model=registry["beta"], model_name="beta", repo_id="org/beta",
                                           status=ModelDownload.DOWNLOADING, bytes_total=100)
    client = staff_client(make_user, "model_read", "model_load")
    response = client.post("/admin/models_app/modeldownload/", {
        "action": "cancel_downloads", "_selected_action": [running.pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["beta: أُلغي التنزيل"]
    assert '<td class="field-status">أُلغي</td>' in response.content.decode()


def test_admin_form_errors_sit_by_their_field_in_arabic(make_user):
    client = staff_client(make_user, "model_write")
    response = client.post("/admin/models_app/modelconfig/add/", {
        "name": "gguf", "model_id": "org/gguf", "architecture": "causal_lm", "engine": "llama.cpp",
        "quantization": "Q9_WRONG", "dtype": "auto", "max_new_tokens": "512", "description": "",
        "do_sample": "unknown", "parameters": "{}"})
    assert response.status_code == 200
    body = response.content.decode()
    assert "ErrorDetail" not in body
    errors = response.context["adminform"].form.errors
    assert errors["quantization"] == ["يقبل llama.cpp نوع GGUF مثل Q4_K_M أو none، وليس 'Q9_WRONG'"]
    assert not ModelConfig.objects.filter(name="gguf").exists()


# Titles --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("message,title", [
    ("  What is\n\nthe   capital of France?  ", "What is the capital of France?"),
    ("ما هي عاصمة فرنسا؟", "ما هي عاصمة فرنسا؟"),
    ("word " * 30, "word word word word word word word word word word word word…"),
    ("x" * 80, "x" * 59 + "…"),
    ("Explain, in detail, how tides work near the coast, and why they change, every day",
     "Explain, in detail, how tides work near the coast, and why…"),
])
def test_a_new_chat_is_titled_with_its_first_message_on_one_line_cut_at_a_word(message, title):
    assert session_title(message) == title
    assert len(session_title(message)) <= 60


# The catalogues ------------------------------------------------------------------------------------

def test_every_string_in_the_arabic_catalogues_is_translated():
    for po in LOCALE.glob("*.po"):
        untranslated = subprocess.run(["msgattrib", "--untranslated", "--no-location", str(po)],
                                      capture_output=True, text=True, check=True).stdout
        fuzzy = subprocess.run(["msgattrib", "--only-fuzzy", "--no-location", str(po)],
                               capture_output=True, text=True, check=True).stdout
        assert untranslated == "" and fuzzy == "", f"{po.name}:\n{untranslated}{fuzzy}"


def catalogue(mo: Path) -> dict:
    with mo.open("rb") as handle:
        entries = dict(gettext.GNUTranslations(handle)._catalog)
    entries.pop("", None)  # the header: its dates differ between runs
    return entries


def test_makemessages_leaves_the_committed_catalogues_unchanged(tmp_path):
    """`make messages` in a copy of the tree: the .po files come out as committed, and so do the .mo files."""
    copy = tmp_path / "tree"
    ignore = shutil.ignore_patterns(".*", "__pycache__", "var", "test-artifacts", "*.sqlite3")
    for name in ("accounts", "beautyai_site", "models_app", "inference_app", "system_app", "templates", "static", "locale"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    for name in ("manage.py", "Makefile"):
        shutil.copy2(ROOT / name, copy / name)
    result = subprocess.run(
        ["make", "-s", "messages", f"BIN={Path(sys.executable).parent}"], cwd=copy, capture_output=True, text=True,
        env={"PATH": "/usr/bin:/bin", "BEAUTYAI_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"},
        timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for po in LOCALE.glob("*.po"):
        fresh = (copy / "locale" / "ar" / "LC_MESSAGES" / po.name).read_text()
        committed = po.read_text()
        strip = re.compile(r'^"POT-Creation-Date: .*\n', re.M)
        assert strip.sub("", fresh) == strip.sub("", committed), f"run `make messages`: {po.name} is out of date"
        mo = po.with_suffix(".mo")
        assert catalogue(copy / "locale" / "ar" / "LC_MESSAGES" / mo.name) == catalogue(mo), f"{mo.name} is stale"
