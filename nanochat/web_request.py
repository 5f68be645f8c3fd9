"""
What a request to the web server may ask for, and how it is refused: the limits, the defaults,
the one error shape (ApiError, answered as OpenAI does), and the checking of a
/v1/chat/completions body into a ChatRequest (parse_sampling: the fields text completions share).
"""
import json
import math
import random
from dataclasses import dataclass

from nanochat.tokenizer import validate_conversation


@dataclass
class Limits:
    """What one request (and one client) may ask of the server; anything beyond gets a 4xx, or a 503 when the server is full."""
    # one request's body
    max_messages: int = 500          # messages per conversation
    max_message_chars: int = 8000    # characters in one message
    max_total_chars: int = 32000     # characters in all messages together
    max_tokens: int = 4096           # the largest max_tokens a request may ask for
    max_temperature: float = 2.0
    max_stop: int = 4                # stop strings (as OpenAI)
    max_prompts: int = 32            # prompts in one /v1/completions request (each gets a choice)
    max_body_bytes: int = 1 << 20    # request body size (413 beyond)
    # the HTTP request around it
    max_header_bytes: int = 16384    # the request line and headers together (431 beyond)
    max_headers: int = 64            # header lines (431 beyond)
    request_timeout: float = 20.0    # seconds to receive a whole request, body included, from when the server waits for it (408)
    write_timeout: float = 30.0      # seconds one write to the client may stall before the connection is cut
    # the queue, and each client's share of the server
    max_waiting: int = 32            # requests waiting for a worker; more get a 503
    queue_timeout: float = 120.0     # seconds a request may wait for a worker before a 503
    max_per_client: int = 4          # generations one client address may have running or waiting (429 beyond)
    max_connections: int = 256       # open connections in all (503 beyond)
    max_connections_per_client: int = 32  # open connections from one client address (429 beyond)


@dataclass
class Defaults:
    """Sampling settings for requests that leave them out."""
    temperature: float = 0.6
    top_k: int = 50
    top_p: float = 1.0
    max_tokens: int = 512


class ApiError(Exception):
    """
    Every error the server answers, in one shape (OpenAI's):
    {"error": {"message", "type", "param", "code"}}, with extra response headers if any.
    """
    def __init__(self, status, message, param=None, code=None, type=None, headers=()):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.headers = list(headers)
        if status in (429, 503):
            self.headers.append(("Retry-After", "5"))

    def body(self):
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ClientGone(Exception):
    """The client closed its connection (or the server is stopping): stop working for it."""

# -----------------------------------------------------------------------------
# checking a chat completions body

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


def _show(v):
    return json.dumps(v)[:40]


def _text(s, where):
    """A string that can be encoded (JSON's \\ud800 escapes make lone surrogates, which no tokenizer takes)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{where} is not valid Unicode (it holds a lone surrogate)", where) from None
    return s


def _number(body, name, default, lo, hi, integer=False, lo_open=False):
    v = body.get(name)
    if v is None:
        return default
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or \
            (isinstance(v, float) and (not math.isfinite(v) or (integer and not v.is_integer()))):
        raise ApiError(400, f"{name} must be {kind}, got {_show(v)}", name)
    if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
        low = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise ApiError(400, f"{name} must be {low}" + (f" and at most {hi}" if hi is not None else "") + f", got {_show(v)}", name)
    return int(v) if integer else float(v)


def _content(m, where, limits):
    content = m.get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"{where}.content: only text parts ({{\"type\": \"text\", \"text\": ...}}) are supported", f"{where}.content")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{where}.content must be a string", f"{where}.content")
    if len(content) > limits.max_message_chars:
        raise ApiError(400, f"{where}.content is {len(content)} characters, more than the limit of {limits.max_message_chars}", f"{where}.content")
    return _text(content, f"{where}.content")


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
        if not isinstance(role, str) or role not in ("system", "user", "assistant"):
            raise ApiError(400, f"{where}.role must be 'system', 'user' or 'assistant', got {_show(m.get('role'))}", f"{where}.role")
        if role == "system" and i != 0:
            raise ApiError(400, f"{where}: only the first message may be a system message", f"{where}.role")
        content = _content(m, where, limits)
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


def _stop(body, limits):
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop if stop is not None else []
    if not isinstance(stop, list) or len(stop) > limits.max_stop or \
            not all(isinstance(s, str) and 0 < len(s) <= 200 for s in stop):
        raise ApiError(400, f"stop must be a string or a list of at most {limits.max_stop} non-empty strings", "stop")
    return [_text(s, "stop") for s in stop]


def parse_chat_request(body, limits, defaults):
    """Check a /v1/chat/completions body against the limits; raises ApiError naming the bad field."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = _messages(body, limits)
    return ChatRequest(messages=messages, **parse_sampling(body, limits, defaults))


def parse_sampling(body, limits, defaults, min_tokens=1):
    """The fields that chat and text completions share, checked: a dict of ChatRequest's fields but messages."""
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or len(model) > 200):
        raise ApiError(400, "model must be a string (see GET /v1/models)", "model")
    model = model if model is None else _text(model, "model")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be {\"include_usage\": true|false}", "stream_options")
    if _number(body, "n", 1, 1, None, integer=True) != 1:
        raise ApiError(400, "n: only one choice per request (n=1) is supported", "n")
    max_tokens = _number(body, "max_tokens", defaults.max_tokens, min_tokens, limits.max_tokens, integer=True)
    if body.get("max_completion_tokens") is not None:  # OpenAI's newer name wins
        max_tokens = _number(body, "max_completion_tokens", max_tokens, min_tokens, limits.max_tokens, integer=True)
    seed = body.get("seed")
    if seed is None:
        seed = random.SystemRandom().randrange(2**31)
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise ApiError(400, "seed must be an integer", "seed")
    return dict(
        model=model, stream=stream, include_usage=bool(stream and options.get("include_usage")),
        temperature=_number(body, "temperature", defaults.temperature, 0.0, limits.max_temperature),
        top_k=_number(body, "top_k", defaults.top_k, 0, 2**31 - 1, integer=True),
        top_p=_number(body, "top_p", defaults.top_p, 0.0, 1.0, lo_open=True),
        max_tokens=max_tokens, stop=_stop(body, limits), seed=seed % 2**63,
    )
