"""
POST /v1/completions (OpenAI's legacy text completions: logprobs, echo, stop, seed, token prompts,
streaming) over HTTP with tiny real models, checked against the model's own forward pass; the
engine's log-probabilities; the official openai client; lm-evaluation-harness's local-completions
on a small local task (skipped where lm_eval is not installed).

Models: sft/tiny/5 never ends by itself, base/tiny/2 ends at once (conftest.py), and base/rand/1 has
random weights, so its log-probabilities differ from token to token and context to context.
"""
import http.client
import json
import os
import shutil
import subprocess
import sys

import pytest
import requests
import torch

from nanochat.web import Limits
from test_chat_web import T, error_of, health, next_event, open_stream, start_server, wait_for  # noqa: F401

KEY = "completions-key-0123456789"


@pytest.fixture(scope="module")
def rand_dir_module(tiny_base_dir_session, tmp_path_factory):
    """tiny_base_dir's tokenizer and models, plus base/rand/1: random weights, every parameter nonzero."""
    from nanochat.checkpoint_manager import PHASE_DIRS, save_checkpoint
    from nanochat.gpt import GPTConfig, build_model
    base = tmp_path_factory.mktemp("rand_base")
    for sub in ("tokenizer", "chatsft_checkpoints", "base_checkpoints"):
        shutil.copytree(tiny_base_dir_session / sub, base / sub)
    config = GPTConfig(sequence_len=256, vocab_size=400, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)
    torch.manual_seed(0)
    model = build_model(config, "cpu")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    save_checkpoint(str(base / PHASE_DIRS["base"] / "rand"), 1, model.state_dict(), None,
                    {"step": 1, "model_config": config.to_dict()})
    return base


@pytest.fixture
def rand_dir(tiny_base_dir, rand_dir_module, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(rand_dir_module))  # after tiny_base_dir's, so this one wins
    return rand_dir_module


def load(name):
    from nanochat.checkpoint_manager import load_model
    stage, tag, step = name.split("/")
    model, tokenizer, _ = load_model(stage, torch.device("cpu"), phase="eval", model_tag=tag, step=int(step))
    return model, tokenizer


def forward_logprobs(model, ids):
    """log p(ids[t] | ids[:t]) for t >= 1, from one plain forward pass (what every logprob must agree with)."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), dim=-1)
    return [logp[t - 1, ids[t]].item() for t in range(1, len(ids))], logp


def complete(url, timeout=T, **body):
    return requests.post(url + "v1/completions", json=body, timeout=timeout)

# -----------------------------------------------------------------------------
# the engine

def test_engine_logprobs_match_a_forward_pass(rand_dir):
    from nanochat.engine import Engine
    model, tok = load("base/rand/1")
    engine = Engine(model, tok)
    prompt = tok.encode("The quick brown fox", prepend="<|bos|>")
    plain = engine.generate_batch(prompt, max_tokens=12, temperature=0, stop_tokens=[])[0]
    steps = list(engine.generate(prompt, max_tokens=12, temperature=0, stop_tokens=[], logprobs=3))
    assert [column[0] for column, _ in steps] == plain  # asking for logprobs changes nothing of the tokens
    expected, logp = forward_logprobs(model, prompt + plain)
    for i, (column, [(lp, top)]) in enumerate(steps):
        t = len(prompt) - 1 + i
        assert lp == pytest.approx(expected[t], abs=1e-4)
        assert [k for k, _ in top] == logp[t].topk(3).indices.tolist()
        assert top[0] == (column[0], lp)  # greedy: the token taken is the likeliest, with exactly its value
    # sampled: the logprobs are of the model's distribution, not of the temperature's
    steps = list(engine.generate(prompt, max_tokens=8, temperature=1.5, top_k=5, seed=3, stop_tokens=[], logprobs=0))
    ids = prompt + [column[0] for column, _ in steps]
    expected, _ = forward_logprobs(model, ids)
    assert [lp for _, [(lp, top)] in steps] == pytest.approx(expected[len(prompt) - 1:], abs=1e-4)
    assert all(top == [] for _, [(_, top)] in steps)
    # the prompt's own tokens, in one pass
    scored = engine.prompt_logprobs(ids, k=2)
    assert scored[0] == (None, None) and len(scored) == len(ids)
    assert [lp for lp, _ in scored[1:]] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 2 and top[0][1] >= top[1][1] for _, top in scored[1:])

# -----------------------------------------------------------------------------
# the API

def test_completion_fields_and_seed(start_server, rand_dir):
    from nanochat.tokenizer import get_tokenizer
    server, url = start_server()
    tok = get_tokenizer()
    r = complete(url, prompt="Hello there", max_tokens=10, temperature=0.9, top_p=0.95, seed=7)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "sft/tiny/5"
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length" and choice["text"]
    assert body["usage"] == {"prompt_tokens": 1 + len(tok.encode("Hello there")), "completion_tokens": 10,
                             "total_tokens": 11 + len(tok.encode("Hello there"))}  # a string gets its <|bos|>
    assert complete(url, prompt="Hello there", max_tokens=10, temperature=0.9, top_p=0.95, seed=7).json()["choices"] == [choice]
    assert complete(url, prompt="Hello there", max_tokens=10, temperature=0.9, seed=8).json()["choices"][0]["text"] != choice["text"]
    # temperature 0: the likeliest token every time, whatever the seed
    greedy = [complete(url, model="base/rand", prompt="Once upon", max_tokens=8, temperature=0, seed=s).json() for s in (1, 2)]
    assert greedy[0]["choices"] == greedy[1]["choices"] and greedy[0]["model"] == "base/rand/1"
    model, _ = load("base/rand/1")
    from nanochat.engine import Engine
    ids = tok.encode("Once upon", prepend="<|bos|>")
    out = Engine(model, tok).generate_batch(ids, max_tokens=8, temperature=0)[0]
    assert greedy[0]["choices"][0]["text"] == tok.decode(out)
    # the terse model ends at once: finish_reason stop, and the ending token is no text
    body = complete(url, model="base/tiny/2", prompt="Hi", max_tokens=5, logprobs=0).json()
    assert body["choices"][0]["text"] == "" and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["logprobs"]["tokens"] == ["<|assistant_end|>"] and body["usage"]["completion_tokens"] == 1


def test_echo_and_logprobs_match_a_forward_pass(start_server, rand_dir):
    from nanochat.tokenizer import get_tokenizer
    from nanochat.web_completions import token_string
    server, url = start_server()
    tok = get_tokenizer()
    model, _ = load("base/rand/1")
    prompt = tok.encode("Tell me a story about a cat")
    body = complete(url, model="base/rand/1", prompt=prompt, max_tokens=6, temperature=0, echo=True, logprobs=3).json()
    choice = body["choices"][0]
    lp = choice["logprobs"]
    n = len(prompt) + 6
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == n
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None  # the first token has nothing before it
    from nanochat.engine import Engine
    ids = prompt + [column[0] for column in Engine(model, tok).generate(prompt, max_tokens=6, temperature=0)]
    assert lp["tokens"][len(prompt):] == [token_string(tok, t) for t in ids[len(prompt):]]
    expected, _ = forward_logprobs(model, ids)
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    for value, top in zip(lp["token_logprobs"][len(prompt):], lp["top_logprobs"][len(prompt):]):
        assert len(top) == 3 and value == max(top.values())  # greedy: what lm-eval's is_greedy checks
    # text: the prompt's, then the completion's; every token's offset is where its text starts
    assert choice["text"] == tok.decode(ids) and choice["text"].startswith(tok.decode(prompt))
    for o, t in zip(lp["text_offset"], lp["tokens"]):  # a byte that is no character: "bytes:\\xNN", shown as U+FFFD
        assert choice["text"][o:].startswith(t) if not t.startswith("bytes:") else choice["text"][o] == "\ufffd"
    assert lp["text_offset"] == sorted(lp["text_offset"])
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 6, "total_tokens": n}
    # without echo: only the completion, its offsets still counted from the prompt's start
    plain = complete(url, model="base/rand/1", prompt=prompt, max_tokens=6, temperature=0, logprobs=3).json()["choices"][0]
    assert plain["text"] == tok.decode(ids[len(prompt):]) and plain["logprobs"]["tokens"] == lp["tokens"][len(prompt):]
    assert plain["logprobs"]["text_offset"] == lp["text_offset"][len(prompt):]
    assert plain["logprobs"]["token_logprobs"] == pytest.approx(lp["token_logprobs"][len(prompt):], abs=1e-5)
    # a string prompt: its <|bos|> is in the tokens (null), not in the text
    text = "Tell me a story"
    c = complete(url, model="base/rand/1", prompt=text, max_tokens=0, echo=True, logprobs=1).json()["choices"][0]
    assert c["text"] == text and c["logprobs"]["tokens"][0] == "<|bos|>" and c["logprobs"]["token_logprobs"][0] is None
    assert "".join(c["logprobs"]["tokens"][1:]) == text and c["logprobs"]["text_offset"][:2] == [0, 0]
    expected, _ = forward_logprobs(model, tok.encode(text, prepend="<|bos|>"))
    assert c["logprobs"]["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)
    assert c["finish_reason"] == "length"


def test_scoring_as_lm_eval_asks(start_server, rand_dir):
    """lm-eval's loglikelihood request: token id lists, echo, logprobs=1, max_tokens 1 (or 0), temperature 0."""
    from nanochat.tokenizer import get_tokenizer
    server, url = start_server()
    tok = get_tokenizer()
    model, _ = load("base/rand/1")
    batch = [tok.encode("The cat sat on the mat"), tok.encode("Two plus two is four"), tok.encode("Hello")]
    for max_tokens in (1, 0):
        body = complete(url, model="base/rand", prompt=batch, max_tokens=max_tokens, temperature=0, echo=True,
                        logprobs=1, seed=1234).json()
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        for ids, choice in zip(batch, body["choices"]):
            got = choice["logprobs"]["token_logprobs"]
            assert len(got) == len(ids) + max_tokens
            expected, _ = forward_logprobs(model, ids)
            assert got[1:len(ids)] == pytest.approx(expected, abs=1e-4)
        assert body["usage"]["prompt_tokens"] == sum(map(len, batch)) and body["usage"]["completion_tokens"] == 3 * max_tokens
    # a batch of strings answers as each string alone (same seed)
    texts = ["Once upon a time", "The quick brown"]
    batch = complete(url, prompt=texts, max_tokens=5, seed=9).json()["choices"]
    alone = [complete(url, prompt=t, max_tokens=5, seed=9).json()["choices"][0]["text"] for t in texts]
    assert [c["text"] for c in batch] == alone


def test_stop_strings_cut_text_and_tokens(start_server, rand_dir):
    server, url = start_server()
    full = complete(url, prompt="Hello", max_tokens=30, seed=11, logprobs=0).json()["choices"][0]
    stop = full["text"][12:15]
    cut = full["text"][:full["text"].find(stop)]
    c = complete(url, prompt="Hello", max_tokens=30, seed=11, logprobs=0, stop=[stop, "\x00never"]).json()["choices"][0]
    assert c["text"] == cut and c["finish_reason"] == "stop"
    toks = c["logprobs"]["tokens"]
    assert "".join(toks).startswith(cut) and len("".join(toks[:-1])) < len(cut)  # the tokens that make the text, no more
    assert toks == full["logprobs"]["tokens"][:len(toks)]
    events = read_completion_stream(url, prompt="Hello", max_tokens=30, seed=11, stop=stop)
    assert "".join(e["choices"][0]["text"] for e in events) == cut and events[-1]["choices"][0]["finish_reason"] == "stop"


def read_completion_stream(url, **body):
    """The chunks of a streamed completion (without the [DONE] that must end it)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=T)
    conn.request("POST", "/v1/completions", json.dumps(dict(body, stream=True)), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")
    events = []
    while (e := next_event(resp)) is not None:
        events.append(e)
        assert len(events) < 5000
    conn.close()
    assert events[-1] == "[DONE]"
    return events[:-1]


def test_streaming_matches_non_streamed(start_server, rand_dir):
    server, url = start_server()
    reference = complete(url, prompt="Hello", max_tokens=20, seed=3, echo=True).json()
    chunks = read_completion_stream(url, prompt="Hello", max_tokens=20, seed=3, echo=True, stream_options={"include_usage": True})
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)
    pieces = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert pieces[0] == "Hello" and len([p for p in pieces if p]) >= 6  # the echo, then token by token
    assert "".join(pieces) == reference["choices"][0]["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == reference["usage"]
    # two prompts: each choice's chunks carry its index
    chunks = read_completion_stream(url, prompt=["Hello", "Hi"], max_tokens=3, seed=3)
    assert [c["choices"][0]["index"] for c in chunks] == [0] * 4 + [1] * 4
    error_of(complete(url, prompt="Hi", stream=True, logprobs=1), 400, "logprobs")
    assert health(url)["busy"] == 0


@pytest.mark.parametrize("body,param", [
    ({}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [1.5]}, "prompt"),
    ({"prompt": [True]}, "prompt"),
    ({"prompt": ["a", [1]]}, "prompt"),
    ({"prompt": [1, [2]]}, "prompt"),
    ({"prompt": [{"text": "a"}]}, "prompt"),
    ({"prompt": [400]}, "prompt"),      # past the vocabulary of 400
    ({"prompt": [[1], [2**31]]}, "prompt"),
    ({"prompt": ["a"] * 9}, "prompt"),  # more than max_prompts
    ({"prompt": "x" * 3001}, "prompt"),  # more than max_total_chars
    ({"prompt": "\ud800"}, "prompt"),
    ({"prompt": [1] * 2048}, "prompt"),  # the whole context, and no room for a token
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
    ({"logprobs": "1"}, "logprobs"),
    ({"echo": "yes"}, "echo"),
    ({"best_of": 2}, "best_of"),
    ({"suffix": "x"}, "suffix"),
    ({"n": 2}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"stop": [""]}, "stop"),
    ({"seed": "x"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"model": "gpt-3.5-turbo-instruct"}, "model"),
    ({"model": "base/rand/9"}, "model"),
])
def test_bad_fields(start_server, rand_dir, body, param):
    server, url = start_server(limits=Limits(max_prompts=8, max_total_chars=3000))
    if "prompt" not in body and param != "prompt":
        body["prompt"] = "hi"
    err = error_of(complete(url, **body), 400, param)
    if body.get("prompt") == [1] * 2048:
        assert err["code"] == "context_length_exceeded"


def test_limits_and_context(start_server, rand_dir):
    server, url = start_server(limits=Limits(max_tokens=20))
    error_of(complete(url, prompt="hi", max_tokens=21), 400, "max_tokens")
    assert complete(url, prompt="hi", max_tokens=20).json()["usage"]["completion_tokens"] == 20
    # base/rand's context is 256: a prompt that fills it can be scored, not continued; a reply is cut where it ends
    body = complete(url, model="base/rand", prompt=[5] * 256, max_tokens=0, echo=True, logprobs=0).json()
    assert len(body["choices"][0]["logprobs"]["tokens"]) == 256
    error_of(complete(url, model="base/rand", prompt=[5] * 256, max_tokens=1), 400, "prompt")
    body = complete(url, model="base/rand", prompt=[5] * 250, max_tokens=20, stop=None).json()
    assert body["usage"]["completion_tokens"] <= 6


def test_api_key_guards_the_new_routes(start_server, rand_dir):
    server, url = start_server(api_key=KEY)
    calls = [("post", "v1/completions", {"prompt": "hi", "max_tokens": 1}), ("post", "tokenize", {"text": "hi"}),
             ("post", "detokenize", {"tokens": [72]}), ("get", "tokenizer_info", None), ("get", "tokenizer", None)]
    for method, path, body in calls:
        r = getattr(requests, method)(url + path, json=body, timeout=T)
        assert error_of(r, 401)["code"] == "invalid_api_key" and r.headers["WWW-Authenticate"].startswith("Basic")
        r = getattr(requests, method)(url + path, json=body, headers={"Authorization": "Bearer nope"}, timeout=T)
        error_of(r, 401)
        r = getattr(requests, method)(url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=T)
        assert r.status_code == 200, (path, r.text)
    # the per-client share holds for completions as for chat
    server2, url2 = start_server(limits=Limits(max_per_client=1, max_tokens=4000))
    conn, resp = open_stream(url2, max_tokens=4000)
    assert isinstance(next_event(resp), dict)
    assert error_of(complete(url2, prompt="hi", max_tokens=1), 429)["code"] == "too_many_requests"
    conn.close()
    wait_for(lambda: health(url2)["busy"] == 0, 10, "the worker to be free")


def test_openai_client(start_server, rand_dir):
    openai = pytest.importorskip("openai")
    server, url = start_server()
    client = openai.OpenAI(base_url=url + "v1", api_key="unused", max_retries=0, timeout=T)
    r = client.completions.create(model="base/rand/1", prompt="Once upon a time", max_tokens=6, temperature=0,
                                  logprobs=2, echo=True)
    c = r.choices[0]
    assert r.object == "text_completion" and c.text.startswith("Once upon a time") and c.finish_reason == "length"
    assert c.logprobs.tokens[0] == "<|bos|>" and c.logprobs.token_logprobs[0] is None and len(c.logprobs.top_logprobs[1]) == 2
    assert r.usage.completion_tokens == 6
    r2 = client.completions.create(model="base/rand/1", prompt=[[1, 2, 3], [4, 5]], max_tokens=2, seed=4, top_p=0.9)
    assert [ch.index for ch in r2.choices] == [0, 1]
    stream = client.completions.create(model="sft", prompt="Hi", max_tokens=8, seed=5, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    reference = client.completions.create(model="sft", prompt="Hi", max_tokens=8, seed=5)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == reference.choices[0].text
    assert chunks[-1].usage.completion_tokens == 8
    r = client.completions.create(model="sft", prompt="Hi", max_tokens=30, seed=5, stop=[reference.choices[0].text[2:4]])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == reference.choices[0].text[:2]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="sft", prompt="Hi", logprobs=99)
    assert e.value.body["param"] == "logprobs"


def test_script_serves_a_base_model(rand_dir, tmp_path):
    """python -m scripts.chat_web -i base: a base model (no chat template) served, completions by default."""
    from test_chat_web_browser import serve
    gen = serve(rand_dir, "-i", "base", "-g", "rand", "-m", "5")
    url = next(gen)
    try:
        assert health(url)["default_model"] == "base/rand/1"
        body = complete(url, prompt="Hello").json()
        assert body["model"] == "base/rand/1" and body["usage"]["completion_tokens"] <= 5
        assert requests.post(url + "tokenize", json={"text": "Hello"}, timeout=T).json()["count"] >= 1
    finally:
        gen.close()

# -----------------------------------------------------------------------------
# lm-evaluation-harness against the server

MC = [  # a small multiple-choice task: a question, choices, the right one's index
    {"question": "The cat sat on the", "choices": ["mat", "sky", "moon"], "answer": 0},
    {"question": "Two plus two is", "choices": ["four", "five"], "answer": 0},
    {"question": "The quick brown fox jumps over the lazy", "choices": ["dog", "house", "boat", "sea"], "answer": 0},
    {"question": "Hello there! How are you", "choices": ["today?", "tomorrow?"], "answer": 1},
    {"question": "Tell me a story about a", "choices": ["cat", "dog", "fox"], "answer": 2},
    {"question": "A small model can still", "choices": ["talk", "fly"], "answer": 0},
]


def own_accuracy(model, tok):
    """Our own scoring, as lm-eval defines it: context "question", continuation " choice" (the whole encoded
    together, the context's tokens cut off), the sum of the continuation's logprobs, the argmax against the answer."""
    right, scores = 0, []
    for doc in MC:
        ctx = tok.encode(doc["question"])
        row = []
        for choice in doc["choices"]:
            whole = tok.encode(doc["question"] + " " + choice)
            expected, _ = forward_logprobs(model, whole)
            row.append(sum(expected[len(ctx) - 1:]))
        scores.append(row)
        right += max(range(len(row)), key=lambda i: (row[i], -i)) == doc["answer"]
    return right / len(MC), scores


@pytest.mark.slow
def test_lm_eval_local_completions(start_server, rand_dir, tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("tenacity", reason="lm-eval's API models need its [api] extra: pip install 'lm-eval[api]'")
    server, url = start_server()
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in MC))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "nanochat_mc.yaml").write_text(f"""task: nanochat_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
""")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
    model_args = f"base_url={url}v1/completions,model=base/rand/1,tokenizer_backend=remote,num_concurrent=1,max_retries=1"
    p = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
                        "--tasks", "nanochat_mc", "--include_path", str(tasks), "--output_path", str(out), "--log_samples"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    acc = results["results"]["nanochat_mc"]["acc,none"]
    model, tok = load("base/rand/1")
    expected_acc, scores = own_accuracy(model, tok)
    assert acc == pytest.approx(expected_acc)
    # and every choice's loglikelihood as lm-eval received it
    samples = [json.loads(line) for line in next(out.rglob("samples_nanochat_mc_*.jsonl")).read_text().splitlines()]
    for s in samples:
        got = [float(r[0][0]) for r in s["resps"]]
        assert got == pytest.approx(scores[s["doc_id"]], abs=1e-3)
    assert health(url)["completed"] >= sum(len(d["choices"]) for d in MC)
