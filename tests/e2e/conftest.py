"""Fixtures of the browser tests: one app server and one Chromium for the whole session, a fresh page per test.

The server runs the app offline on a tiny checkpoint written here (T = 20) and on the bundled data subset,
with caps that keep a training run short.  Every test here is skipped when Chromium or Playwright is missing.
The server's log is test-artifacts/e2e/server.log; each page's screenshot is test-artifacts/e2e/<page>.png.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from app_server import (ARTIFACTS, CHROMIUM_ARGS, FIRST_LOAD_MS, VIEWPORT, AppServer, chart_selector, find_chromium,
                        write_tiny_model)

E2E_DIR = Path(__file__).resolve().parent
CHROMIUM = find_chromium()
try:
    import playwright.sync_api  # noqa: F401
    MISSING = None if CHROMIUM else "no Chromium installed (apt-get install chromium; .ci/run does it)"
except ImportError:
    MISSING = "the playwright Python package is not installed (pip install -r requirements.txt)"

#: Caps of the test server: a run takes the seed preset at batch 8, and ends within 2 minutes if never stopped.
SERVER_ENV = {"DDPM_HOSTED": "0", "DDPM_MAX_STEPS": "3000", "DDPM_MAX_BATCH": "16", "DDPM_MAX_MINUTES": "2",
              "DDPM_JOB_TIMEOUT_S": "60", "DDPM_TORCH_THREADS": "1"}


def pytest_collection_modifyitems(config, items):
    if MISSING is None:
        return
    skip = pytest.mark.skip(reason=f"browser tests skipped: {MISSING}")
    for item in items:
        if E2E_DIR in Path(item.fspath).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = ARTIFACTS / "e2e"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def app_env(tmp_path_factory) -> dict[str, str]:
    """Environment of an offline app on the tiny model and the bundled data subset."""
    model = write_tiny_model(tmp_path_factory.mktemp("e2e-model"))
    return {**SERVER_ENV, "DDPM_MODEL": str(model), "DDPM_DATA_DIR": str(tmp_path_factory.mktemp("e2e-no-data"))}


@pytest.fixture(scope="session")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def app_server(app_env, artifacts, chromium):
    """The server, after a first visitor opened "/" (as a Space's iframe does): it loads the model, and it
    settles Streamlit's page mode (see test_the_first_visitor_of_a_fresh_server_on_a_deep_link_...)."""
    with AppServer(app_env, log_path=artifacts / "server.log") as server:
        context = chromium.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.goto(server.url)
            page.wait_for_selector(chart_selector("home_grid"), state="visible", timeout=FIRST_LOAD_MS)
        finally:
            context.close()
        yield server


@pytest.fixture
def page(chromium):
    """A fresh browser context (its own cookies, so its own Streamlit session) and page."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    page = context.new_page()
    page.page_errors = []  # JavaScript errors raised in the page
    page.on("pageerror", lambda err: page.page_errors.append(str(err)))
    yield page
    context.close()
