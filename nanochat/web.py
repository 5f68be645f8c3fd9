"""
The web chat and its OpenAI-compatible API, on the standard library's ThreadingHTTPServer.

    GET  /                       the chat page (nanochat/ui.html: one file, no build step, no CDN)
    GET  /health                 liveness, workers busy and free, request defaults and limits
    GET  /v1/models              every checkpoint under $NANOCHAT_BASE_DIR, named "stage/tag/step"
    GET  /v1/models/<id>         one of them
    POST /v1/chat/completions    OpenAI's chat completions, streamed (server-sent events) or not

Every connection gets a thread. Generation runs on a Worker (a device and the models loaded on it:
one per GPU, one on CPU) borrowed from a pool for the length of one request, so requests beyond the
number of workers wait in a queue. Between tokens the server checks whether the client is still
there; a client that went away gives its worker back at once. Nothing is written outside
$NANOCHAT_BASE_DIR (only the optional conversation log, inside it).
"""
import json
import os
import queue
import random
import re
import select
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from nanochat.checkpoint_manager import PHASE_DIRS, find_last_step, find_model_tag, get_checkpoints_dir, load_model
from nanochat.common import UserError, get_base_dir
from nanochat.engine import Engine, TextStreamer, tool_markers
from nanochat.tokenizer import render_for_completion, validate_conversation

UI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.html")


@dataclass
class Limits:
    """What one request may ask for; anything beyond gets a 400 (413 for the body size)."""
    max_messages: int = 500          # messages per conversation
    max_message_chars: int = 8000    # characters in one message
    max_total_chars: int = 32000     # characters in all messages together
    max_tokens: int = 4096           # the largest max_tokens a request may ask for
    max_temperature: float = 2.0
    max_stop: int = 4                # stop strings (as OpenAI)
    max_body_bytes: int = 1 << 20    # request body size
    max_waiting: int = 32            # requests waiting for a worker; more get a 503
    queue_timeout: float = 120.0     # seconds a request may wait for a worker before a 503


@dataclass
class Defaults:
    """Sampling settings for requests that leave them out."""
    temperature: float = 0.6
    top_k: int = 50
    top_p: float = 1.0
    max_tokens: int = 512


class ApiError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}}."""
    def __init__(self, status, message, param=None, code=None, type=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection (or the server is stopping): stop working for it."""

# -----------------------------------------------------------------------------
# models: listing, naming, loading

def list_checkpoints():
    """Every complete checkpoint under the base dir, as dicts: id ("stage/tag/step"), stage, tag, step, created."""
    found = []
    for stage, folder in PHASE_DIRS.items():
        root = os.path.join(get_base_dir(), folder)
        if not os.path.isdir(root):
            continue
        for tag in os.listdir(root):
            d = os.path.join(root, tag)
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                m = re.fullmatch(r"model_(\d+)\.pt", name)
                if m and os.path.exists(os.path.join(d, f"meta_{m.group(1)}.json")):
                    step = int(m.group(1))
                    created = int(os.path.getmtime(os.path.join(d, name)))
                    found.append(dict(id=f"{stage}/{tag}/{step}", stage=stage, tag=tag, step=step, created=created))
    stages = list(PHASE_DIRS)
    found.sort(key=lambda c: (stages.index(c["stage"]), c["tag"], -c["step"]))
    return found


def resolve_model(name, default):
    """
    A model name -> (stage, tag, step) of an existing checkpoint. Names are "stage", "stage/tag" or
    "stage/tag/step" (tag defaults to the deepest model, step to the latest); None, "", "default" and
    "nanochat" mean the server's default, itself a (stage, tag or None, step or None).
    """
    if name in (None, "", "default", "nanochat"):
        stage, tag, step = default
    else:
        parts = name.split("/")
        stage, tag, step = parts + [None] * (3 - len(parts)) if len(parts) <= 3 else (None, None, None)
        if stage not in PHASE_DIRS or (tag is not None and (not tag or tag.startswith(".") or "\\" in tag)) \
                or (step is not None and not step.isdigit()):
            raise ApiError(400, f"unknown model {name!r}: names are stage[/tag[/step]] with stage one of "
                                f"{', '.join(PHASE_DIRS)}; GET /v1/models lists them", "model", "model_not_found")
        step = int(step) if step is not None else None
    try:
        root = get_checkpoints_dir(stage)
        tag = tag or find_model_tag(root)
        d = os.path.join(root, tag)
        if not os.path.isdir(d):
            raise UserError(f"no model tag {tag!r} in {root}")
        if step is None:
            step = find_last_step(d)
        elif not os.path.exists(os.path.join(d, f"meta_{step:06d}.json")):
            raise UserError(f"no checkpoint at step {step} in {d}")
    except UserError as e:
        raise ApiError(400, f"model {name or 'default'!r}: {e}", "model", "model_not_found") from None
    return stage, tag, step


class Worker:
    """One device and the models loaded on it (the least recently used is dropped past max_models)."""
    def __init__(self, device, max_models=2):
        self.device = device
        self.max_models = max(1, max_models)
        self.models = OrderedDict()  # (stage, tag, step) -> (engine, tokenizer, meta)

    def get(self, key):
        """(engine, tokenizer, meta, loaded_now) for a resolved (stage, tag, step); raises UserError."""
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key] + (False,)
        while len(self.models) >= self.max_models:  # free memory before loading the next one
            self.models.popitem(last=False)
            if self.device.type == "cuda":
                import torch
                torch.cuda.empty_cache()
        stage, tag, step = key
        model, tokenizer, meta = load_model(stage, self.device, phase="eval", model_tag=tag, step=step)
        self.models[key] = (Engine(model, tokenizer), tokenizer, meta)
        return self.models[key] + (True,)


class WorkerPool:
    """Workers lent out one request at a time; the rest of the requests wait (up to a limit) in a queue."""
    def __init__(self, workers, max_waiting=32):
        self.workers = list(workers)
        self.free = queue.Queue()
        for w in self.workers:
            self.free.put(w)
        self.max_waiting = max_waiting
        self.lock = threading.Lock()
        self.waiting = 0
        self.busy = 0

    @contextmanager
    def acquire(self, timeout, cancelled):
        """Lend a worker; raises ApiError(503) when the queue is full or too slow, ClientGone when cancelled()."""
        with self.lock:
            if self.waiting >= self.max_waiting:
                raise ApiError(503, f"server busy: {self.waiting} requests are already waiting; try again later",
                               code="server_busy")
            self.waiting += 1
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    worker = self.free.get(timeout=0.1)
                    break
                except queue.Empty:
                    if cancelled():
                        raise ClientGone() from None
                    if time.monotonic() > deadline:
                        raise ApiError(503, f"server busy: no worker free after {timeout:g} s; try again later",
                                       code="server_busy") from None
            with self.lock:
                self.busy += 1
        finally:
            with self.lock:
                self.waiting -= 1
        try:
            yield worker
        finally:
            with self.lock:
                self.busy -= 1
            self.free.put(worker)

# -----------------------------------------------------------------------------
# requests

@dataclass
class ChatRequest:
    messages: list
    model: str
    stream: bool
    include_usage: bool
    temperature: float
    top_k: int
    top_p: float
    max_tokens: int
    stop: list
    seed: int


def _number(body, name, default, lo, hi, integer=False, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise ApiError(400, f"{name} must be {kind}, got {json.dumps(v)[:40]}", name)
    if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
        low = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise ApiError(400, f"{name} must be {low}" + (f" and at most {hi}" if hi is not None else "") + f", got {v}", name)
    return int(v) if integer else float(v)


def _messages(body, limits):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content}", "messages")
    if len(messages) > limits.max_messages:
        raise ApiError(400, f"too many messages: {len(messages)} > {limits.max_messages}", "messages")
    out, total = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object with role and content", where)
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role must be 'system', 'user' or 'assistant', got {json.dumps(m.get('role'))[:40]}", f"{where}.role")
        if role == "system" and i != 0:
            raise ApiError(400, f"{where}: only the first message may be a system message", f"{where}.role")
        content = m.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
                raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported", f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
        if len(content) > limits.max_message_chars:
            raise ApiError(400, f"{where}.content is {len(content)} characters, more than the limit of {limits.max_message_chars}", f"{where}.content")
        total += len(content)
        out.append({"role": role, "content": content})
    if total > limits.max_total_chars:
        raise ApiError(400, f"the messages have {total} characters in all, more than the limit of {limits.max_total_chars}", "messages")
    try:
        validate_conversation({"messages": out})
    except ValueError as e:
        raise ApiError(400, f"messages: {e}", "messages") from None
    if out[-1]["role"] != "user":
        raise ApiError(400, "messages: the last message must be the user's", "messages")
    return out


def parse_chat_request(body, limits, defaults):
    """Check a /v1/chat/completions body against the limits; raises ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = _messages(body, limits)
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 200):
        raise ApiError(400, "model must be a string (see GET /v1/models)", "model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be {\"include_usage\": true|false}", "stream_options")
    if _number(body, "n", 1, 1, None, integer=True) != 1:
        raise ApiError(400, "n: only one choice per request (n=1) is supported", "n")
    max_tokens = _number(body, "max_tokens", defaults.max_tokens, 1, limits.max_tokens, integer=True)
    if body.get("max_completion_tokens") is not None:  # OpenAI's newer name wins
        max_tokens = _number(body, "max_completion_tokens", max_tokens, 1, limits.max_tokens, integer=True)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > limits.max_stop or \
            not all(isinstance(s, str) and 0 < len(s) <= 200 for s in stop):
        raise ApiError(400, f"stop must be a string or a list of at most {limits.max_stop} non-empty strings", "stop")
    seed = body.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ApiError(400, "seed must be an integer", "seed")
    return ChatRequest(
        messages=messages, model=model, stream=stream, include_usage=bool(stream and options.get("include_usage")),
        temperature=_number(body, "temperature", defaults.temperature, 0.0, limits.max_temperature),
        top_k=_number(body, "top_k", defaults.top_k, 0, None, integer=True),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0, lo_open=True),
        max_tokens=max_tokens, stop=stop, seed=seed % 2**63,
    )

# -----------------------------------------------------------------------------
# generation

class StopStrings:
    """Cuts the text at the first stop string; holds back a tail that might be the start of one."""
    def __init__(self, stops):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buf = ""

    def push(self, text):
        """-> (text safe to emit, whether a stop string was found)"""
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self):
        out, self.buf = self.buf, ""
        return out


class Reply:
    """
    Iterating yields the assistant's text piece by piece; afterwards finish_reason ('stop' or
    'length'), completion_tokens and timings() describe it. cancelled() is asked between tokens.
    """
    def __init__(self, engine, tokenizer, prompt, req, max_tokens, cancelled):
        self.engine, self.tokenizer, self.prompt, self.req = engine, tokenizer, prompt, req
        self.max_tokens, self.cancelled = max_tokens, cancelled
        self.finish_reason = None
        self.completion_tokens = 0
        self.text = ""
        self.t_start = self.t_first = self.t_last = None

    def __iter__(self):
        tok, req = self.tokenizer, self.req
        ends = {tok.encode_special("<|assistant_end|>"), tok.get_bos_token_id()}
        streamer, stops = TextStreamer(tok), StopStrings(req.stop)
        markers = tool_markers(tok)
        self.t_start = time.perf_counter()
        steps = self.engine.generate(self.prompt, num_samples=1, max_tokens=self.max_tokens, temperature=req.temperature,
                                     top_k=req.top_k or None, top_p=req.top_p, seed=req.seed)
        self.finish_reason = "length"
        try:
            for column in steps:
                token = column[0]
                self.t_last = time.perf_counter()
                self.t_first = self.t_first or self.t_last
                self.completion_tokens += 1
                if token in ends:
                    self.finish_reason = "stop"
                    break
                # the calculator runs (a chat model answers arithmetic through it); its tokens show as text
                text = streamer.flush() + markers[token] if token in markers else streamer.feed(token)
                piece, stopped = stops.push(text)
                if piece:
                    self.text += piece
                    yield piece
                if stopped:
                    self.finish_reason = "stop"
                    return
                if self.cancelled():
                    raise ClientGone()
        finally:
            steps.close()  # frees the KV cache now, not at garbage collection
        piece, stopped = stops.push(streamer.flush())
        piece += "" if stopped else stops.flush()
        if piece:
            self.text += piece
            yield piece

    def timings(self):
        """Seconds to the first token, decode speed (tokens after the first / their time), total seconds."""
        if self.t_first is None:
            return {"time_to_first_token_s": None, "tokens_per_second": None, "total_s": None}
        n, decode_s = self.completion_tokens, self.t_last - self.t_first
        return {"time_to_first_token_s": round(self.t_first - self.t_start, 4),
                "tokens_per_second": round((n - 1) / decode_s, 2) if n > 1 and decode_s > 0 else None,
                "total_s": round(self.t_last - self.t_start, 4)}

# -----------------------------------------------------------------------------
# HTTP

def _loopback(host):
    return host in ("localhost", "::1") or host.startswith("127.")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    server_version = "nanochat"
    timeout = 60  # seconds a connection may sit idle, or a client may stall a read or a write

    # --- plumbing

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status, obj, headers=()):
        self._send(status, json.dumps(obj).encode(), "application/json", headers)

    def _error(self, e):
        headers = [("Retry-After", "5")] if e.status == 503 else []
        self._json(e.status, e.body(), headers)

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, headers too long, ...) as JSON too."""
        self.close_connection = True
        try:
            self._error(ApiError(code, message or HTTPStatus(code).phrase))
        except OSError:
            pass

    def client_gone(self):
        """True when the client closed its side (or the server is stopping); asked between tokens."""
        if self.server.stopping.is_set():
            return True
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _host_ok(self):
        """On a loopback address, answer only requests for a loopback host name (no DNS rebinding)."""
        if not _loopback(self.server.server_address[0]):
            return True
        host = (self.headers.get("Host") or "").strip()
        host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if _loopback(host):
            return True
        self.close_connection = True
        self._error(ApiError(403, f"this server answers only requests for 127.0.0.1 or localhost, not {host!r}", code="forbidden_host"))
        return False

    def _read_json(self):
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked", "Content-Length")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise ApiError(411, "a Content-Length header is required", "Content-Length")
        if int(length) > self.server.limits.max_body_bytes:
            self.close_connection = True  # the body is not read: this connection cannot go on
            raise ApiError(413, f"the request body is {length} bytes, more than the limit of {self.server.limits.max_body_bytes}", code="body_too_large")
        raw = self.rfile.read(int(length))
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # also keeps other web sites out: a browser asks before a cross-site JSON POST, and no one answers it
            raise ApiError(415, f"send JSON with Content-Type: application/json (got {content_type or 'none'!r})", "Content-Type")
        def no_constants(c):
            raise ValueError(f"{c} is not valid JSON")
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None

    # --- routes

    def do_GET(self):
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                with open(UI_PATH, "rb") as f:  # read each time: edit the page, reload the browser
                    page = f.read()
                self._send(200, page, "text/html; charset=utf-8", [
                    # everything the page needs is in the page: nothing may come from elsewhere
                    ("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'")])
            elif path == "/health":
                self._json(200, self.server.health())
            elif path == "/v1/models":
                self._json(200, {"object": "list", "data": self.server.models()})
            elif path.startswith("/v1/models/"):
                name = unquote(path.removeprefix("/v1/models/"))
                match = [m for m in self.server.models() if m["id"] == name]
                if not match:
                    raise ApiError(404, f"no model {name!r}; GET /v1/models lists them", "model", "model_not_found")
                self._json(200, match[0])
            else:
                raise ApiError(404, f"nothing at GET {path}", code="not_found")
        except ApiError as e:
            self._error(e)

    do_HEAD = do_GET

    def do_POST(self):
        self.streaming = False  # True once a stream's headers are sent: errors then go in the stream
        if not self._host_ok():
            return
        path = urlsplit(self.path).path
        try:
            if path.rstrip("/") != "/v1/chat/completions":
                self.close_connection = True  # its body is not read
                raise ApiError(404, f"nothing at POST {path}", code="not_found")
            self.chat_completions()
        except ApiError as e:
            self.server.count("errors")
            self._error(e)
        except ClientGone:
            self.server.count("disconnected")
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.server.count("disconnected")
            self.close_connection = True
        except Exception as e:  # a bug or a device error: answer it (the traceback goes to the log)
            self.server.count("errors")
            self.close_connection = True
            traceback.print_exc()
            error = ApiError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")
            try:
                if self.streaming:
                    self._event(error.body())
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._error(error)
            except OSError:
                pass

    def _not_allowed(self):
        self.close_connection = True
        self._error(ApiError(405, f"method {self.command} is not allowed here", code="method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # --- chat completions

    def chat_completions(self):
        server = self.server
        req = parse_chat_request(self._read_json(), server.limits, server.defaults)
        key = resolve_model(req.model, server.default_model)
        model_id = "/".join(map(str, key))
        t_arrived = time.perf_counter()
        with server.pool.acquire(server.limits.queue_timeout, self.client_gone) as worker:
            t_got = time.perf_counter()
            try:
                engine, tokenizer, meta, loaded = worker.get(key)
            except UserError as e:
                raise ApiError(500, f"cannot load model {model_id}: {e}", "model", "model_load_failed") from None
            t_loaded = time.perf_counter()
            prompt = render_for_completion(tokenizer, {"messages": req.messages})
            context = engine.model.config.sequence_len
            if len(prompt) >= context:
                raise ApiError(400, f"the conversation is {len(prompt)} tokens, more than fit in this model's context of "
                                    f"{context}: start a new conversation or send fewer messages", "messages", "context_length_exceeded")
            reply = Reply(engine, tokenizer, prompt, req, min(req.max_tokens, context - len(prompt)), self.client_gone)
            head = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": model_id,
                    "system_fingerprint": None}
            try:
                if req.stream:
                    self._stream(reply, head, req.include_usage)
                else:
                    text = "".join(reply)
            except (ClientGone, OSError):
                reply.finish_reason = "disconnected"  # for the log
                raise
            finally:
                if reply.t_start is not None:
                    server.log_conversation(model_id, req, reply)
        timings = dict(reply.timings(), queue_s=round(t_got - t_arrived, 4),
                       load_s=round(t_loaded - t_got, 4) if loaded else 0.0)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": reply.completion_tokens,
                 "total_tokens": len(prompt) + reply.completion_tokens}
        server.count("completed")
        if req.stream:
            if req.include_usage:
                self._event(dict(head, object="chat.completion.chunk", choices=[], usage=usage, timings=timings))
            self._event("[DONE]")
            self.wfile.write(b"0\r\n\r\n")  # the last chunk of the chunked body
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reply.finish_reason}
            self._json(200, dict(head, object="chat.completion", choices=[choice], usage=usage, timings=timings))

    def _event(self, obj):
        data = b"data: " + (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _stream(self, reply, head, include_usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.streaming = True
        chunk = dict(head, object="chat.completion.chunk")
        def delta(d, finish_reason=None):
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}
            return dict(chunk, choices=[choice], **({"usage": None} if include_usage else {}))
        self._event(delta({"role": "assistant", "content": ""}))
        for piece in reply:
            self._event(delta({"content": piece}))
        self._event(delta({}, reply.finish_reason))


class ChatServer(ThreadingHTTPServer):
    """The HTTP server, holding the worker pool, the settings, and the threads of open connections."""
    daemon_threads = False  # so that server_close() joins them (close() first makes them end)
    block_on_close = True

    def __init__(self, address, pool, default_model, limits=None, defaults=None, log_conversations=False, quiet=False):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.pool, self.default_model = pool, default_model
        self.limits, self.defaults = limits or Limits(), defaults or Defaults()
        self.quiet = quiet
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.stats = {"completed": 0, "disconnected": 0, "errors": 0}
        self.connections = set()
        self.log_path = None
        if log_conversations:
            self.log_path = os.path.join(get_base_dir(), "chat_web", "conversations.jsonl")
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        super().__init__(address, Handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def count(self, name):
        with self.lock:
            self.stats[name] += 1

    def default_id(self):
        try:
            return "/".join(map(str, resolve_model(None, self.default_model)))
        except ApiError:  # the default checkpoint went away
            return None

    def models(self):
        default = self.default_id()
        return [dict(id=c["id"], object="model", created=c["created"], owned_by="nanochat", stage=c["stage"],
                     tag=c["tag"], step=c["step"], default=c["id"] == default) for c in list_checkpoints()]

    def health(self):
        with self.lock, self.pool.lock:
            return {"status": "ok", "workers": len(self.pool.workers), "busy": self.pool.busy,
                    "waiting": self.pool.waiting, **self.stats,
                    "devices": [str(w.device) for w in self.pool.workers],
                    "default_model": self.default_id(),
                    "defaults": asdict(self.defaults), "limits": asdict(self.limits)}

    def log_conversation(self, model_id, req, reply):
        if self.log_path is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model_id, "messages": req.messages,
                  "reply": reply.text, "finish_reason": reply.finish_reason, "tokens": reply.completion_tokens,
                  "temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "seed": req.seed}
        with self.lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    # --- connection threads

    def process_request_thread(self, request, client_address):
        with self.lock:
            self.connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.connections.discard(request)

    def close(self):
        """Stop everything: generations end at their next token, open connections are cut, threads joined.
        (Call shutdown() first when serve_forever() runs in another thread.)"""
        self.stopping.set()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()
