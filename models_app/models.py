from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from accounts.permissions import CONTRACT_PERMISSIONS

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# Literal segments right under /models/ (POST /models/default/{name}): a model named like one would
# make its routes ambiguous (is /models/default/load "load default" or "make 'load' the default"?).
# Case-insensitive, so that no name differs from a segment by case only.
RESERVED_MODEL_NAMES = frozenset({"default"})


def validate_model_name_free(name: str) -> None:
    if name.lower() in RESERVED_MODEL_NAMES:
        raise ValidationError(f"'{name}' is a route segment under /models/ and cannot name a model")

ENGINES = ("transformers", "vllm", "llama.cpp", "openai")
# What a runner loads the model for (parameter ``task``): chat generation, or embeddings (/v1/embeddings).
TASKS = ("generate", "embed")
EMBEDDING_ENGINES = ("transformers", "llama.cpp")
POOLINGS = ("mean", "cls", "last")
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

    name = models.CharField(_("name"), max_length=128, unique=True, validators=[RegexValidator(MODEL_NAME_PATTERN)],
                            help_text=_("Letters, digits, dots, dashes and underscores; the name the API and the pages use."))
    model_id = models.CharField(_("model id"), max_length=500,
                                help_text=_("A Hugging Face hub id such as org/name, or an absolute path on this server."))
    architecture = models.CharField(_("architecture"), max_length=64, default="causal_lm")
    engine = models.CharField(_("engine"), max_length=20, choices=[(e, e) for e in ENGINES])
    quantization = models.CharField(_("quantization"), max_length=16, default="none",
                                    help_text=_("For llama.cpp a GGUF type such as Q4_K_M; none for full precision."))
    dtype = models.CharField(_("data type"), max_length=16, default="auto", choices=[(d, d) for d in DTYPES])
    max_new_tokens = models.PositiveIntegerField(_("max new tokens"), default=512)
    description = models.TextField(_("description"), blank=True)
    # Generation defaults; null means "not set" (the engine's own default), which keeps exports lossless.
    temperature = models.FloatField(_("temperature"), null=True, blank=True, help_text=_("Empty: the engine's default."))
    top_p = models.FloatField("top-p", null=True, blank=True, help_text=_("Empty: the engine's default."))
    top_k = models.IntegerField("top-k", null=True, blank=True, help_text=_("Empty: the engine's default."))
    repetition_penalty = models.FloatField(_("repetition penalty"), null=True, blank=True,
                                           help_text=_("Empty: the engine's default."))
    do_sample = models.BooleanField(_("sampling"), null=True, blank=True, help_text=_("Empty: the engine's default."))
    parameters = models.JSONField(_("engine parameters"), default=dict, blank=True,
                                  help_text=_("A JSON object of engine options, such as n_ctx, filename or base_url."))
    is_default = models.BooleanField(_("default"), default=False)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("model")
        verbose_name_plural = _("models")
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
        if Alias.objects.filter(name=self.name).exists():
            raise ValidationError({"name": [_("An alias already has this name.")]})

    GENERATION_FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample")

    @property
    def task(self) -> str:
        return (self.parameters or {}).get("task") or "generate"

    @property
    def generation_defaults(self) -> dict:
        return {f: getattr(self, f) for f in self.GENERATION_FIELDS if getattr(self, f) is not None}


class Alias(models.Model):
    """Another name for a registry entry, resolved wherever a chat names its model (see models_app.services).

    Names share one namespace with models: a request naming either must mean exactly one thing.
    """

    name = models.CharField(_("name"), max_length=128, unique=True, validators=[RegexValidator(MODEL_NAME_PATTERN)],
                            help_text=_("Used in place of a model name by /v1, /v1/messages and the chat routes."))
    target = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="aliases",
                               verbose_name=_("target"))
    fallback = models.ForeignKey(ModelConfig, null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="fallback_for", verbose_name=_("fallback"),
                                 help_text=_("Used when the target is in error, cannot be loaded, or is not loaded "
                                             "and the caller may not load it."))
    description = models.TextField(_("description"), blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = _("model alias")
        verbose_name_plural = _("model aliases")
        default_permissions = ()  # part of the registry: the contract's model_read / model_write govern it

    def __str__(self) -> str:
        return f"{self.name} → {self.target}"

    def clean(self):
        problems = {}
        try:
            validate_model_name_free(self.name)
        except ValidationError as exc:
            problems["name"] = exc.messages
        if ModelConfig.objects.filter(name=self.name).exists():
            problems["name"] = [_("A model already has this name.")]
        if self.fallback_id is not None and self.fallback_id == self.target_id:
            problems["fallback"] = [_("The fallback must be another model than the target.")]
        if problems:
            raise ValidationError(problems)


class ModelDownload(models.Model):
    """One job fetching a registry entry's files from the Hugging Face hub (models_app.downloads runs it).

    At most one job per model is active (queued, downloading or verifying), which the database
    enforces, so two users who start the same download get the same job.
    """

    QUEUED, DOWNLOADING, VERIFYING, DONE, FAILED, CANCELLED = (
        "queued", "downloading", "verifying", "done", "failed", "cancelled")
    STATUSES = {QUEUED: pgettext_lazy("download status", "queued"),
                DOWNLOADING: pgettext_lazy("download status", "downloading"),
                VERIFYING: pgettext_lazy("download status", "verifying"),
                DONE: pgettext_lazy("download status", "done"),
                FAILED: pgettext_lazy("download status", "failed"),
                CANCELLED: pgettext_lazy("download status", "cancelled")}
    ACTIVE = (QUEUED, DOWNLOADING, VERIFYING)

    model = models.ForeignKey(ModelConfig, on_delete=models.CASCADE, related_name="downloads", verbose_name=_("model"))
    model_name = models.CharField(_("model name"), max_length=128)
    repo_id = models.CharField(_("hub repository"), max_length=500)
    revision = models.CharField(_("revision"), max_length=100, default="main")
    status = models.CharField(_("status"), max_length=16, choices=list(STATUSES.items()), default=QUEUED)
    bytes_done = models.BigIntegerField(_("bytes done"), default=0)
    bytes_total = models.BigIntegerField(_("bytes in all"), default=0)
    files_done = models.PositiveIntegerField(_("files done"), default=0)
    files_total = models.PositiveIntegerField(_("files in all"), default=0)
    speed_bytes_per_second = models.FloatField(_("speed (bytes per second)"), default=0.0)
    eta_seconds = models.FloatField(_("time left (seconds)"), null=True, blank=True)
    error = models.TextField(_("error"), blank=True)
    # The files and commit chosen when the job was created; a resumed job fetches exactly these.
    plan = models.JSONField(_("plan"), default=dict, blank=True)
    load_when_done = models.BooleanField(_("load when done"), default=False)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                     related_name="model_downloads", verbose_name=_("requested by"))
    # host:pid:start time of the process running it; a job whose process is gone is resumed.
    worker = models.CharField(_("worker"), max_length=200, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("model download")
        verbose_name_plural = _("model downloads")
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
