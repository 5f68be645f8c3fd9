"""
The tokenizer playground: POST /tokenize (the page's form and vLLM's), /detokenize, /tokenizer_info
over HTTP with the tiny tokenizer, and the page itself in headless Chromium (skipped without it):
typed text becomes coloured token spans with their ids.
"""
import base64
import json

import pytest
import requests

from nanochat.web import Limits
from test_chat_web import T, error_of, start_server  # noqa: F401

SPECIALS = ["<|bos|>", "<|user_start|>", "<|assistant_end|>", "<|python_start|>"]


def tokenize(url, **body):
    return requests.post(url + "tokenize", json=body, timeout=T)


def test_tokenize_describes_every_token(start_server, tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    server, url = start_server()
    tok = get_tokenizer()
    text = "Hello there! wörld 🙂\nTwo plus two <|bos|> is four <|assistant_end|>"
    body = tokenize(url, text=text).json()
    ids = [t["id"] for t in body["tokens"]]
    assert ids == tok.encode(text) and body["count"] == len(ids)
    assert "".join(t["text"] for t in body["tokens"]) == text  # the texts join up to what was typed
    assert b"".join(bytes(t["bytes"]) for t in body["tokens"]) == text.encode("utf-8")
    assert all(bytes(t["bytes"]) == tok.decode_bytes([t["id"]]) for t in body["tokens"])
    # the emoji is 4 bytes over several tokens: the last one shows it, the others are its first bytes
    parts = [t for t in body["tokens"] if t["text"] == "" or "🙂" in t["text"]]
    assert parts and parts[-1]["text"].endswith("🙂") and all(t["text"] == "" for t in parts[:-1])
    # special-token spellings typed are ordinary text: no special id among them
    specials = {tok.encode_special(s) for s in tok.get_special_tokens()}
    assert not specials & set(ids)
    for s in SPECIALS:
        r = tokenize(url, text=s).json()
        assert "".join(t["text"] for t in r["tokens"]) == s and r["count"] > 1
    assert tokenize(url, text="").json() == {"tokens": [], "count": 0}


def test_vllm_forms_and_info(start_server, tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer
    server, url = start_server()
    tok = get_tokenizer()
    bos = tok.get_bos_token_id()
    # vLLM's form, which lm-eval's remote tokenizer sends: ids, with <|bos|> first as /v1/completions adds it
    assert tokenize(url, prompt="Hello there").json() == {"tokens": [bos] + tok.encode("Hello there"), "count": 3}
    r = tokenize(url, prompt="Hello there", add_special_tokens=False).json()
    assert r["tokens"] == tok.encode("Hello there")
    assert complete_prompt_tokens(url, "Hello there") == 1 + len(r["tokens"])
    back = requests.post(url + "detokenize", json={"tokens": r["tokens"]}, timeout=T).json()
    assert back == {"prompt": "Hello there"}
    info = requests.get(url + "tokenizer_info", timeout=T).json()
    assert info["vocab_size"] == tok.get_vocab_size() == 400 and info["bos_token_id"] == bos
    assert info["special_tokens"]["<|assistant_end|>"] == tok.encode_special("<|assistant_end|>")
    assert "eos_token" in info and info["eos_token"] is None  # a spelling a client would encode as text


def complete_prompt_tokens(url, prompt):
    r = requests.post(url + "v1/completions", json={"prompt": prompt, "max_tokens": 1}, timeout=T)
    return r.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("path,body,param", [
    ("tokenize", {}, "text"),
    ("tokenize", {"text": "a", "prompt": "b"}, "text"),
    ("tokenize", {"text": 5}, "text"),
    ("tokenize", {"text": ["a"]}, "text"),
    ("tokenize", {"text": "x" * 501}, "text"),
    ("tokenize", {"text": "\ud800"}, "text"),
    ("tokenize", {"prompt": None}, "prompt"),
    ("tokenize", {"prompt": "a", "add_special_tokens": "no"}, "add_special_tokens"),
    ("tokenize", [1, 2], None),
    ("detokenize", {}, "tokens"),
    ("detokenize", {"tokens": [400]}, "tokens"),
    ("detokenize", {"tokens": [-1]}, "tokens"),
    ("detokenize", {"tokens": "abc"}, "tokens"),
    ("detokenize", {"tokens": [True]}, "tokens"),
])
def test_bad_requests(start_server, tiny_base_dir, path, body, param):
    server, url = start_server(limits=Limits(max_total_chars=500))
    error_of(requests.post(url + path, json=body, timeout=T), 400, param)


def test_page_is_served_and_linked(start_server, tiny_base_dir):
    server, url = start_server()
    page = requests.get(url + "tokenizer", timeout=T)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert "<script>" in page.text and "src=\"http" not in page.text and "href=\"http" not in page.text
    assert "/tokenize" in page.text and "innerHTML" not in page.text.split("<script>")[1].replace("never innerHTML", "")
    assert 'href="/tokenizer"' in requests.get(url, timeout=T).text  # the chat page links to it

# -----------------------------------------------------------------------------
# in the browser

from test_chat_web_browser import CHROMIUM, page  # noqa: E402,F401  (page: a fresh headless Chromium)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")
def test_page_shows_coloured_tokens(start_server, tiny_base_dir, page, tmp_path):  # noqa: F811
    server, url = start_server()
    typed = "Hello <|bos|> there!\nwörld 🙂"
    expected = tokenize(url, text=typed).json()["tokens"]
    page.call("Page.navigate", url=url + "tokenizer")
    page.wait("document.getElementById('text') && document.readyState === 'complete'", what="the page")
    page.js("document.getElementById('text').focus()")
    page.type(typed, enter=False)
    page.wait(f"document.querySelectorAll('#tokens .tok').length === {len(expected)}", what="the token spans")
    spans = page.js("""[...document.querySelectorAll('#tokens .tok')].map(s => ({id: Number(s.dataset.id), title: s.title,
        text: [...s.childNodes].filter(n => !(n.classList && n.classList.contains('nl'))).map(n => n.textContent).join(''),
        colour: getComputedStyle(s).backgroundColor, partial: s.classList.contains('partial')}))""")
    assert [s["id"] for s in spans] == [t["id"] for t in expected]
    assert "".join(s["text"] for s in spans) == typed  # the typed text, token by token, special spelling included
    assert all(a["colour"] != b["colour"] for a, b in zip(spans, spans[1:]))  # every boundary shows
    assert all(c not in ("rgba(0, 0, 0, 0)", "transparent") for c in (s["colour"] for s in spans))
    for s, t in zip(spans, expected):  # hover: the id and the bytes
        assert f"id {t['id']}" in s["title"] and f"{len(t['bytes'])} byte" in s["title"]
        assert s["partial"] == (t["text"] == "")
    stats = page.js("document.getElementById('stats').textContent")
    assert f"{len(expected)} tokens" in stats and "bytes per token" in stats
    assert page.js("document.getElementById('ids').textContent") == json.dumps([t["id"] for t in expected])
    assert page.js("document.querySelectorAll('#tokens b, #tokens script').length") == 0  # text, never HTML
    shot = page.call("Page.captureScreenshot", format="png")
    (tmp_path / "tokenizer.png").write_bytes(base64.b64decode(shot["data"]))
    # clearing the text clears the tokens
    page.js("const t = document.getElementById('text'); t.value = ''; t.dispatchEvent(new Event('input'))")
    page.wait("document.querySelectorAll('#tokens .tok').length === 0", what="no tokens")
    problems = [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not problems, problems
