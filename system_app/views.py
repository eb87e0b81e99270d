"""System routes (contract routes 1–9), health probes and Prometheus metrics: parse, call one service, answer."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import viewsets
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from accounts.permissions import ContractPermission
from beautyai_site.api.envelope import ok
from beautyai_site.api.serializers import EnvelopeSerializer, ErrorResponseSerializer
from beautyai_site.api.validation import parse
from models_app.services import model_names_readable_by
from system_app import metrics, services
from system_app.middleware import client_ip
from system_app.serializers import (
    CacheClearQuerySerializer,
    DetailedQuerySerializer,
    ForceQuerySerializer,
    LogsQuerySerializer,
    NoQuerySerializer,
    PerformanceQuerySerializer,
    SystemStatusResponseSerializer,
)

ERRORS = {status: ErrorResponseSerializer for status in (400, 401, 403, 404, 409, 500, 503)}
ANSWER = {200: EnvelopeSerializer, **ERRORS}


class SystemViewSet(viewsets.ViewSet):
    required_permissions = {
        "status": "system_status",
        "memory": "system_status",
        "memory_clear": "cache_clear",
        "cache": "system_status",
        "cache_clear": "cache_clear",
        "resources": "system_status",
        "performance": "system_status",
        "restart": "admin",
        "logs": "admin",
    }

    @extend_schema(parameters=[DetailedQuerySerializer], responses={200: SystemStatusResponseSerializer, **ERRORS})
    def status(self, request):
        query = parse(DetailedQuerySerializer, request.query_params)
        return ok(request, **services.system_status(detailed=query["detailed"], user=request.user))

    @extend_schema(responses=ANSWER)
    def memory(self, request):
        parse(NoQuerySerializer, request.query_params)
        return ok(request, data=services.memory_status(user=request.user))

    @extend_schema(parameters=[ForceQuerySerializer], request=None, responses=ANSWER)
    def memory_clear(self, request):
        query = parse(ForceQuerySerializer, request.query_params)
        return ok(request, data=services.memory_clear(force=query["force"], user=request.user))

    @extend_schema(parameters=[DetailedQuerySerializer], responses=ANSWER)
    def cache(self, request):
        query = parse(DetailedQuerySerializer, request.query_params)
        return ok(request, data=services.cache_status(detailed=query["detailed"], user=request.user))

    @extend_schema(parameters=[CacheClearQuerySerializer], request=None, responses=ANSWER)
    def cache_clear(self, request):
        query = parse(CacheClearQuerySerializer, request.query_params)
        return ok(request, data=services.cache_clear(model_name=query["model_name"], force=query["force"],
                                                     user=request.user))

    @extend_schema(responses=ANSWER)
    def resources(self, request):
        parse(NoQuerySerializer, request.query_params)
        return ok(request, data=services.resources_status())

    @extend_schema(parameters=[PerformanceQuerySerializer], responses=ANSWER)
    def performance(self, request):
        query = parse(PerformanceQuerySerializer, request.query_params)
        return ok(request, data=services.performance_metrics(window_minutes=query["window_minutes"]))

    @extend_schema(parameters=[ForceQuerySerializer], request=None, responses=ANSWER)
    def restart(self, request):
        query = parse(ForceQuerySerializer, request.query_params)
        return ok(request, data=services.system_restart(force=query["force"]))

    @extend_schema(parameters=[LogsQuerySerializer], responses=ANSWER)
    def logs(self, request):
        query = parse(LogsQuerySerializer, request.query_params)
        return ok(request, data=services.logs_recent(level=query["level"], lines=query["lines"]))


class HealthView(APIView):
    """Liveness: the process answers. No database, no details, no key."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: EnvelopeSerializer})
    def get(self, request):
        return ok(request, data={"status": "ok"})


class ReadyView(APIView):
    """Readiness: 503 ServiceUnavailableError naming the failed checks, for a load balancer. No key."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: EnvelopeSerializer, 503: ErrorResponseSerializer})
    def get(self, request):
        return ok(request, data=services.readiness_check())


def metrics_address_allowed(address: str | None) -> bool:
    """Whether a client address may scrape /metrics without a key (METRICS_ALLOWED_IPS: addresses or
    networks, checked in settings.py).

    Empty by default: every scraper then needs a key with system_status. A reverse proxy on the same
    host makes every client look like 127.0.0.1, which is why loopback is not allowed by default.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(entry, strict=False) for entry in settings.METRICS_ALLOWED_IPS)


class MetricsPermission(ContractPermission):
    """An address in METRICS_ALLOWED_IPS (empty by default), or a key with system_status."""

    def has_permission(self, request, view):
        return metrics_address_allowed(client_ip(request)) or super().has_permission(request, view)


class MetricsView(APIView):
    permission_classes = [MetricsPermission]
    required_permissions = {"get": "system_status"}

    @extend_schema(responses={(200, "text/plain"): str, **ERRORS})
    def get(self, request):
        # A key without global model_read sees only its models' series; an anonymous scrape got in
        # through METRICS_ALLOWED_IPS, the operator's own Prometheus, which sees everything.
        readable = model_names_readable_by(request.user) if request.user.is_authenticated else None
        return HttpResponse(metrics.exposition(readable=readable), content_type=CONTENT_TYPE_LATEST)
