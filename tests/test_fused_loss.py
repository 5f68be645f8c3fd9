"""
The fused chunked loss (nanochat/fused_loss.py) against the plain path it replaces:
F.cross_entropy(15 * tanh(x @ W^T / 15), targets, ignore_index=-1), on its own and inside GPT.
Chunks are made small here (CHUNK_LOGITS) so that every test crosses chunk boundaries, with row
counts that the chunk size does not divide.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from nanochat import fused_loss
from nanochat.fused_loss import fused_linear_cross_entropy
from nanochat.gpt import MLP, GPTConfig, build_model

CAP = 15.0


def plain_loss(x, w, targets, reduction="mean"):
    logits = CAP * torch.tanh((x @ w.t()) / CAP)
    return F.cross_entropy(logits.float(), targets, ignore_index=-1, reduction=reduction)


def inputs(N=50, C=16, V=96, ignored=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g)
    w = torch.randn(V, C, generator=g) * 2.0  # logits of a few units: the softcap matters
    targets = torch.randint(0, V, (N,), generator=g)
    targets[torch.rand(N, generator=g) < ignored] = -1
    return x, w, targets


def grads(fn, x, w, targets, reduction):
    x = x.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = fn(x, w, targets, reduction)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("rows", [7, 50, 64])  # 7 does not divide 50; 64 is one chunk bigger than N
def test_loss_and_gradients_equal_cross_entropy(reduction, rows, monkeypatch):
    x, w, targets = inputs()
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", rows * w.size(0))
    assert fused_loss.chunk_rows(w.size(0)) == rows
    fused = grads(lambda *a: fused_linear_cross_entropy(a[0], a[1], a[2], CAP, a[3]), x, w, targets, reduction)
    plain = grads(plain_loss, x, w, targets, reduction)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-5, atol=1e-6)


def test_ignore_index_and_all_ignored(monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 7 * 96)
    x, w, targets = inputs()
    # ignored rows contribute nothing: same loss as without them
    keep = targets != -1
    a = fused_linear_cross_entropy(x, w, targets, CAP)
    b = fused_linear_cross_entropy(x[keep], w, targets[keep], CAP)
    torch.testing.assert_close(a, b)
    # every target ignored: F.cross_entropy gives nan for the mean, 0 for the sum, zero gradients
    none = torch.full_like(targets, -1)
    for reduction in ("mean", "sum"):
        fused = grads(lambda *a: fused_linear_cross_entropy(a[0], a[1], a[2], CAP, a[3]), x, w, none, reduction)
        plain = grads(plain_loss, x, w, none, reduction)
        torch.testing.assert_close(fused[0], plain[0], equal_nan=True)
        assert torch.isnan(fused[0]) == (reduction == "mean")
        assert fused[1].abs().max() == 0 and fused[2].abs().max() == 0
        torch.testing.assert_close(fused[1], plain[1])
        torch.testing.assert_close(fused[2], plain[2])


def test_frozen_weight_no_grad_and_backward_scale(monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 7 * 96)
    x, w, targets = inputs()
    # only x needs a gradient (a frozen lm_head)
    xg = x.clone().requires_grad_()
    (3.0 * fused_linear_cross_entropy(xg, w, targets, CAP)).backward()  # backward scales by its input
    xp = x.clone().requires_grad_()
    (3.0 * plain_loss(xp, w, targets)).backward()
    torch.testing.assert_close(xg.grad, xp.grad, rtol=1e-5, atol=1e-6)
    # without autograd (evaluation) the loss alone, the same value
    with torch.no_grad():
        torch.testing.assert_close(fused_linear_cross_entropy(xg, w, targets, CAP), plain_loss(x, w, targets))
    with pytest.raises(ValueError, match="reduction"):
        fused_linear_cross_entropy(x, w, targets, CAP, "none")


def test_bf16_autocast_on_cpu_runs_and_is_close(monkeypatch):
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 7 * 96)
    x, w, targets = inputs()
    ref = grads(plain_loss, x.double(), w.double(), targets, "mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = grads(lambda *a: fused_linear_cross_entropy(a[0], a[1], a[2], CAP, a[3]), x, w, targets, "mean")
        plain = grads(plain_loss, x, w, targets, "mean")
    # the gradients come back in the inputs' dtype (fp32 master weights)
    assert fused[0].dtype == fused[1].dtype == fused[2].dtype == torch.float32
    for got in (fused, plain):
        assert abs(got[0].item() - ref[0].item()) / ref[0].item() < 0.02
        for g, r in zip(got[1:], ref[1:]):
            assert F.cosine_similarity(g.double().flatten(), r.flatten(), dim=0) > 0.999
    # the fused loss keeps the softcap and softmax in fp32: at least as close to fp64 as the plain path
    assert abs(fused[0].item() - ref[0].item()) <= abs(plain[0].item() - ref[0].item()) + 1e-3


def test_relu2_as_product_is_the_same_value():
    cfg = GPTConfig(n_embd=32, mlp_hidden=128)
    mlp = MLP(cfg)
    x = torch.randn(4, 8, 32)
    assert torch.equal(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)).square()))
    r = F.relu(torch.randn(1000)).bfloat16()
    assert torch.equal(r * r, r.float().square().bfloat16())  # bf16 product == fp32 pow rounded once

# -----------------------------------------------------------------------------
# inside the model

def plain_model_loss(model, idx, targets):
    logits = model(idx)  # no targets: the unfused lm_head + softcap
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


@pytest.mark.parametrize("tied", [False, True])
def test_gpt_loss_and_gradients_equal_the_plain_path(tied, monkeypatch):
    """Fused vs plain through a whole GPT, two accumulated micro-batches, tied and untied embeddings."""
    monkeypatch.setattr(fused_loss, "CHUNK_LOGITS", 13 * 256)  # 13 rows per chunk, 2*24 = 48 rows
    cfg = GPTConfig(sequence_len=24, vocab_size=256, n_layer=2, n_head=2, n_kv_head=1, n_embd=32,
                    tie_embeddings=tied, mlp="swiglu" if tied else "relu2", norm_weight=tied)
    torch.manual_seed(0)
    model = build_model(cfg, "cpu")
    model.train()
    with torch.no_grad():  # the untied lm_head starts at zero: give it values so its gradient matters
        model.lm_head.weight.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    micro = [(torch.randint(0, 256, (2, 24), generator=g), torch.randint(0, 256, (2, 24), generator=g))
             for _ in range(2)]
    micro[1][1][0, :5] = -1  # some ignored targets

    def accumulate(loss_fn):
        model.zero_grad(set_to_none=True)
        losses = []
        for idx, targets in micro:
            loss = loss_fn(idx, targets)
            (loss / len(micro)).backward()
            losses.append(loss.detach())
        return losses, {n: p.grad.clone() for n, p in model.named_parameters()}

    fused_losses, fused_grads = accumulate(lambda i, t: model(i, t))
    plain_losses, plain_grads = accumulate(lambda i, t: plain_model_loss(model, i, t))
    for a, b in zip(fused_losses, plain_losses):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    assert ("lm_head.weight" in fused_grads) == (not tied)  # tied: one tensor, the wte's gradient
    for name in fused_grads:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    # the per-token path (bits per byte) is the plain one, and agrees
    idx, targets = micro[1]
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (idx.numel(),)
    valid = targets.view(-1) != -1
    torch.testing.assert_close(per_token[valid].mean(), model(idx, targets), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(idx, targets, loss_reduction="sum"), per_token.sum(), rtol=1e-6, atol=1e-5)
    assert math.isfinite(model(idx, targets).item())
