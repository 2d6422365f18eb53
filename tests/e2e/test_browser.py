"""The app in Chromium: every page by its URL, scrubbing the reverse trajectory, a training run started and stopped.

What AppTest cannot see is checked here: that the browser draws each Plotly chart, that moving a slider
changes the pixels shown, that the Train page's fragment keeps polling while the run goes on, and that
no exception box or JavaScript error appears.  Fixtures are in conftest.py; screenshots go to
test-artifacts/e2e/.
"""
from __future__ import annotations

import re
import time

import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
Page, expect = sync_api.Page, sync_api.expect

from app_server import (JS_ERRORS, JS_IDLE, JS_IMAGE_CHART, JS_NAV, JS_POINTS, LOAD_MS,  # noqa: E402
                        NAV_TITLES, PAGES, STEER_CHARTS, VIEWPORT, AppServer, chart_selector, key_selector,
                        start_training_run, write_tiny_model)


def open_page(page: Page, base_url: str, name: str) -> None:
    """Go to a page by its URL, wait for its title, the end of its script run and every chart it draws first."""
    path, title, charts = PAGES[name]
    page.goto(f"{base_url}/{path}")
    expect(page.locator("h1").first).to_have_text(title, timeout=LOAD_MS)
    page.wait_for_function(JS_IDLE, timeout=LOAD_MS)
    for key in charts:
        page.wait_for_selector(chart_selector(key), state="visible", timeout=LOAD_MS)


def assert_no_errors(page: Page) -> None:
    assert page.evaluate(JS_ERRORS) == [], "the page shows an exception or an error box"
    assert page.page_errors == [], f"JavaScript errors: {page.page_errors}"


def keyed(page: Page, key: str, inside: str = ""):
    """The element created with ``key=`` (or ``inside`` it)."""
    return page.locator(f"{key_selector(key)} {inside}".strip())


def image_chart(page: Page, key: str) -> dict:
    found = page.evaluate(JS_IMAGE_CHART, key)
    assert found is not None, f"no drawn chart {key!r}"
    return found


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders_its_title_and_charts_without_an_error(page, app_server, artifacts, name):
    open_page(page, app_server.url, name)
    assert page.evaluate(JS_NAV) == NAV_TITLES
    for key in PAGES[name][2]:
        assert page.locator(chart_selector(key)).bounding_box()["height"] > 100, f"chart {key} is not drawn"
    if name == "train":
        expect(page.get_by_text("No run yet")).to_be_visible()
    if name == "about":
        expect(page.locator("[data-testid=stTable]")).to_be_visible()
    if name == "steer":  # the tests' model is unconditional: the page says so, and which model to pick
        expect(page.get_by_text("it takes no tissue")).to_be_visible()
    page.screenshot(path=artifacts / f"{name}.png")
    assert_no_errors(page)


def wait_for_step(page: Page, step: int) -> None:
    """Until the step chart shows ``step`` and the rerun that drew it has ended."""
    page.wait_for_function(f"() => {{ const c = ({JS_IMAGE_CHART})('rev_step'); "
                           f"return !!c && c.annotations[0].startsWith('x_t at step {step} ') }}")
    page.wait_for_function(JS_IDLE)


def test_reverse_step_slider_changes_the_image_shown(page, app_server, artifacts):
    open_page(page, app_server.url, "reverse")
    last = image_chart(page, "rev_step")
    assert last["annotations"][0].startswith("x_t at step 20 ")
    last_pixels = keyed(page, "rev_step").screenshot()

    slider = keyed(page, "rev_inspect", "input[type=range]")
    slider.focus()
    slider.press("Home")
    wait_for_step(page, 0)
    first = image_chart(page, "rev_step")
    assert first["sources"][0] != last["sources"][0] and first["sources"][1] != last["sources"][1]
    assert keyed(page, "rev_step").screenshot() != last_pixels

    for _ in range(3):
        slider.press("ArrowRight")
    wait_for_step(page, 3)
    third = image_chart(page, "rev_step")
    assert third["sources"][0] not in (first["sources"][0], last["sources"][0])
    keyed(page, "rev_step").screenshot(path=artifacts / "reverse-step-3.png")
    assert_no_errors(page)


def loss_points(page: Page) -> int:
    return page.evaluate(JS_POINTS, "train_loss")


def test_train_run_grows_its_loss_curve_and_stops_when_asked(page, app_server, artifacts):
    open_page(page, app_server.url, "train")
    start_training_run(page, preset="seed", steps=3000, batch=8)  # stopped long before its 3,000 steps

    page.wait_for_function(f"() => ({JS_POINTS})('train_loss') > 0", timeout=LOAD_MS)
    seen = [loss_points(page)]
    while len(seen) < 4:  # the live view redraws every second: the curve must grow across redraws
        page.wait_for_function(f"() => ({JS_POINTS})('train_loss') > {seen[-1]}", timeout=LOAD_MS)
        seen.append(loss_points(page))
    assert seen == sorted(set(seen)), seen
    expect(page.get_by_text("running", exact=True)).to_be_visible()
    page.screenshot(path=artifacts / "train-running.png")

    keyed(page, "train_stop", "button").click()
    expect(page.get_by_text("stopped by you")).to_be_visible(timeout=LOAD_MS)
    expect(keyed(page, "train_stop")).to_have_count(0)
    page.wait_for_selector(chart_selector("train_compare"), state="visible", timeout=LOAD_MS)
    expect(keyed(page, "train_download")).to_be_visible()
    stopped_at = loss_points(page)
    assert stopped_at >= seen[-1]
    time.sleep(2.5)  # a stopped run's curve no longer grows (and the fragment no longer polls)
    assert loss_points(page) == stopped_at
    page.screenshot(path=artifacts / "train-stopped.png")
    assert_no_errors(page)


def test_the_first_visitor_of_a_fresh_server_on_a_deep_link_gets_the_app_navigation(chromium, app_env, artifacts):
    with AppServer(app_env, log_path=artifacts / "server-deep-link.log") as server:
        context = chromium.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.goto(f"{server.url}/forward")
            expect(page.locator("h1").first).to_have_text("Forward diffusion", timeout=LOAD_MS)
            page.wait_for_function(JS_IDLE, timeout=LOAD_MS)
            page.screenshot(path=artifacts / "forward-first-visitor.png")
            assert page.evaluate(JS_NAV) == NAV_TITLES
        finally:
            context.close()


def test_steer_page_with_a_conditional_model_scrubs_its_strengths_and_animates_the_morph(chromium, app_env, artifacts,
                                                                                          tmp_path):
    env = {**app_env, "DDPM_MODEL": str(write_tiny_model(tmp_path / "conditional", num_classes=9))}
    with AppServer(env, log_path=artifacts / "server-steer.log") as server:
        context = chromium.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.page_errors = []  # as the page fixture does
            page.on("pageerror", lambda err: page.page_errors.append(str(err)))
            page.goto(f"{server.url}/steer")
            expect(page.locator("h1").first).to_have_text("Steer tissue", timeout=LOAD_MS)
            for key in STEER_CHARTS:
                page.wait_for_selector(chart_selector(key), state="visible", timeout=LOAD_MS)
            page.wait_for_function(JS_IDLE, timeout=LOAD_MS)
            before = image_chart(page, "steer_sdedit")
            assert before["annotations"][1].startswith("noised to s = 0.8")

            slider = keyed(page, "steer_strength", "input[type=range]")
            slider.focus()
            slider.press("End")  # s = 1: the patch forgotten
            page.wait_for_function(f"() => {{ const c = ({JS_IMAGE_CHART})('steer_sdedit'); "
                                   "return !!c && c.annotations[1].startsWith('noised to s = 1 ') }")
            page.wait_for_function(JS_IDLE)
            after = image_chart(page, "steer_sdedit")
            assert after["sources"][0] == before["sources"][0]  # the same real patch
            assert after["sources"][1:] != before["sources"][1:]
            frames = page.evaluate(f"() => document.querySelector('{key_selector('steer_morph')} .js-plotly-plot')"
                                   "._transitionData._frames.length")  # Plotly.js keeps a figure's frames there
            assert frames == 9
            page.screenshot(path=artifacts / "steer-conditional.png", full_page=True)
            assert_no_errors(page)
        finally:
            context.close()


#: The main area's HTML with what may differ between rounds without telling the side masked: the image's data (the
#: pixels) and the random id Plotly.js gives each drawn plot.
JS_QUIZ_PAGE = """() => { const main = document.querySelector('[data-testid=stMain]');
  const plot = main.querySelector('.st-key-quiz_round:not([data-retained]) .js-plotly-plot');
  return main.outerHTML.replace(/data:image\\/png;base64,[A-Za-z0-9+\\/=]+/g, 'IMAGE').split(plot._fullLayout._uid).join('UID') }"""


def test_ten_quiz_rounds_are_stored_and_nothing_in_the_page_tells_the_side_before_the_answer(chromium, app_env,
                                                                                             tmp_path_factory, artifacts):
    from ddpm.data import CLASS_NAMES
    from ddpm.quiz import QuizDB
    from ddpm.serving.quiz_rounds import ANSWER_EVERY_S

    folder = tmp_path_factory.mktemp("e2e-quiz")
    env = {**app_env, "DDPM_MODEL": str(write_tiny_model(folder / "model", num_classes=9)),
           "DDPM_DATA_DIR": str(folder / "no-data"), "DDPM_QUIZ_DB": str(folder / "quiz.sqlite3")}
    with AppServer(env, log_path=artifacts / "server-quiz.log") as server:
        context = chromium.new_context(viewport=VIEWPORT)
        try:
            page = context.new_page()
            page.page_errors = []
            page.on("pageerror", lambda err: page.page_errors.append(str(err)))
            page.goto(f"{server.url}/quiz")
            expect(page.locator("h1").first).to_have_text("Real or generated?", timeout=LOAD_MS)
            before, said, generated, answered_at = [], [], [], -ANSWER_EVERY_S
            for i in range(10):
                page.wait_for_selector(chart_selector("quiz_round"), state="visible", timeout=LOAD_MS)
                expect(keyed(page, "quiz_left", "button")).to_be_visible(timeout=LOAD_MS)
                page.wait_for_function(f"() => ({JS_IDLE})() && !document.querySelector('[data-stale=true]')",
                                       timeout=LOAD_MS)
                html = page.evaluate(JS_QUIZ_PAGE)
                for name in sorted(CLASS_NAMES, key=len, reverse=True):  # the tissue is no secret: it changes by round
                    html = html.replace(name, "TISSUE")
                before.append(html)
                said.append(("left", "right")[i % 2])
                time.sleep(max(0.0, answered_at + ANSWER_EVERY_S + 0.2 - time.monotonic()))  # the server's rate limit
                keyed(page, f"quiz_{said[-1]}", "button").click()
                answered_at = time.monotonic()
                verdict = page.get_by_text(re.compile(r"the generated patch is on the (left|right)\."))
                expect(verdict).to_be_visible(timeout=LOAD_MS)
                generated.append(re.search(r"on the (left|right)\.", verdict.inner_text()).group(1))
                if i < 9:
                    keyed(page, "quiz_next", "button").click()
                    expect(keyed(page, "quiz_next")).to_have_count(0, timeout=LOAD_MS)
            right = sum(s == g for s, g in zip(said, generated))
            expect(page.get_by_text(f"You: {right} of 10 right")).to_be_visible()
            page.wait_for_selector(chart_selector("quiz_scores"), state="visible", timeout=LOAD_MS)
            page.screenshot(path=artifacts / "quiz-ten-rounds.png", full_page=True)
            rows = QuizDB(folder / "quiz.sqlite3").rows_after(0)
            assert [r["answer"] for r in rows] == said and [r["generated_side"] for r in rows] == generated
            assert len(set(before)) == 1, "before the answer, the page differed between rounds in more than the pixels"
            assert_no_errors(page)
        finally:
            context.close()
