"""
Differential attention, the mixture-of-experts MLP and the registry of contestants
(nanochat.variants): causality, KV-cache decoding and the engine, MoE routing and its auxiliary
loss, the differential lambdas and parameter match, published parameter counts, FLOPs of active
experts, the --variant flag, and a tiny MoE run through the trainer. All on a CPU, tiny shapes.
"""
import argparse
import math

import pytest
import torch

from nanochat.attention import DiffAttention, kv_shapes, lambda_init_for
from nanochat.common import ArgumentParser
from nanochat.engine import Engine
from nanochat.flags import add_arch_args, config_from_args
from nanochat.gpt import GPT, GPTConfig, build_model
from nanochat.metrics import read_rows
from nanochat.mlp import MoE, moe_stats
from nanochat.train_settings import TRAIN_DEFAULTS
from nanochat.trainer import Trainer
from helpers import assert_kv_decoding_matches
from test_trainer import Batches
from nanochat.variants import VARIANTS, variant_config

V = 97  # vocabulary of the small models that need no tokenizer

# 32 wide; differential attention: 2 heads of two maps of 8 (the parameters of 4 ordinary heads of 8), GQA over 1 kv head
DIFF = dict(attn="diff", n_head=2, n_kv_head=1, head_dim=8)
MOE = dict(n_head=4, n_kv_head=2, head_dim=8, moe_experts=4, moe_top_k=2, mlp_hidden=24)
KINDS = {
    "diff": DIFF,
    "moe": MOE,
    "hybrid": dict(DIFF, moe_experts=4, moe_top_k=2, mlp_hidden=24, mlp="swiglu", tie_embeddings=True, norm_weight=True),
}


def tiny_config(vocab_size=V, sequence_len=64, n_layer=2, n_embd=32, **kw):
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, **kw)


def random_model(kind, vocab_size=V, seed=0, scale=0.3):
    """A tiny model with every weight moved off its init (which zeroes the residual outputs and
    the lm_head, making logits trivially independent of the context)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(vocab_size, **KINDS[kind]), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()

# -----------------------------------------------------------------------------
# causality and decoding


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_future_token_does_not_change_earlier_logits(kind):
    model = random_model(kind)
    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, 12] = (idx[:, 12] + 1) % V
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12], atol=1e-5, rtol=0)
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-2  # the change does reach its own and later positions


@pytest.mark.parametrize("kind", list(KINDS))
def test_kv_cache_decoding_equals_full_forward(kind):
    model = random_model(kind)
    cache = assert_kv_decoding_matches(model, torch.randint(0, V, (3, 30), generator=torch.Generator().manual_seed(2)))
    (k_heads, k_dim), (v_heads, v_dim) = kv_shapes(model.config)
    assert cache.k.shape == (2, 3, k_heads, 30, k_dim) and cache.v.shape == (2, 3, v_heads, 30, v_dim)


def test_differential_attention_caches_two_keys_and_a_double_value():
    (k_heads, k_dim), (v_heads, v_dim) = kv_shapes(tiny_config(**DIFF))
    assert (k_heads, k_dim, v_heads, v_dim) == (2, 8, 1, 16)
    assert kv_shapes(tiny_config(**MOE)) == ((2, 8), (2, 8))


ENGINE_TEXT = "Hello world! The answer to 23 + 45 is 68. A small model can still talk, if only a little. " * 20


@pytest.fixture(scope="module")
def tokenizer():
    from nanochat.tokenizer import Tokenizer
    return Tokenizer.train_from_iterator(iter([ENGINE_TEXT]), vocab_size=300)


@pytest.mark.parametrize("kind", list(KINDS))
def test_engine_greedy_equals_naive_generate(kind, tokenizer, monkeypatch):
    # fast decoding asked for: the engine must notice it does not cover these layers and use the KV cache
    monkeypatch.setenv("NANOCHAT_FAST_DECODE", "static")
    model = random_model(kind, vocab_size=tokenizer.get_vocab_size(), scale=0.5)
    prompt = tokenizer.encode("The answer to", prepend=tokenizer.get_bos_token_id())
    naive = list(model.generate(prompt, max_tokens=16, temperature=0))
    assert len(set(naive)) > 1  # not a constant stream, which would match whatever the cache did
    engine = Engine(model, tokenizer)
    kw = dict(max_tokens=16, temperature=0, stop_tokens=set(), tools=False)
    assert [col[0] for col in engine.generate(prompt, **kw)] == naive
    assert engine.generate_batch(prompt, num_samples=2, **kw) == [naive, naive]  # one prefill shared by two rows
    assert engine._fast is None

# -----------------------------------------------------------------------------
# mixture of experts


def moe_layer(n_experts=4, top_k=2, n_embd=16, seed=0):
    """A lone MoE layer with PyTorch's default (random, non-zero) initialisation."""
    torch.manual_seed(seed)
    config = GPTConfig(n_layer=1, n_embd=n_embd, n_head=2, n_kv_head=2, mlp="swiglu", mlp_hidden=12,
                       moe_experts=n_experts, moe_top_k=top_k).validate()
    return MoE(config)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_route_picks_k_distinct_experts_with_renormalised_top_probabilities(top_k):
    moe = moe_layer(n_experts=5, top_k=top_k)
    x = torch.randn(40, 16)
    with torch.no_grad():
        probs, chosen, weights = moe.route(x)
    assert chosen.shape == weights.shape == (40, top_k)
    assert all(len(set(row)) == top_k for row in chosen.tolist())
    torch.testing.assert_close(probs.sum(-1), torch.ones(40))
    torch.testing.assert_close(weights.sum(-1), torch.ones(40))
    picked = probs.gather(1, chosen)
    torch.testing.assert_close(weights, picked / picked.sum(-1, keepdim=True))
    # the chosen are the most probable: none left out beats any chosen
    left_out = probs.scatter(1, chosen, -1.0)
    assert (left_out.max(-1).values <= picked.min(-1).values).all()
    assert len(set(chosen.flatten().tolist())) > 1  # a random router spreads the tokens


def test_moe_output_is_the_weighted_sum_of_the_chosen_experts():
    moe = moe_layer(n_experts=4, top_k=2)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        out = moe(x)
        _, chosen, weights = moe.route(x.view(-1, 16))
        for n in (0, 3, 7, 9):
            token = x.view(-1, 16)[n:n + 1]
            expected = sum(weights[n, j] * moe.experts[chosen[n, j]](token) for j in range(2))
            torch.testing.assert_close(out.view(-1, 16)[n:n + 1], expected, atol=1e-6, rtol=1e-5)
    assert out.shape == x.shape


def skew_router_to_expert_0(moe, x, strength=20.0):
    """Every token of x (whose channel 0 is set to 1) now gives expert 0 the logit `strength`, the others 0."""
    x[:, 0] = 1.0
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = strength


def test_aux_loss_is_one_for_uniform_routing_and_larger_when_skewed():
    moe = moe_layer(n_experts=4, top_k=2)
    x = torch.randn(32, 16)
    with torch.no_grad():
        moe.router.weight.zero_()  # every probability 1/4
        moe(x)
    assert moe.aux_loss.item() == pytest.approx(1.0)
    assert moe.load.sum().item() == pytest.approx(4.0)  # loads are shares x experts: they average 1
    skew_router_to_expert_0(moe, x)
    moe.aux_loss = None  # a model's forward clears it (GPT.forward); a layer keeps the first it computes after that
    with torch.no_grad():
        moe(x)
    # expert 0 takes half of all choices (one of each token's two) with probability ~1: aux ~ 4 * 1/2
    assert moe.aux_loss.item() == pytest.approx(2.0, abs=0.01)
    assert moe.load[0].item() == pytest.approx(2.0)


def test_every_expert_gets_a_gradient_even_when_no_token_chose_it():
    moe = moe_layer(n_experts=4, top_k=1)
    x = torch.randn(12, 16)
    skew_router_to_expert_0(moe, x, strength=5.0)  # not saturated: the router's gradient is not lost to rounding
    out = moe(x)
    with torch.no_grad():
        assert set(moe.route(x)[1].flatten().tolist()) == {0}  # experts 1..3 chosen by no token
    (out.square().sum() + moe.aux_loss).backward()
    for name, p in moe.named_parameters():
        assert p.grad is not None, name
    for e, expert in enumerate(moe.experts):
        total = sum(p.grad.abs().sum().item() for p in expert.parameters())
        assert (total > 0) == (e == 0), e  # unchosen experts: a zero gradient, not None
    assert moe.router.weight.grad.abs().sum() > 0


def test_checkpointed_moe_keeps_the_aux_loss_of_its_forward():
    """The recomputation of a checkpointed block in backward must not replace a layer's aux_loss: the new
    one's graph would keep the recomputed activations alive until the next forward."""
    model = random_model("moe").train()
    model.grad_checkpoint = True
    x = torch.randint(0, V, (2, 16))
    loss = model(x, x)
    kept = [b.mlp.aux_loss for b in model.transformer.h]
    loss.backward()
    assert all(b.mlp.aux_loss is k for b, k in zip(model.transformer.h, kept))
    model(x, x)  # the next forward computes its own
    assert all(b.mlp.aux_loss is not k for b, k in zip(model.transformer.h, kept))


def test_moe_stats_average_the_layers():
    model = random_model("moe")
    assert moe_stats(model) is None  # no forward yet
    with torch.no_grad():
        model(torch.randint(0, V, (2, 16)))
    aux, load = moe_stats(model)
    layers = [b.mlp for b in model.transformer.h]
    assert aux.item() == pytest.approx(sum(m.aux_loss.item() for m in layers) / 2)
    torch.testing.assert_close(load, (layers[0].load + layers[1].load) / 2)
    assert load.shape == (4,) and load.mean().item() == pytest.approx(1.0)
    assert moe_stats(random_model("diff")) is None  # no MoE layers at all

# -----------------------------------------------------------------------------
# differential attention


def test_lambda_init_follows_the_paper_and_lambdas_start_near_it():
    assert lambda_init_for(0) == pytest.approx(0.2)
    for layer in range(12):
        assert lambda_init_for(layer) == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * layer))
    torch.manual_seed(0)
    model = build_model(tiny_config(n_layer=6, **DIFF), "cpu")
    for i, block in enumerate(model.transformer.h):
        attn = block.attn
        assert isinstance(attn, DiffAttention) and attn.lambda_init == pytest.approx(lambda_init_for(i))
        assert abs(attn.lam().item() - attn.lambda_init) < 0.15
        assert torch.equal(attn.subln, torch.ones(16))
        assert 0.02 < attn.lambda_q1.std().item() < 0.3  # the re-parameterisation is initialised random, not zero
    lambdas = [b.attn.lambda_init for b in model.transformer.h]
    assert lambdas == sorted(lambdas) and lambdas[-1] - lambdas[0] > 0.3  # deeper layers start higher


def test_differential_attention_computes_the_difference_of_two_softmax_maps():
    """One layer against the paper's formula written out with plain tensor ops (component-major heads)."""
    torch.manual_seed(0)
    config = tiny_config(n_layer=3, **DIFF)
    layer = DiffAttention(config, layer_idx=2)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    B, T, H, d = 2, 7, 2, 8
    x = torch.randn(B, T, 32)
    model = GPT(config)  # only for its rotary tables
    cos, sin = model.cos[:, :T], model.sin[:, :T]
    with torch.no_grad():
        y = layer(x, (cos, sin))

        def rms(t, w=None):
            t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps)
            return t * w if w is not None else t

        def rotary(t):
            h = t.size(-1) // 2
            t1, t2 = t[..., :h], t[..., h:]
            return torch.cat([t1 * cos + t2 * sin, -t1 * sin + t2 * cos], -1)
        q = rms(rotary((x @ layer.c_q.weight.T).view(B, T, 2 * H, d)))
        k = rms(rotary((x @ layer.c_k.weight.T).view(B, T, 2, d)))  # one kv head: keys of map 1, map 2
        v = (x @ layer.c_v.weight.T).view(B, T, 2 * d)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        lam = (torch.exp((layer.lambda_q1 * layer.lambda_k1).sum()) - torch.exp((layer.lambda_q2 * layer.lambda_k2).sum())
               + 0.8 - 0.6 * math.exp(-0.3 * 2))
        heads = []
        for h in range(H):  # both heads share the one kv head (GQA)
            maps = []
            for q_i, k_i in ((q[:, :, h], k[:, :, 0]), (q[:, :, H + h], k[:, :, 1])):
                scores = q_i @ k_i.transpose(1, 2) / math.sqrt(d)
                maps.append(scores.masked_fill(~causal, float("-inf")).softmax(-1))
            out = (maps[0] - lam * maps[1]) @ v
            heads.append(rms(out, layer.subln) * (1 - lambda_init_for(2)))
        expected = torch.cat(heads, -1) @ layer.c_proj.weight.T
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", [
    dict(n_embd=32, n_head=2, n_kv_head=1, head_dim=8),  # GQA
    dict(n_embd=64, n_head=4, n_kv_head=4, head_dim=8, norm_weight=True),
])
def test_differential_attention_has_the_parameters_of_twice_the_heads(shape):
    diff = build_model(tiny_config(attn="diff", **shape), "cpu").param_counts()
    dense_shape = dict(shape, n_head=2 * shape["n_head"], n_kv_head=2 * shape["n_kv_head"])
    dense = build_model(tiny_config(**dense_shape), "cpu").param_counts()
    d, L = shape["head_dim"], 2
    for key in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wte", "lm_head"):
        assert diff[key] == dense[key], key
    assert diff["attn.lambdas"] == L * 4 * d
    assert diff["norms"] == dense["norms"] + L * 2 * d  # the per-head RMSNorm's weight (subln)
    assert diff["total"] == dense["total"] + L * 6 * d


def test_full_size_differential_attention_matches_its_dense_twin():
    """v03 (7 layers of 6 differential heads over 2 kv heads) against 12 ordinary heads over 4, on the meta device."""
    config = variant_config("v03_diffattn_small")
    dense = GPTConfig(**{**config.to_dict(), "attn": "standard", "n_head": 12, "n_kv_head": 4})
    with torch.device("meta"):
        a, b = GPT(config).num_params(), GPT(dense).num_params()
    assert a == b + 7 * 6 * 64

# -----------------------------------------------------------------------------
# the registry: published counts, FLOPs, flags, tiny scale

PUBLISHED_ACTIVE = {"v05_moe_small": 100e6, "v06_moe_medium": 180e6}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_full_scale_parameters_match_the_published_counts(name):
    _, published, published_active, _ = VARIANTS[name]
    with torch.device("meta"):
        model = GPT(variant_config(name))
    assert model.num_params() == pytest.approx(published, rel=0.01)
    assert model.param_counts()["total"] == model.num_params()
    if name in PUBLISHED_ACTIVE:
        assert published_active == PUBLISHED_ACTIVE[name]
        assert model.active_params() == pytest.approx(PUBLISHED_ACTIVE[name], rel=0.03)
        assert model.active_params() < 0.6 * model.num_params()
    elif model.config.moe_experts:
        assert model.active_params() < model.num_params()
    else:
        assert model.active_params() == model.num_params()


@pytest.mark.parametrize("top_k", [1, 2])
def test_estimate_flops_counts_only_the_active_experts(top_k):
    shape = dict(n_head=4, n_kv_head=2, head_dim=8, mlp="swiglu")
    n_embd, L, hidden = 32, 2, 24
    with torch.device("meta"):
        moe4 = GPT(tiny_config(**shape, mlp_hidden=hidden, moe_experts=4, moe_top_k=top_k))
        moe8 = GPT(tiny_config(**shape, mlp_hidden=hidden, moe_experts=8, moe_top_k=top_k))
        dense = GPT(tiny_config(**shape, mlp_hidden=top_k * hidden))  # an MLP as wide as the k experts a token runs
    router = lambda experts: L * n_embd * experts  # noqa: E731
    assert moe4.estimate_flops() == dense.estimate_flops() + 6 * router(4)
    assert moe8.estimate_flops() == dense.estimate_flops() + 6 * router(8)
    assert moe4.active_params() == dense.num_params() + router(4)
    assert moe8.num_params() > moe4.num_params() > dense.num_params()  # yet all experts count as parameters


def parse(*argv, sequence_len=1024):
    parser = ArgumentParser()
    add_arch_args(parser, vocab_size=True)
    args = parser.parse_args(list(argv))
    return config_from_args(args, args.vocab_size, sequence_len)


def test_variant_flag_gives_the_registry_config():
    assert parse("--variant", "v07_hybrid_small") == variant_config("v07_hybrid_small")
    assert parse("--variant", "v07_hybrid_small").vocab_size == 49152  # the registry's vocabulary by default
    assert parse("--variant", "v03") == variant_config("v03_diffattn_small")  # a unique prefix
    tiny = parse("--variant", "v05", "--scale", "tiny", "--vocab_size", "300", sequence_len=64)
    assert tiny == variant_config("v05_moe_small", 300, 64, scale="tiny")
    assert (tiny.vocab_size, tiny.sequence_len, tiny.moe_experts) == (300, 64, 8)


@pytest.mark.parametrize("flag", [["--n_layer", "3"], ["--moe_experts", "4"], ["--attn", "diff"], ["--tie_embeddings"]])
def test_variant_with_an_architecture_flag_names_the_conflict(flag):
    with pytest.raises(ValueError, match=f"drop {flag[0]}"):
        parse("--variant", "v03_diffattn_small", *flag)


@pytest.mark.parametrize("name", ["v99_nothing", "v0", "dense"])
def test_unknown_or_ambiguous_variant_lists_the_choices(name):
    with pytest.raises(ValueError, match="choose from") as err:
        parse("--variant", name)
    assert all(n in str(err.value) for n in VARIANTS)


def test_unknown_scale_is_an_error():
    with pytest.raises(ValueError, match="scale"):
        variant_config("v01_dense_small", scale="huge")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tiny_scale_is_a_small_working_model_of_the_same_shape(name):
    full, tiny = variant_config(name), variant_config(name, 300, 32, scale="tiny")
    for key in ("attn", "moe_experts", "moe_top_k", "n_head", "n_kv_head", "mlp", "tie_embeddings", "norm_weight"):
        assert getattr(tiny, key) == getattr(full, key), key
    assert tiny.n_layer == math.ceil(full.n_layer / 4) and tiny.n_embd == full.n_embd // 8
    torch.manual_seed(0)
    model = build_model(tiny, "cpu")
    with torch.device("meta"):
        full_params = GPT(full).num_params()
    assert model.num_params() < min(3e6, full_params / 100)
    with torch.no_grad():
        logits = model(torch.randint(0, 300, (1, 16)))
    assert logits.shape == (1, 16, 300) and torch.isfinite(logits).all()

# -----------------------------------------------------------------------------
# training through the shared loop


def test_tiny_moe_trains_through_the_trainer_and_logs_expert_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(64, 32, **KINDS["hybrid"]), "cpu")
    settings = argparse.Namespace(**{**TRAIN_DEFAULTS, "eval_every": 0, "log_every": 1, "warmdown_ratio": 0.0})
    trainer = Trainer(model, settings, "cpu", torch.float32, 4, 32, 1, checkpoint_dir=str(tmp_path))
    assert trainer.resume() is None  # a fresh run: opens the metrics file
    data = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(0))
    batch = (data[:, :-1], data[:, 1:])
    trainer.run(Batches([batch] * 10), num_iterations=10)  # the same batch again and again: it is learned
    train = [r for r in read_rows(str(tmp_path / "metrics.jsonl")) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 11))
    for r in train:
        assert 0.5 < r["moe_aux"] < 2.0  # 1 for balanced routing, 2 (= experts / top_k) if all went to two experts
        assert 0.0 <= r["load_min"] <= 1.0 <= r["load_max"] <= 2.0  # loads average 1; at most experts / top_k
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.5
    assert math.isfinite(train[-1]["train_loss"])
