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
from beautyai_site.ws_origin import SameOriginValidator  # noqa: E402
from inference_app.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": BodyLimitMiddleware(django_asgi),
        # The Origin check refuses pages from other sites opening a socket with the user's cookie.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
