from django.contrib.auth.views import LogoutView
from django.urls import path
from django.views.generic import RedirectView
from django.views.i18n import JavaScriptCatalog

from beautyai_site import i18n, pages

urlpatterns = [
    path("", RedirectView.as_view(url="/chat/"), name="home"),
    path("login/", pages.LoginPage.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("chat/", pages.chat_page, name="chat"),
    path("chat/<uuid:session_id>/", pages.chat_page, name="chat-session"),
    path("chat/<uuid:session_id>/rename/", pages.chat_session_rename_view, name="chat-session-rename"),
    path("chat/<uuid:session_id>/delete/", pages.chat_session_delete_view, name="chat-session-delete"),
    path("dashboard/", pages.dashboard_page, name="dashboard"),
    path("i18n/setlang/", i18n.set_language_view, name="set-language"),
    # The pages' scripts get their strings (gettext, ngettext, interpolate) from this catalogue.
    path("i18n/js/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
]
