"""
The chat page in headless Chromium when the server has an API key: the browser's own login box
asks for it (answered here through the DevTools protocol, as a person would type it: any user
name, the key as the password), and the page then works as without a key, its fetch() calls
carrying the credentials. Cancelling the login box leaves a 401 in the one JSON shape.
Skipped when no Chromium is installed.
"""
import json

import pytest

from test_chat_web_browser import CHROMIUM, IDLE, LAST_REPLY, page, serve  # noqa: F401

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")]

KEY = "browser-key-0123456789abcdef"


@pytest.fixture
def keyed_url(tiny_base_dir):
    yield from serve(tiny_base_dir, "-m", "12", NANOCHAT_API_KEY=KEY)


def answer_logins(cdp, password):
    """From now on, requests pause in the browser; continue each, and answer a login box with password (None: cancel)."""
    prompts = []

    def call(method, **params):
        i = next(cdp.ids)
        cdp._send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(cdp._recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if msg.get("method") == "Fetch.requestPaused":
                cdp._send(json.dumps({"id": next(cdp.ids), "method": "Fetch.continueRequest",
                                      "params": {"requestId": msg["params"]["requestId"]}}))
            elif msg.get("method") == "Fetch.authRequired":
                prompts.append(msg["params"]["authChallenge"])
                response = {"response": "CancelAuth"} if password is None else \
                    {"response": "ProvideCredentials", "username": "me", "password": password}
                cdp._send(json.dumps({"id": next(cdp.ids), "method": "Fetch.continueWithAuth",
                                      "params": {"requestId": msg["params"]["requestId"], "authChallengeResponse": response}}))
            elif "id" not in msg:
                cdp.events.append(msg)

    cdp.call = call  # js(), wait() and click() go through it
    cdp.call("Fetch.enable", patterns=[{"urlPattern": "*"}], handleAuthRequests=True)
    return prompts


def test_page_with_a_key(page, keyed_url):
    prompts = answer_logins(page, KEY)
    page.call("Page.navigate", url=keyed_url)
    page.wait("document.querySelectorAll('#model option').length === 2", what="the model picker")
    # the login box asked once; the browser then sent the key with everything the page fetched
    assert len(prompts) == 1 and prompts[0]["scheme"].lower() == "basic"
    page.js("document.getElementById('input').focus()")
    page.type("Hello with a key")
    page.wait(f"{IDLE} && document.querySelector('.msg.assistant details.stats')", what="the reply")
    assert page.js(LAST_REPLY)
    assert "12 (prompt" in page.js("document.querySelector('.msg.assistant details.stats').textContent")
    assert len(prompts) == 1  # the chat's POST carried the key too, without asking again
    problems = [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"]
    assert not problems, problems


def test_page_without_the_key(page, keyed_url):
    prompts = answer_logins(page, None)
    page.call("Page.navigate", url=keyed_url)
    page.wait("document.readyState === 'complete' && document.body && document.body.innerText.includes('invalid_api_key')",
              what="the 401")
    assert prompts
    error = json.loads(page.js("document.body.innerText"))["error"]
    assert error["code"] == "invalid_api_key" and "API key" in error["message"]
