"""
Attention layers. Both take (x, (cos, sin), kv_cache, ve) and return (B, T, n_embd).
Both know the 2026 options of nanochat.arch2026 that act inside attention: the q/k gain after
QK-norm and the layer's sliding window; the standard one also the value embedding (ve) and its gate.

- CausalSelfAttention: nanochat's (October 2025): q, k, v projections, rotary on the two halves
  of each head, QK-norm, causal scaled-dot-product attention, GQA.
- DiffAttention: differential attention (Ye et al., 2024, "Differential Transformer",
  arXiv:2410.05258). Each head has two query/key pairs of head_dim and one value of 2*head_dim;
  its output is the difference of two softmax maps applied to the value,
      (softmax(q1 k1^T / sqrt(d)) - lambda * softmax(q2 k2^T / sqrt(d))) v,
  with lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init re-parameterised by four learned
  vectors (shared by the heads of a layer) and lambda_init = 0.8 - 0.6 exp(-0.3 l) for the
  0-based layer l; then a per-head RMSNorm (with weight) and the (1 - lambda_init) scale.
  n_head such heads of head_dim have the parameters of 2*n_head ordinary heads: the paper's
  "half the heads" parameter match, so 2 * n_head * head_dim = n_embd.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat import arch2026


def norm(x, weight=None):
    # eps left at its default (finfo eps), as nanochat does
    return F.rms_norm(x, (x.size(-1),), weight)


def apply_rotary_emb(x, cos, sin):
    # x: (B, T, H, D); rotate the pair (first half, second half) of each head
    d = x.shape[3] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :d], x[..., d:]
    y1 = x1 * cos + x2 * sin
    y2 = x1 * (-sin) + x2 * cos
    return torch.cat([y1, y2], 3).to(x.dtype)


def attend(q, k, v, window=None):
    """
    Causal attention of q (B, H, Tq, D) over k, v (B, Hkv, Tk, D|Dv): the last Tq of the Tk
    positions are new. window: a query at position t sees keys t-window..t (None: all before it).
    """
    Tq, Tk = q.size(2), k.size(2)
    gqa = q.size(1) != k.size(1)
    if window is not None and window < Tk - 1:  # (else no key is out of reach)
        if Tq == 1:  # one new token: the last window+1 keys
            return F.scaled_dot_product_attention(q, k[:, :, -(window + 1):], v[:, :, -(window + 1):], enable_gqa=gqa)
        rows = torch.arange(Tk - Tq, Tk, device=q.device)[:, None]
        cols = torch.arange(Tk, device=q.device)[None, :]
        mask = (cols <= rows) & (rows - cols <= window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    if Tq == Tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if Tq == 1:  # one new token attends to everything in the cache
        return F.scaled_dot_product_attention(q, k, v, is_causal=False, enable_gqa=gqa)
    # a chunk after a prefix: the prefix is fully visible, the chunk is causal
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.c_q = nn.Linear(config.n_embd, self.n_head * self.head_dim, bias=False)
        self.c_k = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * self.head_dim, bias=False)
        self.c_proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=False)
        self.ve_gate = arch2026.ve_gate(config, layer_idx)  # None unless the layer has a value embedding
        self.qk_gain, self.window = config.qk_gain, arch2026.layer_windows(config)[layer_idx]

    def forward(self, x, cos_sin, kv_cache=None, ve=None):
        B, T, _ = x.size()
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        if ve is not None:
            v = arch2026.add_value_embedding(self.ve_gate, x, v, ve)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm
        if self.qk_gain != 1.0:
            q, k = q * self.qk_gain, k * self.qk_gain
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if kv_cache is not None:
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)
        y = attend(q, k, v, self.window)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


def lambda_init_for(layer_idx):
    """The paper's depth-dependent initial lambda (layer_idx 0-based): 0.2 at the first layer, towards 0.8 deep."""
    return 0.8 - 0.6 * math.exp(-0.3 * layer_idx)


class DiffAttention(nn.Module):
    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        d = self.head_dim
        self.c_q = nn.Linear(config.n_embd, 2 * self.n_head * d, bias=False)     # q1, q2 of every head
        self.c_k = nn.Linear(config.n_embd, 2 * self.n_kv_head * d, bias=False)  # k1, k2 of every kv head
        self.c_v = nn.Linear(config.n_embd, self.n_kv_head * 2 * d, bias=False)  # one value of 2d per kv head
        self.c_proj = nn.Linear(self.n_head * 2 * d, config.n_embd, bias=False)
        self.lambda_init = lambda_init_for(layer_idx)
        self.lambda_q1 = nn.Parameter(torch.zeros(d))
        self.lambda_k1 = nn.Parameter(torch.zeros(d))
        self.lambda_q2 = nn.Parameter(torch.zeros(d))
        self.lambda_k2 = nn.Parameter(torch.zeros(d))
        self.subln = nn.Parameter(torch.ones(2 * d))  # the per-head RMSNorm's weight
        self.qk_gain, self.window = config.qk_gain, arch2026.layer_windows(config)[layer_idx]

    @torch.no_grad()
    def init_lambdas(self):
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        nn.init.ones_(self.subln)

    def lam(self):
        """The current lambda (a scalar tensor, fp32)."""
        l1 = torch.exp(torch.sum(self.lambda_q1.float() * self.lambda_k1.float()))
        l2 = torch.exp(torch.sum(self.lambda_q2.float() * self.lambda_k2.float()))
        return l1 - l2 + self.lambda_init

    def forward(self, x, cos_sin, kv_cache=None, ve=None):  # (ve: never, arch2026.validate)
        B, T, _ = x.size()
        H, Hkv, d = self.n_head, self.n_kv_head, self.head_dim
        # component-major layout: heads [0, H) are the first maps' queries, [H, 2H) the second's
        q = self.c_q(x).view(B, T, 2 * H, d)
        k = self.c_k(x).view(B, T, 2 * Hkv, d)
        v = self.c_v(x).view(B, T, Hkv, 2 * d)
        cos, sin = cos_sin
        q, k = apply_rotary_emb(q, cos, sin), apply_rotary_emb(k, cos, sin)
        q, k = norm(q), norm(k)  # QK-norm, as in the standard attention
        if self.qk_gain != 1.0:
            q, k = q * self.qk_gain, k * self.qk_gain
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:  # the cache holds the 2*Hkv keys of d and the Hkv values of 2d
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)
        y1 = attend(q[:, :H], k[:, :Hkv], v, self.window)
        y2 = attend(q[:, H:], k[:, Hkv:], v, self.window)
        y = y1 - self.lam().to(y1.dtype) * y2
        y = norm(y, self.subln.to(y.dtype)) * (1 - self.lambda_init)
        y = y.transpose(1, 2).contiguous().view(B, T, -1)
        return self.c_proj(y)


def kv_shapes(config):
    """(key heads, key dim), (value heads, value dim) one layer keeps in the KV cache."""
    if config.attn == "diff":
        return (2 * config.n_kv_head, config.head_dim), (config.n_kv_head, 2 * config.head_dim)
    return (config.n_kv_head, config.head_dim), (config.n_kv_head, config.head_dim)


ATTENTION = {"standard": CausalSelfAttention, "diff": DiffAttention}
