from django.contrib import admin
from django.urls import include, path
from django.utils.translation import gettext_lazy

from beautyai_site.api.schema import SchemaView, SwaggerView

admin.site.site_header = admin.site.site_title = "BeautyAI"
admin.site.index_title = gettext_lazy("Administration")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", SwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("models_app.urls")),
    path("", include("system_app.urls")),
    path("", include("inference_app.urls")),
    path("v1/", include("inference_app.openai_urls")),
    path("", include("beautyai_site.pages_urls")),
]

handler400 = "beautyai_site.api.views.bad_request"
handler403 = "beautyai_site.api.views.permission_denied"
handler404 = "beautyai_site.api.views.not_found"
handler500 = "beautyai_site.api.views.server_error"
