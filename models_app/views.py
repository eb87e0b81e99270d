"""Model registry routes (contract routes 1–10): parse, check access, call one service, answer the envelope."""

from __future__ import annotations

import asyncio
import json

from channels.db import database_sync_to_async
from django.db.models.fields.json import KT
from django.http import StreamingHttpResponse

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import viewsets
from rest_framework.exceptions import ValidationError as DRFValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.utils.encoders import JSONEncoder as DRFJSONEncoder

from accounts.permissions import has_global
from beautyai_site.api import errors
from beautyai_site.api.envelope import ok
from beautyai_site.api.serializers import EnvelopeSerializer, ErrorResponseSerializer
from beautyai_site.api.validation import parse  # noqa: F401 - also imported from here by branches not yet merged
from beautyai_site.sql import ReusedQuery
from models_app import downloads, selectors, services
from models_app.models import ModelConfig, ModelDownload
from models_app.serializers import (
    DownloadCancelQuerySerializer,
    DownloadRequestSerializer,
    ModelAddRequestSerializer,
    ModelAddResponseSerializer,
    ModelDeleteQuerySerializer,
    ModelListQuerySerializer,
    ModelListResponseSerializer,
    ModelLoadRequestSerializer,
    ModelLoadResponseSerializer,
    ModelUpdateRequestSerializer,
)

ERRORS = {status: ErrorResponseSerializer for status in (400, 401, 403, 404, 409, 500)}
NAME = OpenApiParameter("model_name", str, OpenApiParameter.PATH)


SUMMARY_FIELDS = ("name", "model_id", "architecture", "engine", "quantization", "is_default")


def summary_rows(models):
    """Only the columns of a summary, as dicts: the JSON configuration columns cost most of a row's
    decoding, and building model instances cost more than the query."""
    return models.order_by("name").values(*SUMMARY_FIELDS, task=KT("parameters__task"), **downloads.status_columns())


# Whoever holds model_read globally (an operator, the benchmark) lists the whole registry with the same
# SQL every time: written once (beautyai_site/sql.py), it no longer costs more than the rest of the request.
EVERY_SUMMARY_ROW = ReusedQuery(lambda: summary_rows(ModelConfig.objects.all()))


def model_summary(row: dict, live: dict, download_status: str) -> dict:
    """``row``: the SUMMARY_FIELDS of one entry and its ``task`` parameter, as ``.values()`` gives them."""
    state = live.get(row["name"]) or selectors.model_unloaded_status(row["name"])
    return {
        "model_name": row["name"],
        "model_id": row["model_id"],
        "architecture": row["architecture"],
        "engine": row["engine"],
        "quantization": row["quantization"],
        "task": row["task"] or "generate",
        "status": state["status"],
        "memory_usage_mb": state["memory_usage_mb"],
        "is_default": row["is_default"],
        "download_status": download_status,
    }


def model_detail(model) -> dict:
    state = selectors.model_status(model.name)
    latest = downloads.download_latest(model)
    return {
        "model_name": model.name,
        "model_config": services.model_config_dict(model),
        "is_default": model.is_default,
        "task": model.task,
        "status": state["status"],
        "memory_usage_mb": state["memory_usage_mb"],
        "load_time_seconds": state["load_time_seconds"],
        "runtime": state,
        "download_status": downloads.download_statuses([{"name": model.name, "model_id": model.model_id,
                                                          "engine": model.engine,
                                                          "quantization": model.quantization}])[model.name],
        "download": downloads.download_dict(latest) if latest is not None else None,
        "created_at": model.created_at,
        "updated_at": model.updated_at,
    }


class ModelViewSet(viewsets.ViewSet):
    lookup_field = "model_name"
    required_permissions = {
        "list": "model_read",
        "create": "model_write",
        "retrieve": "model_read",
        "update": "model_write",
        "destroy": "model_delete",
        "load": "model_load",
        "unload": "model_load",
        "status": "model_read",
        "validate": "model_read",
        "set_default": "model_write",
        "download": "model_load",
        "download_status": "model_load",
        "download_cancel": "model_load",
    }

    def _model(self, name: str, permission: str):
        return services.model_get_for_user(user=self.request.user, name=name, permission=permission)

    @extend_schema(parameters=[ModelListQuerySerializer], responses={200: ModelListResponseSerializer, **ERRORS})
    def list(self, request):
        query = parse(ModelListQuerySerializer, request.query_params)
        visible = services.models_readable_by(request.user)
        if has_global(request.user, "model_read"):
            page = EVERY_SUMMARY_ROW.rows(offset=query["offset"], limit=query["limit"])
        else:
            page = list(summary_rows(visible)[query["offset"]: query["offset"] + query["limit"]])
        # A first page shorter than the limit is the whole list: no second query to count it.
        short_first_page = query["offset"] == 0 and len(page) < query["limit"]
        total = len(page) if short_first_page else visible.count()
        live = selectors.model_statuses()
        fetched = downloads.download_statuses(page)
        return ok(request, models=[model_summary(m, live, fetched[m["name"]]) for m in page], total_count=total)

    @extend_schema(request=ModelAddRequestSerializer, responses={201: ModelAddResponseSerializer, **ERRORS})
    def create(self, request):
        # Parse only the envelope here; the configuration is validated by the service, which owns the rules.
        body = dict(request.data)
        config = body.get("model_config")
        body["model_config"] = {"model_id": "placeholder", "engine": "transformers"}
        parsed = parse(ModelAddRequestSerializer, body)
        if not isinstance(config, dict):
            raise DRFValidationError({"model_config": ["must be a JSON object"]})
        model = services.registry_add(
            name=parsed["model_name"], config=config, set_as_default=parsed["set_as_default"], user=request.user
        )
        return ok(request, status=201, model_name=model.name, message=f"Model '{model.name}' added to the registry.")

    @extend_schema(parameters=[NAME], responses={200: EnvelopeSerializer, **ERRORS})
    def retrieve(self, request, model_name: str):
        return ok(request, data=model_detail(self._model(model_name, "model_read")))

    @extend_schema(parameters=[NAME], request=ModelUpdateRequestSerializer, responses={200: EnvelopeSerializer, **ERRORS})
    def update(self, request, model_name: str):
        model = self._model(model_name, "model_write")
        parsed = parse(ModelUpdateRequestSerializer, request.data)
        model, reload_needed, changed = services.registry_update(
            model=model, updates=parsed["updates"], set_as_default=parsed["set_as_default"], user=request.user
        )
        return ok(request, data={
            "model_name": model.name,
            "updated_fields": changed,
            "reload_required": reload_needed,
            "is_default": model.is_default,
            "model_config": services.model_config_dict(model),
        })

    @extend_schema(parameters=[NAME, ModelDeleteQuerySerializer], responses={200: EnvelopeSerializer, **ERRORS})
    def destroy(self, request, model_name: str):
        model = self._model(model_name, "model_delete")
        query = parse(ModelDeleteQuerySerializer, request.query_params)
        return ok(request, data=services.registry_delete(model=model, clear_cache=query["clear_cache"]))

    @extend_schema(parameters=[NAME], request=ModelLoadRequestSerializer, responses={200: ModelLoadResponseSerializer, **ERRORS})
    def load(self, request, model_name: str):
        model = self._model(model_name, "model_load")
        parsed = parse(ModelLoadRequestSerializer, request.data)
        if parsed["download"] and not downloads.files_present(model):
            job, _ = downloads.download_start(model=model, user=request.user, load_when_done=True)
            return ok(request, status=202, data=downloads.download_dict(job))
        state = services.model_load(model=model, force_reload=parsed["force_reload"], user=request.user)
        return ok(
            request,
            model_name=model.name,
            model_id=model.model_id,
            memory_usage_mb=state["memory_usage_mb"],
            load_time_seconds=state["load_time_seconds"],
        )

    @extend_schema(parameters=[NAME], request=None, responses={200: EnvelopeSerializer, **ERRORS})
    def unload(self, request, model_name: str):
        model = self._model(model_name, "model_load")
        was_loaded = services.model_unload(name=model.name)
        message = f"Model '{model.name}' unloaded." if was_loaded else f"Model '{model.name}' was not loaded."
        return ok(request, data={"model_name": model.name, "was_loaded": was_loaded, "message": message})

    @extend_schema(parameters=[NAME], responses={200: EnvelopeSerializer, **ERRORS})
    def status(self, request, model_name: str):
        model = self._model(model_name, "model_read")
        return ok(request, data={**selectors.model_status(model.name), "task": model.task})

    @extend_schema(parameters=[NAME], request=None, responses={200: EnvelopeSerializer, **ERRORS})
    def validate(self, request, model_name: str):
        model = self._model(model_name, "model_read")
        return ok(request, data=services.registry_validate(model=model))

    @extend_schema(parameters=[NAME], request=None, responses={200: EnvelopeSerializer, **ERRORS})
    def set_default(self, request, model_name: str):
        model = self._model(model_name, "model_write")
        previous = services.default_model()
        services.registry_set_default(model=model)
        return ok(request, data={
            "model_name": model.name,
            "is_default": True,
            "previous_default": previous.name if previous else None,
        })

    # Downloads ----------------------------------------------------------------------------------

    def get_renderers(self):
        if getattr(self, "action", None) == "download_status":
            return [*super().get_renderers(), EventStreamRenderer()]
        return super().get_renderers()

    @extend_schema(parameters=[NAME], request=DownloadRequestSerializer, responses={202: EnvelopeSerializer, **ERRORS},
                   description="Starts fetching the entry's files from the Hugging Face hub (HF_ENDPOINT); 409 with "
                               "the running job if one is already running.")
    def download(self, request, model_name: str):
        model = self._model(model_name, "model_load")
        parsed = parse(DownloadRequestSerializer, request.data)
        job, created = downloads.download_start(model=model, user=request.user, revision=parsed.get("revision"))
        if not created:
            raise errors.ConflictError(f"A download of Model '{model.name}' is already running.",
                                       details={"download": downloads.download_dict(job)})
        return ok(request, status=202, data=downloads.download_dict(job))

    @extend_schema(parameters=[NAME], responses={200: EnvelopeSerializer, **ERRORS},
                   description="The latest download job; with Accept: text/event-stream, progress events until it ends.")
    def download_status(self, request, model_name: str):
        model = self._model(model_name, "model_load")
        job = downloads.download_latest(model)
        if job is None:
            raise errors.NotFoundError(f"Model '{model.name}' has never been downloaded by this server.")
        if isinstance(request.accepted_renderer, EventStreamRenderer):
            return progress_stream(job.pk)
        return ok(request, data=downloads.download_dict(job))

    @extend_schema(parameters=[NAME, DownloadCancelQuerySerializer], request=None,
                   responses={200: EnvelopeSerializer, **ERRORS})
    def download_cancel(self, request, model_name: str):
        model = self._model(model_name, "model_load")
        query = parse(DownloadCancelQuerySerializer, request.query_params)
        job = downloads.download_cancel(model=model, discard=query["discard"])
        return ok(request, data=downloads.download_dict(job))


class EventStreamRenderer(BaseRenderer):
    """Lets ``Accept: text/event-stream`` through content negotiation; the view streams itself."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data, accepted_media_type, renderer_context)


def progress_stream(job_id: int) -> StreamingHttpResponse:
    """``progress`` events when a job's row changes, until it ends (polled: any process may run it)."""

    async def events():
        last = None
        while True:
            job = await database_sync_to_async(ModelDownload.objects.select_related("requested_by").get)(pk=job_id)
            data = downloads.download_dict(job)
            if data != last:
                yield f"event: progress\ndata: {json.dumps(data, cls=DRFJSONEncoder)}\n\n".encode()
                last = data
            if not job.active:
                # EventSource reconnects when a stream closes; "end" tells a client it is over.
                yield b"event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(downloads.PROGRESS_INTERVAL_S)

    response = StreamingHttpResponse(events(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
