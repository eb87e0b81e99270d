from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import IsAuthenticated


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, for any signed-in caller: it describes routes, never data."""

    permission_classes = [IsAuthenticated]


class SwaggerView(SpectacularSwaggerView):
    permission_classes = [IsAuthenticated]

