"""
Train the BPE tokenizer on the train split of the pretraining data.

    python -m scripts.tok_train                               # vocab 65536, up to 2B chars
    python -m scripts.tok_train --vocab_size 24576 --data builtin

Writes $NANOCHAT_BASE_DIR/tokenizer/tokenizer.pkl and token_bytes.pt.
"""
import os
import time

import torch

from nanochat import report
from nanochat.common import ArgumentParser, UserError, die, print0
from nanochat.dataset import get_data_dir, text_iterator
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, compute_token_bytes, get_tokenizer_dir

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(prog="python -m scripts.tok_train", description="Train the BPE tokenizer on the pretraining text")
parser.add_argument("--vocab_size", type=int, default=65536, help="vocabulary size including the special tokens (default 65536)")
parser.add_argument("--max_chars", type=float, default=2e9, help="train on at most this many characters (default 2e9: all there is, usually)")
parser.add_argument("--doc_cap", type=int, default=10_000, help="use at most this many characters of each document (default 10000)")
parser.add_argument("--data", type=str, default="auto", help="auto | fineweb | climbmix | builtin | a --text name | a folder of parquet shards")
args = parser.parse_args()

min_vocab = 256 + len(SPECIAL_TOKENS)
if args.vocab_size < min_vocab:
    die(f"--vocab_size must be at least {min_vocab} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), got {args.vocab_size}")
if args.max_chars <= 0 or args.doc_cap <= 0:
    die("--max_chars and --doc_cap must be positive")
try:
    data_dir = get_data_dir(args.data)
except UserError as e:
    die(str(e))

# -----------------------------------------------------------------------------
# setup

n_chars = 0
def counted_texts():
    # count what the tokenizer actually sees, for the report below
    global n_chars
    for text in text_iterator(data_dir, max_chars=int(args.max_chars), doc_cap=args.doc_cap):
        n_chars += len(text)
        yield text

print0(f"training a {args.vocab_size:,d}-token tokenizer on {data_dir} (max_chars {args.max_chars:,.0f}, doc_cap {args.doc_cap:,d})")

# -----------------------------------------------------------------------------
# work

t0 = time.time()
tokenizer = Tokenizer.train_from_iterator(counted_texts(), args.vocab_size)
train_time = time.time() - t0
print0(f"trained on {n_chars:,d} characters in {train_time:.1f}s")
if tokenizer.get_vocab_size() < args.vocab_size:
    print0(f"note: the text only supported {tokenizer.get_vocab_size():,d} tokens, fewer than --vocab_size; train on more text for more")

tokenizer_dir = get_tokenizer_dir()
path = tokenizer.save(tokenizer_dir)
token_bytes = compute_token_bytes(tokenizer)
token_bytes_path = os.path.join(tokenizer_dir, "token_bytes.pt")
torch.save(token_bytes, token_bytes_path)
print0(f"saved {path} and {token_bytes_path}")

ordinary = token_bytes[token_bytes > 0].float()
print0(f"token bytes: min {int(ordinary.min())}, max {int(ordinary.max())}, mean {ordinary.mean():.2f}, "
       f"{len(SPECIAL_TOKENS)} special tokens")

sample = "Hello world! The answer to 23 + 45 is 68. def f(x): return x ** 2  # héllo 🙂"
ids = tokenizer.encode(sample)
assert tokenizer.decode(ids) == sample, "tokenizer does not round-trip the sample text"
print0(f"sample: {len(sample.encode('utf-8'))} bytes -> {len(ids)} tokens")
# pieces of a multi-byte character are shown as escaped bytes
print0(" | ".join(tokenizer.decode_bytes([i]).decode("utf-8", errors="backslashreplace") for i in ids))
report.append_section("tok_train", settings=vars(args), metrics={
    "vocab size": tokenizer.get_vocab_size(), "characters trained on": n_chars, "training time (s)": train_time,
    "token bytes min": int(ordinary.min()), "token bytes max": int(ordinary.max()), "token bytes mean": ordinary.mean().item(),
    "data": data_dir})
