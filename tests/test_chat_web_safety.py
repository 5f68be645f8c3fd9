"""
The web server made safe to expose: the API key (Bearer for programs, the browser's own login
box for the page), no key off loopback unless on purpose, slow and silent clients timed out,
bounded headers, and no client taking every slot (generations or connections). A real server on
127.0.0.1 with the tiny model; other clients come from other loopback addresses (127.0.0.x).
"""
import base64
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
import torch

from nanochat.common import UserError
from nanochat.web import ApiKey, ChatServer, Limits, Worker, WorkerPool
from test_chat_web import REPO, T, chat, error_of, health, next_event, open_stream, raw_exchange, start_server, wait_for  # noqa: F401

KEY = "test-key-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {KEY}"}


def post(path, body, headers=""):
    """A raw POST of a JSON body, with extra header lines."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{headers}Connection: close\r\n\r\n").encode() + body


def test_api_key_check():
    key = ApiKey(KEY)
    basic = lambda user, password: "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    assert key.matches(f"Bearer {KEY}") and key.matches(f"bearer  {KEY} ") and key.matches(basic("anyone", KEY))
    assert key.matches(basic("", KEY))
    for wrong in (None, "", KEY, f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer ", f"Token {KEY}", basic(KEY, "x"),
                  "Basic !!!notbase64", "Basic " + base64.b64encode(b"u:\xff\xfe").decode(), f"Bearer {KEY}\udcff"):
        assert not key.matches(wrong), wrong
    for bad in ("", "has space", "tab\there", "caf\u00e9"):
        with pytest.raises(UserError):
            ApiKey(bad)
    # the comparison is hmac.compare_digest of two digests of the same length, whatever was sent
    seen = []
    real = hmac.compare_digest
    try:
        hmac.compare_digest = lambda a, b: seen.append((len(a), len(b))) or real(a, b)
        key.matches("Bearer x")
        key.matches("Bearer " + "y" * 5000)
    finally:
        hmac.compare_digest = real
    assert seen == [(32, 32), (32, 32)]


def test_api_key_required(start_server):
    server, url = start_server(api_key=KEY)
    # without the key: 401 in the one JSON shape, and a challenge a browser answers with its login box
    for path in ("", "v1/models", "v1/models/sft/tiny/5", "nope"):
        r = requests.get(url + path, timeout=T)
        err = error_of(r, 401)
        assert err["code"] == "invalid_api_key" and r.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert "needs its API key" in error_of(requests.get(url + "v1/models", timeout=T), 401)["message"]
    wrong = requests.get(url + "v1/models", headers={"Authorization": "Bearer nope"}, timeout=T)
    assert error_of(wrong, 401)["message"] == "wrong API key"
    assert requests.get(url + "health", timeout=T).json() == {"status": "ok"}  # liveness only
    r = chat(url, max_tokens=3)
    assert error_of(r, 401)["code"] == "invalid_api_key" and r.headers["Connection"] == "close"  # its body is not read
    # with the key: Bearer for programs...
    assert requests.get(url + "health", headers=BEARER, timeout=T).json()["auth"] is True
    assert len(requests.get(url + "v1/models", headers=BEARER, timeout=T).json()["data"]) == 2
    r = requests.post(url + "v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
                      headers=BEARER, timeout=T)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    # ...and Basic (any user name, the key as the password) for a browser: the page, and what the page fetches
    page = requests.get(url, auth=("me", KEY), timeout=T)
    assert page.status_code == 200 and "<script>" in page.text
    assert requests.get(url + "v1/models", auth=("", KEY), timeout=T).status_code == 200
    error_of(requests.get(url, auth=("me", "guess"), timeout=T), 401)
    # a stream, raw: the key checked before anything else
    status, _, body = raw_exchange(server.server_address, post("/v1/chat/completions", b'{"messages": 5}'))
    assert status == 401 and b"invalid_api_key" in body
    status, _, body = raw_exchange(server.server_address, post("/v1/chat/completions", b'{"messages": 5}',
                                                              f"Authorization: Bearer {KEY}\r\n"))
    assert status == 400 and b'"param": "messages"' in body


def test_openai_client_with_a_key(start_server):
    openai = pytest.importorskip("openai")
    server, url = start_server(api_key=KEY)
    client = openai.OpenAI(base_url=url + "v1", api_key=KEY, max_retries=0, timeout=T)
    r = client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.usage.completion_tokens == 4
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "v1", api_key="wrong", max_retries=0, timeout=T).models.list()


def test_no_key_only_on_loopback(tiny_base_dir):
    pool = WorkerPool([Worker(torch.device("cpu"))])
    for host in ("0.0.0.0", ""):
        with pytest.raises(UserError, match="refusing to listen on .* without an API key"):
            ChatServer((host, 0), pool, ("sft", None, None), quiet=True)
    for kwargs in ({"api_key": KEY}, {"allow_no_auth": True}):  # a key, or no key on purpose
        server = ChatServer(("0.0.0.0", 0), pool, ("sft", None, None), quiet=True, **kwargs)
        server.close()
    for host in ("127.0.0.1", "localhost", "127.0.0.2"):
        ChatServer((host, 0), pool, ("sft", None, None), quiet=True).close()


def run_script(*args, env=None, timeout=60):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "scripts.chat_web", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_script_refuses_to_expose_without_a_key(tiny_base_dir):
    env = {"NANOCHAT_API_KEY": ""}
    p = run_script("--host", "0.0.0.0", "--port", "0", env=env)
    assert p.returncode == 1 and "refusing to listen on 0.0.0.0 without an API key" in p.stderr and "--no_auth" in p.stderr
    assert "Traceback" not in p.stderr
    p = run_script("--host", "127.0.0.1", "--port", "0", "--no_auth", env={"NANOCHAT_API_KEY": KEY})
    assert p.returncode == 1 and "choose one" in p.stderr
    p = run_script("--port", "0", "--api_key", "has space", env=env)
    assert p.returncode == 1 and "printable ASCII" in p.stderr
    assert "NANOCHAT_API_KEY" in run_script("--help", env=env).stdout


def test_script_with_a_key(tiny_base_dir):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tiny_base_dir), NANOCHAT_API_KEY=KEY, PYTHONPATH=REPO,
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--port", "0", "-m", "4"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and (line := proc.stdout.readline()):
            lines.append(line)
            if "web chat: " in line:
                url = line.split("web chat: ")[1].split()[0]
        assert url is not None, "".join(lines)
        error_of(requests.get(url + "v1/models", timeout=T), 401)
        r = requests.post(url + "v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]},
                          headers=BEARER, timeout=T)
        assert r.json()["usage"]["completion_tokens"] == 4
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        out = proc.stdout.read()  # not communicate(timeout=...): it would skip what readline() has buffered
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = "".join(lines) + out
    assert "an API key is required" in output and KEY not in output  # the key itself is never printed (nor logged)

# -----------------------------------------------------------------------------
# slow and silent clients, big heads

def test_slow_clients_time_out(start_server):
    server, url = start_server(workers=1, limits=Limits(request_timeout=2.0))
    results = {}

    def slow(name, head, trickle):
        """Send head at once, then trickle one byte a second; record (seconds, status, body) when the server is done."""
        t0 = time.monotonic()
        with socket.create_connection(server.server_address, timeout=T) as s:
            s.sendall(head)
            reply = b""
            for b in trickle:
                try:
                    s.sendall(bytes([b]))
                except OSError:
                    break
                s.settimeout(1.0)
                try:
                    part = s.recv(65536)
                except socket.timeout:
                    continue
                reply += part
                if not part:
                    break
            s.settimeout(T)
            try:
                while part := s.recv(65536):
                    reply += part
            except OSError:
                pass
        results[name] = (time.monotonic() - t0, reply)

    request = post("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}]}')
    clients = {"headers, a byte a second": (b"", request),
               "body, a byte a second": (request[:request.index(b"\r\n\r\n") + 4], request[request.index(b"\r\n\r\n") + 4:]),
               "silent": (b"", b"")}
    clients.update({f"headers {i}": (b"", request) for i in range(5)})
    threads = [threading.Thread(target=slow, args=(name, *c)) for name, c in clients.items()]
    for t in threads:
        t.start()
    time.sleep(0.3)
    # meanwhile others are served as usual: the slow ones hold no worker (nor anything else they need)
    t0 = time.monotonic()
    assert chat(url, max_tokens=4).status_code == 200 and time.monotonic() - t0 < 1.5
    for t in threads:
        t.join(timeout=15)
    for name, (seconds, reply) in results.items():
        assert 1.5 < seconds < 5.5, (name, seconds)
        if name == "silent":
            assert reply == b""  # an idle connection is closed without a word
        else:
            assert reply.startswith(b"HTTP/1.1 408 "), (name, reply[:200])
            assert b'"code": "request_timeout"' in reply or b"did not arrive within 2 s" in reply
    assert len(results) == len(clients)
    wait_for(lambda: server.connection_state()["connections"] == 0, 5, "the slow connections to close")
    assert health(url)["busy"] == 0


def test_header_limits(start_server):
    server, url = start_server(limits=Limits(max_header_bytes=2048, max_headers=10))
    addr = server.server_address
    get = lambda line="GET /health HTTP/1.1", headers=(): (line + "\r\nHost: 127.0.0.1\r\n" +
                                                           "".join(h + "\r\n" for h in headers) + "\r\n").encode()
    status, _, body = raw_exchange(addr, get(headers=[f"X-{i}: {i}" for i in range(8)]))  # 9 headers with Host
    assert status == 200 and b'"status": "ok"' in body
    for data, code in ((get(headers=[f"X-{i}: {i}" for i in range(10)]), 431),   # 11 headers
                       (get(headers=["X-Big: " + "a" * 3000]), 431),               # one long header
                       (get(headers=["X-Half: " + "a" * 1000] * 2), 431),          # together too long
                       (get(line="GET /" + "a" * 3000 + " HTTP/1.1"), 414)):       # a long request line
        status, headers, body = raw_exchange(addr, data)
        assert status == code and headers["content-type"] == "application/json" and headers["connection"] == "close"
        err = json.loads(body)["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
    assert health(url)["status"] == "ok"

# -----------------------------------------------------------------------------
# one client cannot take every slot

def test_one_client_cannot_take_every_slot(start_server):
    server, url = start_server(workers=1, limits=Limits(max_per_client=2, max_waiting=8, max_tokens=4000))
    a1, r1 = open_stream(url, max_tokens=4000)  # 127.0.0.1 holds the only worker...
    assert isinstance(next_event(r1), dict)
    a2 = {}
    t = threading.Thread(target=lambda: a2.update(r=chat(url, max_tokens=3)))  # ...and waits with a second request
    t.start()
    wait_for(lambda: health(url)["waiting"] == 1, 5, "the second request to wait")
    r = chat(url, max_tokens=3)  # a third: over its share, while there is room in the queue
    err = error_of(r, 429)
    assert err["code"] == "too_many_requests" and r.headers["Retry-After"]
    # another client still gets in line
    other = {}
    t2 = threading.Thread(target=lambda: other.update(r=raw_exchange(server.server_address, post(
        "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}'),
        source="127.0.0.2", half_close=False)))
    t2.start()
    wait_for(lambda: health(url)["waiting"] == 2, 5, "the other client's request to wait")
    assert health(url)["clients"] == 2
    a1.close()  # the first one hangs up: the queue moves on
    t.join(timeout=T)
    t2.join(timeout=T)
    assert a2["r"].status_code == 200 and other["r"][0] == 200
    wait_for(lambda: health(url)["busy"] == 0 and health(url)["clients"] == 0, 5, "every slot to be free")


def test_connection_limits(start_server):
    server, url = start_server(limits=Limits(max_connections=5, max_connections_per_client=3))
    addr = server.server_address
    held = [socket.create_connection(addr, timeout=T, source_address=("127.0.0.3", 0)) for _ in range(3)]
    wait_for(lambda: server.connection_state()["connections"] == 3, 5, "three connections")
    status, headers, body = raw_exchange(addr, b"", source="127.0.0.3")  # a fourth from the same address
    assert status == 429 and b'"code": "too_many_connections"' in body and headers["retry-after"]
    held += [socket.create_connection(addr, timeout=T, source_address=("127.0.0.4", 0)) for _ in range(2)]
    wait_for(lambda: server.connection_state()["connections"] == 5, 5, "five connections")
    status, _, body = raw_exchange(addr, b"", source="127.0.0.5")  # a sixth in all
    assert status == 503 and b"too_many_connections" in body
    for s in held:
        s.close()
    wait_for(lambda: server.connection_state()["connections"] == 0, 5, "the connections to close")
    assert health(url)["refused_connections"] == 2
    status, _, _ = raw_exchange(addr, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", source="127.0.0.3")
    assert status == 200
