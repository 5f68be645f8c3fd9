"""
The web chat's server and OpenAI-compatible API, over HTTP on 127.0.0.1 with a tiny real model
(see conftest.py: sft/tiny/5 never ends a reply by itself, base/tiny/2 always ends at once).
Every request has a timeout and every wait loop a deadline.
"""
import http.client
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

from nanochat.web import ChatServer, Defaults, Limits, StopStrings, Worker, WorkerPool, resolve_model, ApiError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 20  # seconds: the timeout of every request


@pytest.fixture
def start_server(tiny_base_dir):
    """start_server(workers=1, **ChatServer kwargs) -> (server, url); every server is stopped and its threads joined."""
    started = []

    def start(workers=1, limits=None, defaults=None, **kwargs):
        pool = WorkerPool([Worker(torch.device("cpu")) for _ in range(workers)], (limits or Limits()).max_waiting)
        server = ChatServer(("127.0.0.1", 0), pool, ("sft", None, None), limits or Limits(),
                            defaults or Defaults(max_tokens=16), quiet=True, **kwargs)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        started.append((server, thread))
        return server, server.url

    yield start
    for server, thread in started:
        server.shutdown()
        server.close()
        thread.join(timeout=5)
        assert not thread.is_alive()
    leftover = [t for t in threading.enumerate() if "process_request_thread" in t.name]
    assert not leftover, f"connection threads still running: {leftover}"


def chat(url, timeout=T, **body):
    body.setdefault("messages", [{"role": "user", "content": "Hello!"}])
    return requests.post(url + "v1/chat/completions", json=body, timeout=timeout)


def open_stream(url, **body):
    """POST a streamed request; returns (connection, response) to read events from."""
    body.setdefault("messages", [{"role": "user", "content": "Hello!"}])
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=T)
    conn.request("POST", "/v1/chat/completions", json.dumps(dict(body, stream=True)), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def next_event(resp):
    """The data of the next server-sent event ('[DONE]' or a dict), or None at the end of the stream."""
    while True:
        line = resp.readline()
        if not line:
            return None
        line = line.decode().strip()
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            return data if data == "[DONE]" else json.loads(data)


def read_stream(url, **body):
    conn, resp = open_stream(url, **body)
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = []
    while (e := next_event(resp)) is not None:
        events.append(e)
        assert len(events) < 5000
    conn.close()
    return events


def wait_for(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def recv_all(sock):
    """What the server sends until it closes the connection (it does after an error)."""
    data = b""
    while len(data) < 100_000 and (part := sock.recv(4096)):
        data += part
    return data.decode()


def raw_exchange(address, data, source=None, half_close=True, timeout=T):
    """
    Send bytes on a fresh connection (from source, a loopback address, if given) and read until the
    server closes it: (status or None, {lowercased header: value}, body bytes). half_close: say
    "no more" after the bytes (shutdown SHUT_WR), so that a server waiting for more sees the end.
    """
    with socket.create_connection(address, timeout=timeout, source_address=(source, 0) if source else None) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered (and stopped reading) before all was sent
            pass
        reply = b""
        try:
            while len(reply) < 1_000_000 and (part := s.recv(65536)):
                reply += part
        except ConnectionResetError:
            pass
    head, _, body = reply.partition(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 100 "):  # an interim "100 Continue" (Expect: 100-continue) before the answer
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") and len(lines[0].split()) > 1 else None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def health(url):
    return requests.get(url + "health", timeout=T).json()


def error_of(r, status, param=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    return err

# -----------------------------------------------------------------------------
# pieces

def test_stop_strings_hold_back_a_possible_start():
    s = StopStrings(["END", "##"])
    assert s.push("hello E") == ("hello", False)  # "E" might begin END; only 2 chars are held back
    assert s.push("N") == (" ", False)
    assert s.push("Dx") == ("", True)  # found: only the text before it is emitted
    s = StopStrings(["END"])
    out, stopped = s.push("abcEN")
    out2, stopped2 = s.push("D and more")
    assert out + out2 == "abc" and stopped2 and not stopped
    s = StopStrings([])
    assert s.push("abc") == ("abc", False) and s.flush() == ""


def test_model_names(tiny_base_dir):
    default = ("sft", None, None)
    assert resolve_model(None, default) == ("sft", "tiny", 5)
    assert resolve_model("nanochat", default) == ("sft", "tiny", 5)
    assert resolve_model("sft/tiny", default) == ("sft", "tiny", 5)
    assert resolve_model("base", default) == ("base", "tiny", 2)
    assert resolve_model("base/tiny/2", default) == ("base", "tiny", 2)
    for bad in ("gpt-4o", "sft/tiny/7", "sft/nope", "sft/..", "sft/../..", "rl", "sft/tiny/x", "a/b/c/d", "sft//5"):
        with pytest.raises(ApiError) as e:
            resolve_model(bad, default)
        assert e.value.param == "model" and e.value.status == 400

# -----------------------------------------------------------------------------
# the API

def test_health_models_and_page(start_server):
    server, url = start_server()
    h = health(url)
    assert h["status"] == "ok" and h["workers"] == 1 and h["busy"] == 0 and h["default_model"] == "sft/tiny/5"
    models = requests.get(url + "v1/models", timeout=T).json()
    assert models["object"] == "list"
    ids = {m["id"]: m for m in models["data"]}
    assert set(ids) == {"sft/tiny/5", "base/tiny/2"}
    assert ids["sft/tiny/5"]["default"] and ids["sft/tiny/5"]["stage"] == "sft" and ids["sft/tiny/5"]["step"] == 5
    assert requests.get(url + "v1/models/base/tiny/2", timeout=T).json()["tag"] == "tiny"
    error_of(requests.get(url + "v1/models/base/tiny/9", timeout=T), 404, "model")
    page = requests.get(url, timeout=T)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    # one self-contained page: nothing loaded from elsewhere
    assert "<script>" in page.text and "src=\"http" not in page.text and "href=\"http" not in page.text
    assert "@import" not in page.text and "//cdn" not in page.text
    error_of(requests.get(url + "nope", timeout=T), 404)


def test_completion(start_server):
    server, url = start_server()
    r = chat(url, max_tokens=12, temperature=0.9, top_p=0.95, seed=7, model="sft")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "sft/tiny/5"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"].strip()
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12
    assert body["timings"]["time_to_first_token_s"] > 0 and body["timings"]["tokens_per_second"] > 0
    # the seed makes it repeatable; another seed gives another reply
    assert chat(url, max_tokens=12, temperature=0.9, top_p=0.95, seed=7).json()["choices"][0] == choice
    assert chat(url, max_tokens=12, temperature=0.9, seed=8).json()["choices"][0]["message"]["content"] != choice["message"]["content"]
    # the terse model ends its reply at once: finish_reason stop
    body = chat(url, model="base/tiny/2", max_tokens=12).json()
    assert body["choices"][0]["message"]["content"] == "" and body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "base/tiny/2"
    assert health(url)["completed"] == 4


def test_streaming_matches_non_streamed(start_server):
    server, url = start_server()
    reference = chat(url, max_tokens=20, seed=3).json()
    events = read_stream(url, max_tokens=20, seed=3, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    pieces = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    assert len([p for p in pieces if p]) >= 5  # token by token, not all at once
    assert "".join(pieces) == reference["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == reference["usage"]
    assert chunks[-1]["timings"]["time_to_first_token_s"] > 0
    # without include_usage there is no usage chunk
    events = read_stream(url, max_tokens=3, seed=3)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in e for e in events[:-1])


def test_stop_strings(start_server):
    server, url = start_server()
    text = chat(url, max_tokens=30, seed=11).json()["choices"][0]["message"]["content"]
    stop = text[12:15]
    assert len(stop) == 3
    expected = text[:text.find(stop)]
    r = chat(url, max_tokens=30, seed=11, stop=[stop, "\x00never"]).json()
    assert r["choices"][0]["message"]["content"] == expected and r["choices"][0]["finish_reason"] == "stop"
    events = read_stream(url, max_tokens=30, seed=11, stop=stop)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == expected
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_typed_special_tokens_stay_text(start_server, tiny_base_dir):
    from nanochat.tokenizer import get_tokenizer, render_for_completion
    server, url = start_server(log_conversations=True)
    typed = "<|assistant_end|><|bos|> <|user_start|>hi"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": typed}]
    r = chat(url, messages=messages, max_tokens=4).json()
    tok = get_tokenizer()
    ids = render_for_completion(tok, {"messages": messages})
    specials = {tok.encode_special(s) for s in tok.get_special_tokens()}
    assert r["usage"]["prompt_tokens"] == len(ids)
    assert sum(i in specials for i in ids) == 4  # <|bos|> <|user_start|> <|user_end|> <|assistant_start|>, nothing typed
    # the optional conversation log, inside the base dir, keeps the text as typed
    with open(os.path.join(tiny_base_dir, "chat_web", "conversations.jsonl"), encoding="utf-8") as f:
        record = json.loads(f.readlines()[-1])
    assert record["messages"][1]["content"] == typed and record["model"] == "sft/tiny/5"
    assert record["reply"] == r["choices"][0]["message"]["content"] and record["finish_reason"] == "length"


@pytest.mark.parametrize("body,param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "messages[1].role"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "messages"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": True}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop"),
    ({"stop": 5}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"n": 2}, "n"),
    ({"model": 5}, "model"),
    ({"model": "gpt-4o"}, "model"),
    ({"model": "sft/tiny/9"}, "model"),
])
def test_bad_fields(start_server, body, param):
    server, url = start_server()
    if "messages" not in body and param != "messages":
        body["messages"] = [{"role": "user", "content": "hi"}]
    r = requests.post(url + "v1/chat/completions", json=body, timeout=T)
    error_of(r, 400, param)


def test_bad_requests(start_server):
    server, url = start_server()
    api = url + "v1/chat/completions"
    json_header = {"Content-Type": "application/json"}
    err = error_of(requests.post(api, data=b"{not json", headers=json_header, timeout=T), 400)
    assert err["code"] == "invalid_json"
    error_of(requests.post(api, data=b'{"temperature": NaN, "messages": []}', headers=json_header, timeout=T), 400)
    error_of(requests.post(api, data=b"\xff\xfe", headers=json_header, timeout=T), 400)
    error_of(requests.post(api, data=b"[1, 2]", headers=json_header, timeout=T), 400)
    error_of(requests.post(api, data=b"[" * 100_000 + b"]" * 100_000, headers=json_header, timeout=T), 400)
    error_of(requests.post(api, data=b'{"messages": []}', headers={"Content-Type": "text/plain"}, timeout=T), 415, "Content-Type")
    error_of(requests.put(api, json={}, timeout=T), 405)
    error_of(requests.post(url + "v1/completions", json={}, timeout=T), 400, "prompt")  # a text completion needs a prompt
    error_of(requests.post(url + "v1/nothing", json={}, timeout=T), 404)
    # another host name pointed at 127.0.0.1 (DNS rebinding) gets nothing
    error_of(requests.get(url + "health", headers={"Host": "evil.example:8000"}, timeout=T), 403)
    assert requests.get(url + "health", headers={"Host": "localhost"}, timeout=T).status_code == 200
    # no Content-Length
    with socket.create_connection(server.server_address, timeout=T) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\r\n")
        reply = recv_all(s)
    assert reply.startswith("HTTP/1.1 411") and '"param": "Content-Length"' in reply
    # a garbled request line gets a JSON error too, with an HTTP/1.1 status line
    with socket.create_connection(server.server_address, timeout=T) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        reply = recv_all(s)
    assert reply.startswith("HTTP/1.1 400 ")
    assert json.loads(reply.split("\r\n\r\n", 1)[1])["error"]["message"].startswith("Bad request")
    assert health(url)["busy"] == 0


def test_limits(start_server):
    limits = Limits(max_messages=3, max_message_chars=50, max_total_chars=80, max_tokens=20, max_temperature=1.0,
                    max_body_bytes=2000)
    server, url = start_server(limits=limits)
    user = lambda text: {"role": "user", "content": text}
    five = [user("a"), {"role": "assistant", "content": "b"}, user("c"), {"role": "assistant", "content": "d"}, user("e")]
    assert "too many messages" in error_of(chat(url, messages=five), 400, "messages")["message"]
    error_of(chat(url, messages=[user("x" * 51)]), 400, "messages[0].content")
    three = [user("x" * 40), {"role": "assistant", "content": "y" * 40}, user("z")]
    assert "characters in all" in error_of(chat(url, messages=three), 400, "messages")["message"]
    error_of(chat(url, max_tokens=21), 400, "max_tokens")
    error_of(chat(url, temperature=1.5), 400, "temperature")
    assert chat(url, max_tokens=20, temperature=1.0).json()["usage"]["completion_tokens"] == 20
    # the body size: answered without reading the body, and the connection closed
    host, port = server.server_address
    conn = http.client.HTTPConnection(host, port, timeout=T)
    conn.request("POST", "/v1/chat/completions", b"{" + b" " * 3000 + b"}", {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"]["code"] == "body_too_large"
    assert resp.getheader("Connection") == "close"
    conn.close()


def test_context_length(start_server):
    limits = Limits(max_message_chars=20000, max_total_chars=20000)
    server, url = start_server(limits=limits)
    words = " ".join(f"w{i}q" for i in range(2000))  # rare pieces: several tokens each, well past 2048
    err = error_of(chat(url, messages=[{"role": "user", "content": words}]), 400, "messages")
    assert err["code"] == "context_length_exceeded"
    # a reply that would not fit is cut where the context ends
    from nanochat.tokenizer import get_tokenizer, render_for_completion
    tok = get_tokenizer()
    prompt_len = lambda k: len(render_for_completion(tok, {"messages": [{"role": "user", "content": " ".join(words.split()[:k])}]}))
    lo, hi = 1, 2000  # the most words whose prompt leaves 50 tokens of room
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if prompt_len(mid) <= 2048 - 50 else (lo, mid - 1)
    text, n = " ".join(words.split()[:lo]), prompt_len(lo)
    assert 2048 - 80 < n <= 2048 - 50, n
    r = chat(url, messages=[{"role": "user", "content": text}], max_tokens=400).json()
    assert r["usage"]["completion_tokens"] == 2048 - n and r["choices"][0]["finish_reason"] == "length"


def test_concurrent_clients_queue(start_server):
    server, url = start_server(workers=1, limits=Limits(max_per_client=6))  # six at once from 127.0.0.1
    results, errors = [], []

    def client(i):
        try:
            if i % 2:
                events = read_stream(url, max_tokens=30, seed=i)
                results.append(events[-2]["choices"][0]["finish_reason"])
            else:
                results.append(chat(url, max_tokens=30, seed=i).json()["choices"][0]["finish_reason"])
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == ["length"] * 6
    h = health(url)
    assert h["completed"] == 6 and h["busy"] == 0 and h["waiting"] == 0


def test_two_workers_generate_at_once(start_server):
    server, url = start_server(workers=2)
    spans = {}

    def client(i):
        conn, resp = open_stream(url, max_tokens=200, seed=i)
        first = last = None
        while (e := next_event(resp)) not in (None, "[DONE]"):
            if e["choices"] and e["choices"][0]["delta"].get("content"):
                last = time.monotonic()
                first = first or last
        conn.close()
        spans[i] = (first, last)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    (a0, a1), (b0, b1) = spans[0], spans[1]
    assert a0 < b1 and b0 < a1, "the two replies were not generated at the same time"


def test_disconnect_frees_the_worker(start_server):
    server, url = start_server(workers=1, limits=Limits(max_tokens=4000))
    # streamed: read a few tokens, hang up
    conn, resp = open_stream(url, max_tokens=4000)
    for _ in range(3):
        assert isinstance(next_event(resp), dict)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_for(lambda: health(url)["disconnected"] == 1, 5, "the server to notice the disconnect")
    assert health(url)["busy"] == 0
    # not streamed: hang up while it generates
    host, port = server.server_address
    raw = socket.create_connection((host, port), timeout=T)
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}).encode()
    raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: health(url)["busy"] == 1, 5, "generation to start")
    raw.close()
    wait_for(lambda: health(url)["disconnected"] == 2, 5, "the server to notice the disconnect")
    # the worker is free for the next client
    start = time.monotonic()
    assert chat(url, max_tokens=5).status_code == 200
    assert time.monotonic() - start < 5
    assert health(url)["completed"] == 1
    # a client that gives up while waiting for a worker leaves the queue
    conn, resp = open_stream(url, max_tokens=4000)
    assert isinstance(next_event(resp), dict)
    raw = socket.create_connection((host, port), timeout=T)
    raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    wait_for(lambda: health(url)["waiting"] == 1, 5, "the request to wait")
    raw.close()
    wait_for(lambda: health(url)["waiting"] == 0, 5, "the request to leave the queue")
    conn.close()
    wait_for(lambda: health(url)["busy"] == 0, 5, "the worker to be free")
    assert health(url)["disconnected"] == 4


def test_queue_full_and_queue_timeout(start_server):
    # the holder's reply runs to the end of the context, ~2000 tokens: about a second at the tiny model's speed
    server, url = start_server(workers=1, limits=Limits(max_tokens=4000, max_waiting=1, queue_timeout=0.3))
    conn, resp = open_stream(url, max_tokens=4000)  # holds the only worker
    assert isinstance(next_event(resp), dict)
    waiting = {}
    t = threading.Thread(target=lambda: waiting.update(r=chat(url, max_tokens=5)))
    t.start()
    wait_for(lambda: health(url)["waiting"] == 1, 5, "the second request to wait")
    r = chat(url, max_tokens=5)  # the queue is full
    assert error_of(r, 503)["code"] == "server_busy" and r.headers["Retry-After"]
    t.join(timeout=10)
    assert error_of(waiting["r"], 503)["code"] == "server_busy"  # waited longer than queue_timeout
    conn.close()
    wait_for(lambda: health(url)["busy"] == 0, 5, "the worker to be free")


def test_openai_client(start_server):
    openai = pytest.importorskip("openai")
    server, url = start_server()
    client = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=T)
    assert {m.id for m in client.models.list()} == {"sft/tiny/5", "base/tiny/2"}
    r = client.chat.completions.create(model="sft/tiny/5", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, temperature=0.5, top_p=0.9, seed=5)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content and r.usage.completion_tokens == 8
    stream = client.chat.completions.create(model="sft/tiny/5", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=8, temperature=0.5, top_p=0.9, seed=5, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 8
    r = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "Hi"}], stop=["x"])
    assert r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi"}], temperature=3)
    assert e.value.body["param"] == "temperature"


# -----------------------------------------------------------------------------
# the script, as a user runs it

def test_script_serves_and_stops(tiny_base_dir, tmp_path):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tiny_base_dir), HOME=str(home), PYTHONPATH=REPO,
               PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.chat_web", "--port", "0", "--quiet", "-m", "8"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = None, []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "web chat: " in line:
                url = line.split("web chat: ")[1].split()[0]
        assert url is not None, "".join(lines)
        assert url.startswith("http://127.0.0.1:")  # this machine only, by default
        assert health(url)["default_model"] == "sft/tiny/5"
        assert chat(url).json()["usage"]["completion_tokens"] == 8  # -m sets the default max_tokens
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, "".join(lines) + out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # nothing written outside NANOCHAT_BASE_DIR
    assert not any(home.iterdir()) and not any(cwd.iterdir())


def test_script_explains_missing_models(tiny_base_dir):
    env = dict(os.environ, NANOCHAT_BASE_DIR=str(tiny_base_dir), PYTHONPATH=REPO, PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run([sys.executable, "-m", "scripts.chat_web", "-i", "rl", "--port", "0"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "error: no checkpoints" in p.stderr and "sft/tiny/5" in p.stderr and "Traceback" not in p.stderr
