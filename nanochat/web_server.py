"""
The chat server's routes, on web_http's safe plumbing:

    GET  /                       the chat page (nanochat/ui.html: one file, no build step, no CDN)
    GET  /health                 liveness, workers busy and free, request defaults and limits
                                 (with an API key set and none sent: only {"status": "ok"})
    GET  /v1/models              every checkpoint under $NANOCHAT_BASE_DIR, named "stage/tag/step"
    GET  /v1/models/<id>         one of them
    POST /v1/chat/completions    OpenAI's chat completions, streamed (server-sent events) or not
    POST /v1/completions         OpenAI's (legacy) text completions, with logprobs and echo (web_completions)
    GET  /tokenizer              the tokenizer page (nanochat/tokenizer.html), on POST /tokenize
    POST /tokenize, /detokenize  text <-> tokens; GET /tokenizer_info (the routes vLLM has, for lm-eval)

A chat completion borrows a worker from the pool for its length (web_pool), generates through a
Reply (web_reply), and between tokens checks whether the client is still there: a client that
went away gives its worker back at once.
"""
import json
import os
import threading
import time
import traceback
import uuid
from dataclasses import asdict
from urllib.parse import unquote, urlsplit

from nanochat.common import UserError, get_base_dir
from nanochat.tokenizer import render_for_completion
from nanochat.web_completions import TOKENIZER_PAGE, TokenizerCache, completions, detokenize, tokenize, tokenizer_info
from nanochat.web_http import GuardedServer, JsonHandler
from nanochat.web_models import list_checkpoints, resolve_model
from nanochat.web_reply import Reply
from nanochat.web_request import ApiError, ClientGone, Defaults, parse_chat_request

UI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.html")
# everything the page needs is in the page: nothing may come from elsewhere
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
            "img-src data:; base-uri 'none'; form-action 'none'")


class ChatHandler(JsonHandler):
    # --- routes

    def do_GET(self):
        if not self.host_ok():
            return
        path = urlsplit(self.path).path
        try:
            if not self.authorized():
                if path == "/health":  # liveness for probes without the key; the details need it
                    return self.send_json(200, {"status": "ok"})
                raise self.unauthorized()
            if path in ("/", "/index.html", "/tokenizer"):
                with open(UI_PATH if path != "/tokenizer" else TOKENIZER_PAGE, "rb") as f:  # read each time: edit, reload
                    page = f.read()
                self.send_body(200, page, "text/html; charset=utf-8", [("Content-Security-Policy", PAGE_CSP)])
            elif path == "/tokenizer_info":
                self.send_json(200, tokenizer_info(self.server))
            elif path == "/health":
                self.send_json(200, self.server.health())
            elif path == "/v1/models":
                self.send_json(200, {"object": "list", "data": self.server.models()})
            elif path.startswith("/v1/models/"):
                name = unquote(path.removeprefix("/v1/models/"))
                match = [m for m in self.server.models() if m["id"] == name]
                if not match:
                    raise ApiError(404, f"no model {name[:200]!r}; GET /v1/models lists them", "model", "model_not_found")
                self.send_json(200, match[0])
            else:
                raise ApiError(404, f"nothing at GET {path[:200]}", code="not_found")
        except ApiError as e:
            self.send_api_error(e)

    do_HEAD = do_GET

    def do_POST(self):
        self.streaming = False  # True once a stream's headers are sent: errors then go in the stream
        if not self.host_ok():
            return
        path = urlsplit(self.path).path
        try:
            if not self.authorized():
                raise self.unauthorized()
            routes = {"/v1/chat/completions": self.chat_completions, "/v1/completions": lambda: completions(self),
                      "/tokenize": lambda: tokenize(self), "/detokenize": lambda: detokenize(self)}
            if path.rstrip("/") not in routes:
                self.close_connection = True  # its body is not read
                raise ApiError(404, f"nothing at POST {path[:200]}", code="not_found")
            routes[path.rstrip("/")]()
        except ApiError as e:
            self.server.count("errors")
            self.send_api_error(e)
        except (ClientGone, BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.server.count("disconnected")
            self.close_connection = True
        except Exception as e:  # a bug or a device error: answer it (the traceback goes to the log)
            self.internal_error(e)

    def internal_error(self, e):
        self.server.count("internal_errors")
        self.close_connection = True
        traceback.print_exc()
        error = ApiError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")
        try:
            if self.streaming:
                self.send_event(error.body())
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_api_error(error)
        except OSError:
            pass

    # --- chat completions

    def chat_completions(self):
        server = self.server
        req = parse_chat_request(self.read_json(), server.limits, server.defaults)
        key = resolve_model(req.model, server.default_model)
        model_id = "/".join(map(str, key))
        t_arrived = time.perf_counter()
        with server.pool.acquire(server.limits.queue_timeout, self.client_gone, self.client_address[0],
                                 server.limits.max_per_client) as worker:
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
                self.send_event(dict(head, object="chat.completion.chunk", choices=[], usage=usage, timings=timings))
            self.end_stream()
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": reply.finish_reason}
            self.send_json(200, dict(head, object="chat.completion", choices=[choice], usage=usage, timings=timings))

    def send_event(self, obj):
        data = b"data: " + (obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()) + b"\n\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def start_stream(self):
        """The head of a stream of server-sent events (send_event each, then end_stream)."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.streaming = True

    def end_stream(self):
        self.send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")  # the last chunk of the chunked body

    def _stream(self, reply, head, include_usage):
        self.start_stream()
        chunk = dict(head, object="chat.completion.chunk")
        def delta(d, finish_reason=None):
            choice = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}
            return dict(chunk, choices=[choice], **({"usage": None} if include_usage else {}))
        self.send_event(delta({"role": "assistant", "content": ""}))
        for piece in reply:
            self.send_event(delta({"content": piece}))
        self.send_event(delta({}, reply.finish_reason))


class ChatServer(GuardedServer):
    """The chat server: the worker pool, the default model, the settings, the optional conversation log."""
    def __init__(self, address, pool, default_model, limits=None, defaults=None, log_conversations=False, quiet=False,
                 api_key=None, allow_no_auth=False):
        self.pool, self.default_model = pool, default_model
        self.tokenizers = TokenizerCache()
        self.defaults = defaults or Defaults()
        self.log_path, self.log_lock = None, threading.Lock()
        if log_conversations:
            self.log_path = os.path.join(get_base_dir(), "chat_web", "conversations.jsonl")
        super().__init__(address, ChatHandler, limits, api_key=api_key, allow_no_auth=allow_no_auth, quiet=quiet)
        if self.log_path:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)

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
        pool = self.pool.state()
        with self.lock:
            stats = dict(self.stats)
        return {"status": "ok", "workers": pool["workers"], "busy": pool["busy"], "free": pool["free"],
                "waiting": pool["waiting"], "clients": pool["clients"], **self.connection_state(), **stats,
                "devices": [str(w.device) for w in self.pool.workers], "default_model": self.default_id(),
                "auth": self.api_key is not None, "defaults": asdict(self.defaults), "limits": asdict(self.limits)}

    def log_conversation(self, model_id, req, reply):
        if self.log_path is None:
            return
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "model": model_id, "messages": req.messages,
                  "reply": reply.text, "finish_reason": reply.finish_reason, "tokens": reply.completion_tokens,
                  "temperature": req.temperature, "top_k": req.top_k, "top_p": req.top_p, "seed": req.seed}
        with self.log_lock, open(self.log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
