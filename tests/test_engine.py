"""
The engine: KV-cache decoding equals naive decoding, sampling options, streaming text, the
calculator tool (its safety and the forcing of its output), and prompts longer than the context.
"""
import math

import pytest
import torch
import torch.nn as nn

from nanochat.calculator import CalculatorError, calculate, use_calculator
from nanochat.engine import Engine, TextStreamer, reply_parts, reply_text
from nanochat.gpt import GPTConfig, KVCache, build_model
from nanochat.tokenizer import Tokenizer

TEXT = "Hello world! The answer to 23 + 45 is 68. Caf\u00e9 cr\u00e8me, na\u00efve, \u4e16\u754c, \U0001f642 ok. " * 20


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(iter([TEXT]), vocab_size=300)


def random_model(vocab_size, sequence_len=64, seed=0):
    """A tiny model with every weight random, so greedy decoding is not trivially constant."""
    torch.manual_seed(seed)
    config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=2, n_head=2, n_kv_head=1, n_embd=32)
    model = build_model(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 2.0 / math.sqrt(p.size(1)))
    return model.eval()


@pytest.fixture(autouse=True)
def eager_decode(monkeypatch):
    monkeypatch.setenv("NANOCHAT_FAST_DECODE", "0")


def prompt_ids(tokenizer, text="The answer to"):
    return tokenizer.encode(text, prepend=tokenizer.get_bos_token_id())

# -----------------------------------------------------------------------------
# decoding


def test_kv_cache_matches_naive_greedy(tokenizer):
    model = random_model(tokenizer.get_vocab_size())
    prompt = prompt_ids(tokenizer)
    naive = list(model.generate(prompt, max_tokens=20, temperature=0))
    engine = Engine(model, tokenizer)
    cached = [col[0] for col in engine.generate(prompt, max_tokens=20, temperature=0, stop_tokens=set(), tools=False)]
    assert cached == naive
    # every sample of a greedy batch is the same, from the one shared prefill
    batch = engine.generate_batch(prompt, num_samples=3, max_tokens=20, temperature=0, stop_tokens=set(), tools=False)
    assert batch == [naive] * 3


def test_fast_decode_path_matches_eager(tokenizer, monkeypatch):
    pytest.importorskip("nanochat.fast_decode")
    model = random_model(tokenizer.get_vocab_size())
    prompt = prompt_ids(tokenizer)
    eager = Engine(model, tokenizer).generate_batch(prompt, 2, max_tokens=12, temperature=0, stop_tokens=set(), tools=False)
    monkeypatch.setenv("NANOCHAT_FAST_DECODE", "static")
    fast = Engine(model, tokenizer).generate_batch(prompt, 2, max_tokens=12, temperature=0, stop_tokens=set(), tools=False)
    assert fast == eager


def test_samples_differ_at_temperature_one_and_seed_repeats(tokenizer):
    model = random_model(tokenizer.get_vocab_size())
    engine = Engine(model, tokenizer)
    prompt = prompt_ids(tokenizer)
    kw = dict(max_tokens=16, temperature=1.0, stop_tokens=set(), tools=False)
    a = engine.generate_batch(prompt, num_samples=4, seed=1, **kw)
    assert len({tuple(s) for s in a}) > 1
    assert engine.generate_batch(prompt, num_samples=4, seed=1, **kw) == a
    assert engine.generate_batch(prompt, num_samples=4, seed=2, **kw) != a
    # top_k=1 is greedy whatever the temperature
    greedy = engine.generate_batch(prompt, num_samples=2, temperature=0, max_tokens=16, stop_tokens=set(), tools=False)
    assert engine.generate_batch(prompt, num_samples=2, seed=3, top_k=1, **kw) == greedy
    # a tiny top_p keeps only the most likely token too
    assert engine.generate_batch(prompt, num_samples=2, seed=3, top_p=1e-6, **kw) == greedy


def test_stops_at_stop_tokens(tokenizer):
    model = random_model(tokenizer.get_vocab_size())
    engine = Engine(model, tokenizer)
    prompt = prompt_ids(tokenizer)
    first = engine.generate_batch(prompt, max_tokens=1, temperature=0, stop_tokens=set(), tools=False)[0][0]
    steps = list(engine.generate(prompt, max_tokens=10, temperature=0, stop_tokens={first}, tools=False))
    assert steps == [[first]]
    assert engine.generate_batch(prompt, max_tokens=10, temperature=0, stop_tokens={first}, tools=False) == [[]]


def test_context_overflow_is_handled(tokenizer):
    model = random_model(tokenizer.get_vocab_size(), sequence_len=16)  # rotary table: 160 positions
    engine = Engine(model, tokenizer)
    long_prompt = tokenizer.encode(TEXT, prepend=tokenizer.get_bos_token_id())
    assert len(long_prompt) > 160
    kw = dict(temperature=0, stop_tokens=set(), tools=False)
    # longer than the rotary table: cut, not crashed
    out = engine.generate_batch(long_prompt, num_samples=2, max_tokens=20, **kw)
    assert [len(o) for o in out] == [20, 20]
    # a reply that runs past max_context slides the window
    out = engine.generate_batch(long_prompt[:10], max_tokens=60, max_context=32, **kw)
    assert len(out[0]) == 60
    # the cut keeps <|bos|> and the most recent tokens: the same as running on that prompt
    clipped = [long_prompt[0]] + long_prompt[-23:]
    expected = list(model.generate(clipped, max_tokens=8, temperature=0))
    assert engine.generate_batch(long_prompt, max_tokens=8, max_context=32, **kw)[0] == expected

# -----------------------------------------------------------------------------
# streaming


def test_streamer_never_splits_multibyte_characters(tokenizer):
    text = "Caf\u00e9 \u4e16\u754c \U0001f642 na\u00efve"
    ids = tokenizer.encode(text)
    # the tokenizer must split some character across tokens for the test to mean anything
    assert any(not _decodes(tokenizer, [t]) for t in ids)
    streamer = TextStreamer(tokenizer)
    pieces = [streamer.feed(t) for t in ids] + [streamer.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def _decodes(tokenizer, ids):
    try:
        tokenizer.decode_bytes(ids).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False

# -----------------------------------------------------------------------------
# calculator


def test_calculator_arithmetic():
    assert calculate("23 + 45") == "68"
    assert calculate("(2 + 3) * 4 - 6 / 3") == "18"
    assert calculate("7 / 2") == "3.5"
    assert calculate("17 // 5") == "3" and calculate("17 % 5") == "2"
    assert calculate("-2 ** 3") == "-8" and calculate("2 ** -1") == "0.5"
    assert calculate("1,234 + 1") == "1235"


@pytest.mark.parametrize("expr", [
    "__import__('os').system('echo hi')",  # names and calls
    "x + 1", "abs(-3)", "print(1)", "().__class__", "open('f')",  # names, builtins, attributes
    "'a' * 10", "[1, 2]", "{1: 2}", "1 if 1 else 2", "lambda: 1", "True + 1", "1 < 2",
    "9 ** 9 ** 9", "10 ** 1000", "2 ** 10000000", "99 ** 99 ** 99",  # huge powers
    "1e308 * 10", "(-8) ** 0.5", "1 / 0", "0 ** -1",  # not finite, complex, undefined
    "9" * 60 + " * " + "9" * 60, "(" * 100 + "1" + ")" * 100, "1 + " * 100 + "1",  # too big, deep, long
    "", "1 +",
])
def test_calculator_refuses(expr):
    with pytest.raises(CalculatorError):
        calculate(expr)
    assert use_calculator(expr) is None


def test_calculator_time_limit():
    with pytest.raises(CalculatorError, match="too long"):
        calculate("1 + 2 * 3", time_limit=-1)

# -----------------------------------------------------------------------------
# the tool inside generation


class ScriptedModel(nn.Module):
    """Stands in for GPT: the next token is a fixed function of the last one (a lookup table)."""
    def __init__(self, vocab_size, table, context=64):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.vocab_size, self.table = vocab_size, table
        self.register_buffer("cos", torch.zeros(1, context, 1, 2), persistent=False)

    def get_device(self):
        return self.weight.device

    def make_kv_cache(self, batch_size, max_len, dtype=None):
        return KVCache(batch_size, 1, max_len, 2, 1, "cpu", torch.float32)

    def forward(self, idx, kv_cache=None):
        kv_cache.advance(idx.size(1))
        logits = torch.zeros(*idx.shape, self.vocab_size)
        for b in range(idx.size(0)):
            for t in range(idx.size(1)):
                logits[b, t, self.table.get(idx[b, t].item(), 0)] = 10.0
        return logits


def test_calculator_output_is_forced_into_the_stream(tokenizer):
    sp = tokenizer.encode_special
    expr, result = tokenizer.encode("2*3"), tokenizer.encode("6")
    assert len(set(expr)) == len(expr) and result[0] not in expr
    # assistant_start -> python_start -> 2*3 -> python_end -> (tool) -> 6 -> assistant_end
    chain = [sp("<|assistant_start|>"), sp("<|python_start|>"), *expr, sp("<|python_end|>")]
    table = dict(zip(chain, chain[1:]))
    table[sp("<|python_end|>")] = sp("<|bos|>")  # what the model would say: replaced by the tool's output
    table[sp("<|output_end|>")] = result[0]
    table[result[0]] = sp("<|assistant_end|>")
    model = ScriptedModel(tokenizer.get_vocab_size(), table)
    engine = Engine(model, tokenizer)
    prompt = [tokenizer.get_bos_token_id(), sp("<|assistant_start|>")]
    steps = list(engine.generate(prompt, num_samples=2, max_tokens=30, temperature=0, return_forced=True))
    ids = [col[0] for col, _ in steps]
    forced = [f[0] for _, f in steps]
    expected = [sp("<|python_start|>"), *expr, sp("<|python_end|>"),
                sp("<|output_start|>"), *result, sp("<|output_end|>"), *result, sp("<|assistant_end|>")]
    assert ids == expected
    n = len(expr) + 2
    assert forced == [False] * n + [True] * (len(result) + 2) + [False] * (len(result) + 1)
    assert all(col[0] == col[1] for col, _ in steps)  # both samples ran the tool
    parts = reply_parts(tokenizer, ids)
    assert parts == [{"type": "python", "text": "2*3"}, {"type": "python_output", "text": "6"}, {"type": "text", "text": "6"}]
    assert reply_text(parts) == "6"
    # with tools off the model's own token follows python_end
    off = [col[0] for col in engine.generate(prompt, max_tokens=30, temperature=0, tools=False)]
    assert off[len(expr) + 2] == sp("<|bos|>")
