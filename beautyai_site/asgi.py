import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "beautyai_site.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application() does before its handler

from beautyai_site.request_threads import ReusingThreadsASGIHandler  # noqa: E402

django_asgi = ReusingThreadsASGIHandler()

# Imported after Django is set up: they touch models and settings.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from beautyai_site.api.asgi_limits import BodyLimitMiddleware  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from inference_app.routing import websocket_urlpatterns  # noqa: E402



class BrowserOriginValidator(OriginValidator):
    """Browsers always send Origin: a page on another site must not open a socket with our cookie.

    Clients that send no Origin are not browsers, so no cookie was sent on a user's behalf; they
    still have to authenticate (API key) like any other client.
    """

    def valid_origin(self, parsed_origin):
        return parsed_origin is None or self.validate_origin(parsed_origin)


application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_asgi),
        # The Origin check refuses pages from other sites opening a socket with the user's cookie.
        "websocket": BrowserOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns)), settings.ALLOWED_HOSTS
        ),
    }
)
