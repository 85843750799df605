"""The chat page of `slimtune serve` in headless Chromium: it loads with no errors, lists the model, sends a
message and shows the answer growing as it streams, ending in the same text the API gives for that request.
Needs Debian's `chromium` and `chromium-driver` (installed by `scripts/setup.sh --test`); skipped without them."""

from __future__ import annotations

import time

import pytest

from tests.serve_helpers import Server, build_int4, tiny_long_context
from tests.test_report_browser import CHROMEDRIVER, CHROMIUM, WebDriver

openai = pytest.importorskip("openai")
pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Chromium and chromedriver (Debian: apt-get install -y chromium chromium-driver)",
)

# counts the answer's text changes while it streams
WATCH = """
window.seen = [];  // the answer's text at each change of the page, recorded in the page itself
new MutationObserver(() => {
  const answer = document.querySelector(".assistant");
  if (answer && !answer.dataset.done && answer.textContent) window.seen.push(answer.textContent);
}).observe(document.getElementById("log"), {subtree: true, childList: true, characterData: true});
document.getElementById("max_tokens").value = "2000";
const input = document.getElementById("prompt");
input.value = "I am so happy today!";
document.getElementById("send").click();
return document.getElementById("model").value;
"""
STATE = """
const answer = document.querySelector(".assistant, .error");
return {done: !!(answer && answer.dataset.done), text: answer ? answer.textContent : null,
        cls: answer ? answer.className : null, seen: window.seen};
"""


def test_chat_page_streams_an_answer(tmp_path):
    model = build_int4(tiny_long_context(tmp_path / "hf"), tmp_path / "int4")
    server = Server(model, "--max-tokens-cap", "2000")
    browser = None
    try:
        browser = WebDriver(tmp_path / "chrome")
        browser.open(server.url + "/")
        assert browser.run("return document.title") == "slimtune chat"
        assert browser.run(WATCH) == "int4"
        deadline = time.monotonic() + 30
        state = browser.run(STATE)
        while not state["done"] and time.monotonic() < deadline:
            time.sleep(0.1)
            state = browser.run(STATE)
        assert state["done"] and state["cls"] == "assistant", state
        expected = openai.OpenAI(
            base_url=server.url + "/v1", api_key="x", max_retries=0
        ).chat.completions.create(
            model="int4",
            messages=[{"role": "user", "content": "I am so happy today!"}],
            max_tokens=2000,
            temperature=0,
        )
        assert state["text"] == expected.choices[0].message.content and state["text"]
        # streamed: the answer was on the page in several growing pieces before it was complete
        partial = [text for text in state["seen"] if text != state["text"]]
        assert len(set(partial)) > 1 and all(state["text"].startswith(text) for text in partial)
        errors = [e for e in browser.browser_log() if e.get("level") == "SEVERE"]
        assert errors == []
    finally:
        if browser is not None:
            browser.quit()
        server.stop()
