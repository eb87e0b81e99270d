"""Model downloads on the dashboard in a real Chromium.

The download runs in the server process, so each test starts a daphne of its own whose environment
points huggingface_hub at the local hub of the ``hub_server`` fixture and at an empty HF_HOME; the hub is
throttled so that progress can be watched and Cancel pressed while bytes are still coming.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from playwright.sync_api import expect

from models_app import services
from models_app.serving.engines.bundled import bundled_gguf_path
from models_app.models import ModelDownload
from tests.servers import start_server, stop_server

from .conftest import BrowserSession, screenshot, sign_in

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

REPO = "test-org/smollm2-gguf"
GGUF = bundled_gguf_path()
SERVED_NAME = f"{REPO}/{GGUF.name}"
RATE = 5_000_000  # bytes per second: about 20 s for the whole file, time enough to watch it and cancel
# What a resume may fetch twice: the 1 MiB block in hand when the cancel lands (models_app.hub drops
# it) and the bytes the hub had sent that the cancelled download never read.
RESUME_OVERLAP = 2 * 2**20


@pytest.fixture
def hub(hub_server):
    return hub_server(REPO, bytes_per_second=RATE)


@pytest.fixture
def download_server(hub, tmp_path, transactional_db):
    """A daphne that downloads from ``hub`` into its own HF_HOME; stopped (its jobs with it) before the flush."""
    process, url = start_server(tmp_path / "daphne.log", env={
        "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
        "BEAUTYAI_BACKGROUND_TASKS": "0"})
    yield url
    stop_server(process)


@pytest.fixture
def ui(browser_thread, download_server):
    session = BrowserSession(browser_thread, download_server)
    yield session
    session.close()


@pytest.fixture
def smol_hub():
    return services.registry_add(name="smol-hub", config={
        "model_id": REPO, "engine": "llama.cpp", "quantization": "Q4_1", "parameters": {"n_ctx": 512}})


def row_parts(page):
    row = page.locator('tr[data-model="smol-hub"]')
    return {
        "files": row.locator('[data-field="download_status"]'),
        "bar": row.locator('[data-field="download"] progress'),
        "progress": row.locator('[data-field="download_progress"]'),
        "outcome": row.locator('[data-field="download_outcome"]'),
        "download": row.locator('button[data-action="download"]'),
        "cancel": row.locator('button[data-action="cancel"]'),
    }


def test_an_operator_downloads_a_missing_model_cancels_it_and_resumes_it_from_the_dashboard(
        ui, make_user, smol_hub, hub):
    operator = make_user("system_status", "model_read", "model_load")
    size = GGUF.stat().st_size

    def download_then_cancel(page):
        sign_in(page, operator, landing="/dashboard/")
        row = row_parts(page)
        expect(row["files"]).to_have_text("missing")
        expect(row["bar"]).to_be_hidden()
        row["download"].click()
        expect(row["files"]).to_have_text("downloading")
        expect(row["download"]).to_be_hidden()
        expect(row["bar"]).to_be_visible()
        # Bytes, speed and time left, in human units; then the bar moves on.
        expect(row["progress"]).to_have_text(
            re.compile(r"^\d+\.\d MB of 9\d\.\d MB · \d+\.\d MB/s · (\d+ min )?\d+ s left$"), timeout=20_000)
        first = row["bar"].evaluate("bar => bar.value")
        page.wait_for_function("([bar, first]) => bar.value > first", arg=[row["bar"].element_handle(), first])
        screenshot(page, "15-download-in-progress")
        row["cancel"].click()
        expect(row["files"]).to_have_text("missing")
        expect(row["outcome"]).to_have_text("cancelled; partial data kept for a resume")
        expect(row["bar"]).to_be_hidden()
        expect(row["download"]).to_be_visible()
        expect(page.locator("#action-status")).to_have_text("smol-hub: download cancelled")
        return first

    first = ui.run(download_then_cancel)
    cancelled = ModelDownload.objects.get(model=smol_hub)
    assert cancelled.status == ModelDownload.CANCELLED
    assert 0 < first < 1 and 0 < cancelled.bytes_done < size
    served_before_resume = hub.bytes_served[SERVED_NAME]
    assert served_before_resume < size

    hub.throttle(None)

    def download_again(page):
        row = row_parts(page)
        row["download"].click()
        expect(row["files"]).to_have_text("present", timeout=60_000)
        expect(row["bar"]).to_be_hidden()
        expect(row["download"]).to_be_hidden()
        expect(row["outcome"]).to_have_text("")
        screenshot(page, "16-download-done")

    ui.run(download_again)
    done = ModelDownload.objects.filter(model=smol_hub).first()
    assert done.status == ModelDownload.DONE and done.bytes_done == size
    # Resumed with a range from where the cancelled job stopped, not fetched again from the start.
    ranges = [headers["Range"] for _, path, headers in hub.requests if path.startswith("/cdn/") and "Range" in headers]
    assert ranges and int(re.match(r"bytes=(\d+)-$", ranges[-1]).group(1)) > 0, hub.requests
    assert size <= hub.bytes_served[SERVED_NAME] <= size + RESUME_OVERLAP, (hub.bytes_served, served_before_resume)


def test_a_viewer_sees_whether_files_are_present_but_gets_no_download_button(ui, viewer, smol_hub):
    def steps(page):
        sign_in(page, viewer, landing="/dashboard/")
        row = row_parts(page)
        expect(row["files"]).to_have_text("missing")
        return row["download"].count(), row["cancel"].count()

    assert ui.run(steps) == (0, 0)
    assert not ModelDownload.objects.exists()


def test_a_download_the_server_refuses_shows_its_error_message(ui, make_user, smol_hub, hub):
    operator = make_user("system_status", "model_read", "model_load")

    def open_dashboard(page):
        sign_in(page, operator, landing="/dashboard/")
        expect(row_parts(page)["download"]).to_be_visible()

    ui.run(open_dashboard)
    # The permission goes while the page is open: the button is still there, the server says no.
    operator.user_permissions.remove(*Permission.objects.filter(codename="model_load"))

    def press_download(page):
        row = row_parts(page)
        row["download"].click()
        status = page.locator("#action-status")
        # The envelope's error_message, as the API answers it.
        expect(status).to_have_text("smol-hub: You do not have permission to perform this action.")
        expect(status).to_have_class(re.compile(r"\berror\b"))
        expect(row["files"]).to_have_text("missing")
        expect(row["bar"]).to_be_hidden()

    ui.run(press_download)
    assert not ModelDownload.objects.exists()
    assert hub.requests == []


def test_a_download_that_fails_its_hash_check_shows_failed_with_the_error_also_after_a_reload(
        ui, make_user, smol_hub, hub):
    operator = make_user("system_status", "model_read", "model_load")
    hub.throttle(None)
    hub.corrupt(SERVED_NAME, 1000)
    message = f"{GGUF.name}: the downloaded file does not match the hash the hub declared"

    def steps(page):
        sign_in(page, operator, landing="/dashboard/")
        row = row_parts(page)
        row["download"].click()
        expect(row["files"]).to_have_text("failed", timeout=60_000)
        expect(row["outcome"]).to_have_text(message)
        expect(row["outcome"]).to_have_class(re.compile(r"\berror\b"))
        expect(row["bar"]).to_be_hidden()
        expect(row["download"]).to_be_visible()
        page.reload()
        expect(row["files"]).to_have_text("failed")
        expect(row["outcome"]).to_have_text(message)
        screenshot(page, "17-download-failed")

    ui.run(steps)
    assert ModelDownload.objects.get(model=smol_hub).status == ModelDownload.FAILED
