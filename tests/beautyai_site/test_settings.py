"""Settings come from the environment; bad values stop the process with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def start(env_changes: dict, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "BEAUTYAI_"))}
    env.update({"DJANGO_SETTINGS_MODULE": "beautyai_site.settings", "BEAUTYAI_DATA_DIR": str(tmp_path / "data")})
    env.update(env_changes)
    code = "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)"
    command = [sys.executable, "-c", code] if not args else [sys.executable, "manage.py", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "name,value",
    [
        ("DJANGO_DEBUG", "maybe"),
        ("DATABASE_URL", "notadb://x"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("DJANGO_ALLOWED_HOSTS", "*"),
        ("BEAUTYAI_MEMORY_BUDGET_MB", "lots"),
        ("BEAUTYAI_MAX_LOADED_MODELS", "0"),
        ("BEAUTYAI_KEEP_ALIVE_SECONDS", "nan"),
        ("BEAUTYAI_KEEP_ALIVE_SECONDS", "1e300"),
        ("BEAUTYAI_LOAD_TIMEOUT_SECONDS", "1e300"),
        ("BEAUTYAI_LOG_RETENTION_DAYS", "1e300"),
        ("BEAUTYAI_MAX_BODY_BYTES", "12"),
        ("BEAUTYAI_LOG_LEVEL", "LOUD"),
        ("BEAUTYAI_THROTTLE_CHAT", "lots/minute"),
    ],
)
def test_a_bad_value_fails_at_start_naming_the_variable(tmp_path, name, value):
    result = start({name: value}, tmp_path)
    assert result.returncode != 0
    assert name in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_debug_is_off_unless_asked_for(tmp_path):
    assert start({}, tmp_path).stdout.strip() == "False"
    assert start({"DJANGO_DEBUG": "1"}, tmp_path).stdout.strip() == "True"


def test_a_secret_key_is_generated_once_and_kept_private(tmp_path):
    start({}, tmp_path)
    key_file = tmp_path / "data" / "secret_key"
    first = key_file.read_text()
    start({}, tmp_path)
    assert key_file.read_text() == first and len(first) >= 50
    assert key_file.stat().st_mode & 0o077 == 0


def test_check_deploy_passes_with_production_values(tmp_path):
    result = start(
        {
            "DJANGO_SECRET_KEY": "x7" * 30 + "-production-like-secret-for-the-deploy-check",
            "DJANGO_ALLOWED_HOSTS": "beautyai.example.org",
            "BEAUTYAI_HTTPS": "1",
        },
        tmp_path,
        "check", "--deploy", "--fail-level", "WARNING",
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("url", "plus_one"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
    ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379/1"),
    ("rediss://user:pw@cache:6380/3", "rediss://user:pw@cache:6380/4"),
    ("redis://127.0.0.1:6379?db=2", "redis://127.0.0.1:6379?db=3"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock?db=1"),
    ("unix:///run/redis.sock?db=4", "unix:///run/redis.sock?db=5"),
])
def test_each_test_worker_gets_the_redis_database_after_the_previous_ones(url, plus_one):
    from beautyai_site.settings_test import redis_url_plus

    assert redis_url_plus(url, 1) == plus_one
