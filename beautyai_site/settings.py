"""Settings for BeautyAI, every value read from the environment (see docs/configuration.md).

A bad value stops the process at start with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
import psutil
from django.core.exceptions import ImproperlyConfigured

from beautyai_site.env import env_bool, env_list, env_number, env_rate, env_str
from models_app.serving.engines.contract import KEEP_ALIVE_MAX_SECONDS

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("BEAUTYAI_DATA_DIR", str(BASE_DIR / "var"))).resolve()
try:
    DATA_DIR.mkdir(parents=True, exist_ok=True)
except OSError as exc:
    raise ImproperlyConfigured(f"BEAUTYAI_DATA_DIR: cannot create {DATA_DIR}: {exc.strerror}") from None


def _secret_key() -> str:
    """The key from the environment, else one generated on first start and kept in the data dir.

    O_EXCL makes two processes starting at once agree on one key: the loser reads the winner's.
    """
    key = env_str("DJANGO_SECRET_KEY")
    if key:
        return key
    path = DATA_DIR / "secret_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 50:
            raise ImproperlyConfigured(f"DJANGO_SECRET_KEY is unset and {path} holds no usable key") from None
        return key
    key = secrets.token_urlsafe(64)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
if "*" in ALLOWED_HOSTS:
    # A wildcard host makes DNS rebinding against a local model server trivial (CVE-2024-28224).
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must list host names; '*' is refused")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "guardian",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "models_app",
    "inference_app",
    "system_app",
    "axes",
]

MIDDLEWARE = [
    "beautyai_site.api.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "system_app.request_metrics.RequestMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Pages follow the django_language cookie, else Accept-Language; the JSON API stays English.
    "beautyai_site.i18n.PageLocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # A signed-in user's saved language wins over the cookie and the browser's.
    "beautyai_site.i18n.UserLanguageMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "system_app.middleware.AuditMiddleware",
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "beautyai_site.urls"
ASGI_APPLICATION = "beautyai_site.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database() -> dict:
    url = env_str("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'beautyai.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except Exception:  # dj-database-url raises several types for unknown schemes and bad ports
        raise ImproperlyConfigured("DATABASE_URL is not a database URL this server understands") from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured("DATABASE_URL names no database engine")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # Runners and request threads write at once; wait for the lock instead of failing.
        config.setdefault("OPTIONS", {})["timeout"] = 20
        # A transaction that reads first and writes later cannot wait for the write lock (SQLite answers
        # "database is locked" at once, to avoid a deadlock); taking it at BEGIN makes it wait instead.
        config["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
        # CONN_MAX_AGE (60 s, from the parse above) keeps a connection per request thread, and request
        # threads are reused (beautyai_site/request_threads.py), so a request does not pay for opening
        # the file; a pool of our own measured no faster (docs/operations.md).
        # A file, not memory, so that a server started by the tests can share the test database.
        config["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    if urlparse(REDIS_URL).scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 times socket reads out after 5 s, exactly channels-redis's BZPOPMIN wait, so a
            # busy event loop turned an idle wait into a TimeoutError that killed the consumer.
            "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": 30}]},
        }
    }
    # Shared by all web processes: throttling counters must see every process's requests.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
    # API-key lookups (accounts/key_cache.py): only here, where every process that changes a key
    # (web servers, management commands) can remove the entry for all of them.
    CACHES["api_keys"] = CACHES["default"]
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: a locked-out account/address is refused before any password check
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user row; anonymous callers get 401

# Sign-in brute-force protection (django-axes): this many failed sign-ins for one username from one
# address lock that pair out for the cool-off, counted from the last attempt. API keys are not affected.
AXES_FAILURE_LIMIT = int(env_number("BEAUTYAI_LOGIN_FAILURE_LIMIT", 5, minimum=1, integer=True))
AXES_COOLOFF_TIME = timedelta(minutes=env_number("BEAUTYAI_LOGIN_COOLOFF_MINUTES", 15, minimum=1, maximum=7 * 24 * 60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_LOCKOUT_CALLABLE = "beautyai_site.pages.lockout_page"  # the site's lockout page, status 429
AXES_RESET_ON_SUCCESS = True
# REMOTE_ADDR only, like the audit log: X-Forwarded-For is whatever the client says.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("ar", "العربية")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)  # whitenoise warns about a missing folder on every start
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True  # serve app static files without a collectstatic step
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/chat/"
LOGOUT_REDIRECT_URL = "/login/"

# Request bodies: the API takes JSON only; anything larger is refused with 413 before parsing.
MAX_REQUEST_BODY_BYTES = int(env_number("BEAUTYAI_MAX_BODY_BYTES", 2 * 1024 * 1024, minimum=1024, integer=True))
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.auth.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["accounts.permissions.ContractPermission"],
    "DEFAULT_PARSER_CLASSES": ["beautyai_site.api.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["beautyai_site.api.renderers.EnvelopeJSONRenderer"],
    "EXCEPTION_HANDLER": "beautyai_site.api.exceptions.envelope_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "beautyai_site.api.openapi.EnvelopeAutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.ScopedRateThrottle"],
    # Per-user request rates by route family ("N/second|minute|hour|day"); counted in the cache.
    "DEFAULT_THROTTLE_RATES": {
        "chat": env_rate("BEAUTYAI_THROTTLE_CHAT", "120/minute"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "BeautyAI API",
    "DESCRIPTION": "Register, load and chat with LLMs; every response uses the BeautyAI envelope.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several request fields are called "type" with different choices (OpenAI tools, Anthropic tools,
    # tool_choice, thinking): each choice set gets its own name instead of a numbered collision.
    "ENUM_NAME_OVERRIDES": {
        "FunctionToolTypeEnum": ["function"],
        "AnthropicToolTypeEnum": ["custom"],
        "AnthropicToolChoiceTypeEnum": ["auto", "any", "tool", "none"],
        "AnthropicThinkingTypeEnum": ["enabled", "disabled", "adaptive"],
    },
}

# Security headers; HTTPS-only behaviour is switched on with BEAUTYAI_HTTPS for deployments behind TLS.
HTTPS = env_bool("BEAUTYAI_HTTPS", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SECURE_SSL_REDIRECT = HTTPS and env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = int(env_number("DJANGO_SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0, minimum=0, integer=True))
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS and env_bool("DJANGO_SECURE_HSTS_PRELOAD", True)
if env_bool("BEAUTYAI_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Models and engines.
HF_HOME = Path(env_str("HF_HOME", str(Path.home() / ".cache" / "huggingface"))).resolve()
os.environ.setdefault("HF_HOME", str(HF_HOME))
# Downloads go over plain HTTP(S), where huggingface_hub reports progress through our hook, resumes
# with ranges and can be cancelled between chunks; its Xet transfer path runs in native threads that
# offer neither. Set HF_HUB_DISABLE_XET=0 to prefer Xet (progress and cancel then become coarse).
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
# Download jobs running at once per web process; more wait queued.
MAX_DOWNLOADS = int(env_number("BEAUTYAI_MAX_DOWNLOADS", 2, minimum=1, integer=True))
MODEL_ROOTS = [Path(p).resolve() for p in env_list("BEAUTYAI_MODEL_ROOTS", [])] or None  # None: the defaults
_available_mb = psutil.virtual_memory().available / 2**20
# Default budget: 80% of the RAM available at start (the rest stays for the OS, the web process and page cache).
MEMORY_BUDGET_MB = env_number("BEAUTYAI_MEMORY_BUDGET_MB", round(_available_mb * 0.8), minimum=1)
MAX_LOADED_MODELS = int(env_number("BEAUTYAI_MAX_LOADED_MODELS", 4, minimum=1, integer=True))
KEEP_ALIVE_SECONDS = env_number("BEAUTYAI_KEEP_ALIVE_SECONDS", 1800, minimum=-1, maximum=KEEP_ALIVE_MAX_SECONDS)
LOAD_TIMEOUT_SECONDS = env_number("BEAUTYAI_LOAD_TIMEOUT_SECONDS", 600, minimum=1, maximum=24 * 3600)
# After a load, keep one idle runner per engine with its libraries imported, so the next load of
# that engine skips seconds of imports (an idle transformers spare holds ~340 MB).
RUNNER_SPARES = env_bool("BEAUTYAI_RUNNER_SPARES", True)
# Where runners run: "local" (processes this web process spawns) or "ray" (named actors on the Ray
# cluster at RAY_ADDRESS, shared by every web process; docs/operations.md, "Ray placement").
PLACEMENT = env_str("BEAUTYAI_PLACEMENT", "local").lower()
if PLACEMENT not in {"local", "ray"}:
    raise ImproperlyConfigured("BEAUTYAI_PLACEMENT must be local or ray")
RAY_ADDRESS = env_str("RAY_ADDRESS", "") or None  # read by Ray itself too; None: the local cluster ("auto")

API_KEY_LAST_USED_PRECISION_SECONDS = 60
# How long a looked-up API key is kept in the cache (0: no cache; without REDIS_URL there is none);
# changes to keys and users clear it at once (accounts/key_cache.py).
API_KEY_CACHE_SECONDS = env_number("BEAUTYAI_API_KEY_CACHE_SECONDS", 10, minimum=0, maximum=24 * 3600)

LOG_LEVEL = env_str("BEAUTYAI_LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ImproperlyConfigured("BEAUTYAI_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    # Bad Host headers, CSRF failures and the like: once a minute, their client text cut short, no traceback.
    "filters": {"client_triggered": {"()": "system_app.logging.ClientTriggeredLogThrottle"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["client_triggered"]},
        # Stores records as LogRecord rows for GET /system/logs; never blocks (bounded queue, drops counted).
        "database": {"class": "system_app.logging.DatabaseLogHandler", "level": LOG_LEVEL,
                     "filters": ["client_triggered"]},
    },
    "root": {"handlers": ["console", "database"], "level": LOG_LEVEL},
    "loggers": {"django.request": {"level": "ERROR"}},
}

# Chat transports.
WEBSOCKET_MAX_MESSAGE_BYTES = int(env_number("BEAUTYAI_WS_MAX_MESSAGE_BYTES", 256 * 1024, minimum=1024, integer=True))
WEBSOCKET_MESSAGES_PER_SECOND = int(env_number("BEAUTYAI_WS_MESSAGES_PER_SECOND", 20, minimum=1, integer=True))
WEBSOCKET_AUTH_GRACE_SECONDS = env_number("BEAUTYAI_WS_AUTH_GRACE_SECONDS", 5, minimum=0.1, maximum=3600)
# How often an open socket checks that its key or browser session still holds and that its user may
# still chat (closing it with 4401 or 4403); every chat checks too.
WEBSOCKET_RECHECK_SECONDS = env_number("BEAUTYAI_WS_RECHECK_SECONDS", 5, minimum=0.1, maximum=3600)
# How long a socket's output may stay backed up (kernel buffers full, more queued in daphne) before
# the socket is dropped; read by beautyai_site.ws_protocol, installed by beautyai_site.serve.
WEBSOCKET_SLOW_READER_SECONDS = env_number("BEAUTYAI_WS_SLOW_READER_SECONDS", 10, minimum=0.1, maximum=3600)
MAX_QUEUE = int(env_number("BEAUTYAI_MAX_QUEUE", 16, minimum=0, maximum=10_000, integer=True))
SESSION_FILE_MAX_BYTES = int(env_number("BEAUTYAI_SESSION_FILE_MAX_BYTES", 10 * 1024 * 1024, minimum=1024, integer=True))
TEST_REGEX_TIMEOUT_SECONDS = env_number("BEAUTYAI_TEST_REGEX_TIMEOUT_SECONDS", 1.0, minimum=0.01, maximum=60)

# System: resource sampler, request metrics, logs, /metrics, restart.
SAMPLER_INTERVAL_SECONDS = env_number("BEAUTYAI_SAMPLER_INTERVAL_SECONDS", 10, minimum=1, maximum=3600)
METRICS_RETENTION_DAYS = env_number("BEAUTYAI_METRICS_RETENTION_DAYS", 7, minimum=1, maximum=3650)
LOG_RETENTION_DAYS = env_number("BEAUTYAI_LOG_RETENTION_DAYS", 14, minimum=1, maximum=3650)
PRUNE_INTERVAL_SECONDS = env_number("BEAUTYAI_PRUNE_INTERVAL_SECONDS", 3600, minimum=1, maximum=7 * 86400)
LOG_QUEUE_SIZE = int(env_number("BEAUTYAI_LOG_QUEUE_SIZE", 10000, minimum=100, integer=True))
BACKGROUND_TASKS_AUTOSTART = env_bool("BEAUTYAI_BACKGROUND_TASKS", True)
RESTART_DRAIN_TIMEOUT_SECONDS = env_number("BEAUTYAI_RESTART_DRAIN_TIMEOUT_SECONDS", 30, minimum=0, maximum=3600)
# Addresses or networks that may scrape /metrics without a key; empty: a key with system_status is needed.
METRICS_ALLOWED_IPS = env_list("BEAUTYAI_METRICS_ALLOWED_IPS", [])
for _entry in METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_entry, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"BEAUTYAI_METRICS_ALLOWED_IPS: {_entry!r} is not an IP address or network") from None
