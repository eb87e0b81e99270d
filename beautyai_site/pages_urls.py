from django.contrib.auth.views import LogoutView
from django.urls import path
from django.views.generic import RedirectView

from beautyai_site import pages

urlpatterns = [
    path("", RedirectView.as_view(url="/chat/"), name="home"),
    path("login/", pages.LoginPage.as_view(), name="login"),
    path("logout/", LogoutView.as_view(), name="logout"),
    path("chat/", pages.chat_page, name="chat"),
    path("chat/<uuid:session_id>/", pages.chat_page, name="chat-session"),
    path("chat/<uuid:session_id>/rename/", pages.chat_session_rename_view, name="chat-session-rename"),
    path("chat/<uuid:session_id>/delete/", pages.chat_session_delete_view, name="chat-session-delete"),
    path("dashboard/", pages.dashboard_page, name="dashboard"),
]
