"""The BPE tokenizer trained on the built-in corpus, and the tok_train / tok_eval scripts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nanochat.builtin_corpus import build_builtin
from nanochat.dataset import text_iterator
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, compute_token_bytes

REPO = Path(__file__).resolve().parents[1]
VOCAB = 512

SAMPLES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog. 1234 + 5678 = 6912",
    "def f(x):\n    return x ** 2  # tabs\tand\r\nnewlines\n\n",
    "héllo wörld, naïve café, Ünïcödé",
    "日本語のテキスト, 中文, 한국어, русский, ελληνικά, עברית, العربية",
    "emoji: 🙂🚀👩‍👩‍👧‍👦 🇫🇷 and a lone combining mark: e\u0301",
    "",
    " leading and trailing spaces   ",
]


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    build_builtin(str(base / "builtin_data"), total_chars=300_000)
    return base


@pytest.fixture(scope="module")
def tokenizer(builtin_dir):
    return Tokenizer.train_from_iterator(text_iterator(str(builtin_dir / "builtin_data"), max_chars=300_000), VOCAB)


def test_vocab_and_special_tokens(tokenizer):
    assert tokenizer.get_vocab_size() == VOCAB
    assert len(SPECIAL_TOKENS) == 9 and tokenizer.get_special_tokens() == set(SPECIAL_TOKENS)
    ids = [tokenizer.encode_special(s) for s in SPECIAL_TOKENS]
    assert len(set(ids)) == 9 and sorted(ids) == list(range(VOCAB - 9, VOCAB))
    assert tokenizer.get_bos_token_id() == tokenizer.encode_special("<|bos|>")


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < VOCAB for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode_bytes(ids) == text.encode("utf-8")


def test_compresses_english(tokenizer):
    text = "The function returns the value of the attribute for the given object."
    assert len(tokenizer.encode(text)) < len(text.encode("utf-8")) / 2


def test_batch_encode_equals_single(tokenizer):
    batch = tokenizer.encode(SAMPLES, num_threads=2)
    assert batch == [tokenizer.encode(s) for s in SAMPLES]
    bos = tokenizer.get_bos_token_id()
    end = tokenizer.encode_special("<|assistant_end|>")
    with_bos = tokenizer.encode(SAMPLES, prepend=bos, append="<|assistant_end|>")
    assert with_bos == [[bos] + tokenizer.encode(s) + [end] for s in SAMPLES]
    assert tokenizer.encode("hi", prepend="<|bos|>") == [bos] + tokenizer.encode("hi")


def test_special_tokens_never_come_from_text(tokenizer):
    specials = {tokenizer.encode_special(s) for s in SPECIAL_TOKENS}
    for text in ["<|assistant_start|>", "hi <|assistant_start|>there<|assistant_end|>", "".join(SPECIAL_TOKENS)]:
        ids = tokenizer.encode(text)
        assert not specials & set(ids)
        assert tokenizer.decode(ids) == text
        assert not specials & {i for row in tokenizer.encode([text, text]) for i in row}


def test_token_bytes(tokenizer):
    token_bytes = compute_token_bytes(tokenizer)
    assert token_bytes.shape == (VOCAB,) and token_bytes.dtype == torch.int32
    specials = {tokenizer.encode_special(s) for s in SPECIAL_TOKENS}
    for i in range(VOCAB):
        if i in specials:
            assert token_bytes[i] == 0
        else:
            assert token_bytes[i] == len(tokenizer.decode_bytes([i])) > 0
    assert token_bytes[:256].eq(1).all()  # the 256 single bytes come first


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save(str(tmp_path))
    loaded = Tokenizer.from_directory(str(tmp_path))
    assert loaded.get_vocab_size() == tokenizer.get_vocab_size()
    assert loaded.get_bos_token_id() == tokenizer.get_bos_token_id()
    for text in SAMPLES:
        assert loaded.encode(text) == tokenizer.encode(text)
    with pytest.raises(FileNotFoundError, match="tok_train"):
        Tokenizer.from_directory(str(tmp_path / "nothing"))


def run(args, base):
    env = {**os.environ, "NANOCHAT_BASE_DIR": str(base)}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_tok_train_and_tok_eval_cli(builtin_dir):
    r = run(["scripts.tok_train", "--vocab_size", "300", "--max_chars", "1e5", "--data", "builtin"], builtin_dir)
    assert r.returncode == 0, r.stderr
    assert "trained on" in r.stdout and "sample:" in r.stdout
    tok_dir = builtin_dir / "tokenizer"
    tokenizer = Tokenizer.from_directory(str(tok_dir))
    assert tokenizer.get_vocab_size() == 300
    token_bytes = torch.load(tok_dir / "token_bytes.pt")
    assert torch.equal(token_bytes, compute_token_bytes(tokenizer))

    r = run(["scripts.tok_eval", "--data", "builtin"], builtin_dir)
    assert r.returncode == 0, r.stderr
    for label in ("val shard", "english", "code", "math", "non-english", "bytes/tok"):
        assert label in r.stdout

    r = run(["scripts.tok_train", "--vocab_size", "100"], builtin_dir)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: --vocab_size must be at least 265")
