"""
Complete text with a base model.

    python -m scripts.base_complete                      # interactive: type, end with ### on its own line
    python -m scripts.base_complete -p "The capital of France is" -m 32
"""
import sys

from nanochat.flags import add_device_args, add_model_source_args
from nanochat.common import ArgumentParser, compute_init, die, UserError
from nanochat.checkpoint_manager import load_model
from nanochat.engine import Engine, TextStreamer

DIM, RESET = "\033[2m", "\033[0m"

parser = ArgumentParser(description="Complete text with a base model (raw continuation, no chat format).")
parser.add_argument("-p", "--prompt", type=str, default=None, help="complete this text once and exit")
parser.add_argument("-t", "--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
parser.add_argument("-k", "--top_k", type=int, default=50, help="sample from the k most likely tokens (0 = all)")
parser.add_argument("-m", "--max_tokens", type=int, default=128, help="tokens to generate")
add_model_source_args(parser, source="base")
parser.add_argument("--seed", type=int, default=42)
add_device_args(parser)
args = parser.parse_args()

try:
    _, _, _, _, device = compute_init(args.device_type)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
except UserError as e:
    die(str(e))
engine = Engine(model, tokenizer)
color = sys.stdout.isatty()


def complete(text, seed):
    tokens = tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())
    streamer = TextStreamer(tokenizer)
    # a base model knows no chat turns: only <|bos|> (a new document) ends a completion early
    for column in engine.generate(tokens, max_tokens=args.max_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, seed=seed, stop_tokens={tokenizer.get_bos_token_id()},
                                  tools=False):  # a base model never learned the calculator
        if column[0] == tokenizer.get_bos_token_id():
            break
        print(streamer.feed(column[0]), end="", flush=True)
    print(streamer.flush())


if args.prompt is not None:
    print((DIM + args.prompt + RESET) if color else args.prompt, end="", flush=True)
    complete(args.prompt, args.seed)
    sys.exit(0)

print(f"base model {meta['model_config']['n_layer']} layers, step {meta['step']}. Type text; a line with ### completes it; Ctrl-D quits.")
n = 0
while True:
    lines = []
    try:
        while True:
            line = input((DIM if color else "") + ("> " if not lines else "  "))
            if line.strip() == "###":
                break
            lines.append(line)
    except (EOFError, KeyboardInterrupt):
        print(RESET if color else "")
        break
    finally:
        if color:
            print(RESET, end="")
    text = "\n".join(lines)
    if not text:
        continue
    print((DIM + text + RESET) if color else text, end="", flush=True)
    complete(text, args.seed + n)
    n += 1
