"""
The web chat and its OpenAI-compatible API, on the standard library's ThreadingHTTPServer. This
module only gathers the names; each part lives in the module named for it:

    web_request.py  what a request may ask (Limits, Defaults), the one error shape (ApiError),
                    and the checking of a chat completions body (parse_chat_request)
    web_models.py   the model registry: checkpoints by name (list_checkpoints, resolve_model),
                    and a Worker (one device and the models loaded on it)
    web_pool.py     the WorkerPool: workers lent one request at a time, the bounded queue,
                    each client's share (max_per_client)
    web_reply.py    a reply being generated: text pieces, stop strings, timings (Reply, StopStrings)
    web_http.py     HTTP that is safe to expose: deadlines and bounds on reading a request, JSON
                    errors, the API key (ApiKey), connection limits (GuardedServer)
    web_completions.py  text completions (POST /v1/completions: logprobs, echo, token prompts) and the
                    tokenizer's routes (/tokenize, /detokenize, /tokenizer_info; the page nanochat/tokenizer.html)
    web_server.py   the routes (ChatHandler) and the ChatServer that holds the pool and settings

Every connection gets a thread. Generation runs on a Worker (one per GPU, one on CPU) borrowed
from the pool for the length of one request, so requests beyond the number of workers wait in a
queue. Between tokens the server checks whether the client is still there; a client that went
away gives its worker back at once. Nothing is written outside $NANOCHAT_BASE_DIR (only the
optional conversation log, inside it).
"""
from nanochat.web_http import ApiKey, GuardedServer, JsonHandler, check_exposure, is_loopback
from nanochat.web_models import Worker, list_checkpoints, resolve_model
from nanochat.web_pool import WorkerPool
from nanochat.web_reply import Reply, StopStrings
from nanochat.web_request import ApiError, ChatRequest, ClientGone, Defaults, Limits, parse_chat_request
from nanochat.web_server import UI_PATH, ChatHandler, ChatServer

__all__ = ["ApiError", "ApiKey", "ChatHandler", "ChatRequest", "ChatServer", "ClientGone", "Defaults", "GuardedServer",
           "JsonHandler", "Limits", "Reply", "StopStrings", "UI_PATH", "Worker", "WorkerPool", "check_exposure", "is_loopback",
           "list_checkpoints", "parse_chat_request", "resolve_model"]
