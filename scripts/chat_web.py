"""
Chat with a model in the browser, and serve it through an OpenAI-compatible API.

    python -m scripts.chat_web                    # open http://127.0.0.1:8000/
    python -m scripts.chat_web -i sft -g d20 -s 650 --port 8080
    python -m scripts.chat_web --host 0.0.0.0     # reachable from other machines: there is no login!

Any OpenAI client works against it, e.g. in Python:
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="sft", messages=[{"role": "user", "content": "Hi!"}])
Models are named stage/tag/step ("sft/d20/650"; "sft" or "sft/d20" pick the latest); GET /v1/models
lists every checkpoint under $NANOCHAT_BASE_DIR. One worker per GPU (one on CPU) generates; other
requests wait in a queue. The server itself is in nanochat/web.py, the page in nanochat/ui.html.
"""
from nanochat.common import ArgumentParser, add_device_args, compute_init, die, UserError
from nanochat.checkpoint_manager import PHASE_DIRS

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(description="Web chat and OpenAI-compatible API for nanochat models.")
parser.add_argument("-i", "--source", type=str, default="sft", choices=list(PHASE_DIRS), help="default model's stage (default sft)")
parser.add_argument("-g", "--model_tag", type=str, default=None, help="default model's tag (default: the deepest model)")
parser.add_argument("-s", "--step", type=int, default=None, help="default model's step (default: the latest)")
parser.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
parser.add_argument("-p", "--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="temperature for requests that set none (default 0.6)")
parser.add_argument("-k", "--top_k", type=int, default=50, help="top-k for requests that set none (0 = all; default 50)")
parser.add_argument("-m", "--max_tokens", type=int, default=512, help="reply length for requests that set none (default 512)")
parser.add_argument("--workers", type=int, default=0, help="generation workers, each with its own copy of the model "
                    "(default: one per GPU, one on CPU/MPS)")
parser.add_argument("--max_loaded_models", type=int, default=2, help="models each worker keeps loaded for the picker (default 2)")
parser.add_argument("--log_conversations", action="store_true", help="append every exchange to $NANOCHAT_BASE_DIR/chat_web/conversations.jsonl")
parser.add_argument("--quiet", action="store_true", help="no line per request")
g = parser.add_argument_group("limits per request")
g.add_argument("--max_messages", type=int, default=500, help="messages per conversation (default 500)")
g.add_argument("--max_message_chars", type=int, default=8000, help="characters per message (default 8000)")
g.add_argument("--max_total_chars", type=int, default=32000, help="characters in all messages (default 32000)")
g.add_argument("--max_tokens_limit", type=int, default=4096, help="largest max_tokens a request may ask for (default 4096)")
g.add_argument("--max_temperature", type=float, default=2.0, help="largest temperature (default 2)")
g.add_argument("--max_body_bytes", type=int, default=1 << 20, help="request body size (default 1 MiB)")
g.add_argument("--max_waiting", type=int, default=32, help="requests that may wait for a worker; more get a 503 (default 32)")
g.add_argument("--queue_timeout", type=float, default=120.0, help="seconds a request may wait for a worker (default 120)")
add_device_args(parser)
args = parser.parse_args()

if not 0 <= args.port <= 65535:
    die(f"--port must be between 0 and 65535, got {args.port}")
if args.workers < 0:
    die(f"--workers must be 0 (automatic) or more, got {args.workers}")
for name in ("max_messages", "max_message_chars", "max_total_chars", "max_tokens_limit", "max_body_bytes", "max_waiting", "max_loaded_models"):
    if getattr(args, name) <= 0:
        die(f"--{name} must be positive, got {getattr(args, name)}")
if not 0 <= args.temperature <= args.max_temperature:
    die(f"--temperature must be between 0 and --max_temperature ({args.max_temperature}), got {args.temperature}")
if not 1 <= args.max_tokens <= args.max_tokens_limit:
    die(f"--max_tokens must be between 1 and --max_tokens_limit ({args.max_tokens_limit}), got {args.max_tokens}")

# -----------------------------------------------------------------------------
# setup

import torch  # noqa: E402  (after parsing, so --help is quick)
from nanochat.web import ApiError, ChatServer, Defaults, Limits, Worker, WorkerPool, list_checkpoints, resolve_model  # noqa: E402

try:
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
                    max_temperature=args.max_temperature, max_body_bytes=args.max_body_bytes,
                    max_waiting=args.max_waiting, queue_timeout=args.queue_timeout)
    defaults = Defaults(temperature=args.temperature, top_k=args.top_k, max_tokens=args.max_tokens)
    server = ChatServer((args.host, args.port), WorkerPool(workers, args.max_waiting), default_model, limits, defaults,
                        log_conversations=args.log_conversations, quiet=args.quiet)
except UserError as e:
    die(str(e))
except OSError as e:  # address in use, no permission for the port, ...
    die(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}")

# -----------------------------------------------------------------------------
# serve

print(f"model {'/'.join(map(str, key))} on {', '.join(str(d) for d in devices)}", flush=True)
print(f"nanochat web chat: {server.url}   OpenAI API: {server.url}v1   (Ctrl-C stops)", flush=True)
if args.host not in ("127.0.0.1", "localhost", "::1"):
    print(f"warning: listening on {args.host}: anyone who can reach this machine can use the model", flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    print("stopping", flush=True)
finally:
    server.close()
