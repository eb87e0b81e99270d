"""HTML pages: sign-in, chat and the operations dashboard.

The pages act through the JSON API from the browser (session cookie + CSRF header), so these views
only decide what a page shows and which controls the signed-in user gets. Renaming and deleting a
stored chat have no JSON route; they are the two small form posts here.
"""

from __future__ import annotations

from axes.conf import settings as axes_settings
from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import LoginView
from django.db.models import Q
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from guardian.shortcuts import get_objects_for_user

from accounts.permissions import full_name, has_global, has_on
from beautyai_site.api import errors
from inference_app.models import ChatSession
from inference_app.services import session_get_for_user
from models_app.models import ModelConfig
from models_app.services import default_model, models_readable_by

SESSION_LIST_LENGTH = 50
PERFORMANCE_WINDOWS = (5, 15, 60, 360, 1440)  # minutes offered by the dashboard's window picker


# Selectors -------------------------------------------------------------------------------------

def login_limits() -> dict:
    """What the sign-in page documents: django-axes' limit and cool-off (settings, axes' defaults filled in)."""
    cool_off = axes_settings.AXES_COOLOFF_TIME  # a timedelta in our settings; None locks until an admin resets
    return {"failure_limit": axes_settings.AXES_FAILURE_LIMIT,
            "cooloff_minutes": round(cool_off.total_seconds() / 60) if cool_off else None}


def chat_models_for(user):
    # Embedding models answer /v1/embeddings only; a chat with one would be refused. (A plain exclude
    # would also drop the entries without a task key: SQL's NULL = 'embed' is not false.)
    return get_objects_for_user(user, full_name("chat"), klass=ModelConfig, accept_global_perms=True).filter(
        Q(parameters__task__isnull=True) | ~Q(parameters__task="embed")).order_by("name")


def chat_session_for(*, user, session_id) -> ChatSession:
    """The caller's own session; another user's answers 404 exactly like a missing one."""
    try:
        return session_get_for_user(user=user, session_id=session_id)
    except errors.NotFoundError:
        raise Http404("Chat session not found.") from None


def chat_sessions_of(user):
    return ChatSession.objects.filter(owner=user).order_by("-updated_at")[:SESSION_LIST_LENGTH]


def chat_transcript(session: ChatSession) -> list[dict]:
    return [{"role": m.role, "content": m.content, "reasoning": m.reasoning, "stats": m.stats or None}
            for m in session.messages.all()]


def registry_rows_for(user) -> list[dict]:
    """Each readable entry with the actions this user may take on it (per entry for model_load)."""
    may_write = has_global(user, "model_write")
    return [{"model": model, "can_load": has_on(user, "model_load", model), "can_write": may_write}
            for model in models_readable_by(user).order_by("name")]


# Services --------------------------------------------------------------------------------------

def chat_session_rename(*, user, session_id, title: str) -> ChatSession:
    session = chat_session_for(user=user, session_id=session_id)
    session.title = title
    session.save(update_fields=["title", "updated_at"])
    return session


def chat_session_delete(*, user, session_id) -> None:
    chat_session_for(user=user, session_id=session_id).delete()


# Views -----------------------------------------------------------------------------------------

class LoginPage(LoginView):
    template_name = "registration/login.html"
    redirect_authenticated_user = True

    def get_context_data(self, **kwargs):
        return {**super().get_context_data(**kwargs), **login_limits()}


def lockout_page(request, original_response=None, credentials=None):
    """django-axes' AXES_LOCKOUT_CALLABLE: the locked-out answer, in the site's look, with 429."""
    return render(request, "registration/lockout.html", login_limits(), status=429)


@login_required
def chat_page(request, session_id=None):
    user = request.user
    session = chat_session_for(user=user, session_id=session_id) if session_id else None
    models = list(chat_models_for(user))
    preferred = session.model_name if session else getattr(default_model(), "name", None)
    return render(request, "chat/chat.html", {
        "models": models,
        "selected_model": preferred if any(m.name == preferred for m in models) else None,
        "sessions": chat_sessions_of(user),
        "session": session,
        "transcript": chat_transcript(session) if session else [],
        "can_export": has_global(user, "session_save"),
        "can_import": has_global(user, "session_load"),
    })


class RenameForm(forms.Form):
    title = forms.CharField(max_length=ChatSession._meta.get_field("title").max_length)


@login_required
@require_POST
def chat_session_rename_view(request, session_id):
    form = RenameForm(request.POST)
    if form.is_valid():
        chat_session_rename(user=request.user, session_id=session_id, title=form.cleaned_data["title"])
    else:
        # Still 404 for a session that is not the caller's, before saying anything about the title.
        chat_session_for(user=request.user, session_id=session_id)
        messages.error(request, _("A title needs 1 to 200 characters."))
    return redirect("chat-session", session_id=session_id)


@login_required
@require_POST
def chat_session_delete_view(request, session_id):
    chat_session_delete(user=request.user, session_id=session_id)
    messages.success(request, _("Chat deleted."))
    return redirect("chat")


@login_required
def dashboard_page(request):
    user = request.user
    if not has_global(user, "system_status"):
        return render(request, "dashboard/forbidden.html", status=403)
    return render(request, "dashboard/dashboard.html", {
        "rows": registry_rows_for(user),
        "is_admin": has_global(user, "admin"),
        "windows": PERFORMANCE_WINDOWS,
    })
