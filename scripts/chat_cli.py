"""
Chat with a model in the terminal.

    python -m scripts.chat_cli                          # interactive, the latest SFT model
    python -m scripts.chat_cli -p "What is 23 + 45?"    # one answer, then exit
    python -m scripts.chat_cli -i mid -g d20 -s 5000 -t 0.8 -k 50

Interactive commands: 'clear' starts a new conversation, 'quit' (or 'exit', Ctrl-D) leaves.
Calculator calls are shown dimmed as [calculator: 23 + 45 = 68].
"""
import sys

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, die, UserError
from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine, TextStreamer, reply_parts, tool_markers
from nanochat.tokenizer import render_for_completion

DIM, RESET = "\033[2m", "\033[0m"

# -----------------------------------------------------------------------------
# settings
parser = ArgumentParser(prog="python -m scripts.chat_cli", description="Chat with a nanochat model in the terminal.")
add_model_source_args(parser, source="sft")
parser.add_argument("-p", "--prompt", type=str, default=None, help="answer this one message and exit")
parser.add_argument("-t", "--temperature", type=float, default=0.6, help="sampling temperature (0 = greedy; default 0.6)")
parser.add_argument("-k", "--top_k", type=int, default=50, help="sample from the k most likely tokens (0 = all; default 50)")
parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling: the smallest set of tokens with this much probability (1 = off)")
parser.add_argument("--max_tokens", type=int, default=256, help="longest reply in tokens (default 256)")
parser.add_argument("--system", type=str, default=None, help="a system message to start every conversation with")
parser.add_argument("--seed", type=int, default=42, help="random seed of the first reply (each reply uses the next)")
parser.add_argument("--no_tools", action="store_true", help="do not run the calculator tool")
add_device_args(parser)
args = parser.parse_args()
if args.temperature < 0 or args.max_tokens < 1 or args.top_k < 0 or not 0 < args.top_p <= 1:
    die("need --temperature >= 0, --max_tokens >= 1, --top_k >= 0 and 0 < --top_p <= 1")

# -----------------------------------------------------------------------------
# setup
try:
    _, _, _, _, device = compute_init(args.device_type)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
except UserError as e:
    die(str(e))
# replies stay within the length the model was trained on; older turns give way first
engine = Engine(model, tokenizer, max_context=model.config.sequence_len)
color = sys.stdout.isatty()
sp = tokenizer.encode_special
SHOW = tool_markers(tokenizer)
STOPS = {sp("<|assistant_end|>"), tokenizer.get_bos_token_id()}


def dim(text):
    return DIM + text + RESET if color and text else text


def reply(messages, seed):
    """Stream the assistant's reply to stdout; returns its parts (for the history)."""
    tokens = render_for_completion(tokenizer, {"messages": messages})
    streamer, ids, in_tool = TextStreamer(tokenizer), [], False
    for column in engine.generate(tokens, num_samples=1, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p, seed=seed, tools=not args.no_tools):
        tok = column[0]
        if tok in STOPS:
            break
        ids.append(tok)
        if tok in SHOW:
            print(streamer.flush() + dim(SHOW[tok]), end="", flush=True)
            in_tool = tok in (sp("<|python_start|>"), sp("<|output_start|>"))
        else:
            piece = streamer.feed(tok)
            print(dim(piece) if in_tool else piece, end="", flush=True)
    print(streamer.flush())
    return reply_parts(tokenizer, ids)


def new_conversation():
    return [{"role": "system", "content": args.system}] if args.system else []

# -----------------------------------------------------------------------------
# one shot, or the conversation loop
if args.prompt is not None:
    if not args.prompt.strip():
        die("--prompt is empty")
    reply(new_conversation() + [{"role": "user", "content": args.prompt}], args.seed)
    sys.exit(0)

print(f"nanochat {args.source} model ({meta['model_config']['n_layer']} layers, step {meta['step']}). "
      f"Type a message; 'clear' starts over, 'quit' leaves.")
messages, seed = new_conversation(), args.seed
while True:
    try:
        text = input("\nUser: ").strip()
    except (EOFError, KeyboardInterrupt):
        print()
        break
    if text.lower() in ("quit", "exit"):
        break
    if text.lower() == "clear":
        messages = new_conversation()
        print("(new conversation)")
        continue
    if not text:
        continue
    messages.append({"role": "user", "content": text})
    print("Assistant: ", end="", flush=True)
    try:
        parts = reply(messages, seed)
    except KeyboardInterrupt:
        print("\n(interrupted)")
        messages.pop()
        continue
    seed += 1
    messages.append({"role": "assistant", "content": parts or ""})
