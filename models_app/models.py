from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models

from beautyai_site.api.permissions import CONTRACT_PERMISSIONS

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Literal segments right under /models/ (POST /models/default/{name}): a model named like one would
# make its routes ambiguous (is /models/default/load "load default" or "make 'load' the default"?).
# Case-insensitive, so that no name differs from a segment by case only.
RESERVED_MODEL_NAMES = frozenset({"default"})


def validate_model_name_free(name: str) -> None:
    if name.lower() in RESERVED_MODEL_NAMES:
        raise ValidationError(f"'{name}' is a route segment under /models/ and cannot name a model")

ENGINES = ("transformers", "vllm", "llama.cpp", "openai")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Quantisations each engine can run. llama.cpp takes a GGUF file type (see GGUF_TYPES) or "none".
ENGINE_QUANTIZATIONS = {
    "transformers": ("none", "4bit", "8bit"),
    "vllm": ("none", "awq", "gptq", "fp8", "squeezelm"),
    "openai": ("none",),
}
GGUF_TYPES = (
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L",
    "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
    "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0",
)


class ModelConfig(models.Model):
    """A registry entry: what can be loaded. Whether it is in memory is the EngineManager's business."""

    name = models.CharField(max_length=128, unique=True, validators=[RegexValidator(MODEL_NAME_PATTERN)])
    model_id = models.CharField(max_length=500)
    architecture = models.CharField(max_length=64, default="causal_lm")
    engine = models.CharField(max_length=20, choices=[(e, e) for e in ENGINES])
    quantization = models.CharField(max_length=16, default="none")
    dtype = models.CharField(max_length=16, default="auto", choices=[(d, d) for d in DTYPES])
    max_new_tokens = models.PositiveIntegerField(default=512)
    description = models.TextField(blank=True)
    # Generation defaults; null means "not set" (the engine's own default), which keeps exports lossless.
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    top_k = models.IntegerField(null=True, blank=True)
    repetition_penalty = models.FloatField(null=True, blank=True)
    do_sample = models.BooleanField(null=True, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"
        # The contract's permissions live here, once each, so that django-guardian can grant the
        # per-model ones on a registry entry. Django's add/change/delete/view are not used.
        default_permissions = ()
        permissions = list(CONTRACT_PERMISSIONS.items())
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="one_default_model"
            )
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self):
        # Here rather than in the field's validators: the admin form and the registry import run
        # full_clean(), and a new field validator would need a migration. POST /models/ checks the
        # same function in its serializer.
        try:
            validate_model_name_free(self.name)
        except ValidationError as exc:
            raise ValidationError({"name": exc.messages}) from None

    GENERATION_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample")

    @property
    def generation_defaults(self) -> dict:
        return {f: getattr(self, f) for f in self.GENERATION_FIELDS if getattr(self, f) is not None}


class ModelDownload(models.Model):
    """One job fetching a registry entry's files from the Hugging Face hub (models_app.downloads runs it).

    At most one job per model is active (queued, downloading or verifying), which the database
    enforces, so two users who start the same download get the same job.
    """

    QUEUED, DOWNLOADING, VERIFYING, DONE, FAILED, CANCELLED = (
        "queued", "downloading", "verifying", "done", "failed", "cancelled")
    STATUSES = (QUEUED, DOWNLOADING, VERIFYING, DONE, FAILED, CANCELLED)
    ACTIVE = (QUEUED, DOWNLOADING, VERIFYING)

    model = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="downloads")
    model_name = models.CharField(max_length=128)
    repo_id = models.CharField(max_length=500)
    revision = models.CharField(max_length=100, default="main")
    status = models.CharField(max_length=16, choices=[(s, s) for s in STATUSES], default=QUEUED)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    speed_bytes_per_second = models.FloatField(default=0.0)
    eta_seconds = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    # The files and commit chosen when the job was created; a resumed job fetches exactly these.
    plan = models.JSONField(default=dict, blank=True)
    load_when_done = models.BooleanField(default=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="model_downloads")
    # host:pid:start time of the process running it; a job whose process is gone is resumed.
    worker = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        default_permissions = ()
        constraints = [
            models.UniqueConstraint(fields=["model"], condition=models.Q(status__in=("queued", "downloading", "verifying")),
                                    name="one_active_download_per_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model_name} ({self.status})"

    @property
    def active(self) -> bool:
        return self.status in self.ACTIVE
