from __future__ import annotations

import math
import re

from django.utils.translation import gettext as _
from rest_framework import serializers

from beautyai_site.api.fields import (
    StrictCharField,
    StrictBooleanField,
    StrictFloatField,
    StrictIntegerField,
    StrictQueryBooleanField,
    StrictSerializer,
)
from beautyai_site.api.jsonsafe import first_path
from beautyai_site.api.serializers import EnvelopeSerializer
# Also imported from here by branches not yet merged.
from beautyai_site.api.serializers import ErrorResponseSerializer  # noqa: F401
from models_app.serving.engines.contract import KEEP_ALIVE_MAX_SECONDS
from models_app.serving.engines.openai_engine import API_KEY_ENV_PREFIX, api_key_env_allowed
from models_app.serving.engines.templates import TOOL_FORMATS
from models_app.hub import REVISION
from models_app.models import (
    DTYPES,
    ENGINE_QUANTIZATIONS,
    ENGINES,
    EMBEDDING_ENGINES,
    GGUF_TYPES,
    MODEL_NAME_PATTERN,
    POOLINGS,
    TASKS,
    validate_model_name_free,
)

MAX_NEW_TOKENS_LIMIT = 32768


class ModelNameField(serializers.RegexField):
    def __init__(self, **kwargs):
        super().__init__(
            MODEL_NAME_PATTERN,
            max_length=128,
            error_messages={"invalid": "must start with a letter or digit and use only letters, digits, '.', '_', '-'"},
            **kwargs,
        )

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class ModelConfigSerializer(StrictSerializer):
    """A registry entry's configuration, as the API takes it in ``model_config`` and ``updates``."""

    model_id = StrictCharField(max_length=500, trim_whitespace=False)
    architecture = serializers.RegexField(r"^[a-z0-9_]{1,64}$", required=False, default="causal_lm")
    engine = serializers.ChoiceField(choices=ENGINES)
    quantization = StrictCharField(max_length=16, required=False, default="none")
    dtype = serializers.ChoiceField(choices=DTYPES, required=False, default="auto")
    max_new_tokens = StrictIntegerField(min_value=1, max_value=MAX_NEW_TOKENS_LIMIT, required=False, default=512)
    description = StrictCharField(max_length=2000, allow_blank=True, required=False, default="")
    temperature = StrictFloatField(min_value=0.0, max_value=2.0, required=False, allow_null=True)
    top_p = StrictFloatField(min_value=0.0, max_value=1.0, required=False, allow_null=True)
    top_k = StrictIntegerField(min_value=0, max_value=1000, required=False, allow_null=True)
    repetition_penalty = StrictFloatField(min_value=0.01, max_value=10.0, required=False, allow_null=True)
    do_sample = StrictBooleanField(required=False, allow_null=True)
    parameters = serializers.DictField(required=False, default=dict)

    def validate_model_id(self, value: str) -> str:
        if not value.strip() or "\x00" in value:
            raise serializers.ValidationError(_("must be a hub id or an absolute path"))
        return value

    def validate_top_p(self, value):
        if value is not None and value <= 0:
            raise serializers.ValidationError(_("must be greater than 0"))
        return value

    def validate(self, attrs):
        engine = attrs.get("engine") or getattr(self.instance, "engine", None)
        quantization = attrs.get("quantization", getattr(self.instance, "quantization", "none"))
        if engine == "llama.cpp":
            if quantization.upper() not in GGUF_TYPES and quantization != "none":
                raise serializers.ValidationError(
                    {"quantization": [_("llama.cpp takes a GGUF type such as Q4_K_M, or none; not %(value)r") % {"value": quantization}]}
                )
            if quantization != "none":
                attrs["quantization"] = quantization.upper()
        elif quantization not in ENGINE_QUANTIZATIONS[engine]:
            allowed = ", ".join(ENGINE_QUANTIZATIONS[engine])
            raise serializers.ValidationError(
                {"quantization": [_("engine %(engine)s takes one of %(allowed)s; not %(value)r") % {
                    "engine": engine, "allowed": allowed, "value": quantization}]}
            )
        parameters = attrs.get("parameters", getattr(self.instance, "parameters", {}) or {})
        _validate_parameters(engine, parameters)
        return attrs


# (lowest, highest) of each numeric parameter. -1 keeps its meaning where an engine gives it one
# (n_ctx: the model's own, n_gpu_layers: all, seed: random). The upper bounds keep an entry from
# asking for what no host has, and keep every duration inside what a timedelta can hold.
INTEGER_PARAMETERS = {
    "n_ctx": (-1, 1_048_576), "max_model_len": (-1, 1_048_576), "n_gpu_layers": (-1, 10_000),
    "n_threads": (-1, 1024), "max_batch_size": (-1, 1024), "tensor_parallel_size": (-1, 1024),
    "pipeline_parallel_size": (-1, 1024), "max_queue": (0, 10_000), "seed": (-1, 2**32 - 1),
}
# num_gpus may be a fraction: Ray accounts GPUs that way (two 0.5 entries share one GPU).
NUMBER_PARAMETERS = {"timeout_s": (0.001, 3600), "gpu_memory_utilization": (0.01, 1.0), "num_gpus": (0, 1024)}
# Custom Ray resources an entry's runner needs (BEAUTYAI_PLACEMENT=ray): a node's own resource such as
# "gpu_a100" or a node label resource ("node:10.0.0.5"). Ray's predefined resources are not custom
# ones: GPUs are asked for with num_gpus, and the rest are the placement's to set.
RAY_RESOURCE_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
RAY_RESOURCES_MAX = 16
RAY_RESOURCE_VALUE_MAX = 1_000_000
RAY_RESERVED_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _validate_parameters(engine: str, parameters: dict) -> None:
    def bad(message: str):
        raise serializers.ValidationError({"parameters": [message]})

    # The API's parser refuses these already; the admin form's JSON field takes NaN and Infinity,
    # which the database then refuses with an IntegrityError.
    non_finite = first_path(parameters, lambda item: isinstance(item, float) and not math.isfinite(item))
    if non_finite is not None:
        bad(f"{non_finite[0]} must be a finite number")
    keep_alive = parameters.get("keep_alive_seconds")
    if keep_alive is not None and not (_is_number(keep_alive) and
                                       (keep_alive == -1 or 0 <= keep_alive <= KEEP_ALIVE_MAX_SECONDS)):
        bad(f"keep_alive_seconds must be -1 (never) or 0 to {KEEP_ALIVE_MAX_SECONDS} seconds (30 days)")
    for name, (lowest, highest) in INTEGER_PARAMETERS.items():
        value = parameters.get(name)
        if value is not None and not (_is_number(value) and isinstance(value, int) and lowest <= value <= highest):
            bad(f"{name} must be an integer from {lowest} to {highest}")
    for name, (lowest, highest) in NUMBER_PARAMETERS.items():
        value = parameters.get(name)
        if value is not None and not (_is_number(value) and lowest <= value <= highest):
            bad(f"{name} must be a number from {lowest:g} to {highest:g}")
    if "trust_remote_code" in parameters and not isinstance(parameters["trust_remote_code"], bool):
        bad(_("trust_remote_code must be true or false"))
    if parameters.get("ray_resources") is not None:
        _validate_ray_resources(parameters["ray_resources"], bad)
    if engine == "openai":
        base_url = parameters.get("base_url")
        if not isinstance(base_url, str) or not re.match(r"^https?://[^\s/]+", base_url):
            bad(_("base_url (http:// or https://) is required for the openai engine"))
        env_name = parameters.get("api_key_env")
        if env_name is not None and not api_key_env_allowed(env_name):
            bad(_("api_key_env must be the NAME of an environment variable starting with %(prefix)s, not a key")
                % {"prefix": API_KEY_ENV_PREFIX})
    elif "base_url" in parameters:
        bad(_("base_url is only for the openai engine, not %(engine)s") % {"engine": engine})
    # A gated hub model's token follows the remote keys' naming rule (docs/downloads.md).
    token_env = parameters.get("hf_token_env")
    if token_env is not None and not api_key_env_allowed(token_env):
        bad(_("hf_token_env must be the NAME of an environment variable starting with %(prefix)s")
            % {"prefix": API_KEY_ENV_PREFIX})
    if "allow_pickle_weights" in parameters and not isinstance(parameters["allow_pickle_weights"], bool):
        bad(_("allow_pickle_weights must be true or false"))
    if "tool_parser" in parameters and parameters["tool_parser"] not in TOOL_FORMATS:
        bad(_("tool_parser must be one of %(formats)s") % {"formats": ", ".join(TOOL_FORMATS)})
    revision = parameters.get("revision")
    if revision is not None and not (isinstance(revision, str) and REVISION.match(revision)):
        bad(_("revision must be a branch, tag or commit name (letters, digits, . _ / -)"))
    task = parameters.get("task", "generate")
    if task not in TASKS:
        bad(_("task must be one of %(allowed)s") % {"allowed": ", ".join(TASKS)})
    if task == "embed" and engine not in EMBEDDING_ENGINES:
        bad(_("task embed needs the %(engines)s engine, not %(engine)s")
            % {"engines": " or ".join(EMBEDDING_ENGINES), "engine": engine})
    if "pooling" in parameters and parameters["pooling"] not in POOLINGS:
        bad(_("pooling must be one of %(allowed)s") % {"allowed": ", ".join(POOLINGS)})
    if "matryoshka" in parameters and not isinstance(parameters["matryoshka"], bool):
        bad(_("matryoshka must be true or false"))
    if task != "embed" and ("pooling" in parameters or "matryoshka" in parameters):
        bad(_("pooling and matryoshka are only for task embed"))


def _validate_ray_resources(resources, bad) -> None:
    if not isinstance(resources, dict):
        bad(_("ray_resources must be an object of resource names and amounts, such as {\"gpu_a100\": 1}"))
    if len(resources) > RAY_RESOURCES_MAX:
        bad(_("ray_resources takes at most %(count)d resources") % {"count": RAY_RESOURCES_MAX})
    for name, amount in resources.items():
        if not RAY_RESOURCE_NAME.fullmatch(name):
            # The name itself is what is wrong, so it is quoted (and cut short) instead of used as a path.
            bad(_("ray_resources names are 1 to 64 characters of A-Z a-z 0-9 _ . : -, not %(name)s")
                % {"name": repr(name[:64])})
        if name == "GPU":
            bad(_("ray_resources.GPU is Ray's own GPU count: use num_gpus"))
        if name in RAY_RESERVED_RESOURCES:
            bad(_("ray_resources.%(name)s is one of Ray's own resources, not a custom one") % {"name": name})
        if not (_is_number(amount) and 0 < amount <= RAY_RESOURCE_VALUE_MAX):
            bad(_("ray_resources.%(name)s must be a number above 0 and at most %(most)s")
                % {"name": name, "most": RAY_RESOURCE_VALUE_MAX})


class ModelAddRequestSerializer(StrictSerializer):
    model_name = ModelNameField(validators=[validate_model_name_free])
    model_config = ModelConfigSerializer()
    set_as_default = StrictBooleanField(required=False, default=False)


class ModelUpdateRequestSerializer(StrictSerializer):
    updates = serializers.DictField(required=False, default=dict)
    set_as_default = StrictBooleanField(required=False, default=False)


class ModelListQuerySerializer(StrictSerializer):
    limit = serializers.IntegerField(min_value=1, max_value=100, required=False, default=100)
    offset = serializers.IntegerField(min_value=0, max_value=10**9, required=False, default=0)


class ModelLoadRequestSerializer(StrictSerializer):
    force_reload = StrictBooleanField(required=False, default=False)
    # Files missing: download them first, then load (the answer is 202 with the download job).
    download = StrictBooleanField(required=False, default=False)


class DownloadRequestSerializer(StrictSerializer):
    revision = StrictCharField(max_length=100, required=False)

    def validate_revision(self, value: str) -> str:
        from models_app.hub import REVISION

        if not REVISION.match(value):
            raise serializers.ValidationError("a branch, tag or commit name (letters, digits, . _ / -)")
        return value


class DownloadCancelQuerySerializer(StrictSerializer):
    discard = StrictQueryBooleanField(required=False, default=False)


class ModelDeleteQuerySerializer(StrictSerializer):
    clear_cache = StrictQueryBooleanField(required=False, default=False)


# Response shapes, for the OpenAPI schema.
class ModelSummarySerializer(serializers.Serializer):
    model_name = StrictCharField()
    model_id = StrictCharField()
    architecture = StrictCharField()
    engine = StrictCharField()
    task = serializers.ChoiceField(choices=TASKS)
    status = serializers.ChoiceField(choices=["loaded", "loading", "unloaded", "error"])
    memory_usage_mb = serializers.FloatField()
    is_default = serializers.BooleanField()


class ModelListResponseSerializer(EnvelopeSerializer):
    models = ModelSummarySerializer(many=True)
    total_count = serializers.IntegerField()


class ModelAddResponseSerializer(EnvelopeSerializer):
    model_name = StrictCharField()
    message = StrictCharField()


class ModelLoadResponseSerializer(EnvelopeSerializer):
    model_name = StrictCharField()
    model_id = StrictCharField()
    memory_usage_mb = serializers.FloatField()
    load_time_seconds = serializers.FloatField()
