"""The schema class for the OpenAPI document; apart from the schema views, which import it through settings."""

from drf_spectacular.openapi import AutoSchema


class EnvelopeAutoSchema(AutoSchema):
    """Every answer is an envelope object, never a bare list — also for ``list`` actions, which
    drf-spectacular would otherwise document as arrays."""

    def _is_list_view(self, serializer=None) -> bool:
        return False

    def get_operation_id(self) -> str:
        # Without list views every GET would be named "retrieve"; name list actions for what they do.
        operation_id = super().get_operation_id()
        if getattr(self.view, "action", None) == "list" and operation_id.endswith("_retrieve"):
            return operation_id[: -len("retrieve")] + "list"
        return operation_id
