"""
nanochat's 2026 architecture as options (nanochat/arch2026.py): each option alone and all of them
run forward, train, decode with a KV cache (eager and static) as the full forward does, count
their parameters in the calculators and their activations in the memory estimate; configs without
the new fields load unchanged; the forward equals a position-by-position reimplementation of
nanochat's equations; and, where the karpathy/nanochat git mirror is at hand, a state dict of
nanochat's own GPT at 92d63d4 loads as it is and gives the same logits.
"""
import argparse
import importlib
import json
import math
import os
import re
import runpy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from nanochat import arch2026, vram
from nanochat.attention import attend
from nanochat.checkpoint_manager import model_from_state
from nanochat.engine import Engine
from nanochat.fast_decode import StaticKVDecoder
from nanochat.flags import add_arch_args, config_from_args
from nanochat.gpt import GPT, GPTConfig, build_model
from nanochat.optim import build_optimizers
from nanochat.tokenizer import Tokenizer
from nanochat.train_settings import TRAIN_DEFAULTS
from nanochat.trainer import Trainer
from helpers import ROOT, assert_kv_decoding_matches, randomize_weights

# a vocabulary that is not a multiple of 64 (so pad_vocab_to pads), 3 layers (value embeddings on
# 0 and 2, backout after 1), windows far shorter than the sequence
BASE = dict(sequence_len=24, vocab_size=97, n_layer=3, n_head=4, n_kv_head=2, n_embd=64)
OPTIONS = {
    "value_embeds": dict(value_embeds=True),
    "smear": dict(smear=True),
    "layer_lambdas": dict(layer_lambdas=True),
    "backout": dict(backout=True),
    "qk_gain": dict(qk_gain=1.2),
    "rope": dict(rope_base=100000, rope_dtype="compute"),
    "windows": dict(window_pattern="SSSL", window_short=4),
    "pad_vocab": dict(pad_vocab_to=64),
    "init_2026": dict(init_scheme="2026"),
    "all": dict(arch2026.PRESET, window_short=4),
}


def randomize(model, seed=2):
    """Every weight random (the init zeroes the projections: every option would look the same)."""
    torch.manual_seed(seed)
    return randomize_weights(model, scalars=(0.1, 0.6)).eval()


def model_for(name, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(GPTConfig(**{**BASE, **OPTIONS[name], **kw}), "cpu")

# -----------------------------------------------------------------------------
# nanochat's equations, position by position

def rms(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def reference_windows(c):
    """nanochat's _compute_window_sizes: the pattern tiled, the last layer L (= sequence_len)."""
    if not c.window_pattern:
        return [None] * c.n_layer
    short = c.window_short or -(-c.sequence_len // 4 // 128) * 128
    w = [c.sequence_len if c.window_pattern[i % len(c.window_pattern)] == "L" else short for i in range(c.n_layer)]
    return w[:-1] + [c.sequence_len]


@torch.no_grad()
def reference_forward(m, idx):
    """nanochat 92d63d4's GPT.forward written out (fp32, no cache), the options as m.config has them."""
    c, (B, T) = m.config, idx.shape
    H, Hkv, D = c.n_head, c.n_kv_head, c.head_dim
    x = rms(m.transformer.wte.weight[idx])
    if c.smear:  # x[t] += lambda * sigmoid(gate . x[t, :24]) * x[t-1]
        prev = x.clone()
        for t in range(1, T):
            g = m.smear_lambda * torch.sigmoid(prev[:, t, :24] @ m.smear_gate.weight[0])
            x[:, t] = prev[:, t] + g[:, None] * prev[:, t - 1]
    x0, mid = x, None
    freqs = torch.outer(torch.arange(T).float(), 1.0 / c.rope_base ** (torch.arange(0, D, 2).float() / D))
    cos, sin = freqs.cos()[None, :, None], freqs.sin()[None, :, None]
    if c.rope_dtype == "bf16":
        cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
    rot = lambda u: torch.cat([u[..., :D // 2] * cos + u[..., D // 2:] * sin, -u[..., :D // 2] * sin + u[..., D // 2:] * cos], -1)
    for i, (blk, window) in enumerate(zip(m.transformer.h, reference_windows(c))):
        if c.layer_lambdas:
            x = m.resid_lambdas[i] * x + m.x0_lambdas[i] * x0
        h, a = rms(x), blk.attn
        q, k = (h @ a.c_q.weight.T).view(B, T, H, D), (h @ a.c_k.weight.T).view(B, T, Hkv, D)
        v = (h @ a.c_v.weight.T).view(B, T, Hkv, D)
        if c.value_embeds and i % 2 == (c.n_layer - 1) % 2:
            gate = 3 * torch.sigmoid(h[..., :12] @ a.ve_gate.weight.T)  # (B, T, Hkv)
            v = v + gate[..., None] * m.value_embeds[str(i)].weight[idx].view(B, T, Hkv, D)
        q, k = rms(rot(q)) * c.qk_gain, rms(rot(k)) * c.qk_gain
        y = torch.zeros(B, T, H, D)
        for t in range(T):
            lo = 0 if window is None else max(0, t - window)
            for hh in range(H):
                kv = hh // (H // Hkv)
                p = torch.softmax(torch.einsum("bd,bsd->bs", q[:, t, hh], k[:, lo:t + 1, kv]) / math.sqrt(D), -1)
                y[:, t, hh] = torch.einsum("bs,bsd->bd", p, v[:, lo:t + 1, kv])
        x = x + y.view(B, T, -1) @ a.c_proj.weight.T
        x = x + torch.relu(rms(x) @ blk.mlp.c_fc.weight.T) ** 2 @ blk.mlp.c_proj.weight.T
        if c.backout and i == c.n_layer // 2:
            mid = x
    if mid is not None:
        x = x - m.backout_lambda * mid
    logits = (rms(x) @ m.lm_head.weight.T)[..., :c.vocab_size]
    return 15 * torch.tanh(logits / 15)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_forward_equals_nanochats_equations(name):
    model = randomize(model_for(name))
    idx = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(idx)
    assert logits.shape == (2, 20, 97)
    torch.testing.assert_close(logits, reference_forward(model, idx), atol=2e-5, rtol=2e-5)


def test_attend_windows_against_brute_force():
    """attend(window=w): a query at t sees keys t-w..t; full sequences, one new token, a chunk after a prefix."""
    g = torch.Generator().manual_seed(0)
    q_all, k, v = (torch.randn(2, 4, 12, 8, generator=g) for _ in range(3))
    for window in (0, 1, 3, 10, 11, None):
        for Tq in (12, 5, 1):
            q = q_all[:, :, 12 - Tq:]
            want = torch.zeros_like(q)
            for i in range(Tq):
                t = 12 - Tq + i
                lo = 0 if window is None else max(0, t - window)
                p = torch.softmax(q[:, :, i:i + 1] @ k[:, :, lo:t + 1].mT / math.sqrt(8), -1)
                want[:, :, i:i + 1] = p @ v[:, :, lo:t + 1]
            torch.testing.assert_close(attend(q, k, v, window), want, atol=1e-5, rtol=1e-5)


def test_window_sizes_are_nanochats():
    c = GPTConfig(**{**BASE, "sequence_len": 2048, "n_layer": 6, "window_pattern": "SSSL"})
    assert arch2026.layer_windows(c) == [512, 512, 512, 2048, 512, 2048]  # last layer always L
    assert arch2026.short_window(GPTConfig(**{**BASE, "sequence_len": 256})) == 128  # a tile at least
    assert arch2026.layer_windows(GPTConfig(**{**BASE, "window_pattern": "L"})) == [24, 24, 24]
    assert arch2026.layer_windows(GPTConfig(**BASE)) == [None] * 3
    with pytest.raises(ValueError, match="window_pattern"):
        GPTConfig(**{**BASE, "window_pattern": "SXL"}).validate()


def test_init_2026_and_the_options_own_parameters():
    m = model_for("all")
    s = math.sqrt(3 / 64)
    assert abs(m.transformer.wte.weight.std().item() - 0.8) < 0.05 and m.lm_head.weight.std().item() < 0.002
    a, mlp = m.transformer.h[0].attn, m.transformer.h[0].mlp
    assert a.c_q.weight.abs().max() <= s and a.c_q.weight.abs().max() > 0.9 * s
    assert mlp.c_fc.weight.abs().max() <= 0.4 * s and not a.c_proj.weight.any() and not mlp.c_proj.weight.any()
    torch.testing.assert_close(m.resid_lambdas.data, torch.tensor([1.15, 1.10, 1.05]))
    torch.testing.assert_close(m.x0_lambdas.data, torch.tensor([0.20, 0.125, 0.05]))
    assert m.smear_lambda.item() == 0 and m.backout_lambda.item() == pytest.approx(0.2)
    for gate in (m.smear_gate.weight, a.ve_gate.weight):
        assert 0 <= gate.min() and gate.max() <= 0.02
    assert m.value_embeds["0"].weight.abs().max() <= s and m.transformer.h[1].attn.ve_gate is None

# -----------------------------------------------------------------------------
# training, decoding


@pytest.mark.parametrize("name", list(OPTIONS))
def test_three_training_steps_lower_the_loss(name):
    model = model_for(name)
    trainer = Trainer(model, argparse.Namespace(**TRAIN_DEFAULTS), "cpu", torch.float32, 4, 24, 1)
    groups = {g["name"]: g for opt in trainer.optimizers for g in opt.param_groups}
    seen = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # every parameter in one group
    if name in ("value_embeds", "all"):  # nanochat's groups: the tables at half the embedding rate, the gates Muon's
        assert groups["value embeddings"]["initial_lr"] == pytest.approx(groups["embedding"]["initial_lr"] / 2)
        assert any(p is model.transformer.h[0].attn.ve_gate.weight for p in groups["matrices"]["params"])
    if name in ("layer_lambdas", "all"):
        assert groups["x0 lambdas"]["betas"] == (0.96, 0.95) and groups["resid lambdas"]["initial_lr"] == 0.005
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 97, (4, 25), generator=g)
    batch = (data[:, :-1], data[:, 1:])
    trainer.set_batches(iter([batch] * 3))
    losses = [trainer.train_step() for _ in range(3)]
    assert losses[2] < losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    """Checkpointed blocks get their value embedding as an input (looked up outside): same loss, same gradients."""
    idx = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        model = randomize(model_for("all")).train()
        model.grad_checkpoint = ckpt
        model(idx, idx).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and all(grads[0][n] is not None for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train_from_iterator(iter(["The answer to 23 + 45 is 68. Hello world, how are you? " * 30]), vocab_size=300)


def test_cached_decoding_equals_the_full_forward(tokenizer, monkeypatch):
    """All options, windows of 4 and 24 positions (L = sequence_len), decoding far past both."""
    V = tokenizer.get_vocab_size()
    model = randomize(model_for("all", vocab_size=V))
    # logits: a prefill of 11, a chunk of 6 (smeared with the prefix's last token), then one at a time
    assert_kv_decoding_matches(model, torch.randint(0, V, (2, 40), generator=torch.Generator().manual_seed(0)))
    prompt = tokenizer.encode("The answer to", prepend=tokenizer.get_bos_token_id())
    n = 40
    naive = list(model.generate(prompt, max_tokens=n, temperature=0))
    assert len(set(naive)) > 3, "degenerate test model"
    monkeypatch.setenv("NANOCHAT_FAST_DECODE", "0")
    engine = Engine(model, tokenizer)
    cached = [col[0] for col in engine.generate(prompt, max_tokens=n, temperature=0, stop_tokens=set(), tools=False)]
    assert cached == naive
    # three samples from one prefill (the smear's last embedding is broadcast with the cache)
    batch = engine.generate_batch(prompt, num_samples=3, max_tokens=n, temperature=0, stop_tokens=set(), tools=False)
    assert batch == [naive] * 3
    # the static decoder (the CUDA graph's math on a CPU), block 8: several attention windows
    dec = StaticKVDecoder(model, 2, 56, mode="static", block=8)
    with torch.inference_mode():
        logits, fast = dec.prefill(prompt), []
        for _ in range(n):
            nxt = logits.argmax(-1, keepdim=True)
            fast.append(nxt)
            logits = dec.step(nxt)
    fast = torch.cat(fast, 1).tolist()
    assert fast == [naive, naive]

# -----------------------------------------------------------------------------
# calculators, configs, flags


def arch_calc(capsys, monkeypatch, *argv):
    """scripts.arch_calc --json in this process (its settings, setup and report, as from the shell)."""
    monkeypatch.setattr(sys, "argv", ["arch_calc", *argv, "--json"])
    with pytest.raises(SystemExit) as exit:
        runpy.run_module("scripts.arch_calc", run_name="__main__")
    assert exit.value.code in (0, None)
    return json.loads(capsys.readouterr().out)


def test_calculators_count_the_new_tensors(capsys, monkeypatch):
    for name in OPTIONS:
        model = model_for(name)
        counts = model.param_counts()
        assert counts["total"] == model.num_params() == vram.param_info(model.config)["total"]
    counts = model_for("all").param_counts()
    assert counts["value_embeds"] == 2 * 128 * 32 and counts["attn.ve_gate"] == 2 * 2 * 12
    assert counts["scalars"] == 3 + 3 + 24 + 1 + 1 and counts["wte"] == 128 * 64
    assert "value_embeds" not in model_for("smear").param_counts()
    # the script, with the preset flag: the model's count
    r = arch_calc(capsys, monkeypatch, "--depth", "3", "--model_dim", "64", "--head_dim", "16", "--vocab_size", "97", "--max_seq_len", "24", "--arch_2026")
    c = GPTConfig(**r["config"])
    assert r["total"] == GPT(c).num_params() and c.value_embeds and c.window_pattern == "SSSL"
    # its proposals near a budget screen shapes by a formula, then count them with the model: a shape
    # asked for by its own count is proposed, within 0.5%, only if the formula knows the value
    # embeddings (a quarter of the parameters here) and the padding
    target = GPT(GPTConfig(vocab_size=4000, n_layer=4, n_head=4, n_kv_head=2, n_embd=256, **arch2026.PRESET)).num_params()
    r = arch_calc(capsys, monkeypatch, "--target_params", str(target), "--n_layer", "4", "--head_dim", "64", "--arch_2026",
                  "--vocab_size", "4000", "--tolerance", "0.5")
    assert {"model_dim": 256, "n_kv_head": 2, "params": target} in [
        {k: p[k] for k in ("model_dim", "n_kv_head", "params")} for p in r["proposals"]], r["proposals"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_saved_activations_match_autograd(precision):
    """The estimate of what the forward keeps, with every option on, == the storages autograd saves."""
    from test_calculators import autocast_for
    model = model_for("all")
    model.train()
    params = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    idx = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_for(precision):
        model(idx, idx).backward()
    est = vram.saved_activation_bytes(model.config, 3, 24, precision, device_type="cpu")
    assert est == sum(saved.values())
    # the value embeddings: weights, gradients and AdamW state (two fp32 moments)
    on, off = (vram.estimate_memory(GPTConfig(**{**BASE, "value_embeds": v}), 2, 24) for v in (True, False))
    extra = 2 * 97 * 32
    assert on["weights"] - off["weights"] == 4 * (extra + 2 * 24) and on["optimizer"] - off["optimizer"] == 8 * extra + 4 * 48


def test_configs_without_the_new_fields_load_unchanged():
    old = {"sequence_len": 24, "vocab_size": 97, "n_layer": 2, "n_head": 2, "n_kv_head": 2, "n_embd": 64}  # October 2025
    torch.manual_seed(0)
    saved = randomize(build_model(GPTConfig(**old), "cpu"))
    keys = set(saved.state_dict())
    assert all(k.startswith(("transformer.", "lm_head.")) for k in keys)  # no 2026 tensor by default
    loaded = model_from_state(saved.state_dict(), old, "cpu").eval()
    assert {k: getattr(loaded.config, k) for k in arch2026.OFF} == arch2026.OFF
    idx = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), saved(idx))
    assert set(loaded.state_dict()) == keys


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_arch_args(parser, vocab_size=True)
    args = parser.parse_args(list(argv))
    return config_from_args(args, 97, 24)


def test_flags_and_the_preset():
    assert {k: getattr(parse("--depth", "2"), k) for k in arch2026.OFF} == arch2026.OFF
    c = parse("--depth", "2", "--arch_2026")
    assert {k: getattr(c, k) for k in arch2026.PRESET} == arch2026.PRESET
    c = parse("--depth", "2", "--arch_2026", "--qk_gain", "1.5", "--window_pattern", "SL", "--window_short", "8")
    assert (c.qk_gain, c.window_pattern, c.window_short, c.smear) == (1.5, "SL", 8, True)
    c = parse("--depth", "2", "--smear", "--rope_base", "500000")
    assert c.smear and c.rope_base == 500000 and not c.value_embeds
    with pytest.raises(ValueError, match="--variant"):
        parse("--variant", "v01", "--arch_2026")

# -----------------------------------------------------------------------------
# nanochat's own GPT at 92d63d4

REFERENCE_GIT = os.environ.get("NANOCHAT_REFERENCE_GIT", "/work/.mirror/karpathy+nanochat/repo")
REFERENCE_FILES = ("__init__", "gpt", "common", "flash_attention", "engine", "checkpoint_manager", "tokenizer")


@pytest.fixture
def nanochat_2026(tmp_path):
    """
    nanochat's gpt.py (and engine's KVCache) at 92d63d4 from the git mirror, as the package
    nanochat_ref in this process: only its `nanochat.` imports are renamed, and its optimizer
    module (which the model imports but a forward never uses; it compiles kernels at import) is a stub.
    """
    if not os.path.isdir(REFERENCE_GIT):
        pytest.skip(f"no karpathy/nanochat git mirror at {REFERENCE_GIT} (NANOCHAT_REFERENCE_GIT)")
    os.makedirs(tmp_path / "nanochat_ref")
    for name in REFERENCE_FILES:
        src = subprocess.run(["git", "--git-dir", REFERENCE_GIT, "show", f"92d63d4:nanochat/{name}.py"],
                             capture_output=True, text=True, timeout=60)
        if src.returncode != 0:
            pytest.skip(f"the mirror has no nanochat/{name}.py at 92d63d4")
        text = re.sub(r"^(\s*)(from|import) nanochat\.", r"\1\2 nanochat_ref.", src.stdout, flags=re.M)
        (tmp_path / "nanochat_ref" / f"{name}.py").write_text(text)
    (tmp_path / "nanochat_ref" / "optim.py").write_text("class MuonAdamW:\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("nanochat_ref.gpt"), importlib.import_module("nanochat_ref.engine")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "nanochat_ref" or m.startswith("nanochat_ref.")]:
            del sys.modules[name]


def test_nanochat_2026_state_dict_gives_the_same_logits(nanochat_2026):
    """The real proof: nanochat's own GPT (92d63d4, its SDPA path, fp32 on a CPU) with random weights,
    its state dict loaded into ours with the 2026 options: the same logits, full and cached."""
    ref_gpt, ref_engine = nanochat_2026
    assert ref_gpt.COMPUTE_DTYPE == torch.float32
    kw = dict(sequence_len=256, vocab_size=100, n_layer=3, n_head=4, n_kv_head=2, n_embd=64)
    with torch.device("meta"):
        ref = ref_gpt.GPT(ref_gpt.GPTConfig(**kw, window_pattern="SSSL"))
    ref.to_empty(device="cpu")
    ref.init_weights()
    torch.manual_seed(0)
    randomize_weights(ref, proj_scale=4, scalars=(0.2, 1.2))
    # the mapping: nanochat's model_config (head_dim = n_embd / n_head), its window_pattern, the rest of the 2026 set
    config = GPTConfig(**kw, **{**arch2026.PRESET, "window_pattern": "SSSL"})
    model = model_from_state(ref.state_dict(), config.to_dict(), "cpu").eval()
    idx = torch.randint(0, 100, (2, 300), generator=torch.Generator().manual_seed(0))  # past both windows (128, 256)

    def cached(m, cache):
        return torch.cat([m(idx[:, :200], kv_cache=cache)] + [m(idx[:, t:t + 1], kv_cache=cache) for t in range(200, 300)], 1)
    with torch.no_grad():
        want = ref(idx)
        torch.testing.assert_close(model(idx), want, atol=1e-4, rtol=0)
        want_cached = cached(ref, ref_engine.KVCache(2, 2, 300, 16, 3, "cpu", torch.float32))
        torch.testing.assert_close(cached(model, model.make_kv_cache(2, 300)), want_cached, atol=1e-4, rtol=0)
    assert want.abs().max() > 1  # (logits far from zero: the weights matter)
