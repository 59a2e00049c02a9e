"""The steering page (``zoo/web/index.html``, served at ``/``) in a real headless Chromium driven by Selenium:
it builds one slider per attribute from ``/v1/models``; moving sliders and pressing Generate streams the reply
of exactly those weights into the page (the same text the API gives them), for two weight settings side by
side. The screenshot goes to the test's folder, and also to ``$STEERZOO_SCREENSHOT`` when set; the docs' figure:

    STEERZOO_SCREENSHOT=docs/figures/serve_page.png STEERZOO_PAGE_BACKBONE=builtin:smollm2-135m \\
        python -m pytest tests/test_serve_page.py

(SmolLM2 with two slightly perturbed copies of its head: an untrained demo whose weights visibly steer.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import openai
import pytest

from tests.factories import steered_cmpo
from zoo.serve import ServeSettings, create_app, serve_in_thread

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="needs Chromium and its driver: apt-get install chromium chromium-driver")
BACKBONE = os.environ.get("STEERZOO_PAGE_BACKBONE", "builtin:tiny")
MAX_TOKENS = 40 if BACKBONE != "builtin:tiny" else 24


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,820"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_page_sliders_steer_the_streamed_reply(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    module = steered_cmpo(max_new_tokens=MAX_TOKENS, backbone=BACKBONE, noise=0.5 if BACKBONE == "builtin:tiny" else 0.02)
    with serve_in_thread(create_app(module, ServeSettings(model_name="demo-cmpo"))) as url:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 300)
        verbosity = wait.until(lambda d: d.find_element(By.ID, "a-verbosity"))
        sentiment = browser.find_element(By.ID, "a-sentiment")
        assert [e.get_attribute("data-attribute") for e in browser.find_elements(By.CSS_SELECTOR, "#panel-a input")] \
            == ["verbosity", "sentiment"]  # one slider per attribute, from /v1/models
        sentiment.send_keys(Keys.END)  # 0 -> 1
        verbosity.send_keys(*[Keys.LEFT] * 10)  # 1 -> 0.5
        assert sentiment.find_element(By.XPATH, "../output").text == "1.00"
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Tell me about the sea.")
        tokens = browser.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys(str(MAX_TOKENS))
        browser.find_element(By.ID, "compare").click()  # weights B side by side (default: all on sentiment)
        browser.find_element(By.ID, "generate").click()
        for panel in ("a", "b"):
            wait.until(lambda d, p=panel: d.find_element(By.ID, f"out-{p}").get_attribute("data-state") in ("done", "error"))
        got = {p: browser.find_element(By.ID, f"out-{p}").get_attribute("textContent") for p in ("a", "b")}
        status = browser.find_element(By.ID, "status-a").text
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        if os.environ.get("STEERZOO_SCREENSHOT"):
            Path(os.environ["STEERZOO_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "serve_page.png", os.environ["STEERZOO_SCREENSHOT"])

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        want = {}
        for panel, steer in (("a", {"verbosity": 0.5, "sentiment": 1.0}), ("b", {"verbosity": 0.0, "sentiment": 1.0})):
            reply = client.chat.completions.create(
                model="demo-cmpo", messages=[{"role": "user", "content": "Tell me about the sea."}], temperature=0,
                max_tokens=MAX_TOKENS, seed=0, extra_body={"steer": steer})
            want[panel] = reply.choices[0].message.content
    assert "error" not in browser.find_element(By.ID, "status-a").get_attribute("class"), status
    assert got == want and got["a"] != got["b"]
    assert "tokens" in status and '"sentiment":1' in status
