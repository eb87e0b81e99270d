"""The envelope's shape for the OpenAPI schema: every app's response serializers extend these."""

from rest_framework import serializers

from beautyai_site.api.fields import StrictCharField


class EnvelopeSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = serializers.JSONField(allow_null=True)
    timestamp = serializers.DateTimeField()
    execution_time_ms = serializers.FloatField(allow_null=True)


class ErrorResponseSerializer(serializers.Serializer):
    success = serializers.BooleanField()
    data = serializers.JSONField(allow_null=True)
    error_code = StrictCharField()
    error_message = StrictCharField()
    error_details = serializers.JSONField(allow_null=True)
    timestamp = serializers.DateTimeField()
    execution_time_ms = serializers.FloatField(allow_null=True)
