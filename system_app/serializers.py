from __future__ import annotations

from rest_framework import serializers

from beautyai_site.api.fields import StrictQueryBooleanField, StrictSerializer
from beautyai_site.api.serializers import EnvelopeSerializer
from system_app.services import LOG_LEVELS


class NoQuerySerializer(StrictSerializer):
    """Routes without parameters still refuse unknown ones, so a typo is not silently ignored."""


class DetailedQuerySerializer(StrictSerializer):
    detailed = StrictQueryBooleanField(required=False, default=False)


class ForceQuerySerializer(StrictSerializer):
    force = StrictQueryBooleanField(required=False, default=False)


class CacheClearQuerySerializer(StrictSerializer):
    model_name = serializers.CharField(max_length=128, required=False, default=None)
    force = StrictQueryBooleanField(required=False, default=False)


class PerformanceQuerySerializer(StrictSerializer):
    window_minutes = serializers.IntegerField(min_value=1, max_value=10080, required=False, default=60)


class LogsQuerySerializer(StrictSerializer):
    level = serializers.CharField(max_length=10, required=False, default="INFO")
    lines = serializers.IntegerField(min_value=1, max_value=1000, required=False, default=100)

    def validate_level(self, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise serializers.ValidationError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level


# Response shapes, for the OpenAPI schema.
class SystemInfoSerializer(serializers.Serializer):
    platform = serializers.CharField()
    python_version = serializers.CharField()
    framework_version = serializers.CharField(allow_null=True)
    django_version = serializers.CharField()
    drf_version = serializers.CharField(allow_null=True)
    torch_version = serializers.CharField(allow_null=True)


class MemoryInfoSerializer(serializers.Serializer):
    total_memory_gb = serializers.FloatField()
    available_memory_gb = serializers.FloatField()
    gpu_memory_gb = serializers.FloatField()
    memory_usage_percent = serializers.FloatField()


class GpuInfoSerializer(serializers.Serializer):
    gpu_available = serializers.BooleanField()
    gpu_name = serializers.CharField(allow_null=True)
    gpu_memory_used_gb = serializers.FloatField()
    gpu_utilization_percent = serializers.FloatField()
    gpu_count = serializers.IntegerField()
    devices = serializers.ListField(child=serializers.DictField(), required=False)


class ModelInfoSerializer(serializers.Serializer):
    loaded_models = serializers.ListField(child=serializers.CharField())
    total_loaded = serializers.IntegerField()
    default_model = serializers.CharField(allow_null=True)
    runners = serializers.ListField(child=serializers.DictField(), required=False)


class SystemStatusResponseSerializer(EnvelopeSerializer):
    system_info = SystemInfoSerializer()
    memory_info = MemoryInfoSerializer()
    gpu_info = GpuInfoSerializer()
    model_info = ModelInfoSerializer()
