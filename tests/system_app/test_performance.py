"""GET /system/performance aggregates the rows the test inserts; old rows are pruned by retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from system_app.models import LogRecord, RequestMetric, ResourceSample
from system_app.services import prune_old_rows
from tests.envelope import ISO_Z, assert_error, assert_ok

pytestmark = pytest.mark.django_db


def request_row(minutes_ago: float, status: int, duration_ms: float) -> RequestMetric:
    return RequestMetric(created_at=timezone.now() - timedelta(minutes=minutes_ago), method="GET",
                         route="/models/", status_code=status, duration_ms=duration_ms, username="u")


def sample_row(minutes_ago: float, memory: float, gpu: float) -> ResourceSample:
    return ResourceSample(created_at=timezone.now() - timedelta(minutes=minutes_ago), cpu_percent=10,
                          memory_percent=memory, gpu_percent=gpu, gpu_memory_percent=0)


def test_performance_aggregates_the_requests_and_samples_inside_the_window(api_as):
    RequestMetric.objects.bulk_create([
        request_row(1, 200, 10.0), request_row(5, 201, 20.0), request_row(9, 404, 30.0), request_row(9.5, 500, 60.0),
        request_row(30, 200, 1000.0),  # outside a 10-minute window
    ])
    ResourceSample.objects.bulk_create([sample_row(2, 40.0, 10.0), sample_row(8, 60.0, 30.0), sample_row(20, 99, 99)])
    body = assert_ok(api_as("system_status").get("/system/performance?window_minutes=10"))
    data = body["data"]
    assert data["time_window_minutes"] == 10 and ISO_Z.match(data["timestamp"])
    assert data["metrics"] == {
        "avg_response_time_ms": 30.0,
        "total_requests": 4,
        "successful_requests": 2,
        "error_rate_percent": 50.0,
        "throughput_requests_per_minute": 0.4,
        "avg_memory_usage_percent": 50.0,
        "avg_gpu_usage_percent": 20.0,
        "resource_samples": 2,
    }


def test_the_default_window_is_an_hour(api_as):
    RequestMetric.objects.bulk_create([request_row(59, 200, 5.0), request_row(61, 200, 5.0)])
    data = assert_ok(api_as("system_status").get("/system/performance"))["data"]
    assert data["time_window_minutes"] == 60 and data["metrics"]["total_requests"] == 1


def test_an_empty_window_has_no_averages_and_zero_rates(api_as):
    metrics = assert_ok(api_as("system_status").get("/system/performance?window_minutes=1"))["data"]["metrics"]
    assert metrics["avg_response_time_ms"] is None and metrics["avg_memory_usage_percent"] is None
    assert metrics["total_requests"] == 0 and metrics["error_rate_percent"] == 0.0
    assert metrics["throughput_requests_per_minute"] == 0.0


@pytest.mark.parametrize("window", ["0", "10081", "-5", "abc", "NaN", "1e3", "99999999999999999999"])
def test_a_window_outside_one_minute_to_one_week_is_refused(api_as, window):
    response = api_as("system_status").get(f"/system/performance?window_minutes={window}")
    body = assert_error(response, 400, "ValidationError")
    assert body["error_message"].startswith("window_minutes")


def test_pruning_deletes_rows_older_than_their_retention(settings):
    settings.METRICS_RETENTION_DAYS = 7
    settings.LOG_RETENTION_DAYS = 14
    RequestMetric.objects.bulk_create([request_row(8 * 24 * 60, 200, 1), request_row(6 * 24 * 60, 200, 1)])
    ResourceSample.objects.bulk_create([sample_row(8 * 24 * 60, 1, 1), sample_row(1, 1, 1)])
    now = timezone.now()
    LogRecord.objects.bulk_create([
        LogRecord(created_at=now - timedelta(days=15), level="INFO", levelno=20, source="x", message="old"),
        LogRecord(created_at=now - timedelta(days=8), level="INFO", levelno=20, source="x", message="kept"),
    ])
    assert prune_old_rows() == {"request_metrics": 1, "resource_samples": 1, "log_records": 1}
    assert RequestMetric.objects.count() == ResourceSample.objects.count() == 1
    assert list(LogRecord.objects.values_list("message", flat=True)) == ["kept"]
