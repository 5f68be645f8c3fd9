"""The model: nanochat's function and names, the options, the KV cache, checkpointing of activations."""
import math

import pytest
import torch
import torch.nn.functional as F

from nanochat.flags import add_arch_args, config_from_args
from helpers import assert_kv_decoding_matches
from nanochat.gpt import GPT, GPTConfig, build_model
from nanochat.common import ArgumentParser

VARIANTS = {
    "nanochat": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=4),
    "gqa_swiglu_tied_normw": dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, mlp="swiglu", mlp_hidden=96,
                                  tie_embeddings=True, norm_weight=True),
    "head_dim_32": dict(n_layer=3, n_embd=64, n_head=2, n_kv_head=1, head_dim=32),
}


def random_model(seed=0, **kw):
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=97, sequence_len=64, **kw)
    model = build_model(config, "cpu")
    with torch.no_grad():  # the init zeroes residual outputs; make every weight matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def reference_forward(model, idx):
    """GUIDE.md's description of nanochat's forward, written out plainly and independently of gpt.py."""
    c = model.config
    sd = dict(model.named_parameters())
    def rms(x, w=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)
        return y * w if w is not None else y
    def rotary(x):  # x: (B, T, H, D); pairs are (first half, second half)
        T, D = x.size(1), x.size(3)
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        f = torch.outer(torch.arange(T).float(), inv)
        cos, sin = f.cos().bfloat16().float()[None, :, None], f.sin().bfloat16().float()[None, :, None]
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], -1)
    B, T = idx.shape
    x = rms(sd["transformer.wte.weight"][idx], sd.get("transformer.ln_e.weight"))
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        h = rms(x, sd.get(p + "ln_1.weight"))
        q = (h @ sd[p + "attn.c_q.weight"].T).view(B, T, c.n_head, c.head_dim)
        k = (h @ sd[p + "attn.c_k.weight"].T).view(B, T, c.n_kv_head, c.head_dim)
        v = (h @ sd[p + "attn.c_v.weight"].T).view(B, T, c.n_kv_head, c.head_dim)
        q, k = rms(rotary(q)), rms(rotary(k))
        rep = c.n_head // c.n_kv_head
        k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        att = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(c.head_dim)
        att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        y = torch.einsum("bhts,bshd->bthd", att, v).reshape(B, T, -1)
        x = x + y @ sd[p + "attn.c_proj.weight"].T
        h = rms(x, sd.get(p + "ln_2.weight"))
        if c.mlp == "swiglu":
            m = F.silu(h @ sd[p + "mlp.c_gate.weight"].T) * (h @ sd[p + "mlp.c_fc.weight"].T)
        else:
            m = F.relu(h @ sd[p + "mlp.c_fc.weight"].T) ** 2
        x = x + m @ sd[p + "mlp.c_proj.weight"].T
    x = rms(x, sd.get("transformer.ln_f.weight"))
    lm_head = sd["transformer.wte.weight"] if c.tie_embeddings else sd["lm_head.weight"]
    logits = x @ lm_head.T
    return 15 * torch.tanh(logits / 15)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_matches_reference(name):
    model = random_model(**VARIANTS[name])
    idx = torch.randint(0, 97, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), reference_forward(model, idx), atol=1e-4, rtol=1e-4)


def test_nanochat_parameter_names():
    model = random_model(**VARIANTS["nanochat"])
    names = set(model.state_dict())
    expected = {"transformer.wte.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"transformer.h.{i}.attn.{n}.weight" for n in ("c_q", "c_k", "c_v", "c_proj")}
        expected |= {f"transformer.h.{i}.mlp.{n}.weight" for n in ("c_fc", "c_proj")}
    assert names == expected  # no biases, no norm weights, no rotary buffers


@pytest.mark.parametrize("name", list(VARIANTS))
def test_kv_cache_decoding_equals_full_forward(name):
    assert_kv_decoding_matches(random_model(**VARIANTS[name]), torch.randint(0, 97, (3, 30)))


def test_kv_cache_overflow_is_an_error():
    model = random_model(**VARIANTS["nanochat"])
    cache = model.make_kv_cache(1, 8)
    with torch.no_grad(), pytest.raises(ValueError, match="overflow"):
        model(torch.zeros(1, 9, dtype=torch.long), kv_cache=cache)


def test_param_counts_add_up_and_tied_head_counts_once():
    for kw in VARIANTS.values():
        model = random_model(**kw)
        counts = model.param_counts()
        assert counts["total"] == sum(v for k, v in counts.items() if k != "total") == model.num_params()
        assert model.num_params() == sum(p.numel() for p in set(model.parameters()))
    tied = random_model(**VARIANTS["gqa_swiglu_tied_normw"]).param_counts()
    assert tied["lm_head"] == 0 and tied["wte"] == 97 * 64 and tied["norms"] == (2 * 2 + 2) * 64


def test_grad_checkpoint_gives_the_same_gradients():
    model = random_model(**VARIANTS["gqa_swiglu_tied_normw"]).train()
    idx = torch.randint(0, 97, (2, 16))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.grad_checkpoint = ckpt
        model(idx, idx).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def parse_arch(*argv):
    parser = ArgumentParser()
    add_arch_args(parser)
    return config_from_args(parser.parse_args(list(argv)), 1000, 256)


def test_arch_flags_depth_shortcut_and_explicit():
    c = parse_arch("--depth", "4")  # ittybitty as derived from depth: 256 wide, 2 heads of 128
    assert (c.n_layer, c.n_embd, c.n_head, c.head_dim, c.n_kv_head) == (4, 256, 2, 128, 2)
    c = parse_arch("--n_layer", "4", "--model-dim", "512", "--head_dim", "64")  # dashed alias works too
    assert (c.n_layer, c.n_embd, c.n_head, c.head_dim) == (4, 512, 8, 64)
    c = parse_arch("--depth", "20", "--model_dim", "768", "--head_dim", "64", "--n_kv_head", "4", "--mlp", "swiglu",
                   "--mlp_hidden", "2048", "--tie_embeddings", "--norm_weight")
    assert (c.n_head, c.n_kv_head, c.mlp_hidden, c.tie_embeddings, c.norm_weight) == (12, 4, 2048, True, True)


@pytest.mark.parametrize("argv, message", [
    (("--model_dim", "500", "--head_dim", "64"), "must divide"),
    (("--model_dim", "512", "--head_dim", "64", "--n_kv_head", "3"), "multiple of n_kv_head"),
    (("--model_dim", "512", "--head_dim", "64", "--n_kv_head", "16"), "multiple of n_kv_head"),
    (("--model_dim", "510", "--head_dim", "85"), "even"),
])
def test_invalid_shapes_fail_with_a_message(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_arch("--depth", "2", *argv)


def test_flops_estimate_counts_lm_head_even_when_tied():
    kw = dict(VARIANTS["gqa_swiglu_tied_normw"])
    tied = random_model(**kw)
    untied = random_model(**{**kw, "tie_embeddings": False})
    assert tied.estimate_flops() == untied.estimate_flops()
