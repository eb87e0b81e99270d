"""The OpenAPI schema and Swagger UI, served offline."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

REGISTRY_PATHS = {
    "/models/": {"get", "post"},
    "/models/{model_name}": {"get", "put", "delete"},
    "/models/{model_name}/load": {"post"},
    "/models/{model_name}/unload": {"post"},
    "/models/{model_name}/status": {"get"},
    "/models/{model_name}/validate": {"post"},
    "/models/default/{model_name}": {"post"},
}


def test_the_schema_covers_the_registry_routes_with_shapes(api_as):
    response = api_as("model_read").get("/api/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    for path, methods in REGISTRY_PATHS.items():
        assert set(schema["paths"][path]) >= methods, path
    post = schema["paths"]["/models/"]["post"]
    assert "requestBody" in post and "201" in post["responses"] and "400" in post["responses"]
    assert "BearerAPIKey" in schema["components"]["securitySchemes"]


def test_the_schema_needs_a_signed_in_caller(anon):
    assert anon.get("/api/schema/").status_code == 401


def test_swagger_ui_loads_its_assets_from_this_server(make_user, client):
    client.force_login(make_user())
    html = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in html and "cdn" not in html.lower() and "https://" not in html
