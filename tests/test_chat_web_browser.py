"""
The chat page driven in headless Chromium, as a person would use it: type a message, watch the
reply stream in, regenerate it, edit the question, slash commands, copy, switch models.

Chromium is driven over the Chrome DevTools Protocol with the small websocket client below (the
standard library only): no chromedriver or selenium to install and keep in step with the browser.
Skipped when no Chromium is installed (Debian: apt-get install chromium).
"""
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import requests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")) if p), None)

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")]


class CDP:
    """A minimal Chrome DevTools Protocol client: one websocket to one page, commands answered in order."""
    def __init__(self, ws_url, timeout=30):
        u = urlsplit(ws_url)
        self.sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exact(1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")
        self.ids = itertools.count(1)
        self.events = []  # everything the browser sent that was not an answer (console messages, exceptions, ...)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            part = self.sock.recv(n - len(buf))
            if not part:
                raise ConnectionError("the browser closed the connection")
            buf += part
        return buf

    def _send(self, text, opcode=0x1):
        data = text.encode() if isinstance(text, str) else text
        n = len(data)
        head = bytes([0x80 | opcode])  # FIN
        head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n) if n < 1 << 16 \
            else bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)  # a client masks what it sends
        self.sock.sendall(head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(data)))

    def _recv(self):
        message = b""
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._exact(8))[0]
            payload = self._exact(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the websocket")
            if opcode == 0x9:
                self._send(payload, opcode=0xA)  # pong
                continue
            message += payload
            if b0 & 0x80 and opcode in (0x0, 0x1, 0x2):
                return message.decode()

    def call(self, method, **params):
        i = next(self.ids)
        self._send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self._recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def js(self, expression):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression[:80]}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def wait(self, expression, timeout=20, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value not in (None, False, 0, ""):  # a DOM node comes back as {}: found
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or expression}")

    def click(self, selector, index=-1):
        """A real mouse click in the middle of the element (the last one matching, by default)."""
        box = self.js(f"""(() => {{ const all = document.querySelectorAll({json.dumps(selector)});
            const e = all[{index} < 0 ? all.length + {index} : {index}]; if (!e) return null;
            e.scrollIntoView({{block: "center"}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        assert box, f"nothing matches {selector}"
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type(self, text, enter=True):
        self.call("Input.insertText", text=text)
        if enter:
            for kind in ("keyDown", "keyUp"):
                self.call("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                          nativeVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))


def wait_line(proc, marker, timeout):
    deadline, lines = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return line
    raise AssertionError(f"no {marker!r} in the output:\n{''.join(lines)}")


def serve(base_dir, *flags, **env):
    """python -m scripts.chat_web as a user starts it, on a free port: yields its URL, then stops it with Ctrl-C."""
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(base_dir), PYTHONPATH=REPO, PYTHONUNBUFFERED="1", **env)
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--port", "0", "--quiet", *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = wait_line(proc, "web chat: ", 60)
        yield line.split("web chat: ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def chat_url(tiny_base_dir):
    """The server with replies of 400 tokens (long enough for the page to show them streaming in)."""
    yield from serve(tiny_base_dir, "-m", "400")


@pytest.fixture
def page(tmp_path):
    """A CDP connection to a blank page of a fresh headless Chromium."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                             "--window-size=1100,800", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cdp = None
    try:
        port_file = profile / "DevToolsActivePort"  # Chromium writes its debugging port here
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            assert proc.poll() is None, "Chromium exited at startup"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        cdp = CDP(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
        cdp.call("Runtime.enable")
        cdp.call("Log.enable")
        yield cdp
    finally:
        if cdp is not None:
            cdp.sock.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


IDLE = "document.body.dataset.state === 'idle'"
LAST_REPLY = "(() => { const a = document.querySelectorAll('.msg.assistant .bubble'); return a.length ? a[a.length - 1].textContent : null; })()"


def count(page, selector):
    return page.js(f"document.querySelectorAll({json.dumps(selector)}).length")


def test_chat_page(page, chat_url, tmp_path):
    page.call("Page.navigate", url=chat_url)
    page.wait("document.querySelectorAll('#model option').length === 2", what="the model picker")
    options = page.js("[...document.querySelectorAll('#model option')].map(o => [o.value, o.textContent])")
    assert [v for v, _ in options] == ["base/tiny/2", "sft/tiny/5"]
    assert "sft · tiny · step 5" in options[1][1] and page.js("document.getElementById('model').value") == "sft/tiny/5"

    # send a message and watch the reply stream in: record the reply's text at every change
    page.js("""window.seen = []; new MutationObserver(() => {
        const a = document.querySelectorAll('.msg.assistant .bubble');
        if (a.length) window.seen.push([document.body.dataset.state, a[a.length - 1].textContent]);
    }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true})""")
    typed = "Hello <b>there</b> <|assistant_end|>"
    page.js("document.getElementById('input').focus()")
    page.type(typed)
    page.wait(f"{IDLE} && document.querySelector('.msg.assistant details.stats')", what="the reply")
    assert page.js("document.querySelector('.msg.user .bubble').textContent") == typed  # shown as typed
    assert count(page, "#messages b") == 0  # never parsed as HTML
    reply = page.js(LAST_REPLY)
    assert reply
    partial = {text for state, text in page.js("window.seen") if state == "generating" and text and text != reply}
    assert len(partial) >= 3, "the reply did not stream in"
    assert all(reply.startswith(p) for p in partial)

    # stats for nerds under the reply
    page.click(".msg.assistant details.stats summary")
    stats = page.js("document.querySelector('.msg.assistant details.stats').innerText")
    assert "tokens/s" in stats and "time to first token" in stats and "400 (prompt" in stats and "sft/tiny/5" in stats

    # regenerate: the reply is replaced by another
    page.click(".msg.assistant .regen")
    page.wait(f"{IDLE} && document.querySelector('.msg.assistant details.stats')", what="the regenerated reply")
    assert count(page, ".msg.assistant") == 1 and count(page, ".msg.user") == 1
    assert page.js(LAST_REPLY) not in ("", reply)

    # edit the question: what came after it is dropped and answered again
    page.click(".msg.user .edit")
    page.wait("document.querySelector('.editor textarea')")
    page.js("const t = document.querySelector('.editor textarea'); t.focus(); t.select()")
    page.type("An edited question", enter=False)
    page.click(".editor .save")
    page.wait(f"{IDLE} && document.querySelector('.msg.assistant details.stats')", what="the reply to the edit")
    assert page.js("[...document.querySelectorAll('.msg.user .bubble')].map(b => b.textContent)") == ["An edited question"]
    assert count(page, ".msg.assistant") == 1

    # slash commands
    page.js("document.getElementById('input').focus()")
    page.type("/help")
    help_text = page.wait("(() => { const n = document.querySelectorAll('.msg.notice'); return n.length && n[n.length - 1].textContent; })()")
    assert all(c in help_text for c in ("/temperature", "/topk", "/clear", "/help"))
    page.type("/temperature 0")
    page.type("/topk 5")
    page.type("/temperature 9")
    assert page.js("document.querySelector('.msg.notice.error:last-child').textContent").startswith("temperature must be")
    page.type("Say it twice")
    page.wait(f"{IDLE} && document.querySelectorAll('.msg.assistant details.stats').length === 2", what="the greedy reply")
    greedy = page.js(LAST_REPLY)
    assert "temperature 0, top-k 5" in page.js("[...document.querySelectorAll('.msg.assistant details.stats')].pop().textContent")
    page.click(".msg.assistant .regen")
    page.wait(f"{IDLE} && document.querySelectorAll('.msg.assistant details.stats').length === 2", what="the greedy regeneration")
    assert page.js(LAST_REPLY) == greedy  # temperature 0: the same reply again

    # copy a message
    try:
        page.call("Browser.grantPermissions", permissions=["clipboardReadWrite", "clipboardSanitizedWrite"],
                  origin=chat_url.rstrip("/"))
    except RuntimeError:
        pass  # older Chromium: the copy falls back to execCommand
    page.click(".msg.assistant .copy")
    page.wait("[...document.querySelectorAll('.msg.assistant .copy')].pop().textContent === 'Copied!'", what="Copied!")

    # pick the other model: it ends its replies at once
    page.js("const m = document.getElementById('model'); m.value = 'base/tiny/2'; m.dispatchEvent(new Event('change'))")
    page.js("document.getElementById('input').focus()")
    page.type("Hi")
    page.wait(f"{IDLE} && document.querySelectorAll('.msg.assistant details.stats').length === 3", what="the other model's reply")
    assert page.js("[...document.querySelectorAll('.msg.assistant .bubble')].pop().classList.contains('empty')")
    last_stats = page.js("[...document.querySelectorAll('.msg.assistant details.stats')].pop().textContent")
    assert "base/tiny/2" in last_stats and "stop" in last_stats

    shot = page.call("Page.captureScreenshot", format="png")
    (tmp_path / "chat.png").write_bytes(base64.b64decode(shot["data"]))

    # /clear starts over
    page.type("/clear")
    page.wait("document.querySelectorAll('.msg').length === 0 && document.querySelector('.welcome')", what="a clear page")

    # no script errors, nothing blocked by the page's Content-Security-Policy
    problems = [e for e in page.events if e.get("method") == "Runtime.exceptionThrown"
                or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not problems, problems
