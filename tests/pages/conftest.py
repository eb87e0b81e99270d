"""A real Chromium (Debian's, driven by Playwright) against the live daphne server with the bundled model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from importlib import import_module
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "pages"
PASSWORD = "pw-for-tests-only"  # what tests/conftest.py's make_user gives every user


class BrowserThread:
    """Playwright's sync API on a thread of its own.

    The sync API keeps an event loop marked as running in the thread that starts it. In the test
    thread that would make Django refuse every ORM call, swap the test's database connection for
    another, and break the async tests that run later; on its own thread it touches none of that.
    Every Playwright object is created and used on that thread only: tests hand it steps to run.
    """

    def __init__(self):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self.browser = None

    def call(self, function, *args, **kwargs):
        return self.executor.submit(function, *args, **kwargs).result()


@pytest.fixture(scope="session")
def browser_thread():
    """One Chromium for the whole session; each test gets a fresh context (own cookies) in it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run .ci/install-chromium")
    from playwright.sync_api import sync_playwright

    thread = BrowserThread()
    playwright = thread.call(lambda: sync_playwright().start())
    thread.browser = thread.call(playwright.chromium.launch, executable_path=str(CHROMIUM), headless=True,
                                 args=CHROMIUM_ARGS)
    yield thread
    thread.call(thread.browser.close)
    thread.call(playwright.stop)
    thread.executor.shutdown()


class BrowserSession:
    """One test's page: ``ui.run(step)`` runs ``step(page)`` on the browser thread and returns its result.

    The page is opened by the first ``run`` (or by ``open(**context_options)``, e.g. a phone
    viewport) and kept for the test's later steps, so database work can sit between steps.
    """

    def __init__(self, thread: BrowserThread, base_url: str):
        self.thread = thread
        self.base_url = base_url
        self.context = self.page = None

    def open(self, **options) -> None:
        def make():
            self.context = self.thread.browser.new_context(
                base_url=self.base_url, **{"viewport": {"width": 1280, "height": 860}, **options})
            self.context.set_default_timeout(30_000)
            self.page = self.context.new_page()

        self.thread.call(make)

    def run(self, step):
        if self.page is None:
            self.open()
        return self.thread.call(step, self.page)

    def close(self) -> None:
        if self.context is not None:
            self.thread.call(self.context.close)


@pytest.fixture
def ui(browser_thread, live_server_url, transactional_db):
    """This test's browser page. It depends on ``transactional_db`` so that the page closes before the
    database is emptied: a page still polling during the flush would have the server write into the gap."""
    session = BrowserSession(browser_thread, live_server_url)
    yield session
    session.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def sign_in(page, user, *, landing: str = "/chat/") -> None:
    page.goto(f"/login/?next={landing}")
    page.fill("#id_username", user.get_username())
    page.fill("#id_password", PASSWORD)
    page.click(".signin button[type=submit]")
    page.wait_for_url(f"**{landing}")


@pytest.fixture
def chat_model(live_server_url, bundled_model, make_user, client_for):
    """The bundled model, loaded in the live server so that chats start without an on-demand load."""
    loader = client_for(make_user("model_load"))
    response = httpx.post(f"{live_server_url}/models/{bundled_model.name}/load",
                          headers={"Authorization": f"Bearer {loader.raw_key}"}, timeout=180)
    assert response.status_code == 200, response.text
    return bundled_model


@pytest.fixture
def viewer(make_user):
    """A member of the standard ``viewer`` group, with the permissions the migration that defines it gives.

    get_or_create: a flush between transactional tests may have removed the migration's rows.
    """
    from django.contrib.auth.models import Group, Permission

    codenames = import_module("models_app.migrations.0002_contract_groups").VIEWER
    group, _ = Group.objects.get_or_create(name="viewer")
    group.permissions.set(Permission.objects.filter(content_type__app_label="models_app", codename__in=codenames))
    user = make_user()
    user.groups.add(group)
    return user
