"""
Chat with a model in the browser, and serve it through an OpenAI-compatible API.

    python -m scripts.chat_web                    # open http://127.0.0.1:8000/
    python -m scripts.chat_web -i sft -g d20 -s 650 --port 8080
    NANOCHAT_API_KEY=$(openssl rand -hex 16) python -m scripts.chat_web --host 0.0.0.0   # other machines, with a key

Any OpenAI client works against it, e.g. in Python:
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")  # or the server's key
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi!"}])
    client.completions.create(model="base", prompt="Once upon a time", max_tokens=20, logprobs=2, echo=True)
Models are named stage/tag/step ("sft/d20/650"; "sft" or "sft/d20" pick the latest); GET /v1/models
lists every checkpoint under $NANOCHAT_BASE_DIR. One worker per GPU (one on CPU) generates; other
requests wait in a queue. POST /v1/completions continues raw text (base models too: -i base), with
logprobs and echo for loglikelihood evaluation (lm-eval's local-completions works against it); the
tokenizer page at /tokenizer shows how text becomes tokens (POST /tokenize). The server itself is in
nanochat/web*.py (web.py maps them), the pages in nanochat/ui.html and nanochat/tokenizer.html.

With an API key (--api_key, or better NANOCHAT_API_KEY: a command line is visible to every user of
the machine) every request needs it, compared in constant time: programs send
"Authorization: Bearer <key>"; in a browser the page asks through the browser's own login box
(HTTP Basic auth: any user name, the key as the password), and the browser sends it with every
request until it is closed. GET /health without the key answers only {"status": "ok"}. The key
travels in clear text over plain HTTP: beyond a trusted network, put the server behind HTTPS.
Listening on an address other than loopback without a key is refused unless --no_auth says so.
"""
import argparse
import os

from nanochat.common import ArgumentParser, compute_init, die, UserError
from nanochat.flags import add_device_args, add_model_source_args

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(description="Web chat and OpenAI-compatible API for nanochat models.", epilog=__doc__.split("\n\n", 1)[1],
                        formatter_class=argparse.RawDescriptionHelpFormatter)
add_model_source_args(parser, source="sft", what="default model")
parser.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                    "any other address needs an API key or --no_auth)")
parser.add_argument("-p", "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="temperature for requests that set none (default 0.6)")
parser.add_argument("-k", "--top_k", type=int, default=50, help="top-k for requests that set none (0 = all; default 50)")
parser.add_argument("-m", "--max_tokens", type=int, default=512, help="reply length for requests that set none (default 512)")
parser.add_argument("--workers", type=int, default=0, help="generation workers, each with its own copy of the model "
                    "(default: one per GPU, one on CPU/MPS)")
parser.add_argument("--max_loaded_models", type=int, default=2, help="models each worker keeps loaded for the picker (default 2)")
parser.add_argument("--log_conversations", action="store_true", help="append every exchange to $NANOCHAT_BASE_DIR/chat_web/conversations.jsonl")
parser.add_argument("--quiet", action="store_true", help="no line per request")
g = parser.add_argument_group("access")
g.add_argument("--api_key", type=str, default=os.environ.get("NANOCHAT_API_KEY") or None,
               help="require this key on every request (Authorization: Bearer <key>; in a browser, the password of its "
                    "login box); default $NANOCHAT_API_KEY, which other users of the machine cannot see")
g.add_argument("--no_auth", action="store_true", help="listen on a non-loopback --host without a key, on purpose: "
               "anyone who can reach the port can use the model")
g = parser.add_argument_group("limits per request")
g.add_argument("--max_messages", type=int, default=500, help="messages per conversation (default 500)")
g.add_argument("--max_message_chars", type=int, default=8000, help="characters per message (default 8000)")
g.add_argument("--max_total_chars", type=int, default=32000, help="characters in all messages (default 32000)")
g.add_argument("--max_tokens_limit", type=int, default=4096, help="largest max_tokens a request may ask for (default 4096)")
g.add_argument("--max_temperature", type=float, default=2.0, help="largest temperature (default 2)")
g.add_argument("--max_prompts", type=int, default=32, help="prompts in one /v1/completions request (default 32)")
g.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body size (default 1 MiB)")
g.add_argument("--max_waiting", type=int, default=32, help="requests that may wait for a worker; more get a 503 (default 32)")
g.add_argument("--queue_timeout", type=float, default=120.0, help="seconds a request may wait for a worker (default 120)")
g = parser.add_argument_group("limits per client and connection")
g.add_argument("--max_per_client", type=int, default=4, help="generations one client address may have running or waiting; "
               "more get a 429 (default 4; behind a proxy every client has the proxy's address)")
g.add_argument("--max_connections", type=int, default=256, help="open connections in all; more get a 503 (default 256)")
g.add_argument("--max_connections_per_client", type=int, default=32, help="open connections from one address; more get a 429 (default 32)")
g.add_argument("--request_timeout", type=float, default=20.0, help="seconds a client has to send a whole request, headers and "
               "body, counted from when the server waits for it (idle keep-alive included); slower ones get a 408 (default 20)")
g.add_argument("--write_timeout", type=float, default=30.0, help="seconds a write to a client may stall before the "
               "connection is cut and its worker freed (default 30)")
g.add_argument("--max_header_bytes", type=int, default=16384, help="request line and headers, in bytes (default 16384)")
g.add_argument("--max_headers", type=int, default=64, help="header lines per request (default 64)")
add_device_args(parser)
args = parser.parse_args()

if not 0 <= args.port <= 65535:
    die(f"--port must be between 0 and 65535, got {args.port}")
if args.workers < 0:
    die(f"--workers must be 0 (automatic) or more, got {args.workers}")
for name in ("max_messages", "max_prompts", "max_message_chars", "max_total_chars", "max_tokens_limit", "max_body_bytes", "max_waiting",
             "max_loaded_models", "max_per_client", "max_connections", "max_connections_per_client", "request_timeout",
             "write_timeout", "max_header_bytes", "max_headers", "queue_timeout"):
    if getattr(args, name) <= 0:
        die(f"--{name} must be positive, got {getattr(args, name)}")
if not 0 <= args.temperature <= args.max_temperature:
    die(f"--temperature must be between 0 and --max_temperature ({args.max_temperature}), got {args.temperature}")
if not 1 <= args.max_tokens <= args.max_tokens_limit:
    die(f"--max_tokens must be between 1 and --max_tokens_limit ({args.max_tokens_limit}), got {args.max_tokens}")
if args.api_key is not None and args.no_auth:
    die("--no_auth, but an API key is set (--api_key or NANOCHAT_API_KEY): choose one")

# -----------------------------------------------------------------------------
# setup

import torch  # noqa: E402  (after parsing, so --help is quick)
from nanochat.web import (ApiError, ChatServer, Defaults, Limits, Worker, WorkerPool, check_exposure, is_loopback,  # noqa: E402
                          list_checkpoints, resolve_model)

try:
    check_exposure(args.host, args.api_key, args.no_auth)  # before the models load
    _, _, _, _, device = compute_init(args.device_type)
    if device.type == "cuda":  # one worker per GPU: each holds its own copy of the model
        n_gpus = torch.cuda.device_count()
        n = args.workers or n_gpus
        if n > n_gpus:
            die(f"--workers {n} but only {n_gpus} GPUs: one worker per GPU")
        devices = [torch.device("cuda", i) for i in range(n)]
    else:
        devices = [device] * (args.workers or 1)
    default_model = (args.source, args.model_tag, args.step)
    try:
        key = resolve_model(None, default_model)
    except ApiError as e:
        found = ", ".join(c["id"] for c in list_checkpoints()[:8])
        die(e.message.split(": ", 1)[-1] + (f" (checkpoints found: {found}; choose one with -i/-g/-s)" if found else ""))
    workers = [Worker(d, args.max_loaded_models) for d in devices]
    for w in workers:  # load the default model now, so a broken checkpoint shows before the first visitor
        w.get(key)
    limits = Limits(max_messages=args.max_messages, max_message_chars=args.max_message_chars,
                    max_total_chars=args.max_total_chars, max_tokens=args.max_tokens_limit,
                    max_temperature=args.max_temperature, max_prompts=args.max_prompts, max_body_bytes=args.max_body_bytes,
                    max_waiting=args.max_waiting, queue_timeout=args.queue_timeout, max_per_client=args.max_per_client,
                    max_connections=args.max_connections, max_connections_per_client=args.max_connections_per_client,
                    request_timeout=args.request_timeout, write_timeout=args.write_timeout,
                    max_header_bytes=args.max_header_bytes, max_headers=args.max_headers)
    defaults = Defaults(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens)
    server = ChatServer((args.host, args.port), WorkerPool(workers, args.max_waiting), default_model, limits, defaults,
                        log_conversations=args.log_conversations, quiet=args.quiet, api_key=args.api_key,
                        allow_no_auth=args.no_auth)
except UserError as e:
    die(str(e))
except OSError as e:  # address in use, no permission for the port, ...
    die(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")

# -----------------------------------------------------------------------------
# serve

print(f"model {'/'.join(map(str, key))} on {', '.join(str(d) for d in devices)}", flush=True)
print(f"nanochat web chat: {server.url}   OpenAI API: {server.url}v1   (Ctrl-C stops)", flush=True)
if args.api_key is not None:
    print("an API key is required (Authorization: Bearer; a browser asks for it: any user name, the key as the password)", flush=True)
    if len(args.api_key) < 16:
        print(f"warning: the API key has only {len(args.api_key)} characters; use 16 or more (openssl rand -hex 16)", flush=True)
elif not is_loopback(args.host):
    print(f"warning: listening on {args.host} without an API key (--no_auth): anyone who can reach this machine can use the model", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("stopping", flush=True)
finally:
    server.close()
