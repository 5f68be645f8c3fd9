"""
Evaluate the trained tokenizer's compression (bytes per token; higher is better) on held-out text:
the validation shard of the pretraining data and a few fixed samples (English, code, math,
non-English). GPT-2's and GPT-4's encodings are shown alongside when tiktoken can load them
(they are downloaded once and cached; with no network they are skipped).

    python -m scripts.tok_eval [--data auto|fineweb|builtin|NAME|PATH]
"""
from nanochat import report
from nanochat.common import ArgumentParser, UserError, die, print0
from nanochat.dataset import get_data_dir, parquets_iter_batched
from nanochat.tokenizer import get_tokenizer

SAMPLES = {
    "english": (
        "The quick brown fox jumps over the lazy dog. Photosynthesis is the process by which green plants "
        "use sunlight to turn water and carbon dioxide into sugar, releasing oxygen as a by-product. "
        "It happens mostly in the leaves, inside small structures called chloroplasts."
    ),
    "code": (
        "def fibonacci(n):\n"
        "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
        "    a, b = 0, 1\n"
        "    for _ in range(n):\n"
        "        a, b = b, a + b\n"
        "    return a\n\n"
        "if __name__ == \"__main__\":\n"
        "    print([fibonacci(i) for i in range(10)])\n"
    ),
    "math": (
        "Let f(x) = 3x^2 - 12x + 7. Then f'(x) = 6x - 12, which is zero at x = 2, so the minimum is "
        "f(2) = 12 - 24 + 7 = -5. Also, 1234 + 5678 = 6912 and 37 * 42 = 1554; "
        "\\int_0^1 x^2 dx = 1/3."
    ),
    "non-english": (
        "Le renard brun rapide saute par-dessus le chien paresseux. "
        "Der schnelle braune Fuchs springt über den faulen Hund. "
        "敏捷的棕色狐狸跳过了懒狗。 素早い茶色の狐がのろまな犬を飛び越える。 "
        "빠른 갈색 여우가 게으른 개를 뛰어넘는다. Быстрая бурая лиса перепрыгивает через ленивую собаку."
    ),
}

# -----------------------------------------------------------------------------
# settings

parser = ArgumentParser(prog="python -m scripts.tok_eval", description="Bytes per token of the trained tokenizer on held-out text")
parser.add_argument("--data", type=str, default="auto", help="where the validation shard comes from: auto | fineweb | builtin | NAME | PATH")
parser.add_argument("--val_chars", type=float, default=1e6, help="characters of validation text to use (default 1e6)")
args = parser.parse_args()

# -----------------------------------------------------------------------------
# setup

try:
    tokenizer = get_tokenizer()
except FileNotFoundError as e:
    die(str(e))

texts = {}
try:
    data_dir = get_data_dir(args.data)
    val, n = [], 0
    for docs in parquets_iter_batched("val", data_dir):
        for doc in docs:
            val.append(doc)
            n += len(doc)
        if n >= args.val_chars:
            break
    texts["val shard"] = "\n".join(val)[:int(args.val_chars)]
except UserError as e:
    print0(f"(no validation shard: {e})")
texts.update(SAMPLES)

encoders = {"ours": lambda s: len(tokenizer.encode(s))}
for name, enc_name in [("gpt2", "gpt2"), ("gpt4", "cl100k_base")]:
    try:
        import tiktoken
        enc = tiktoken.get_encoding(enc_name)
    except Exception:
        continue  # not cached and no network: skip it quietly
    encoders[name] = lambda s, enc=enc: len(enc.encode_ordinary(s))

# -----------------------------------------------------------------------------
# work

print0(f"tokenizer: {tokenizer.get_vocab_size():,d} tokens")
header = f"{'text':<12} {'bytes':>9}" + "".join(f" {name + ' tokens':>12} {'bytes/tok':>9}" for name in encoders)
print0(header)
print0("-" * len(header))
rows = []
for label, text in texts.items():
    n_bytes = len(text.encode("utf-8"))
    row = f"{label:<12} {n_bytes:>9,d}"
    cells = [label, n_bytes]
    for encode in encoders.values():
        n_tokens = encode(text)
        row += f" {n_tokens:>12,d} {n_bytes / max(n_tokens, 1):>9.2f}"
        cells.append(n_bytes / max(n_tokens, 1))
    print0(row)
    rows.append(cells)
report.append_section("tok_eval", settings=vars(args), metrics={"vocab size": tokenizer.get_vocab_size()},
                      tables=[("bytes per token (higher is better)", ["text", "bytes", *encoders], rows)])
if len(encoders) == 1:
    print0("(GPT-2 and GPT-4 encodings not available offline; run once with a network to cache them)")
