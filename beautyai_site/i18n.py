"""Which language a request is answered in (docs/i18n.md).

Pages (sign-in, chat, dashboard, admin) follow, in this order: the signed-in user's saved choice, the
``django_language`` cookie that the switcher sets, the browser's Accept-Language, English. The JSON API
always answers in English: ``error_message`` is part of a machine-readable envelope that scripts match
on, and clients that show it translate from ``error_code`` (as the pages' own scripts do).
"""

from __future__ import annotations

from django.conf import settings
from django.middleware.locale import LocaleMiddleware
from django.utils import translation
from django.views.decorators.http import require_POST
from django.views.i18n import LANGUAGE_QUERY_PARAMETER, set_language

from beautyai_site.api import errors
from beautyai_site.api.views import envelope_json
from system_app import services as system_services

# Everything else is the JSON API (or a redirect without text) and stays English. The root redirect
# is left out: it has no text, and answering it with Vary: Accept-Language would only split caches.
PAGE_PREFIXES = ("/login/", "/logout/", "/chat/", "/dashboard/", "/admin/", "/i18n/")


def is_page(request) -> bool:
    return request.path_info.startswith(PAGE_PREFIXES)


class PageLocaleMiddleware(LocaleMiddleware):
    """Django's LocaleMiddleware on the pages; English, with no Vary on the language, everywhere else."""

    def process_request(self, request):
        if is_page(request):
            super().process_request(request)
        else:
            # Explicitly: an activation outlives its request in the thread (or task) that made it, so a
            # request that activates nothing could be answered in an earlier page's language.
            translation.activate(settings.LANGUAGE_CODE)
            request.LANGUAGE_CODE = settings.LANGUAGE_CODE

    def process_response(self, request, response):
        return super().process_response(request, response) if is_page(request) else response


class UserLanguageMiddleware:
    """After authentication: a signed-in user's saved language beats the cookie and Accept-Language.

    Read from the database on each page, so a choice made in one browser holds in every other one and
    in the next session, without copying it into sessions that would then go stale.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if is_page(request) and request.user.is_authenticated:
            language = system_services.language_preference(request.user)
            if language:
                translation.activate(language)
                request.LANGUAGE_CODE = language
        return self.get_response(request)


@require_POST
def set_language_view(request):
    """Django's set_language (cookie, redirect to ``next``), plus the saved choice for a signed-in user."""
    language = request.POST.get(LANGUAGE_QUERY_PARAMETER, "")
    offered = dict(settings.LANGUAGES)
    if language not in offered:
        return envelope_json(request, errors.ValidationError(
            f"language must be one of: {', '.join(offered)}.",
            details={"language": [f"{language[:20]!r} is not an offered language."]}))
    if request.user.is_authenticated:
        system_services.language_preference_set(user=request.user, language=language)
    return set_language(request)
