"""The resource sampler and the lifecycle of the background tasks."""

from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

import psutil
import pytest
from django.db import OperationalError
from django.db.models.query import QuerySet
from django.utils import timezone

from system_app import apps, probes
from system_app.logging import writer
from system_app.models import ResourceSample
from system_app.sampler import Sampler, sampler

pytestmark = pytest.mark.django_db(transaction=True)


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def fast_sampler():
    instance = Sampler()
    yield instance
    instance.stop()


def test_each_tick_stores_a_sample_of_the_host_and_feeds_the_cpu_meter(fast_sampler):
    fast_sampler.start(interval_s=0.05, prune_interval_s=3600)
    wait_for(lambda: fast_sampler.written >= 3)
    fast_sampler.stop()
    rows = list(ResourceSample.objects.all())
    assert len(rows) == fast_sampler.written and fast_sampler.failures == 0
    assert all(0 <= row.cpu_percent <= 100 for row in rows)
    assert abs(rows[0].memory_percent - psutil.virtual_memory().percent) < 10
    if not probes.gpus():
        assert all(row.gpu_percent == row.gpu_memory_percent == 0 for row in rows)
    assert probes.cpu_meter.current() == fast_sampler.latest.cpu_percent


def test_the_sampler_keeps_measuring_while_the_database_fails_then_stores_again(fast_sampler):
    with mock.patch.object(QuerySet, "create", side_effect=OperationalError("the database system is shutting down")):
        fast_sampler.start(interval_s=0.05, prune_interval_s=3600)
        wait_for(lambda: fast_sampler.failures >= 3)
        assert fast_sampler.running and fast_sampler.written == 0
        measured_at = fast_sampler.latest.taken_at
    wait_for(lambda: fast_sampler.written >= 1)
    assert fast_sampler.latest.taken_at > measured_at and ResourceSample.objects.exists()


def test_the_sampler_prunes_rows_past_their_retention(fast_sampler, settings):
    settings.METRICS_RETENTION_DAYS = 1
    old = ResourceSample.objects.create(created_at=timezone.now() - timedelta(days=2), cpu_percent=1,
                                        memory_percent=1, gpu_percent=0, gpu_memory_percent=0)
    fast_sampler.start(interval_s=0.05, prune_interval_s=3600)
    wait_for(lambda: fast_sampler.written >= 1)
    assert not ResourceSample.objects.filter(pk=old.pk).exists()


def test_background_tasks_start_and_stop_together():
    apps.start_background_tasks()
    try:
        assert sampler.running and writer.running
        apps.start_background_tasks()  # idempotent: still one thread each
    finally:
        apps.stop_background_tasks()
    assert not sampler.running and not writer.running


def test_the_first_request_under_test_does_not_start_the_background_tasks():
    apps._autostart()  # what the first request_started signal runs
    assert not sampler.running and not writer.running
