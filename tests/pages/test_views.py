"""The HTML views through Django's test client: access, what each user is shown, and the session forms."""

from __future__ import annotations


import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from inference_app.models import ChatMessage, ChatSession
from models_app.models import ModelDownload

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def chat(make_user, registry):
    owner = make_user("chat")
    session = ChatSession.objects.create(owner=owner, model=registry["alpha"], model_name="alpha", title="First chat")
    ChatMessage.objects.create(session=session, role="user", content="<img src=x onerror=alert(1)>")
    ChatMessage.objects.create(session=session, role="assistant", content="</script><script>alert(2)</script>",
                               stats={"tokens_generated": 9, "tokens_per_second": 30.0, "time_to_first_token_ms": 12.0})
    return session


def test_the_root_redirects_to_chat(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/chat/"


@pytest.mark.parametrize("path", ["/chat/", "/dashboard/", "/chat/00000000-0000-4000-8000-000000000000/"])
def test_pages_send_anonymous_visitors_to_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={path}"


def test_the_sign_in_page_documents_the_failure_limit(client):
    response = client.get("/login/")
    assert response.status_code == 200
    assert b"failed sign-ins for one account from one address" in response.content


def test_a_user_signs_in_with_a_password_and_signs_out_with_a_post(client, make_user):
    user = make_user()
    response = client.post("/login/", {"username": user.username, "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert client.get("/chat/").status_code == 200
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/chat/").status_code == 302


def test_a_wrong_password_shows_the_form_again_with_an_error(client, make_user):
    response = client.post("/login/", {"username": make_user().username, "password": "wrong"})
    assert response.status_code == 200
    assert b"did not match" in response.content


def test_the_static_files_are_served_without_a_collectstatic_step(client):
    for name in ("app.css", "api.js", "chat.js", "dashboard.js"):
        assert client.get(f"/static/beautyai/{name}").status_code == 200, name


# Chat --------------------------------------------------------------------------------------------

def test_chat_offers_only_models_the_user_may_chat_with(make_user, registry, grant):
    user = make_user()
    grant(user, "chat", registry["beta"])
    body = signed_in(user).get("/chat/").content.decode()
    assert '<option value="beta"' in body
    assert '<option value="alpha"' not in body


def test_chat_offers_no_embedding_model(make_user, registry):
    registry["beta"].parameters = {"task": "embed"}
    registry["beta"].save()
    body = signed_in(make_user("chat")).get("/chat/").content.decode()
    assert '<option value="alpha"' in body
    assert '<option value="beta"' not in body


def test_chat_without_any_chat_permission_disables_the_message_box(make_user, registry):
    body = signed_in(make_user("model_read")).get("/chat/").content.decode()
    assert "No model available to you" in body
    assert '<textarea id="message"' in body and "required disabled" in body


def test_chat_lists_only_the_users_own_sessions(chat, make_user):
    ChatSession.objects.create(owner=make_user(), model_name="alpha", title="Someone else's chat")
    body = signed_in(chat.owner).get("/chat/").content.decode()
    assert "First chat" in body
    assert "Someone else&#x27;s chat" not in body and "Someone else's chat" not in body


def test_a_resumed_session_embeds_its_transcript_as_inert_json(chat):
    response = signed_in(chat.owner).get(f"/chat/{chat.id}/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<img src=x" not in body
    assert "</script><script>alert(2)" not in body
    assert '<script id="transcript" type="application/json">' in body
    assert response.context["transcript"][1]["stats"]["tokens_generated"] == 9
    assert response.context["selected_model"] == "alpha"  # the session's model is preselected


@pytest.mark.parametrize("method,suffix", [("get", ""), ("post", "rename/"), ("post", "delete/")])
def test_another_users_session_answers_404(chat, make_user, method, suffix):
    intruder = signed_in(make_user("chat"))
    response = getattr(intruder, method)(f"/chat/{chat.id}/{suffix}", {"title": "mine now"} if method == "post" else None)
    assert response.status_code == 404
    chat.refresh_from_db()
    assert chat.title == "First chat"


def test_the_owner_renames_a_session(chat):
    response = signed_in(chat.owner).post(f"/chat/{chat.id}/rename/", {"title": "  عنوان جديد  "})
    assert response.status_code == 302 and response["Location"] == f"/chat/{chat.id}/"
    chat.refresh_from_db()
    assert chat.title == "عنوان جديد"


def test_a_blank_title_is_refused_and_the_old_one_kept(chat):
    client = signed_in(chat.owner)
    response = client.post(f"/chat/{chat.id}/rename/", {"title": "   "}, follow=True)
    assert b"A title needs 1 to 200 characters." in response.content
    chat.refresh_from_db()
    assert chat.title == "First chat"


def test_the_owner_deletes_a_session_with_its_messages(chat):
    response = signed_in(chat.owner).post(f"/chat/{chat.id}/delete/")
    assert response.status_code == 302 and response["Location"] == "/chat/"
    assert not ChatSession.objects.filter(pk=chat.pk).exists()
    assert not ChatMessage.objects.filter(session_id=chat.pk).exists()


def test_rename_and_delete_are_refused_without_the_csrf_token(chat):
    client = Client(enforce_csrf_checks=True)
    client.force_login(chat.owner)
    assert client.post(f"/chat/{chat.id}/rename/", {"title": "x"}).status_code == 403
    assert client.post(f"/chat/{chat.id}/delete/").status_code == 403
    assert ChatSession.objects.filter(pk=chat.pk, title="First chat").exists()


def test_rename_and_delete_accept_only_post(chat):
    client = signed_in(chat.owner)
    assert client.get(f"/chat/{chat.id}/delete/").status_code == 405
    assert ChatSession.objects.filter(pk=chat.pk).exists()


def test_export_and_import_controls_follow_the_session_file_permissions(chat):
    body = signed_in(chat.owner).get(f"/chat/{chat.id}/").content.decode()
    assert 'id="export"' not in body and 'id="files"' not in body
    chat.owner.user_permissions.add(*Permission.objects.filter(codename__in=["session_save", "session_load"]))
    body = signed_in(chat.owner).get(f"/chat/{chat.id}/").content.decode()
    assert 'id="export"' in body and 'id="files"' in body


# Dashboard ---------------------------------------------------------------------------------------

def test_the_dashboard_answers_403_without_system_status(make_user):
    response = signed_in(make_user("model_read", "model_load")).get("/dashboard/")
    assert response.status_code == 403
    assert b"system_status" in response.content


def test_a_viewer_sees_the_registry_without_load_or_default_buttons(viewer, registry):
    body = signed_in(viewer).get("/dashboard/").content.decode()
    assert 'data-model="alpha"' in body and 'data-model="beta"' in body
    assert 'data-action="validate"' in body
    assert 'data-action="load"' not in body and 'data-action="unload"' not in body
    assert 'data-action="default"' not in body
    assert 'id="logs"' not in body


def test_load_buttons_follow_a_per_model_grant(make_user, registry, grant):
    user = make_user("system_status", "model_read")
    grant(user, "model_load", registry["beta"])
    rows = {row["model"].name: row for row in signed_in(user).get("/dashboard/").context["rows"]}
    assert rows["beta"]["can_load"] and not rows["alpha"]["can_load"]
    assert not rows["beta"]["can_write"]


def test_an_administrator_gets_every_button_and_the_log_panel(make_user, registry):
    body = signed_in(make_user(superuser=True)).get("/dashboard/").content.decode()
    for action in ("load", "unload", "default", "validate", "download", "cancel"):
        assert f'data-action="{action}"' in body
    assert 'id="logs"' in body


def test_the_dashboard_link_shows_only_with_system_status(make_user):
    assert b'href="/dashboard/"' not in signed_in(make_user("chat")).get("/chat/").content
    assert b'href="/dashboard/"' in signed_in(make_user("system_status")).get("/chat/").content


# Django admin ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,marker", [
    ("/admin/models_app/modelconfig/", "Load selected models"),
    ("/admin/system_app/auditevent/", "audit"),
    ("/admin/system_app/logrecord/", "log"),
    ("/admin/inference_app/benchmarkrun/", "benchmark"),
])
def test_the_admin_changelists_render(make_user, registry, path, marker):
    response = signed_in(make_user(superuser=True)).get(path)
    assert response.status_code == 200
    assert marker.lower() in response.content.decode().lower()


def test_the_admin_lists_download_jobs_with_their_state_and_cancels_only_the_running_ones(make_user, registry):
    finished = ModelDownload.objects.create(model=registry["alpha"], model_name="alpha", repo_id="org/alpha",
                                            status=ModelDownload.DONE, bytes_done=10, bytes_total=10, files_done=1,
                                            files_total=1)
    running = ModelDownload.objects.create(model=registry["beta"], model_name="beta", repo_id="org/beta",
                                           status=ModelDownload.DOWNLOADING, bytes_done=25, bytes_total=100,
                                           files_total=2)
    operator = make_user("model_read", "model_load")
    operator.is_staff = True
    operator.save()
    client = signed_in(operator)

    body = client.get("/admin/models_app/modeldownload/").content.decode()
    for cell in ('<td class="field-status">downloading</td>', '<td class="field-progress">25%</td>',
                 '<td class="field-files">0/2</td>', '<td class="field-status">done</td>',
                 '<td class="field-progress">100%</td>'):
        assert cell in body
    assert "Cancel selected downloads" in body

    response = client.post("/admin/models_app/modeldownload/", {
        "action": "cancel_downloads", "_selected_action": [running.pk, finished.pk]}, follow=True)
    assert response.status_code == 200
    assert {str(m) for m in response.context["messages"]} == {"beta: download cancelled", "alpha: not running (done)"}
    running.refresh_from_db()
    finished.refresh_from_db()
    assert running.status == ModelDownload.CANCELLED and running.finished_at is not None
    assert running.error == "cancelled; partial data kept for a resume"
    assert finished.status == ModelDownload.DONE and finished.error == ""
    assert '<td class="field-status">cancelled</td>' in response.content.decode()


def test_the_admin_offers_no_download_cancel_without_model_load(make_user, registry):
    viewer = make_user("model_read")
    viewer.is_staff = True
    viewer.save()
    running = ModelDownload.objects.create(model=registry["beta"], model_name="beta", repo_id="org/beta",
                                           status=ModelDownload.DOWNLOADING, bytes_total=100)
    client = signed_in(viewer)
    assert "Cancel selected downloads" not in client.get("/admin/models_app/modeldownload/").content.decode()
    client.post("/admin/models_app/modeldownload/", {"action": "cancel_downloads", "_selected_action": [running.pk]})
    running.refresh_from_db()
    assert running.status == ModelDownload.DOWNLOADING
