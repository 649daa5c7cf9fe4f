"""The chat page at `/`, driven end to end in headless Chromium (Debian's chromium and chromium-driver,
through selenium) against the session's real server, one browser for the module: a streamed answer
grows, matches the API's, shows usage; markdown and code render (highlighted, with a copy button); a
hostile answer is shown as text; conversations survive a reload, switch, rename, delete; Stop and Esc
abort the request; regenerate and edit-and-resend ask again; tool calls, reasoning and server errors
are shown; the model list says which models are loaded."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from server.ui import ASSETS
from tests.helpers import total, wait_idle
from tests.launch import MODEL, ROOT, Server, launch, small_catalog
from tests.ui_page import CHROMEDRIVER, CHROMIUM, Page, chromium, greedy, until

USAGE = re.compile(r"(\d+) prompt \+ (\d+) completion tokens · ([\d.]+) tok/s")
CODE_QUESTION = "Write a Python function that adds two numbers. Use a markdown code block."
HOSTILE = (
    'Look: <img src=x onerror="window.pwned=1"> and <script>window.pwned=2</script> '
    'and [a link](javascript:window.pwned=3)\n\n<div onclick="window.pwned=4">block</div>\n\n**bold**'
)


def test_page_and_assets_are_open_when_the_api_needs_a_key() -> None:
    app = create_app(Settings(config_path=ROOT / "models.yaml", api_keys=("secret",)))
    client = TestClient(app)  # without `with`: the lifespan (model loading) does not run
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text)
    assert "/ui/vendor/marked/marked.umd.js" in sources and "/ui/vendor/dompurify/purify.min.js" in sources
    for src in sources:
        asset = client.get(src)
        assert asset.status_code == 200, src
        assert asset.headers["content-type"].startswith(
            "text/css" if src.endswith(".css") else "text/javascript"
        )
        assert "default-src 'self'" in asset.headers["content-security-policy"]
    modules = {
        "chat.js",
        "store.js",
        "sidebar.js",
        "stream.js",
        "view.js",
        "render.js",
    }  # chat.js and what it imports
    assert modules <= ASSETS
    assert client.get("/v1/models").status_code == 401  # the API itself still needs the key
    assert client.get("/ui/other.js").status_code == 401  # only the page's own files are open
    keyed = {"authorization": "Bearer secret"}
    assert client.get("/ui/other.js", headers=keyed).status_code == 404
    assert client.get("/ui/vendor/README.md", headers=keyed).status_code == 404  # .js and .css only
    assert client.get("/ui/../ui.py", headers=keyed).status_code == 404


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    driver = chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_answer_streams_in_and_shows_usage(browser: Any, server: Server, client: openai.OpenAI) -> None:
    page = Page(browser, server)
    question = "Write three sentences about the sea."
    page.ask(question, max_tokens=24)
    lengths = set()
    until(lambda: lengths.add(len(page.answer())) or page.text("status").startswith("done"), what="done")
    final = page.answer()
    assert len({n for n in lengths if 0 < n < len(final)}) >= 2, lengths  # seen growing, not all at once
    expected = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
    )
    kept = page.current()["messages"]
    assert kept[0] == {"role": "user", "content": question}
    assert kept[1]["content"] == expected.choices[0].message.content  # SSE parsed intact, same greedy text
    usage = USAGE.search(page.text("usage"))
    assert usage is not None, page.text("usage")
    assert expected.usage is not None
    assert int(usage[1]) == expected.usage.prompt_tokens
    assert int(usage[2]) == expected.usage.completion_tokens
    assert float(usage[3]) > 0
    assert page.find("send").is_enabled() and not page.find("stop").is_enabled()


def test_markdown_and_a_code_block_render_highlighted_with_a_copy_button(
    browser: Any, server: Server, client: openai.OpenAI
) -> None:
    expected = greedy(client, [{"role": "user", "content": CODE_QUESTION}], 40)
    fenced = re.search(r"```python\n(.*?)```", expected, re.S)
    assert fenced, expected  # the model's greedy answer has a python code block (it is deterministic)
    page = Page(browser, server)
    page.ask(CODE_QUESTION, max_tokens=40)
    page.done()
    assert page.current()["messages"][1]["content"] == expected
    answer = page.all(".msg.assistant")[-1]
    code = answer.find_element("css selector", ".code-block pre code.hljs.language-python")
    assert code.get_attribute("textContent") == fenced[1]
    keywords = [k.text for k in code.find_elements("css selector", ".hljs-keyword")]
    assert "def" in keywords and "return" in keywords
    assert "```" not in page.answer()  # the fences became markup
    inline = [c.text for c in answer.find_elements("css selector", "p code")]
    assert inline == re.findall(r"(?<!`)`([^`\n]+)`(?!`)", expected[fenced.end() :])  # `add` and co.
    head = answer.find_element("css selector", ".code-head")
    assert head.find_element("css selector", "span").text == "python"
    browser.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": server.url, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    head.find_element("css selector", "button.copy").click()
    until(lambda: head.find_element("css selector", "button.copy").text == "Copied", 10, "Copied")
    pasted = browser.execute_async_script(
        "navigator.clipboard.readText().then(arguments[0], (e) => arguments[0]('failed: ' + e))"
    )
    assert pasted == fenced[1]


def test_a_hostile_answer_is_shown_as_text_and_runs_nothing(browser: Any, server: Server) -> None:
    seed = [
        {
            "id": "hostile",
            "title": "hostile",
            "system": "",
            "updated": 1,
            "messages": [
                {"role": "user", "content": 'Say <img src=x onerror="window.pwned=5">'},
                {"role": "assistant", "content": HOSTILE, "reasoning": "<script>window.pwned=6</script>"},
            ],
        }
    ]
    page = Page(browser, server, seed=seed)
    assert page.titles() == ["hostile"]  # the seeded conversation is the one shown
    user, answer = page.all(".msg")
    assert user.find_element("css selector", ".text").text == 'Say <img src=x onerror="window.pwned=5">'
    shown = answer.find_element("css selector", ".text").text
    assert '<img src=x onerror="window.pwned=1">' in shown
    assert "<script>window.pwned=2</script>" in shown
    assert '<div onclick="window.pwned=4">block</div>' in shown
    assert answer.find_element("css selector", ".text strong").text == "bold"  # markdown still renders
    link = answer.find_element("css selector", ".text a")
    assert link.text == "a link" and not (link.get_attribute("href") or "").startswith("javascript")
    assert answer.find_element("css selector", ".reasoning-text").get_attribute("textContent") == (
        "<script>window.pwned=6</script>"
    )
    assert not page.all("#messages img, #messages script, #messages [onerror], #messages [onclick]")
    link.click()
    time.sleep(0.3)
    assert browser.execute_script("return window.pwned === undefined")


def test_conversations_survive_a_reload_switch_rename_and_delete(
    browser: Any, server: Server, client: openai.OpenAI
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page = Page(browser, server)
    page.find("settings").click()  # open the system prompt
    page.set("system", "You are a pirate.")
    page.ask("Hi!", max_tokens=8)
    page.done()
    first = page.shown()[-1]
    page.find("new-chat").click()
    assert page.all(".msg") == [] and page.find("system").get_attribute("value") == ""
    page.ask("Name a color.", max_tokens=8)
    page.done()
    second = page.shown()[-1]
    assert page.titles() == ["Name a color.", "Hi!"]  # newest first

    page.reload()
    assert page.titles() == ["Name a color.", "Hi!"]
    assert page.shown() == ["Name a color.", second]
    page.all("#conversations .open")[1].click()
    until(lambda: page.shown() == ["Hi!", first], 10, "the first conversation")
    assert page.find("system").get_attribute("value") == "You are a pirate."
    pirate = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi!"}]
    assert page.current()["messages"][1]["content"] == greedy(client, pirate, 8)  # the system prompt was sent

    ActionChains(browser).double_click(page.all("#conversations .open")[1]).perform()
    field = page.all("#conversations .rename-input")[0]
    field.send_keys("Pirate talk" + Keys.ENTER)  # the old title is selected: typing replaces it
    delete = page.all("#conversations li")[0].find_element("css selector", ".delete")
    delete.click()
    assert delete.text == "Delete?"  # a second click deletes
    delete.click()
    page.reload()
    assert page.titles() == ["Pirate talk"]
    assert page.shown() == ["Hi!", first]


def test_stop_and_esc_end_the_stream_and_free_the_slot(browser: Any, server: Server) -> None:
    from selenium.webdriver.common.keys import Keys

    page = Page(browser, server)
    for how in ("button", "esc"):
        aborted = total(server.stats(), "aborted")
        for _ in range(3):  # sampled: an answer may end on its own before 40 characters; ask again
            page.ask(
                "Write a very long story about a dragon who learns to cook.", max_tokens=2000, temperature=0.8
            )
            until(
                lambda: len(page.answer()) > 40 or page.text("status").startswith(("done", "error")),
                120,
                "a partial answer",
            )
            if page.text("status") == "streaming…":
                break
        assert page.text("status") == "streaming…", (page.text("status"), page.answer())
        if how == "button":
            page.find("stop").click()
        else:
            page.find("prompt").send_keys(Keys.ESCAPE)
        until(lambda: page.text("status") == "stopped", 30, "the stopped status")
        stopped_at = page.answer()
        wait_idle(server)  # the server freed the sequence: the abort reached it
        assert total(server.stats(), "aborted") == aborted + 1
        assert page.answer() == stopped_at  # nothing arrives after Stop
        assert page.all(".msg.assistant .note")[-1].text == "(stopped)"
        assert re.search(r"~\d+ tokens · [\d.]+ tok/s", page.text("usage")), page.text("usage")
        assert page.find("send").is_enabled() and not page.find("stop").is_enabled()
        assert page.current()["messages"][-1]["note"] == "(stopped)"


def test_regenerate_and_edit_ask_again(browser: Any, server: Server, client: openai.OpenAI) -> None:
    seed = [
        {
            "id": "old",
            "title": "",
            "system": "",
            "updated": 1,
            "messages": [
                {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "SEEDED ANSWER ONE"},
                {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "SEEDED ANSWER TWO"},
            ],
        }
    ]
    page = Page(browser, server, seed=seed)
    assert len(page.all(".msg .regenerate")) == 1  # the last answer only
    page.set("max-tokens", "8")
    page.set("temperature", "0")
    page.all(".msg .regenerate")[0].click()
    page.done()
    history = [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "SEEDED ANSWER ONE"},
        {"role": "user", "content": "Name a fruit."},
    ]
    kept = page.current()["messages"]
    assert [m["content"] for m in kept[:3]] == [m["content"] for m in history] and len(kept) == 4
    assert kept[3]["content"] == greedy(client, history, 8) != "SEEDED ANSWER TWO"

    page.all(".msg.user .edit")[0].click()
    editor = page.all(".msg.user textarea.edit")[0]
    editor.clear()
    editor.send_keys("Say hello.\n")  # Enter sends the edit; what followed it goes
    page.done()
    kept = page.current()["messages"]
    assert [m["role"] for m in kept] == ["user", "assistant"] and kept[0]["content"] == "Say hello."
    assert kept[1]["content"] == greedy(client, [{"role": "user", "content": "Say hello."}], 8)
    assert page.answer() and "SEEDED" not in page.find("messages").text


def test_tool_calls_reasoning_and_errors_are_shown(browser: Any, server: Server) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    page = Page(browser, server)
    page.find("settings").click()
    page.set("extra", json.dumps({"tools": tools, "tool_choice": "required"}))
    page.ask("What is the weather in Paris?", max_tokens=40)
    page.done()
    call = page.all(".msg.assistant .tool-call")[0]
    assert call.find_element("css selector", ".tool-name").text == "tool call: get_weather"
    arguments = json.loads(call.find_element("css selector", "pre").text)
    assert set(arguments) == {"city"}  # the schema's, enforced by constrained decoding
    assert page.current()["messages"][1]["toolCalls"][0]["name"] == "get_weather"

    page.find("new-chat").click()
    page.ask("Hi!", max_tokens=8, temperature=3)  # the server refuses it: a 400 with its words
    assert page.done() == "error"
    error = page.all(".msg.assistant.error .note")[0].text
    assert error.startswith("error: the server answered 400: ") and "'temperature'" in error

    seed = [
        {
            "id": "thought",
            "title": "thought",
            "system": "",
            "updated": 1,
            "messages": [
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "**4**", "reasoning": "Two and two make four."},
            ],
        }
    ]
    page = Page(browser, server, seed=seed)
    reasoning = page.all(".msg.assistant details.reasoning")[0]
    assert reasoning.get_attribute("open") is None  # collapsed
    assert not reasoning.find_element("css selector", ".reasoning-text").is_displayed()
    reasoning.find_element("css selector", "summary").click()
    assert reasoning.find_element("css selector", ".reasoning-text").text == "Two and two make four."
    assert page.answer().strip() == "4" and page.all(".msg.assistant .text strong")[0].text == "4"


def test_the_model_list_says_which_models_are_loaded(browser: Any, server: Server) -> None:
    page = Page(browser, server)
    data = httpx.get(f"{server.base_url}/models", timeout=30).json()["data"]
    listed = {m["id"]: m["loaded"] for m in data if m["task"] == "generate"}  # only the models that chat
    assert len(listed) < len(data)  # the shipped embedding model is not offered
    labels = {o.get_attribute("value"): o.text for o in page.all("#model option")}
    assert set(labels) == set(listed)
    for model, loaded in listed.items():
        assert labels[model] == model + (" · loaded" if loaded else " (loads on first use)")


def test_a_server_with_keys_asks_for_one_and_the_page_keeps_it(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
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
        page.done()
        assert page.answer() and USAGE.search(page.text("usage"))
        assert "page-key" not in browser.current_url
        page.reload()  # the key came from localStorage, the models list again
        assert page.find("api-key").get_attribute("value") == "page-key"
