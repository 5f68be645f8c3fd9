"""
Self-chat: the text measures on hand-made texts (distinct-n, repetition, BLEU, entropy of known
distributions), the re-scored sampling distribution against the engine's own decode and sampler,
and scripts.self_chat end to end on tiny models (transcripts, table, collapse, two checkpoints).
"""
import json
import math
import os
import re
import shutil

import pytest
import torch

from nanochat.text_metrics import (bleu, collapse_reason, distinct_n, entropy, repeated_share, reply_logits, rescore,
                                   sampling_distribution, self_bleu, words)
from tests.helpers import run_script

# -----------------------------------------------------------------------------
# the text measures


def test_words_distinct_n_and_repetition_on_hand_made_texts():
    assert words("Hello, hello!  World") == ["hello", ",", "hello", "!", "world"]
    texts = ["a b c a".split(), "a b d".split()]
    # unigrams: 7 in all, {a, b, c, d} unique; bigrams: ab bc ca | ab bd -> 4 of 5; trigrams: abc bca | abd -> 3 of 3
    assert distinct_n(texts, 1) == pytest.approx(4 / 7)
    assert distinct_n(texts, 2) == pytest.approx(4 / 5)
    assert distinct_n(texts, 3) == pytest.approx(1.0)
    assert distinct_n([["a"], []], 2) is None  # no bigram at all: undefined, not 0
    # "the cat the cat the cat": bigrams the-cat cat-the the-cat cat-the the-cat: 3 of 5 repeat an earlier one
    assert repeated_share("the cat the cat the cat".split(), 2) == pytest.approx(3 / 5)
    assert repeated_share("one two three four five".split(), 2) == 0.0
    assert repeated_share("too short".split(), 4) == 0.0


def test_bleu_on_hand_made_texts():
    hyp, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # clipped matches / n-grams: 1-grams 5/6 ('the' twice, once in the reference); 2-grams 3/5;
    # 3-grams 2/4; 4-grams 1/3; add-one for n >= 2: 4/6, 3/5, 2/4; equal lengths: no brevity penalty
    assert bleu(hyp, [ref]) == pytest.approx((5 / 6 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    assert bleu(ref, [ref]) == pytest.approx(1.0)
    # brevity: 'the cat' against 6 tokens: all precisions 1 (3- and 4-grams: 0 of 0, smoothed to 1), BP = exp(1 - 6/2)
    assert bleu("the cat".split(), [ref]) == pytest.approx(math.exp(-2))
    # clipping: 'the' counts once; 2-grams 0/3, 3-grams 0/2, 4-grams 0/1 smoothed; c = 4 > r = 2: no penalty
    assert bleu("the the the the".split(), ["the cat".split()]) == pytest.approx((1 / 4 * 1 / 4 * 1 / 3 * 1 / 2) ** 0.25)
    # several references: clipped by the one holding an n-gram most often; r is the closest length
    assert bleu("the the".split(), [["the"], "the the x".split()]) == pytest.approx((2 / 2 * 2 / 2) ** 0.25)
    assert bleu("dog".split(), [ref]) == 0.0 and bleu([], [ref]) == 0.0
    assert self_bleu([ref, ref, ref]) == pytest.approx(1.0)
    assert self_bleu(["a b c".split(), "x y z".split()]) == 0.0
    assert self_bleu([ref]) is None and self_bleu([[], []]) is None
    one, two = "a b c d".split(), "a b c e".split()
    assert self_bleu([one, two]) == pytest.approx((bleu(one, [two]) + bleu(two, [one])) / 2)


def test_collapse_reason():
    assert collapse_reason("the cat sat on the mat and then it left", []) is None
    looping = "I like it. I like it. I like it. I like it."
    assert collapse_reason(looping, [], n=4, threshold=0.5).startswith("repetition: ")
    assert collapse_reason(looping, [], n=4, threshold=0.99) is None
    assert collapse_reason("Fine,   THANKS!", ["hello there", "fine, thanks!"]) == "repeats turn 2"
    assert collapse_reason("", ["hi", ""]) == "repeats turn 2 (both empty)"


def test_entropy_of_known_distributions():
    assert float(entropy([0.25] * 4)) == pytest.approx(math.log(4))
    assert float(entropy([0.5, 0.25, 0.125, 0.125])) == pytest.approx(1.75 * math.log(2))
    assert float(entropy([1.0, 0.0, 0.0])) == 0.0
    p = torch.tensor([0.5, 0.25, 0.125, 0.125])
    assert float(entropy(sampling_distribution(p.log(), 1.0))) == pytest.approx(1.75 * math.log(2), abs=1e-6)
    # temperature 2 halves the logits: [2 ln 2, 0, 0, 0] -> [ln 2, 0, 0, 0] -> probabilities 2:1:1:1
    logits = torch.tensor([2 * math.log(2), 0.0, 0.0, 0.0])
    q = torch.tensor([0.4, 0.2, 0.2, 0.2])
    torch.testing.assert_close(sampling_distribution(logits, 2.0), q)
    assert float(entropy(sampling_distribution(logits, 2.0))) == pytest.approx(-(0.4 * math.log(0.4) + 0.6 * math.log(0.2)), abs=1e-6)
    # top-k 2 of [3, 1, 0, -1]: softmax over the first two, the rest exactly 0
    a = 1 / (1 + math.exp(-2))
    torch.testing.assert_close(sampling_distribution(torch.tensor([[3.0, 1.0, 0.0, -1.0]]), 1.0, top_k=2),
                               torch.tensor([[a, 1 - a, 0.0, 0.0]]))
    assert float(entropy(sampling_distribution(torch.tensor([3.0, 1.0, 0.0, -1.0]), 1.0, top_k=2))) == pytest.approx(
        -(a * math.log(a) + (1 - a) * math.log(1 - a)), abs=1e-6)
    assert float(entropy(sampling_distribution(torch.tensor([3.0, 1.0, 0.0]), 0.0))) == 0.0  # greedy: a point mass


def test_sampling_distribution_is_the_one_the_engine_samples_from():
    from nanochat.engine import sample_next_token
    logits = torch.tensor([2.0, 1.5, 0.0, -1.0, 0.5, 1.0])
    n = 40_000
    rng = torch.Generator().manual_seed(0)
    for temperature, top_k in [(1.0, None), (0.6, 3), (1.7, 4)]:
        draws = sample_next_token(logits.expand(n, -1), rng, temperature, top_k).view(-1)
        freq = torch.bincount(draws, minlength=logits.numel()).float() / n
        expected = sampling_distribution(logits, temperature, top_k)
        assert (freq[expected == 0] == 0).all()  # nothing outside the top-k is ever drawn
        torch.testing.assert_close(freq, expected, atol=0.012, rtol=0)  # ~5 standard errors


@pytest.fixture(scope="module")
def random_model():
    from nanochat.gpt import GPTConfig, build_model
    from nanochat.tokenizer import Tokenizer
    from tests.conftest import TEXT
    tokenizer = Tokenizer.train_from_iterator(iter([TEXT] * 5), vocab_size=300)
    torch.manual_seed(0)
    model = build_model(GPTConfig(sequence_len=128, vocab_size=300, n_layer=2, n_head=2, n_kv_head=2, n_embd=64), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # every layer matters, every position differs
    model.eval()
    return model, tokenizer


def test_rescoring_gives_the_logits_the_engine_decoded_with(random_model):
    from nanochat.common import get_compute_dtype
    from nanochat.engine import EagerDecoder, Engine
    from nanochat.tokenizer import render_for_completion
    model, tokenizer = random_model
    prompt = render_for_completion(tokenizer, {"messages": [{"role": "user", "content": "Hello there! How are you?"}]})
    engine = Engine(model, tokenizer)
    reply = engine.generate_batch(prompt, max_tokens=30, temperature=1.0, top_k=3, seed=1, tools=False, stop_tokens=[])[0]
    assert len(reply) == 30
    # the engine's decode path step by step, as it ran: prefill the prompt, then one token at a time
    decoder = EagerDecoder(model, 1, len(prompt) + len(reply), get_compute_dtype("cpu"))
    steps = [decoder.prefill(torch.tensor([prompt]))]
    steps += [decoder.step(torch.tensor([tok])) for tok in reply[:-1]]
    torch.testing.assert_close(reply_logits(model, prompt, reply), torch.cat(steps).float(), atol=1e-4, rtol=1e-4)
    # each drawn token is one of the top 3 of its position (shifted by one, they would mostly not be)
    entropies, logprobs = rescore(model, prompt, reply, 1.0, top_k=3)
    assert len(entropies) == len(logprobs) == 30
    assert all(math.isfinite(lp) and lp <= 0 for lp in logprobs)
    assert all(0 < e <= math.log(3) + 1e-6 for e in entropies)
    probs = sampling_distribution(reply_logits(model, prompt, reply), 1.0, top_k=3)
    off_by_one = probs[1:].gather(-1, torch.tensor(reply[:-1]).view(-1, 1))
    assert (off_by_one == 0).sum() > 10
    assert rescore(model, prompt, [], 1.0) == ([], [])

# -----------------------------------------------------------------------------
# the script, end to end


def read_run(out):
    with open(os.path.join(out, "transcripts.jsonl"), encoding="utf-8") as f:
        convs = [json.loads(line) for line in f]
    with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    with open(os.path.join(out, "table.md"), encoding="utf-8") as f:
        table = f.read()
    return convs, metrics, table


def test_self_chat_writes_transcripts_metrics_and_table(tiny_base_dir, tmp_path):
    out = str(tmp_path / "run")
    p = run_script(tiny_base_dir, "scripts.self_chat", "-i", "sft", "--turns", "3", "--samples", "2", "--temperatures", "0.6,1.0",
                   "--max_tokens", "10", "-k", "0", "--persona_a", "You are a fox.", "--persona_b", "You are a dog.", "--out", out)
    convs, metrics, table = read_run(out)
    assert not os.path.exists(os.path.join(out, "transcripts.jsonl.partial"))
    assert [(c["temperature"], c["sample"]) for c in convs] == [(0.6, 0), (0.6, 1), (1.0, 0), (1.0, 1)]
    for c in convs:
        assert c["stopped"] is None and c["personas"] == {"A": "You are a fox.", "B": "You are a dog."}
        assert [t["side"] for t in c["turns"]] == ["A", "B", "A"]
        for t in c["turns"]:
            # the chatty model never stops: 10 sampled tokens, each with its entropy, letters and spaces only
            assert t["tokens"] == 10 and not t["finished"] and len(t["token_entropy"]) == 10 and t["text"].strip()
            assert t["entropy"] == pytest.approx(sum(t["token_entropy"]) / 10, abs=1e-3) and t["entropy"] > 0.5
    # the same seeds at both temperatures, different seeds per reply
    assert [t["seed"] for t in convs[0]["turns"]] == [t["seed"] for t in convs[2]["turns"]]
    assert len({t["seed"] for c in convs[:2] for t in c["turns"]}) == 6
    # no top-k: the rarely drawn tokens weigh more when hotter, so the entropy rises with the temperature
    assert all(hot["entropy"] > cold["entropy"] for a, b in ((0, 2), (1, 3)) for cold, hot in zip(convs[a]["turns"], convs[b]["turns"]))
    rows = {(r["temperature"], r["turn"]): r for r in metrics["per_turn"]}
    assert sorted(rows) == [(0.6, 1), (0.6, 2), (0.6, 3), (1.0, 1), (1.0, 2), (1.0, 3)]
    r = rows[(1.0, 2)]
    replies = [c["turns"][1] for c in convs[2:]]
    assert r["replies"] == 2 and r["side"] == "B" and r["length"] == 10
    assert r["distinct_1"] == pytest.approx(distinct_n([words(x["text"]) for x in replies], 1))
    assert r["self_bleu"] == pytest.approx(self_bleu([words(x["text"]) for x in replies]))
    assert r["entropy"] == pytest.approx(sum(sum(x["token_entropy"]) for x in replies) / 20, abs=1e-3)
    assert [o["conversations"] for o in metrics["overall"]] == [2, 2]
    assert "## temperature 0.6" in table and "## temperature 1" in table and "| all |" in table
    assert "| 2 | B | 2 |" in table and "self-BLEU" in table and "distinct-3" in table
    assert "[T=1 conversation 2/2] turn 3/3 A: 10 tokens" in p.stdout  # progress while sampling
    assert "| turn | side |" in p.stdout
    try:
        import matplotlib  # noqa: F401
        assert os.path.getsize(os.path.join(out, "self_chat.png")) > 1000
    except ImportError:
        assert "no plot: pip install matplotlib" in p.stdout


def test_self_chat_with_another_checkpoint_for_side_b_stops_on_a_repeated_reply(tiny_base_dir, tmp_path):
    # side B is the terse base model: every reply empty (at a low temperature), so its second reply repeats its first
    out = str(tmp_path / "run")
    p = run_script(tiny_base_dir, "scripts.self_chat", "-i", "sft", "--other_source", "base", "--turns", "6", "--samples", "1",
                   "--temperatures", "0.3", "--max_tokens", "8", "--no_plot", "--out", out)
    (conv,), metrics, table = read_run(out)
    assert conv["models"] == {"A": "sft_tiny_step5", "B": "base_tiny_step2"}
    assert [(t["side"], t["tokens"]) for t in conv["turns"]] == [("A", 8), ("B", 0), ("A", 8), ("B", 0)]
    assert conv["turns"][1]["finished"] and conv["turns"][1]["text"] == ""
    # side A's model gives its G letter tokens the same logit and the rest far less: with top-k 50 < G the ties
    # stay in and the rest go, so every token is drawn uniformly from G, at any temperature: entropy log G
    from nanochat.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_directory(str(tiny_base_dir / "tokenizer"))
    special = {tokenizer.encode_special(s) for s in tokenizer.get_special_tokens()}
    good = [i for i in range(tokenizer.get_vocab_size()) if i not in special and any(c.isalpha() for c in tokenizer.id_to_token(i))
            and all(c.isalpha() or c == " " for c in tokenizer.id_to_token(i))]
    assert len(good) > 50
    for t in conv["turns"][0::2]:
        assert t["token_entropy"] == pytest.approx([math.log(len(good))] * 8, abs=1e-4)
    assert conv["stopped"] == {"turn": 4, "side": "B", "reason": "repeats turn 2 (both empty)"}
    assert "stopped at turn 4 (side B): repeats turn 2 (both empty)" in p.stdout
    assert not os.path.exists(os.path.join(out, "self_chat.png"))  # --no_plot
    assert "vs base_tiny_step2" in table and metrics["overall"][0]["stopped"] == 1
    assert [r["turn"] for r in metrics["per_turn"]] == [1, 2, 3, 4] and metrics["per_turn"][3]["stopped"] == 1


@pytest.fixture(scope="module")
def own_base_dir(tiny_base_dir_session, tmp_path_factory):
    """A base dir of its own (the shared one picks its default model by tag): sft 'loop', a model that says one
    word, and sft 'short', the chatty model with a 64-token context. Returns (base, the word)."""
    from nanochat.checkpoint_manager import save_checkpoint
    from nanochat.gpt import GPTConfig, build_model
    from nanochat.tokenizer import Tokenizer
    from tests.conftest import make_tiny_model
    base = tmp_path_factory.mktemp("self_chat_base")
    shutil.copytree(tiny_base_dir_session / "tokenizer", base / "tokenizer")
    tokenizer = Tokenizer.from_directory(str(base / "tokenizer"))
    word = next(i for i in range(tokenizer.get_vocab_size()) if re.fullmatch(r" [a-z]{2,}", tokenizer.id_to_token(i)))
    config = GPTConfig(sequence_len=256, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=2, n_kv_head=2, n_embd=64)
    model = build_model(config, "cpu")
    with torch.no_grad():
        model.transformer.wte.weight[:, 0] = 30.0  # as conftest.make_tiny_model: lm_head column 0 sets the logits
        model.lm_head.weight.zero_()
        model.lm_head.weight[:, 0] = -1.0
        model.lm_head.weight[word, 0] = 0.0
    save_checkpoint(str(base / "chatsft_checkpoints" / "loop"), 1, model.state_dict(), None,
                    {"step": 1, "model_config": config.to_dict()})
    make_tiny_model(str(base), tokenizer, "sft", "short", 1, "chatty", sequence_len=64)
    return base, tokenizer.id_to_token(word)


def test_self_chat_stops_a_conversation_that_collapses_into_repetition(own_base_dir, tmp_path):
    base, said = own_base_dir
    out = str(tmp_path / "run")
    p = run_script(base, "scripts.self_chat", "-g", "loop", "--turns", "4", "--samples", "2", "--temperatures", "0.8", "-k", "1",
                   "--max_tokens", "12", "--no_plot", "--out", out)
    convs, metrics, _ = read_run(out)
    for c in convs:
        (turn,) = c["turns"]
        assert turn["text"] == said * 12 and turn["rep"] == pytest.approx(1 - 1 / 9, abs=1e-4)
        assert turn["token_entropy"] == [0.0] * 12  # top-k 1: a point mass
        assert c["stopped"]["turn"] == 1 and c["stopped"]["reason"].startswith("repetition: 89% of its 4-grams")
    assert p.stdout.count("stopped at turn 1 (side A): repetition") == 2
    assert metrics["per_turn"][0]["self_bleu"] == pytest.approx(1.0) and metrics["per_turn"][0]["distinct_1"] == pytest.approx(1 / 24)


def test_self_chat_stops_before_the_context_is_full(own_base_dir, tmp_path, monkeypatch):
    # replies of 12 tokens in a 64-token context: the prompt grows by a reply each turn, and the
    # conversation ends before the engine would have to cut it (then the re-scoring would be wrong)
    base, _ = own_base_dir
    out = str(tmp_path / "run")
    fake = tmp_path / "fake" / "matplotlib"  # and without matplotlib, everything but the plot
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    p = run_script(base, "scripts.self_chat", "-g", "short", "--turns", "8", "--samples", "1", "--temperatures", "1.0",
                   "--max_tokens", "12", "--out", out)
    assert "(no plot: pip install matplotlib)" in p.stdout and not os.path.exists(os.path.join(out, "self_chat.png"))
    (conv,), _, _ = read_run(out)
    t = conv["stopped"]["turn"]
    assert 2 <= t <= 5 and len(conv["turns"]) == t - 1
    assert re.fullmatch(r"context full: a \d+-token prompt leaves less than --max_tokens 12 of the 64-token context",
                        conv["stopped"]["reason"])
    assert f"stopped at turn {t}" in p.stdout


def test_self_chat_bad_input_is_one_line(tiny_base_dir, tmp_path):
    p = run_script(tiny_base_dir, "scripts.self_chat", "--temperatures", "0.6,hot", "--out", str(tmp_path), check=False)
    assert p.returncode != 0 and p.stderr.strip().splitlines() == ["error: --temperatures '0.6,hot': expected comma-separated numbers, e.g. 0.6,1.0"]
