from django.urls import path

from system_app.views import HealthView, MetricsView, ReadyView, SystemViewSet


def action(method: str, name: str):
    return SystemViewSet.as_view({method: name})


urlpatterns = [
    path("system/status", action("get", "status"), name="system-status"),
    path("system/memory", action("get", "memory"), name="system-memory"),
    path("system/memory/clear", action("post", "memory_clear"), name="system-memory-clear"),
    path("system/cache", action("get", "cache"), name="system-cache"),
    path("system/cache/clear", action("post", "cache_clear"), name="system-cache-clear"),
    path("system/resources", action("get", "resources"), name="system-resources"),
    path("system/performance", action("get", "performance"), name="system-performance"),
    path("system/restart", action("post", "restart"), name="system-restart"),
    path("system/logs", action("get", "logs"), name="system-logs"),
    path("healthz", HealthView.as_view(), name="healthz"),
    path("readyz", ReadyView.as_view(), name="readyz"),
    path("metrics", MetricsView.as_view(), name="metrics"),
]
