"""Bits per byte: the chunked path gives the per-token computation's number without the full logits."""
import math

import torch

from nanochat import gpt
from nanochat.gpt import GPTConfig, build_model
from nanochat.loss_eval import evaluate_bpb


def test_bpb_through_the_chunked_loss_equals_the_per_token_sum(monkeypatch):
    torch.manual_seed(0)
    V = 50
    model = build_model(GPTConfig(sequence_len=16, vocab_size=V, n_layer=2, n_head=2, n_kv_head=2, n_embd=32), "cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    token_bytes = torch.randint(1, 5, (V,))
    token_bytes[:3] = 0  # special tokens spell no bytes
    batches = [(torch.randint(0, V, (3, 16)), torch.randint(0, V, (3, 16))) for _ in range(4)]
    batches[1][1][0, :5] = -1  # ignored targets
    # the reference: per-token losses (the (B*T, V) logits), weighted by whether a target spells bytes
    nats, nbytes = 0.0, 0
    with torch.no_grad():
        for x, y in batches:
            loss = model(x, y, loss_reduction="none").view(-1).double()
            b = torch.where(y.view(-1) >= 0, token_bytes[y.view(-1).clamp(min=0)], 0)
            nats += (loss * (b > 0)).sum().item()
            nbytes += b.sum().item()
    expected = nats / (math.log(2) * nbytes)
    # evaluation must not take the unfused path that builds the full logits
    monkeypatch.setattr(gpt.F, "cross_entropy", lambda *a, **k: (_ for _ in ()).throw(AssertionError("full logits")))
    got = evaluate_bpb(model, iter(batches), 4, token_bytes)
    assert abs(got - expected) < 1e-6 * expected
