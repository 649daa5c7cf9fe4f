"""The chat page in headless Chromium for tests/test_ui.py: the browser (Debian's chromium and
chromium-driver through selenium), a poll helper, and `Page`, the page by element id and storage."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import openai

from tests.launch import MODEL, Server

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
    "--window-size=1100,900",
)
T = TypeVar("T")


def chromium(user_data_dir: Path) -> Any:
    """A headless Chromium under chromedriver (selenium's `WebDriver`); `quit()` it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def until(condition: Callable[[], T | None], timeout: float = 600, what: str = "condition") -> T:
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
    """The chat page in the browser, by element id; `seed`: conversations put in localStorage first
    (else the page starts with none)."""

    def __init__(
        self,
        driver: Any,
        server: Server,
        wait_for_models: bool = True,
        seed: list[dict[str, Any]] | None = None,
    ) -> None:
        self.driver = driver
        self.url = f"{server.url}/"
        driver.get(self.url)
        driver.execute_script(
            "localStorage.setItem('hearth.conversations', arguments[0]);"
            "localStorage.removeItem('hearth.current');",
            json.dumps(seed or []),
        )
        self.reload(wait_for_models)

    def reload(self, wait_for_models: bool = True) -> None:
        self.driver.get(self.url)
        if wait_for_models:
            until(lambda: MODEL in self.models(), 60, "the model list")
            assert "all-minilm-l6-v2" not in self.models()  # an embedding model cannot chat

    def find(self, element_id: str) -> Any:
        return self.driver.find_element("id", element_id)

    def all(self, css: str) -> list[Any]:
        return list(self.driver.find_elements("css selector", css))

    def text(self, element_id: str) -> str:
        return str(self.find(element_id).text)

    def models(self) -> list[str]:
        return [o.get_attribute("value") for o in self.all("#model option")]

    def set(self, element_id: str, value: str) -> None:
        field = self.find(element_id)
        field.clear()
        field.send_keys(value)

    def ask(self, question: str, max_tokens: int, temperature: float = 0) -> None:
        self.set("max-tokens", str(max_tokens))
        self.set("temperature", str(temperature))
        self.set("prompt", question)
        self.find("send").click()

    def done(self, timeout: float = 600) -> str:
        return until(
            lambda: self.text("status").startswith(("done", "error")) and self.text("status"), timeout
        )

    def answer(self) -> str:
        """The last assistant message's text as shown (markdown rendered, without its note)."""
        answers = self.all(".msg.assistant .text")
        return str(answers[-1].get_attribute("textContent")) if answers else ""

    def shown(self) -> list[str]:
        """Each message's text as shown, in order."""
        return [str(m.text) for m in self.all(".msg .text")]

    def stored(self) -> list[dict[str, Any]]:
        """The conversations as the page keeps them in localStorage."""
        kept = self.driver.execute_script("return localStorage.getItem('hearth.conversations')")
        return list(json.loads(kept or "[]"))

    def current(self) -> dict[str, Any]:
        current = self.driver.execute_script("return localStorage.getItem('hearth.current')")
        return next(c for c in self.stored() if c["id"] == current)

    def titles(self) -> list[str]:
        return [str(b.text) for b in self.all("#conversations .open")]


def greedy(client: openai.OpenAI, messages: list[dict[str, str]], max_tokens: int) -> str:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
    )
    return str(answer.choices[0].message.content)
