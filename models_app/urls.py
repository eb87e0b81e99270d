from django.urls import path

from models_app.views import ModelViewSet

collection = ModelViewSet.as_view({"get": "list", "post": "create"})
item = ModelViewSet.as_view({"get": "retrieve", "put": "update", "delete": "destroy"})

urlpatterns = [
    path("models/", collection, name="model-list"),
    path("models/default/<str:model_name>", ModelViewSet.as_view({"post": "set_default"}), name="model-set-default"),
    path("models/<str:model_name>", item, name="model-detail"),
    path("models/<str:model_name>/load", ModelViewSet.as_view({"post": "load"}), name="model-load"),
    path("models/<str:model_name>/unload", ModelViewSet.as_view({"post": "unload"}), name="model-unload"),
    path("models/<str:model_name>/status", ModelViewSet.as_view({"get": "status"}), name="model-status"),
    path("models/<str:model_name>/validate", ModelViewSet.as_view({"post": "validate"}), name="model-validate"),
    path("models/<str:model_name>/download", ModelViewSet.as_view(
        {"post": "download", "get": "download_status", "delete": "download_cancel"}), name="model-download"),
]
