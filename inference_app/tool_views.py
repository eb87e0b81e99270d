"""Model test, benchmark, session file and usage routes: parse, check access, call one service, answer."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.permissions import IsAuthenticated

from beautyai_site.api.envelope import ok
from beautyai_site.api.serializers import EnvelopeSerializer, ErrorResponseSerializer
from beautyai_site.api.validation import parse
from inference_app import benchmark, model_test, session_files, usage
from inference_app.limits import GeneratingActionsThrottled
from inference_app.models import BenchmarkRun
from inference_app.tool_serializers import (
    BenchmarkConfigSerializer,
    BenchmarkRequestSerializer,
    BenchmarkResponseSerializer,
    PageQuerySerializer,
    SessionDeleteQuerySerializer,
    SessionLoadRequestSerializer,
    SessionLoadResponseSerializer,
    SessionSaveRequestSerializer,
    SessionSaveResponseSerializer,
    TestRequestSerializer,
    TestResponseSerializer,
    UsageQuerySerializer,
)
from inference_app.views import api_key_id

ERRORS = {status: ErrorResponseSerializer for status in (400, 401, 403, 404, 409, 413, 429, 500, 503)}


class ModelTestViewSet(GeneratingActionsThrottled, viewsets.ViewSet):
    required_permissions = {"run": "test"}

    @extend_schema(request=TestRequestSerializer, responses={200: TestResponseSerializer, **ERRORS})
    def run(self, request):
        data = parse(TestRequestSerializer, request.data)
        result = model_test.model_test_run(
            user=request.user, model_name=data["model_name"], prompt=data["prompt"],
            generation_config=dict(data.get("generation_config") or {}),
            criteria=dict(data.get("validation_criteria") or {}), api_key_id=api_key_id(request),
        )
        return ok(request, **result)


class BenchmarkViewSet(GeneratingActionsThrottled, viewsets.ViewSet):
    required_permissions = {"run": "benchmark", "list": "benchmark"}

    @extend_schema(request=BenchmarkRequestSerializer, responses={200: BenchmarkResponseSerializer, **ERRORS},
                   description="Runs in this request's thread; num_runs ≤ 100, concurrency ≤ 64, max_tokens ≤ "
                               "the model's cap. Comprehensive runs num_runs sequentially, then num_runs concurrently.")
    def run(self, request):
        data = parse(BenchmarkRequestSerializer, request.data)
        config = data.get("config") or parse(BenchmarkConfigSerializer, {})
        run = benchmark.benchmark_run(user=request.user, model_name=data["model_name"],
                                      benchmark_type=data["benchmark_type"], config=dict(config),
                                      api_key_id=api_key_id(request))
        return ok(request, **benchmark.benchmark_dict(run))

    @extend_schema(parameters=[PageQuerySerializer], responses={200: EnvelopeSerializer, **ERRORS},
                   description="Your own stored benchmark runs, newest first.")
    def list(self, request):
        query = parse(PageQuerySerializer, request.query_params)
        runs = BenchmarkRun.objects.filter(user=request.user)
        page = runs[query["offset"]: query["offset"] + query["limit"]]
        return ok(request, data={"benchmarks": [benchmark.benchmark_dict(run) for run in page],
                                 "total_count": runs.count()})


class SessionFileViewSet(viewsets.ViewSet):
    required_permissions = {"save": "session_save", "load": "session_load", "list": "session_load",
                            "destroy": "session_delete"}

    @extend_schema(request=SessionSaveRequestSerializer, responses={200: SessionSaveResponseSerializer, **ERRORS})
    def save(self, request):
        data = parse(SessionSaveRequestSerializer, request.data)
        result = session_files.session_file_save(user=request.user, session_id=data.get("session_id"),
                                                 session_data=data.get("session_data"),
                                                 output_file=data.get("output_file"))
        return ok(request, **result)

    @extend_schema(request=SessionLoadRequestSerializer, responses={200: SessionLoadResponseSerializer, **ERRORS})
    def load(self, request):
        data = parse(SessionLoadRequestSerializer, request.data)
        return ok(request, **session_files.session_file_load(user=request.user, input_file=data["input_file"]))

    @extend_schema(parameters=[PageQuerySerializer], responses={200: EnvelopeSerializer, **ERRORS},
                   description="Your database sessions, then your session files, as one paginated list.")
    def list(self, request):
        query = parse(PageQuerySerializer, request.query_params)
        return ok(request, data=session_files.session_list(user=request.user, **query))

    @extend_schema(parameters=[OpenApiParameter("session_name", str, OpenApiParameter.PATH),
                               SessionDeleteQuerySerializer],
                   responses={200: EnvelopeSerializer, **ERRORS})
    def destroy(self, request, session_name: str):
        query = parse(SessionDeleteQuerySerializer, request.query_params)
        return ok(request, data=session_files.session_file_delete(
            user=request.user, session_name=session_name, delete_database_session=query["delete_database_session"]))


class UsageViewSet(viewsets.ViewSet):
    # Every signed-in caller may read their own usage, whatever else they may do.
    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[UsageQuerySerializer], responses={200: EnvelopeSerializer, **ERRORS},
                   description="Your own usage by UTC day and model.")
    def list(self, request):
        query = parse(UsageQuerySerializer, request.query_params)
        return ok(request, data=usage.usage_by_day(user=request.user, days=query["days"]))
