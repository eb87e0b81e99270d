from django.urls import path

from inference_app.tool_views import BenchmarkViewSet, ModelTestViewSet, SessionFileViewSet, UsageViewSet
from inference_app.views import ChatViewSet

urlpatterns = [
    path("inference/chat", ChatViewSet.as_view({"post": "chat"}), name="inference-chat"),
    path("inference/requests/<str:request_id>/cancel", ChatViewSet.as_view({"post": "cancel"}), name="inference-cancel"),
    path("inference/test", ModelTestViewSet.as_view({"post": "run"}), name="inference-test"),
    path("inference/benchmark", BenchmarkViewSet.as_view({"post": "run"}), name="inference-benchmark"),
    path("inference/benchmarks", BenchmarkViewSet.as_view({"get": "list"}), name="inference-benchmarks"),
    path("inference/usage", UsageViewSet.as_view({"get": "list"}), name="inference-usage"),
    path("inference/sessions", SessionFileViewSet.as_view({"get": "list"}), name="inference-sessions"),
    path("inference/sessions/save", SessionFileViewSet.as_view({"post": "save"}), name="inference-session-save"),
    path("inference/sessions/load", SessionFileViewSet.as_view({"post": "load"}), name="inference-session-load"),
    # path, not str: a name with a slash or its encoded form must reach the name check (400), not miss the route.
    path("inference/sessions/<path:session_name>", SessionFileViewSet.as_view({"delete": "destroy"}),
         name="inference-session-delete"),
]
