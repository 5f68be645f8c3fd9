"""
The static-KV-cache decoder must give the same greedy tokens as the eager KV-cache path and as the
naive no-cache loop (model.generate). On CPU that is the "static" mode (same shapes and math as the
CUDA graph, without the graph); the CUDA tests run the graph and compiled modes and are skipped
without a GPU.
"""
import contextlib

import pytest
import torch

from nanochat.gpt import GPTConfig, build_model
from nanochat.fast_decode import StaticKVDecoder, make_decoder, fast_decode_mode
from helpers import randomize_weights

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")

CONFIGS = {
    "relu2-gqa": dict(n_head=4, n_kv_head=2),
    "relu2-mha": dict(n_head=4, n_kv_head=4),
    "mqa": dict(n_head=4, n_kv_head=1),
    "swiglu-tied-normw": dict(n_head=4, n_kv_head=2, mlp="swiglu", tie_embeddings=True, norm_weight=True),
}


def random_model(device="cpu", seed=0, **overrides):
    """A tiny model with every weight random (the real init zeroes the output projections and
    lm_head, which would make every logit equal). Output projections are scaled up so the
    blocks, not the token's own embedding, decide the next token."""
    cfg = dict(sequence_len=64, vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = build_model(GPTConfig(**cfg), device)
    return randomize_weights(model).eval()


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.amp.autocast(torch.device(device).type, dtype=dtype)


@torch.inference_mode()
def eager_greedy(model, prompts, n, dtype=torch.float32):
    """The engine's eager path: prefill, then one token at a time through gpt.KVCache."""
    device = model.get_device()
    ids = torch.tensor(prompts, device=device)
    cache_dtype = dtype if device.type == "cuda" else None
    cache = model.make_kv_cache(ids.size(0), ids.size(1) + n, dtype=cache_dtype)
    out, all_logits = [], []
    with autocast(device, dtype):
        logits = model(ids, kv_cache=cache)[:, -1, :]
        for i in range(n):
            all_logits.append(logits.float().clone())
            nxt = logits.argmax(-1, keepdim=True)
            out.append(nxt)
            if i < n - 1:
                logits = model(nxt, kv_cache=cache)[:, -1, :]
    return torch.cat(out, 1).tolist(), torch.stack(all_logits, 1)


@torch.inference_mode()
def fast_greedy(dec, prompts, n):
    ids = torch.tensor(prompts)
    logits = dec.prefill(ids if ids.size(0) > 1 else prompts[0])
    out, all_logits = [], []
    for i in range(n):
        all_logits.append(logits.float().clone())
        nxt = logits.argmax(-1, keepdim=True)
        out.append(nxt)
        if i < n - 1:
            logits = dec.step(nxt)
    return torch.cat(out, 1).tolist(), torch.stack(all_logits, 1)


PROMPT = [1, 5, 7, 9, 11, 13]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_static_same_tokens_as_eager_and_naive(name):
    model = random_model(**CONFIGS[name])
    n = 40
    naive = list(model.generate(PROMPT, n, temperature=0))
    eager, eager_logits = eager_greedy(model, [PROMPT], n)
    # block 8: the step crosses several attention windows (8, 16, ..., 48)
    fast, fast_logits = fast_greedy(StaticKVDecoder(model, 1, 48, mode="static", block=8), [PROMPT], n)
    assert len(set(naive)) > 3, "degenerate test model"
    assert eager[0] == naive
    assert fast[0] == naive
    torch.testing.assert_close(fast_logits, eager_logits, atol=1e-4, rtol=1e-4)


def test_static_batch_of_different_prompts():
    model = random_model()
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6], [50, 60, 70, 80]]
    n = 20
    eager, eager_logits = eager_greedy(model, prompts, n)
    fast, fast_logits = fast_greedy(StaticKVDecoder(model, 3, 32, mode="static", block=16), prompts, n)
    assert fast == eager
    torch.testing.assert_close(fast_logits, eager_logits, atol=1e-4, rtol=1e-4)
    for row, prompt in zip(fast, prompts):  # rows are independent
        assert row == list(model.generate(prompt, n, temperature=0))


def test_shared_prompt_is_broadcast_to_every_row():
    model = random_model()
    dec = StaticKVDecoder(model, 3, 40, mode="static")
    fast, _ = fast_greedy(dec, [PROMPT], 16)
    assert fast[0] == fast[1] == fast[2] == list(model.generate(PROMPT, 16, temperature=0))


def test_decoder_is_reusable_across_prompts():
    model = random_model()
    dec = StaticKVDecoder(model, 1, 64, mode="static", block=16)
    first, _ = fast_greedy(dec, [list(range(20, 50))], 30)  # fills the cache far
    second, _ = fast_greedy(dec, [PROMPT], 20)                # shorter: stale slots must stay masked
    fresh, _ = fast_greedy(StaticKVDecoder(model, 1, 64, mode="static"), [PROMPT], 20)
    assert second == fresh
    assert first[0] == list(model.generate(list(range(20, 50)), 30, temperature=0))


def test_bf16_autocast_agrees_with_eager():
    # same autocast as the eager path; only the fused matmuls and the attention kernel differ, so
    # compare teacher-forced logits (greedy token sequences could part at a near-tie)
    model = random_model()
    dtype = torch.bfloat16
    eager, eager_logits = eager_greedy(model, [PROMPT], 24, dtype=dtype)
    dec = StaticKVDecoder(model, 1, 32, dtype=dtype, mode="static", block=8)
    with torch.inference_mode():
        logits = [dec.prefill(PROMPT).float().clone()]
        for tok in eager[0][:-1]:
            logits.append(dec.step([tok]).float().clone())
    fast_logits = torch.stack(logits, 1)
    assert (fast_logits - eager_logits).abs().max().item() < 0.25  # logits span about +-15
    top2 = eager_logits.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.5
    assert torch.equal(fast_logits.argmax(-1)[clear], eager_logits.argmax(-1)[clear])


def test_errors_are_one_line_value_errors():
    model = random_model()
    with pytest.raises(ValueError, match="rotary table"):
        StaticKVDecoder(model, 1, 10_000)
    with pytest.raises(ValueError, match="mode"):
        StaticKVDecoder(model, 1, 16, mode="turbo")
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA"):
            StaticKVDecoder(model, 1, 16, mode="graph")
    dec = StaticKVDecoder(model, 2, 8, mode="static")
    with pytest.raises(ValueError, match="before prefill"):
        dec.step([1, 1])
    with pytest.raises(ValueError, match="does not fit"):
        dec.prefill(list(range(9)))
    dec.prefill(list(range(7)))
    with pytest.raises(ValueError, match="batch size"):
        dec.step([1])
    dec.step([1, 2])
    with pytest.raises(ValueError, match="full"):
        dec.step([1, 2])


def test_make_decoder_rounds_and_fits(monkeypatch):
    model = random_model()  # rotary table: 640 positions
    monkeypatch.delenv("NANOCHAT_FAST_DECODE", raising=False)
    dec = make_decoder(model, 2, 100, block=64)
    assert dec.max_len == 128 and dec.mode == "static"
    assert dec.fits(2, 128) and not dec.fits(2, 129) and not dec.fits(1, 100)
    assert make_decoder(model, 1, 600, block=256).max_len == 640
    # the weights a step reads: every matmul weight once (fp32 here), the embedding not at all
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "wte" not in n)
    assert dec.weight_bytes() == 4 * matmul
    assert StaticKVDecoder(model, 1, 16, dtype=torch.bfloat16).weight_bytes() == 2 * matmul


def test_fast_decode_mode_env(monkeypatch):
    monkeypatch.delenv("NANOCHAT_FAST_DECODE", raising=False)
    assert fast_decode_mode("cpu") is None
    assert fast_decode_mode("cuda") == "graph"
    for value, cpu, cuda in [("0", None, None), ("off", None, None), ("1", "static", "graph"),
                             ("graph", "static", "graph"), ("compile", "compile", "compile"), ("static", "static", "static")]:
        monkeypatch.setenv("NANOCHAT_FAST_DECODE", value)
        assert fast_decode_mode("cpu") == cpu and fast_decode_mode("cuda") == cuda, value
    monkeypatch.setenv("NANOCHAT_FAST_DECODE", "warp")
    with pytest.raises(ValueError):
        fast_decode_mode("cpu")


class StubTokenizer:
    """What Engine needs when the calculator is off and stop tokens are given."""
    def encode_special(self, name):
        return {"<|python_start|>": 90, "<|python_end|>": 91, "<|output_start|>": 92, "<|output_end|>": 93,
                "<|assistant_end|>": 94}[name]

    def get_bos_token_id(self):
        return 95


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_engine_same_tokens_with_fast_decode(monkeypatch, temperature):
    # the engine's own use of the decoder: shared-prompt prefill, sampling, and the re-prefill of
    # the most recent half when a reply fills a small context window
    from nanochat.engine import Engine
    model = random_model()
    runs = {}
    for env in ("0", "static"):
        monkeypatch.setenv("NANOCHAT_FAST_DECODE", env)
        engine = Engine(model, StubTokenizer(), max_context=24)
        runs[env] = list(engine.generate(PROMPT, num_samples=3, max_tokens=40, temperature=temperature,
                                         stop_tokens=set(), tools=False, seed=7))
        assert (engine._fast is not None) == (env == "static")
    assert len(runs["0"]) == 40 and runs["static"] == runs["0"]


# -----------------------------------------------------------------------------
# CUDA: the captured graph (and the compiled step) against the eager path

@needs_cuda
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cuda_graph_same_tokens_fp32(name):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = random_model("cuda", **CONFIGS[name])
    n = 40
    naive = list(model.generate(PROMPT, n, temperature=0))
    eager, _ = eager_greedy(model, [PROMPT], n)
    dec = StaticKVDecoder(model, 1, 48, dtype=torch.float32, mode="graph", block=16)
    fast, _ = fast_greedy(dec, [PROMPT], n)
    assert eager[0] == naive and fast[0] == naive
    assert sorted(dec.graphs) == [16, 32, 48]
    again, _ = fast_greedy(dec, [PROMPT], n)  # replays the graphs captured above
    assert again == fast


@needs_cuda
def test_cuda_graph_batch_same_tokens_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    model = random_model("cuda")
    prompts = [[1, 2, 3, 4], [9, 8, 7, 6], [50, 60, 70, 80], [3, 3, 3, 3]]
    eager, _ = eager_greedy(model, prompts, 20)
    fast, _ = fast_greedy(StaticKVDecoder(model, 4, 32, dtype=torch.float32, mode="graph", block=16), prompts, 20)
    assert fast == eager


@needs_cuda
def test_cuda_graph_bf16_agrees_with_eager():
    model = random_model("cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    eager, eager_logits = eager_greedy(model, [PROMPT], 32, dtype=dtype)
    dec = StaticKVDecoder(model, 1, 48, dtype=dtype, mode="graph", block=16)
    with torch.inference_mode():
        logits = [dec.prefill(PROMPT).float().clone()]
        for tok in eager[0][:-1]:
            logits.append(dec.step(torch.tensor([[tok]], device="cuda")).float().clone())
    fast_logits = torch.stack(logits, 1)
    assert (fast_logits - eager_logits).abs().max().item() < 0.25
    top2 = eager_logits.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 0.5
    assert torch.equal(fast_logits.argmax(-1)[clear], eager_logits.argmax(-1)[clear])


@needs_cuda
def test_cuda_compiled_step_same_tokens_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    model = random_model("cuda")
    naive = list(model.generate(PROMPT, 24, temperature=0))
    fast, _ = fast_greedy(StaticKVDecoder(model, 1, 32, dtype=torch.float32, mode="compile"), [PROMPT], 24)
    assert fast[0] == naive
