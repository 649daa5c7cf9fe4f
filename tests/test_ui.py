"""The chat page at `/`, driven end to end in headless Chromium (Debian's chromium and chromium-driver,
through selenium) against the session's real server: a streamed answer grows, matches the API's, shows
usage; Stop aborts the request."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import openai
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.helpers import total, wait_idle
from tests.launch import MODEL, ROOT, Server, launch, small_catalog

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
USAGE = re.compile(r"(\d+) prompt \+ (\d+) completion tokens · ([\d.]+) tok/s")
T = TypeVar("T")


def test_page_and_assets_are_open_when_the_api_needs_a_key() -> None:
    app = create_app(Settings(config_path=ROOT / "models.yaml", api_keys=("secret",)))
    client = TestClient(app)  # without `with`: the lifespan (model loading) does not run
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for src in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        asset = client.get(src)
        assert asset.status_code == 200, src
    assert client.get("/ui/chat.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/v1/models").status_code == 401  # the API itself still needs the key
    assert client.get("/ui/other.js").status_code == 401  # only the page's own files are open
    assert client.get("/ui/other.js", headers={"authorization": "Bearer secret"}).status_code == 404


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def until(condition: Callable[[], T | None], timeout: float = 120, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Page:
    """The chat page in the browser, by element id."""

    def __init__(self, driver: object, server: Server, wait_for_models: bool = True) -> None:
        from selenium.webdriver.remote.webdriver import WebDriver

        assert isinstance(driver, WebDriver)
        self.driver = driver
        driver.get(f"{server.url}/")
        if wait_for_models:
            until(lambda: MODEL in self.models(), 60, "the model list")
            assert "all-minilm-l6-v2" not in self.models()  # an embedding model cannot chat

    def find(self, element_id: str):  # type: ignore[no-untyped-def]
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return str(self.find(element_id).text)

    def models(self) -> list[str]:
        from selenium.webdriver.common.by import By

        return [o.get_attribute("value") for o in self.find("model").find_elements(By.TAG_NAME, "option")]

    def set(self, element_id: str, value: str) -> None:
        field = self.find(element_id)
        field.clear()
        field.send_keys(value)

    def ask(self, question: str, max_tokens: int, temperature: float = 0) -> None:
        self.set("max-tokens", str(max_tokens))
        self.set("temperature", str(temperature))
        self.set("prompt", question)
        self.find("send").click()

    def answer(self) -> str:
        """The last assistant message's text (without its note)."""
        from selenium.webdriver.common.by import By

        answers = self.driver.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")
        return str(answers[-1].get_attribute("textContent")) if answers else ""


def test_the_answer_streams_in_and_shows_usage(
    browser: object, server: Server, client: openai.OpenAI
) -> None:
    page = Page(browser, server)
    question = "Write three sentences about the sea."
    page.ask(question, max_tokens=40)
    lengths = set()
    until(lambda: lengths.add(len(page.answer())) or page.text("status").startswith("done"), what="done")
    final = page.answer()
    assert len({n for n in lengths if 0 < n < len(final)}) >= 2, lengths  # seen growing, not all at once
    expected = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0
    )
    assert final == expected.choices[0].message.content  # SSE parsed intact, same greedy text
    usage = USAGE.search(page.text("usage"))
    assert usage is not None, page.text("usage")
    assert expected.usage is not None
    assert int(usage[1]) == expected.usage.prompt_tokens
    assert int(usage[2]) == expected.usage.completion_tokens
    assert float(usage[3]) > 0
    assert page.find("send").is_enabled() and not page.find("stop").is_enabled()


def test_stop_ends_the_stream_and_frees_the_slot(browser: object, server: Server) -> None:
    page = Page(browser, server)
    aborted = total(server.stats(), "aborted")
    page.ask("Write a very long story about a dragon who learns to cook.", max_tokens=2000, temperature=0.8)
    until(lambda: len(page.answer()) > 60, what="a partial answer")
    assert page.text("status") == "streaming…"
    page.find("stop").click()
    until(lambda: page.text("status") == "stopped", 30, "the stopped status")
    stopped_at = page.answer()
    wait_idle(server)  # the server freed the sequence: the abort reached it
    assert total(server.stats(), "aborted") == aborted + 1
    assert page.answer() == stopped_at  # nothing arrives after Stop
    assert "(stopped)" in str(page.driver.find_elements("css selector", ".msg.assistant")[-1].text)
    assert re.search(r"~\d+ tokens · [\d.]+ tok/s", page.text("usage")), page.text("usage")
    assert page.find("send").is_enabled() and not page.find("stop").is_enabled()


def test_a_server_with_keys_asks_for_one_and_the_page_keeps_it(
    browser: object, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from selenium.webdriver.common.keys import Keys

    folder = tmp_path_factory.mktemp("keyed")
    config = small_catalog(folder / "models.yaml", max_batch_size=2, max_waiting=4)
    env = {"HEARTH_API_KEYS": "page-key"}
    with launch(["--config", str(config), "--log-level", "warning"], folder / "server.log", env=env) as keyed:
        page = Page(browser, keyed, wait_for_models=False)
        until(lambda: "needs an API key" in page.text("status"), 30, "the key request")
        assert page.models() == []
        page.find("api-key").send_keys("page-key" + Keys.TAB)  # `change` stores it and lists the models
        until(lambda: MODEL in page.models(), 30, "the model list")
        page.ask("Hi!", max_tokens=8)
        until(lambda: page.text("status").startswith("done"), what="the answer")
        assert page.answer() and USAGE.search(page.text("usage"))
        Page(browser, keyed)  # reloaded: the key came from localStorage, the models list again
